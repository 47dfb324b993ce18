//! Journal benchmark (not a test). Run in release:
//!
//! ```sh
//! cargo run --release --example bench_journal            # full run (1M records)
//! cargo run --release --example bench_journal -- 200000  # smaller verify/query set
//! cargo run --release --example bench_journal -- 200000 --skip-append
//! cargo run --release --example bench_journal -- --append-only --strict --writers 64 --secs 5
//! ```
//!
//! `--append-only` skips the verify/query part; `--scrambled` fills the
//! verify/query journal with each writer task's own record times (far out
//! of seq order) instead of times in the order records are handed in;
//! `--fill-strict` fills it with strict durability (group commits of ~64
//! records, as a strict broker under load writes them; relaxed ones are
//! larger);
//! `--strict` / `--relaxed`
//! keep one durability; `--writers N` one writer count; `--secs S` sets the
//! append window (default 3 s).
//!
//! Measures append throughput (strict and relaxed; 1, 16 and 64 concurrent
//! writers), `verify` speed over the whole journal, and per-partner query
//! latency (a page of 100) on that journal. Prints a Markdown table.

use std::time::{Duration, Instant};

/// The broker's allocator (see `src/main.rs`), so the journal is timed as
/// it runs in the broker.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use gatehouse::config::{Durability, JournalSettings};
use gatehouse::event::{Decision, Event, EventKind, Recorder};
use gatehouse::home::Home;
use gatehouse::journal::{Journal, Query, Store, Verifier};

const PARTNERS: usize = 100;
const T0: i64 = 1_800_000_000_000;

fn key_home() -> Result<(tempfile::TempDir, Home), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let home = Home::new(dir.path());
    std::fs::create_dir_all(home.certs_dir())?;
    let kp = rcgen::KeyPair::generate()?;
    std::fs::write(home.journal_key(), kp.serialize_pem())?;
    std::fs::write(home.journal_pub(), kp.public_key_pem())?;
    Ok((dir, home))
}

fn event(i: u64) -> Event {
    let mut e = Event::new(EventKind::Exchange, "gatehouse-1", Decision::Allowed);
    e.time_ms = T0 + i as i64; // one record per ms
    e.partner = Some(format!("partner-{:03}", i as usize % PARTNERS));
    e.cert_serial = Some("5d2c9a0f13e4b7a1".into());
    e.cert_fingerprint = Some("9f".repeat(32));
    e.client_addr = Some("192.0.2.10:53122".into());
    e.tls_version = Some("TLSv1.3".into());
    e.method = Some("POST".into());
    e.path = Some(format!("/v1/orders/{i}"));
    e.route = Some("POST /v1/orders".into());
    e.upstream = Some("orders".into());
    e.status = Some(201);
    e.request_bytes = 512;
    e.response_bytes = 2048;
    e.duration_us = 3100;
    e.request_id = Some(format!("req-{i:016x}"));
    e
}

fn settings(d: Durability) -> JournalSettings {
    JournalSettings {
        durability: d,
        ..JournalSettings::default()
    }
}

/// Records per second with `writers` tasks recording back to back for `secs`.
fn append_rate(
    rt: &tokio::runtime::Runtime,
    d: Durability,
    writers: usize,
    secs: f64,
) -> Result<f64, Box<dyn std::error::Error>> {
    let (_dir, home) = key_home()?;
    let j = Journal::open(&home, &settings(d))?;
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let total: u64 = rt.block_on(async {
        let tasks: Vec<_> = (0..writers)
            .map(|w| {
                let j = j.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        if j.record(event(n * 64 + w as u64)).await.is_ok() {
                            n += 1;
                        }
                    }
                    n
                })
            })
            .collect();
        let mut sum = 0;
        for t in tasks {
            sum += t.await.unwrap_or(0);
        }
        sum
    });
    let elapsed = start.elapsed().as_secs_f64();
    let flushes = j.stats().flushes;
    j.shutdown()?;
    eprintln!(
        "  {d:?} x{writers}: {total} records, {flushes} flushes, {:.0} records/flush",
        total as f64 / flushes.max(1) as f64
    );
    Ok(total as f64 / elapsed)
}

/// Verify speed and query latency on the journal in `home`.
fn measure(home: &Home, n: u64) -> Result<(), Box<dyn std::error::Error>> {
    let store = Store::open(&home.journal_db())?;
    let stats = store.stats()?;
    println!(
        "journal of {} records; {:.0} MB on disk",
        stats.last_seq,
        stats.size_on_disk as f64 / 1e6
    );
    let verifier = Verifier::load(&home.journal_pub())?;
    for pass in ["cold (first pass after open)", "warm (second pass)"] {
        let t = Instant::now();
        let report = store.verify(&verifier)?;
        let secs = t.elapsed().as_secs_f64();
        assert!(report.ok, "{report:?}");
        println!(
            "verify, {pass}: {} records, {} checkpoints in {:.2} s = {:.0} records/s",
            report.records,
            report.checkpoints,
            secs,
            report.records as f64 / secs
        );
    }

    // Per-partner page of 100 in a random one-hour window.
    let mut lat = Vec::new();
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..300 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let p = seed as usize % PARTNERS;
        let since = T0 + (seed >> 20) as i64 % (n as i64).max(1);
        let q = Query {
            partner: Some(format!("partner-{p:03}")),
            since_ms: Some(since),
            until_ms: Some(since + 3_600_000),
            limit: 100,
            ..Query::default()
        };
        let t = Instant::now();
        let got = store.query(&q)?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        std::hint::black_box(got);
    }
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "per-partner query (page of 100, {} queries): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat[lat.len() - 1]
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--measure") {
        let home = Home::new(args.get(1).ok_or("--measure HOME N")?);
        let n = args.get(2).ok_or("--measure HOME N")?.parse()?;
        return measure(&home, n);
    }
    let skip_append = args.iter().any(|a| a == "--skip-append");
    let append_only = args.iter().any(|a| a == "--append-only");
    let scrambled = args.iter().any(|a| a == "--scrambled");
    let fill_durability = if args.iter().any(|a| a == "--fill-strict") {
        Durability::Strict
    } else {
        Durability::Relaxed
    };
    let value = |name: &str| -> Option<&String> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
    };
    let writers: Vec<usize> = match value("--writers") {
        Some(w) => vec![w.parse()?],
        None => vec![1, 16, 64],
    };
    let secs: f64 = value("--secs")
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(3.0);
    let modes: Vec<Durability> = if args.iter().any(|a| a == "--strict") {
        vec![Durability::Strict]
    } else if args.iter().any(|a| a == "--relaxed") {
        vec![Durability::Relaxed]
    } else {
        vec![Durability::Strict, Durability::Relaxed]
    };
    let n: u64 = args
        .iter()
        .enumerate()
        .find(|(i, a)| {
            !a.starts_with("--")
                && !matches!(
                    args.get(i.wrapping_sub(1)).map(String::as_str),
                    Some("--writers" | "--secs")
                )
        })
        .map(|(_, s)| s.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    if !skip_append {
        println!("| append | writers | records/s |");
        println!("| --- | ---: | ---: |");
        for &d in &modes {
            for &w in &writers {
                let r = append_rate(&rt, d, w, secs)?;
                println!("| {d:?} | {w} | {r:.0} |");
            }
        }
    }
    if append_only {
        return Ok(());
    }

    // A journal of n records (64 writers; relaxed for speed, or
    // `--fill-strict`: the small group commits of a strict broker).
    let (_dir, home) = key_home()?;
    let fill_start = Instant::now();
    {
        let j = Journal::open(&home, &settings(fill_durability))?;
        rt.block_on(async {
            let per = n / 64;
            let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            let tasks: Vec<_> = (0..64u64)
                .map(|w| {
                    let j = j.clone();
                    let next = next.clone();
                    tokio::spawn(async move {
                        for k in 0..per {
                            // A broker's records are out of time order by a
                            // request's duration at most: the time is taken
                            // as the record is handed in. `--scrambled`: each
                            // task's own times (k * 64 + w), as the fills of
                            // the earlier rounds in docs/BENCHMARKS.md; a task
                            // running ahead put records hours out of order.
                            let i = if scrambled {
                                k * 64 + w
                            } else {
                                next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                            };
                            let _ = j.record(event(i)).await;
                        }
                    })
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        });
        j.shutdown()?;
    }
    if let Ok(keep) = std::env::var("BENCH_KEEP") {
        std::fs::rename(home.root(), &keep)?;
        println!("kept the home at {keep}");
        return Ok(());
    }
    // Verify and query in a fresh process, as `gatehouse log verify` on a
    // stopped broker would.
    println!();
    println!(
        "journal filled in {:.1} s",
        fill_start.elapsed().as_secs_f64()
    );
    let status = std::process::Command::new(std::env::current_exe()?)
        .arg("--measure")
        .arg(home.root())
        .arg(n.to_string())
        .status()?;
    if !status.success() {
        return Err("the measuring process failed".into());
    }
    Ok(())
}
