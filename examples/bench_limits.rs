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
use gatehouse::limits::LimitState;

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

/// Runs `threads` threads of `n` checks each; returns (ns per check per thread, admitted).
fn run(
    state: &Arc<LimitState>,
    ids: &Arc<Vec<String>>,
    threads: usize,
    n: u64,
    same_partner: bool,
) -> (f64, u64) {
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let state = state.clone();
            let ids = ids.clone();
            std::thread::spawn(move || {
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
                ok
            })
        })
        .collect();
    let admitted: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
    let elapsed = start.elapsed().as_nanos() as f64;
    (elapsed / n as f64, admitted)
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
    for (label, threads, same) in [
        ("1 thread, random partners ", 1, false),
        ("2 threads, random partners", 2, false),
        ("2 threads, one partner    ", 2, true),
    ] {
        let (ns, admitted) = run(&state, &ids, threads, n, same);
        let total = n * threads as u64;
        println!(
            "{label}: {ns:6.1} ns per check (wall time / checks per thread), {:5.1} M checks/s total, {admitted}/{total} admitted",
            total as f64 / (ns * n as f64) * 1e3
        );
    }
}
