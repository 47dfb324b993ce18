//! Upstream pool settings changed on a running broker and reloaded with
//! SIGHUP, against real backend processes: each new value is seen in what
//! the backends receive or in the pool's endpoint states, and the reload's
//! admin record names the key. Endpoints keep their health and ejection
//! state across the rebuild, so each step changes one thing.

use std::time::{Duration, Instant};

use crate::common::broker::{Broker, ClientCert, TestHome, get_once};
use crate::common::pool_backend::PoolBackend;
use crate::common::reload::reload_applies;
use crate::pools::{HostsEntries, add_pool, endpoint_state, status, wait_state};

/// Sets `[upstreams.<up>] key = value`.
fn set(h: &TestHome, up: &str, key: &str, value: impl Into<toml_edit::Value>) {
    let v = value.into();
    h.edit_config(|d| d["upstreams"][up][key] = toml_edit::Item::Value(v));
}

/// Sets `key` inside the inline table `table` of `[upstreams.<up>]`.
fn set_in(h: &TestHome, up: &str, table: &str, key: &str, value: impl Into<toml_edit::Value>) {
    let v = value.into();
    h.edit_config(|d| d["upstreams"][up][table][key] = toml_edit::Item::Value(v));
}

/// Sets `[upstreams.<up>] endpoints`.
fn set_endpoints(h: &TestHome, up: &str, urls: &[String]) {
    let mut a = toml_edit::Array::new();
    for u in urls {
        a.push(u.as_str());
    }
    set(h, up, "endpoints", a);
}

/// Statuses of `n` GETs of `path` sent at once (0: no answer within 10 s).
async fn at_once(b: &Broker, h: &TestHome, cert: &ClientCert, path: &str, n: usize) -> Vec<u16> {
    let calls: Vec<_> = (0..n)
        .map(|_| {
            let (addr, ca, cert, path) = (b.addr, h.ca_pem(), cert.clone(), path.to_string());
            tokio::spawn(async move {
                match tokio::time::timeout(
                    Duration::from_secs(10),
                    get_once(addr, &ca, &cert, &path),
                )
                .await
                {
                    Ok(Ok(r)) => r.status.as_u16(),
                    _ => 0,
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.unwrap());
    }
    out.sort_unstable();
    out
}

/// Statuses of `n` GETs of `path`, one started every 50 ms (each on its
/// own connection, overlapping the slower ones).
async fn staggered(b: &Broker, h: &TestHome, cert: &ClientCert, path: &str, n: usize) -> Vec<u16> {
    let mut calls = Vec::new();
    for _ in 0..n {
        let (addr, ca, cert, path) = (b.addr, h.ca_pem(), cert.clone(), path.to_string());
        calls.push(tokio::spawn(async move {
            match get_once(addr, &ca, &cert, &path).await {
                Ok(r) => r.status.as_u16(),
                Err(_) => 0,
            }
        }));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut out = Vec::new();
    for c in calls {
        out.push(c.await.unwrap());
    }
    out
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pool_admission_balance_and_retries_take_effect_on_sighup() {
    let h = TestHome::new();
    let dir = h.path().join("backends");
    std::fs::create_dir_all(&dir).unwrap();
    let slow = PoolBackend::start(&dir, "slow", "sleep:1000");
    let ok = PoolBackend::start(&dir, "ok", "ok");
    let hang = PoolBackend::start(&dir, "hang", "hang");
    add_pool(
        &h,
        "orders",
        &[slow.url()],
        "balance = \"round_robin\"\nqueue = { size = 5, timeout = \"5s\" }\noutlier = { consecutive_failures = 1000 }",
    );
    h.add_partner("acme", &["GET /v1 -> orders"]);
    let acme = h.issue("acme");
    let b = h.start();
    let key = |k: &str| format!("upstreams.orders.{k}");

    // max_in_flight: unset, three calls at once all reach the backend.
    assert_eq!(at_once(&b, &h, &acme, "/v1/a", 3).await, [200, 200, 200]);
    assert_eq!(slow.max_concurrent(), 3);
    set(&h, "orders", "max_in_flight", 1);
    reload_applies(&b, &h, &key("max_in_flight")).await;
    // One at a time; the others wait in the queue and are answered, so
    // three calls of 1 s each take three seconds, not one.
    let started = Instant::now();
    assert_eq!(at_once(&b, &h, &acme, "/v1/b", 3).await, [200, 200, 200]);
    assert!(
        started.elapsed() >= Duration::from_millis(2500),
        "the calls were not taken one at a time: {:?}",
        started.elapsed()
    );
    // queue.size = 0: nothing waits; the two that find no place are refused.
    set_in(&h, "orders", "queue", "size", 0);
    reload_applies(&b, &h, &key("queue.size")).await;
    let got = at_once(&b, &h, &acme, "/v1/c", 3).await;
    assert_eq!((count(&got, 200), count(&got, 503)), (1, 2), "{got:?}");
    // queue.timeout = 300ms: a place opens only after 1 s; the waiting give up.
    set_in(&h, "orders", "queue", "size", 5);
    set_in(&h, "orders", "queue", "timeout", "300ms");
    reload_applies(&b, &h, &key("queue.timeout")).await;
    let got = at_once(&b, &h, &acme, "/v1/d", 3).await;
    assert_eq!((count(&got, 200), count(&got, 503)), (1, 2), "{got:?}");
    let slow_before = slow.requests().len();
    assert_eq!(slow_before, 3 + 3 + 1 + 1, "what the backend saw");
    h.edit_config(|d| {
        let t = d["upstreams"]["orders"].as_table_mut().unwrap();
        t.remove("max_in_flight");
        t.remove("queue");
    });
    reload_applies(&b, &h, &key("max_in_flight")).await;

    // endpoints: a second endpoint takes its share.
    set_endpoints(&h, "orders", &[slow.url(), ok.url()]);
    reload_applies(&b, &h, &key("endpoints")).await;
    let got = staggered(&b, &h, &acme, "/v1/e", 10).await;
    assert_eq!(count(&got, 200), 10);
    assert_eq!(ok.requests().len(), 5, "round robin over two");
    assert_eq!(slow.requests().len(), slow_before + 5);

    // balance = least_request: while the slow endpoint holds its calls,
    // new ones go to the idle one.
    set(&h, "orders", "balance", "least_request");
    reload_applies(&b, &h, &key("balance")).await;
    let slow_before = slow.requests().len();
    let got = staggered(&b, &h, &acme, "/v1/f", 10).await;
    assert_eq!(count(&got, 200), 10);
    let to_slow = slow.requests().len() - slow_before;
    assert!(to_slow <= 3, "{to_slow} of 10 to the slow endpoint");

    // per_try_timeout: an attempt on a hanging endpoint gives up after
    // 300 ms (not the 5 s response timeout); retries = 0 answers 504.
    set_endpoints(&h, "orders", &[hang.url(), ok.url()]);
    set(&h, "orders", "balance", "round_robin");
    set(&h, "orders", "retries", 0);
    reload_applies(&b, &h, &key("retries")).await;
    set(&h, "orders", "per_try_timeout", "300ms");
    reload_applies(&b, &h, &key("per_try_timeout")).await;
    let started = Instant::now();
    let got = at_once(&b, &h, &acme, "/v1/g", 4).await;
    assert_eq!((count(&got, 200), count(&got, 504)), (2, 2), "{got:?}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the hanging attempts outlived a 300 ms per_try_timeout"
    );
    // retries = 1: the attempt on the hanging endpoint is retried on the other.
    set(&h, "orders", "retries", 1);
    reload_applies(&b, &h, &key("retries")).await;
    let got = at_once(&b, &h, &acme, "/v1/h", 4).await;
    assert_eq!(count(&got, 200), 4, "{got:?}");

    // retry_budget: 32 calls at once, half on the hanging endpoint, half on
    // the slow one; the 16 retries (to the slow one) fit a budget of 1 (of
    // the calls in flight), and only 3 (the floor) fit a budget of 0.
    set_endpoints(&h, "orders", &[hang.url(), slow.url()]);
    set(&h, "orders", "per_try_timeout", "2s");
    set(&h, "orders", "retry_budget", 1.0);
    reload_applies(&b, &h, &key("retry_budget")).await;
    let got = at_once(&b, &h, &acme, "/v1/i", 32).await;
    assert!(
        count(&got, 200) >= 30,
        "retries refused under a budget of 1: {got:?}"
    );
    set(&h, "orders", "retry_budget", 0.0);
    reload_applies(&b, &h, &key("retry_budget")).await;
    let got = at_once(&b, &h, &acme, "/v1/j", 32).await;
    assert!(count(&got, 200) <= 24, "retries beyond the budget: {got:?}");
}

/// Lines of a backend's request log naming `path`.
fn probes(dir: &std::path::Path, name: &str, path: &str) -> usize {
    std::fs::read_to_string(dir.join(format!("{name}.log")))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(&format!("GET {path} ")))
        .count()
}

/// Whether `endpoint` of `up` keeps `state` for `secs` seconds.
async fn stays(b: &Broker, up: &str, endpoint: &str, state: &str, secs: u64) -> bool {
    for _ in 0..secs * 5 {
        if endpoint_state(b.admin, up, endpoint).await != state {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_pool_health_outlier_and_dns_settings_take_effect_on_sighup() {
    let h = TestHome::new();
    let dir = h.path().join("backends");
    std::fs::create_dir_all(&dir).unwrap();
    let mut ok = PoolBackend::start(&dir, "ok", "ok");
    // Answers everything but /healthz after 500 ms (health checks too, on another path).
    let sleepy = PoolBackend::start(&dir, "sleepy", "sleep:500");
    let resets: Vec<PoolBackend> = (0..4)
        .map(|i| PoolBackend::start(&dir, &format!("reset{i}"), "reset"))
        .collect();
    add_pool(
        &h,
        "orders",
        &[ok.url(), sleepy.url()],
        "balance = \"round_robin\"\noutlier = { consecutive_failures = 1000 }",
    );
    add_pool(
        &h,
        "flaky",
        &[resets[0].url(), resets[1].url()],
        "balance = \"round_robin\"\nretries = 0\noutlier = { consecutive_failures = 1000, base_ejection = \"1s\", max_ejected_percent = 100 }",
    );
    h.add_partner("acme", &["GET /v1 -> orders", "GET /flaky -> flaky"]);
    let acme = h.issue("acme");
    let b = h.start();
    let (ok_ep, sleepy_ep) = (ok.addr.to_string(), sleepy.addr.to_string());

    // The pools are in use (their upkeep runs from their first request).
    for path in ["/v1/a", "/v1/b", "/flaky"] {
        get_once(b.addr, &h.ca_pem(), &acme, path).await.unwrap();
    }
    // health: off, nothing probes; on, the backends are probed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(probes(&dir, "ok", "/probe"), 0);
    h.edit_config(|d| {
        let mut t = toml_edit::InlineTable::new();
        t.insert("path", "/probe".into());
        t.insert("interval", "1s".into());
        t.insert("timeout", "1s".into());
        t.insert("healthy", 1.into());
        t.insert("unhealthy", 1.into());
        d["upstreams"]["orders"]["health"] = toml_edit::value(t);
    });
    reload_applies(&b, &h, "upstreams.orders.health").await;
    // health.timeout: the slow backend answers its probe in 500 ms, inside
    // 1 s; not inside 200 ms, which takes it out.
    assert!(stays(&b, "orders", &sleepy_ep, "up", 2).await);
    assert!(probes(&dir, "ok", "/probe") >= 1, "no health checks");
    set_in(&h, "orders", "health", "timeout", "200ms");
    reload_applies(&b, &h, "upstreams.orders.health.timeout").await;
    assert!(wait_state(b.admin, "orders", &sleepy_ep, "unhealthy").await);
    // health.interval: every 200 ms, several probes a second.
    set_in(&h, "orders", "health", "interval", "200ms");
    reload_applies(&b, &h, "upstreams.orders.health.interval").await;
    let before = probes(&dir, "ok", "/probe");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let during = probes(&dir, "ok", "/probe") - before;
    // (A round waits for its slowest probe: 200 ms here.)
    assert!(during >= 4, "{during} probes in 2.5 s at a 200 ms interval");
    // health.path: the probes ask the new path.
    set_in(&h, "orders", "health", "path", "/ready");
    reload_applies(&b, &h, "upstreams.orders.health.path").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(probes(&dir, "ok", "/ready") >= 2, "no probe of /ready");
    // health.interval: every 10 s, a probe at most in 2 s.
    set_in(&h, "orders", "health", "interval", "10s");
    reload_applies(&b, &h, "upstreams.orders.health.interval").await;
    let before = probes(&dir, "ok", "/ready");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let during = probes(&dir, "ok", "/ready") - before;
    assert!(during <= 1, "{during} probes in 2 s at a 10 s interval");
    // health.unhealthy: 1000 failures to take an endpoint out keep a
    // stopped backend in; 1 takes it out.
    set_in(&h, "orders", "health", "interval", "200ms");
    set_in(&h, "orders", "health", "unhealthy", 1000);
    reload_applies(&b, &h, "upstreams.orders.health.unhealthy").await;
    ok.kill();
    assert!(
        stays(&b, "orders", &ok_ep, "up", 2).await,
        "out before 1000 failures"
    );
    set_in(&h, "orders", "health", "unhealthy", 1);
    reload_applies(&b, &h, "upstreams.orders.health.unhealthy").await;
    assert!(wait_state(b.admin, "orders", &ok_ep, "unhealthy").await);
    // health.healthy: back only after 1000 passes, or after 1.
    set_in(&h, "orders", "health", "healthy", 1000);
    reload_applies(&b, &h, "upstreams.orders.health.healthy").await;
    ok.restart(&dir);
    assert!(
        stays(&b, "orders", &ok_ep, "unhealthy", 2).await,
        "back before 1000 passes"
    );
    set_in(&h, "orders", "health", "healthy", 1);
    reload_applies(&b, &h, "upstreams.orders.health.healthy").await;
    assert!(wait_state(b.admin, "orders", &ok_ep, "up").await);

    // outlier.consecutive_failures: 1000 failures in a row eject nothing;
    // with 1, the next failure ejects.
    let flaky = |i: usize| resets[i].addr.to_string();
    assert!(
        at_once(&b, &h, &acme, "/flaky", 4)
            .await
            .iter()
            .all(|s| *s >= 500)
    );
    assert_eq!(endpoint_state(b.admin, "flaky", &flaky(0)).await, "up");
    set_in(&h, "flaky", "outlier", "consecutive_failures", 1);
    reload_applies(&b, &h, "upstreams.flaky.outlier.consecutive_failures").await;
    at_once(&b, &h, &acme, "/flaky", 2).await;
    assert_eq!(endpoint_state(b.admin, "flaky", &flaky(0)).await, "ejected");
    // outlier.base_ejection: 1 s ejections end by themselves; 60 s ones
    // (doubled on a repeat) are still running 3.5 s later.
    assert!(wait_state(b.admin, "flaky", &flaky(0), "up").await);
    assert!(wait_state(b.admin, "flaky", &flaky(1), "up").await);
    set_in(&h, "flaky", "outlier", "base_ejection", "60s");
    reload_applies(&b, &h, "upstreams.flaky.outlier.base_ejection").await;
    at_once(&b, &h, &acme, "/flaky", 2).await;
    assert_eq!(endpoint_state(b.admin, "flaky", &flaky(0)).await, "ejected");
    assert!(stays(&b, "flaky", &flaky(0), "ejected", 3).await);
    // outlier.max_ejected_percent: of two fresh failing endpoints, only
    // half the pool may be ejected at once.
    set_endpoints(&h, "flaky", &[resets[2].url(), resets[3].url()]);
    set_in(&h, "flaky", "outlier", "max_ejected_percent", 50);
    reload_applies(&b, &h, "upstreams.flaky.outlier.max_ejected_percent").await;
    at_once(&b, &h, &acme, "/flaky", 4).await;
    let states = [
        endpoint_state(b.admin, "flaky", &flaky(2)).await,
        endpoint_state(b.admin, "flaky", &flaky(3)).await,
    ];
    assert_eq!(
        states.iter().filter(|s| *s == "ejected").count(),
        1,
        "{states:?}"
    );

    // dns_refresh: a host name re-resolved every hour keeps the addresses
    // it had; every second, a new address is an endpoint within seconds.
    let Ok(two) = std::panic::catch_unwind(|| {
        PoolBackend::start_at(&dir, "two", "ok", [127, 0, 0, 2], ok.addr.port())
    }) else {
        eprintln!("dns_refresh skipped: 127.0.0.2 cannot be bound here");
        return;
    };
    let name = format!("gh-reload-{}.test", crate::common::process::rand_suffix());
    let Some(_first) = HostsEntries::add(&[format!("127.0.0.1 {name}")]) else {
        eprintln!("dns_refresh skipped: /etc/hosts is not writable here");
        return;
    };
    set_endpoints(&h, "orders", &[format!("http://{name}:{}", ok.addr.port())]);
    set(&h, "orders", "dns_refresh", "1h");
    h.edit_config(|d| {
        d["upstreams"]["orders"]
            .as_table_mut()
            .unwrap()
            .remove("health");
    });
    reload_applies(&b, &h, "upstreams.orders.dns_refresh").await;
    let endpoints = || async {
        status(b.admin).await["upstreams"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|u| u["name"] == "orders")
            .map(|u| u["endpoints"].as_array().map_or(0, Vec::len))
            .sum::<usize>()
    };
    assert_eq!(endpoints().await, 1);
    let second = HostsEntries::add(&[format!("127.0.0.2 {name}")]);
    assert!(second.is_some());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(endpoints().await, 1, "re-resolved before the hour");
    drop(second);
    // The reload rebuilds the pool while the name has one address; the
    // second one, added afterwards, comes in by the refresh alone.
    set(&h, "orders", "dns_refresh", "1s");
    reload_applies(&b, &h, "upstreams.orders.dns_refresh").await;
    assert_eq!(endpoints().await, 1);
    let second = HostsEntries::add(&[format!("127.0.0.2 {name}")]);
    assert!(second.is_some());
    let two_ep = two.addr.to_string();
    assert!(
        wait_state(b.admin, "orders", &two_ep, "up").await,
        "{}\n{}",
        status(b.admin).await,
        b.log()
    );
    drop(second);
}
