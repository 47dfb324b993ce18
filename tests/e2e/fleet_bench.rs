//! Measurements for docs/BENCHMARKS.md ("Fleet"), not assertions: run with
//! `cargo test --release --test e2e fleet_bench -- --ignored --nocapture`.
//! Keep-alive requests per broker CPU-second with and without `[cluster]`
//! (Redis on the same machine; the partner has a rate limit so every
//! request runs the store's script), and revocation propagation from the
//! CLI command to the refusal on another node.

use std::time::{Duration, Instant};

use crate::common;
use common::broker::{Broker, Conn, TestHome, home_with_echo};
use common::redis_server::RedisServer;

const ROUTE: &str = "GET /v1/orders -> orders";

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

async fn load(
    b: &Broker,
    h: &TestHome,
    cert: &common::broker::ClientCert,
    secs: u64,
) -> (u64, f64) {
    let mut tasks = Vec::new();
    let cpu0 = cpu_secs(b.child.id());
    let until = Instant::now() + Duration::from_secs(secs);
    for _ in 0..8 {
        let mut c = Conn::open(b.addr, &h.ca_pem(), cert, false).await.unwrap();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                let r = c.get("/v1/orders").await.unwrap();
                assert_eq!(r.status, 200);
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    (total, cpu_secs(b.child.id()) - cpu0)
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

#[ignore = "a measurement: run by hand with --release"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_bench() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (h, _up, acme) = home_with_echo(&[ROUTE]).await;
    let p = h.path().join("partners/acme.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        format!("{text}\n[limits]\nrequests_per_minute = 60000000\nburst = 1000000\n"),
    )
    .unwrap();
    h.set_server("node_id", "bench");
    let secs = 10;
    for round in 0..2 {
        let single = h.start();
        let (n, cpu) = load(&single, &h, &acme, secs).await;
        println!(
            "round {round} single node : {n} requests, broker cpu {cpu:.2}s, {:.0} req/cpu-s, {:.0} req/s",
            n as f64 / cpu,
            n as f64 / secs as f64
        );
        drop(single);
        h.set_cluster(&redis.url(), None);
        let node = h.start();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (n, cpu) = load(&node, &h, &acme, secs).await;
        println!(
            "round {round} [cluster]   : {n} requests, broker cpu {cpu:.2}s, {:.0} req/cpu-s, {:.0} req/s",
            n as f64 / cpu,
            n as f64 / secs as f64
        );
        drop(node);
        h.edit_config(|doc| {
            doc.remove("cluster");
        });
    }

    // Revocation propagation: CLI command on node a's side to refusal of an
    // open keep-alive connection on node c (shared home).
    h.set_cluster(&redis.url(), None);
    let a = Broker::start_args(
        h.path(),
        &[
            "--node-id",
            "a",
            "--data",
            &h.path().join("data-a").display().to_string(),
        ],
    );
    let c = Broker::start_args(
        h.path(),
        &[
            "--node-id",
            "c",
            "--data",
            &h.path().join("data-c").display().to_string(),
        ],
    );
    let mut lat = Vec::new();
    for _ in 0..20 {
        let cert = h.issue("acme");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut conn = Conn::open(c.addr, &h.ca_pem(), &cert, false).await.unwrap();
        assert_eq!(conn.get("/v1/orders").await.unwrap().status, 200);
        let t = Instant::now();
        h.ok(&["cert", "revoke", &cert.serial]);
        loop {
            match conn.get("/v1/orders").await {
                Ok(r) if r.status == 200 => {}
                _ => break,
            }
            assert!(t.elapsed() < Duration::from_secs(5));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    drop((a, c));
    let (p50, p99) = (pct(&mut lat.clone(), 0.5), pct(&mut lat, 0.99));
    println!(
        "revocation, shared home: p50 {p50:.0} ms, p99 {p99:.0} ms (20 revocations, CLI start to refusal)"
    );
}
