//! Micro-benchmark of `LimitState::check`: ns per check on 10,000 partners.
//!
//! `cargo run --release --example bench_limits [checks_per_thread] [partners]`
//!
//! Every partner has a per-minute bucket, a daily quota and a concurrency
//! cap; half the checks go to a route with limits of its own (two locks).
//! Runs 1 thread, then 2 threads on random partners, then 2 threads on one
//! partner (the worst case: the same per-partner lock).

use std::sync::Arc;
use std::time::Instant;

use gatehouse::config::{LimitSpec, Partner, PartnerStatus, parse_route_arg};
use gatehouse::guard::limits::LimitState;

const PARTNERS: usize = 10_000;
const T0: i64 = 1_764_201_600_000;

fn partners(count: usize) -> Vec<Partner> {
    (0..count)
        .map(|i| {
            let mut limited =
                parse_route_arg("POST /v1/orders -> orders").unwrap_or_else(|e| panic!("{e}"));
            limited.limits = Some(LimitSpec {
                requests_per_minute: Some(1_000_000),
                burst: None,
                requests_per_day: Some(u64::MAX / 2),
                max_concurrent: Some(1_000),
            });
            let open =
                parse_route_arg("GET /v1/orders -> orders").unwrap_or_else(|e| panic!("{e}"));
            Partner {
                id: format!("partner-{i:05}"),
                name: format!("Partner {i}"),
                status: PartnerStatus::Active,
                on_anomaly: Default::default(),
                renewal_window: None,
                own_ca: None,
                value_limits: Default::default(),
                signing: false,
                signing_keys: Vec::new(),
                pin: Default::default(),
                limits: LimitSpec {
                    requests_per_minute: Some(6_000_000),
                    burst: None,
                    requests_per_day: Some(u64::MAX / 2),
                    max_concurrent: Some(10_000),
                },
                routes: vec![open, limited],
            }
        })
        .collect()
}

/// Nanoseconds this thread has run on a CPU (Linux `schedstat`), so time
/// spent descheduled on a busy machine does not count. `None` elsewhere.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

struct Run {
    /// Wall time / checks per thread.
    wall_ns: f64,
    /// On-CPU time / checks, mean over threads (None without schedstat).
    cpu_ns: Option<f64>,
    admitted: u64,
}

/// Runs `threads` threads of `n` checks each.
fn run(
    state: &Arc<LimitState>,
    ids: &Arc<Vec<String>>,
    threads: usize,
    n: u64,
    same_partner: bool,
) -> Run {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let state = state.clone();
            let ids = ids.clone();
            std::thread::spawn(move || {
                let cpu0 = thread_cpu_ns();
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1);
                let mut ok = 0u64;
                for i in 0..n {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let p = if same_partner {
                        0
                    } else {
                        (x % ids.len() as u64) as usize
                    };
                    let route = Some((i & 1) as usize);
                    let now = T0 + (i / 64) as i64;
                    if let Ok(adm) = state.check(&ids[p], route, now) {
                        ok += 1;
                        drop(adm);
                    }
                }
                let cpu = cpu0.zip(thread_cpu_ns()).map(|(a, b)| b.saturating_sub(a));
                (ok, cpu)
            })
        })
        .collect();
    let mut admitted = 0;
    let mut cpu_total = Some(0u64);
    for h in handles {
        let (ok, cpu) = h.join().unwrap_or((0, None));
        admitted += ok;
        cpu_total = cpu_total.zip(cpu).map(|(a, b)| a + b);
    }
    let wall = start.elapsed().as_nanos() as f64;
    Run {
        wall_ns: wall / n as f64,
        cpu_ns: cpu_total.map(|c| c as f64 / (n as f64 * threads as f64)),
        admitted,
    }
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    let count: usize = std::env::args()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(PARTNERS);
    println!("{count} partners, {n} checks per thread");
    let list = partners(count);
    let ids: Arc<Vec<String>> = Arc::new(list.iter().map(|p| p.id.clone()).collect());
    let state = Arc::new(LimitState::build(&list, None));
    run(&state, &ids, 1, n / 10, false); // warm up
    const ROUNDS: usize = 5;
    println!("best of {ROUNDS} rounds");
    for (label, threads, same) in [
        ("1 thread,  random partners", 1, false),
        ("2 threads, random partners", 2, false),
        ("2 threads, one partner    ", 2, true),
    ] {
        let runs: Vec<Run> = (0..ROUNDS)
            .map(|_| run(&state, &ids, threads, n, same))
            .collect();
        let wall = runs.iter().map(|r| r.wall_ns).fold(f64::INFINITY, f64::min);
        let cpu = runs
            .iter()
            .filter_map(|r| r.cpu_ns)
            .fold(f64::INFINITY, f64::min);
        let total = n * threads as u64;
        println!(
            "{label}: {cpu:6.1} ns CPU per check; wall {wall:6.1} ns per check per thread = {:5.1} M checks/s; {}/{total} admitted",
            threads as f64 / wall * 1e3,
            runs[0].admitted,
        );
    }
}
