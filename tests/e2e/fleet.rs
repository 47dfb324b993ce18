//! A fleet: several real brokers on loopback sharing one home's
//! configuration and certificates, each with its own data folder, and a
//! real `redis-server` started by the test. Limits and quotas hold across
//! nodes, revocations and suspensions reach open connections on other
//! nodes within a second (and a node whose files lag fails closed), the
//! nodes survive the store going away (and resume when it returns), a node
//! killed with SIGKILL rejoins with its records, and a spike spread over
//! the fleet raises one alert.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::common;
use common::broker::{Broker, ClientCert, Conn, TestHome, home_with_echo};
use common::pki::server_pki;
use common::redis_server::RedisServer;

const ROUTE: &str = "GET /v1/orders -> orders";

fn data_dir(home: &Path, id: &str) -> String {
    home.join(format!("data-{id}")).display().to_string()
}

/// Starts node `id` on the shared home with its own data folder.
fn node(home: &Path, id: &str) -> Broker {
    Broker::start_args(home, &["--node-id", id, "--data", &data_dir(home, id)])
}

/// Runs the CLI as node `id` (its data folder); asserts success.
fn cli(h: &TestHome, id: &str, args: &[&str]) -> String {
    let mut all = vec!["--data".to_string(), data_dir(h.path(), id)];
    all.extend(args.iter().map(|s| s.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    h.ok(&all)
}

/// A node's journal records (through its admin socket while it runs).
fn journal(h: &TestHome, id: &str) -> Vec<serde_json::Value> {
    cli(h, id, &["log", "export", "--format", "jsonl"])
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["type"] == "record")
        .collect()
}

fn fleet_view(h: &TestHome) -> serde_json::Value {
    serde_json::from_str(&h.ok(&["status", "--fleet", "--json"])).unwrap()
}

async fn open(b: &Broker, h: &TestHome, cert: &ClientCert) -> Conn {
    Conn::open(b.addr, &h.ca_pem(), cert, false)
        .await
        .expect("connect")
}

/// Status of one GET on `conn`; 0 when the connection failed or closed.
async fn status(conn: &mut Conn) -> u16 {
    match conn.get("/v1/orders").await {
        Ok(r) => r.status.as_u16(),
        Err(_) => 0,
    }
}

/// Status of one GET on a fresh connection; 0 when refused at the handshake.
async fn fresh_status(b: &Broker, h: &TestHome, cert: &ClientCert) -> (u16, String) {
    match Conn::open(b.addr, &h.ca_pem(), cert, false).await {
        Err(_) => (0, String::new()),
        Ok(mut c) => match c.get("/v1/orders").await {
            Ok(r) => (r.status.as_u16(), r.body),
            Err(_) => (0, String::new()),
        },
    }
}

/// Waits (bounded) until the GET on `conn` is refused; returns how long it took.
async fn refused_within(conn: &mut Conn, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit + Duration::from_millis(500) {
        if status(conn).await != 200 {
            return Some(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_limits_and_quota_hold_across_three_nodes() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (h, _up, acme) = home_with_echo(&[ROUTE]).await;
    h.add_partner("beta", &[ROUTE]);
    let beta = h.issue("beta");
    h.set_partner_limits("acme", &[("requests_per_minute", 60), ("burst", 5)]);
    h.set_partner_limits("beta", &[("requests_per_day", 4)]);
    h.set_cluster(&redis.url(), Some("local"));
    let nodes: Vec<Broker> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| node(h.path(), id))
        .collect();
    let mut conns = Vec::new();
    for n in &nodes {
        conns.push(open(n, &h, &acme).await);
    }

    // 60 rpm + burst 5, spread round-robin over three nodes for ~3 s: the
    // fleet admits what one node would (5 + 1 per second), not three times it.
    let started = Instant::now();
    let (mut ok, mut limited) = (0u32, 0u32);
    for i in 0..60 {
        match status(&mut conns[i % 3]).await {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let single_node = 5.0 + started.elapsed().as_secs_f64();
    assert!(
        (f64::from(ok) - single_node).abs() <= 1.5,
        "fleet admitted {ok} (refused {limited}); one node would admit {single_node:.1}; three separate nodes about {:.0}",
        3.0 * single_node
    );

    // The daily quota likewise: 4 per day across the fleet, not per node.
    let mut beta_ok = 0;
    for (i, n) in nodes.iter().cycle().take(12).enumerate() {
        let (s, body) = fresh_status(n, &h, &beta).await;
        match s {
            200 => beta_ok += 1,
            429 => assert!(body.contains("requests_per_day"), "{body}"),
            other => panic!("request {i}: unexpected status {other}"),
        }
    }
    assert_eq!(beta_ok, 4, "the daily quota of 4 holds across three nodes");

    // The fleet view: three live nodes and the fleet's per-partner totals.
    let mut view = serde_json::Value::Null;
    for _ in 0..40 {
        view = fleet_view(&h);
        if view["partners"]["acme"]["today"] == 60 && view["partners"]["beta"]["today"] == 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut ids: Vec<&str> = view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["n1", "n2", "n3"], "{view}");
    assert_eq!(view["partners"]["acme"]["today"], 60, "{view}");
    assert_eq!(view["partners"]["beta"]["today"], 12, "{view}");
    let text = h.ok(&["status", "--fleet"]);
    assert!(text.contains("3 live node(s)"), "{text}");

    // Each node's journal export, read together: every chain verifies, and
    // a query merges the three nodes' records (72 exchanges in all).
    let mut files = Vec::new();
    for id in ["n1", "n2", "n3"] {
        let f = h.path().join(format!("export-{id}.jsonl"));
        std::fs::write(&f, cli(&h, id, &["log", "export", "--format", "jsonl"])).unwrap();
        files.push(f.display().to_string());
    }
    let mut args = vec!["log", "verify"];
    for f in &files {
        args.extend(["--export", f.as_str()]);
    }
    let out = h.ok(&args);
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok: ")).count(),
        3,
        "{out}"
    );
    let mut q = vec!["log", "query", "--json", "--limit", "1000", "--export"];
    q.extend(files.iter().map(String::as_str));
    let merged: Vec<serde_json::Value> = h
        .ok(&q)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|r: &serde_json::Value| r["kind"] == "exchange")
        .collect();
    assert_eq!(merged.len(), 72);
    let nodes: std::collections::BTreeSet<&str> =
        merged.iter().map(|r| r["node"].as_str().unwrap()).collect();
    assert_eq!(nodes.into_iter().collect::<Vec<_>>(), ["n1", "n2", "n3"]);
    assert!(
        merged
            .windows(2)
            .all(|w| w[0]["time_ms"].as_i64() <= w[1]["time_ms"].as_i64())
    );
    // One altered record in one node's export fails verification.
    let text = std::fs::read_to_string(&files[1]).unwrap();
    std::fs::write(
        &files[1],
        text.replacen("\"status\":200", "\"status\":201", 1),
    )
    .unwrap();
    let out = h.run(&args);
    assert!(!out.status.success(), "an altered export verified");
    assert!(String::from_utf8_lossy(&out.stderr).contains("altered"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_revocation_and_suspension_reach_open_connections_on_other_nodes() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (h, _up, acme) = home_with_echo(&[ROUTE]).await;
    h.add_partner("beta", &[ROUTE]);
    let beta = h.issue("beta");
    h.set_cluster(&redis.url(), Some("local"));
    let _a = node(h.path(), "a");
    let c = node(h.path(), "c");

    let mut conn = open(&c, &h, &acme).await;
    assert_eq!(status(&mut conn).await, 200);
    cli(&h, "a", &["cert", "revoke", &acme.serial]);
    let took = refused_within(&mut conn, Duration::from_secs(1)).await;
    assert!(
        took.is_some_and(|t| t <= Duration::from_secs(1)),
        "the revoked certificate's open connection on node c was not refused within 1 s ({took:?})"
    );
    assert!(c.wait_log("fleet change announced", 2).await, "{}", c.log());

    let mut conn = open(&c, &h, &beta).await;
    assert_eq!(status(&mut conn).await, 200);
    cli(&h, "a", &["partner", "suspend", "beta"]);
    let took = refused_within(&mut conn, Duration::from_secs(1)).await;
    assert!(
        took.is_some_and(|t| t <= Duration::from_secs(1)),
        "the suspended partner's open connection on node c was not refused within 1 s ({took:?})"
    );
    // Resumed on the other node's CLI: node c serves it again.
    h.ok(&["partner", "resume", "beta"]);
    let mut back = false;
    for _ in 0..40 {
        if fresh_status(&c, &h, &beta).await.0 == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(back, "beta was not served again after resume");
    let view = fleet_view(&h);
    assert!(view["generation"].as_u64().unwrap() >= 3, "{view}");
}

/// Copies a home's configuration (not its data, logs or sockets).
fn copy_home(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let e = entry.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("data") || name.ends_with(".log") || name == "out" {
            continue;
        }
        let dest = to.join(&name);
        if e.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&dest).unwrap();
            copy_home(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_node_with_lagging_files_fails_closed_until_they_match() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (h, _up, acme) = home_with_echo(&[ROUTE]).await;
    h.set_cluster(&redis.url(), Some("local"));
    // Node c reads a copy of the home that does not get the change (shared
    // storage lagging): only the announcement tells it.
    let lagging = tempfile::tempdir().unwrap();
    copy_home(h.path(), lagging.path());
    let c = Broker::start_args(lagging.path(), &["--node-id", "c"]);
    let mut conn = Conn::open(c.addr, &h.ca_pem(), &acme, false).await.unwrap();
    assert_eq!(status(&mut conn).await, 200);

    h.ok(&["cert", "revoke", &acme.serial]);
    let took = refused_within(&mut conn, Duration::from_secs(1)).await;
    assert!(
        took.is_some_and(|t| t <= Duration::from_secs(1)),
        "node c with lagging files kept serving a revoked certificate ({took:?})"
    );
    // A new connection: its files still say the certificate is good, yet it
    // is refused (fail closed) while they lag.
    let (s, body) = fresh_status(&c, &h, &acme).await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("fleet_sync_pending"), "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fresh_status(&c, &h, &acme).await.0, 503);

    // The files catch up: the refusal is now the revocation itself.
    copy_home(h.path(), lagging.path());
    let mut settled = false;
    for _ in 0..60 {
        if c.log().contains("fleet change applied") {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(settled, "{}", c.log());
    let (s, body) = fresh_status(&c, &h, &acme).await;
    assert!(s == 0 || s == 403, "revoked certificate got {s}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_keeps_serving_on_local_limits_when_the_store_dies_and_resumes() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (h, _up, acme) = home_with_echo(&[ROUTE]).await;
    h.set_partner_limits("acme", &[("requests_per_minute", 600), ("burst", 60)]);
    h.set_cluster(&redis.url(), Some("local"));
    let n1 = node(h.path(), "n1");
    let n2 = node(h.path(), "n2");
    let mut conns = [open(&n1, &h, &acme).await, open(&n2, &h, &acme).await];
    for i in 0..10 {
        assert_eq!(status(&mut conns[i % 2]).await, 200);
    }
    // Wait until each node has seen the other (1/N uses N = 2): both
    // heartbeats are in, and each node has beaten once since.
    for _ in 0..50 {
        if fleet_view(&h)["nodes"].as_array().map(Vec::len) == Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(2500)).await;

    redis.kill();
    let killed = Instant::now();
    let mut ok = 0;
    let mut n1_ok = 0;
    for i in 0..20 {
        let s = status(&mut conns[i % 2]).await;
        assert!(s == 200 || s == 429, "status {s} with the store down");
        ok += u32::from(s == 200);
        n1_ok += u32::from(s == 200 && i % 2 == 0);
    }
    assert!(ok >= 18, "the nodes kept serving on local limits: {ok}/20");
    assert!(
        n1.wait_log("cluster_store_unavailable", 3).await,
        "{}",
        n1.log()
    );
    let alerted = journal(&h, "n1")
        .iter()
        .any(|r| r["kind"] == "alert" && r["reason"] == "cluster_store_unavailable");
    assert!(alerted, "no store-failure alert in node n1's journal");

    // Local limits are 1/N: node n1 gets burst 30 and 5 per second (half
    // of 60 and 10 per second), not the whole partner's.
    for _ in 0..45 {
        n1_ok += u32::from(status(&mut conns[0]).await == 200);
    }
    let share = 30.0 + 5.0 * killed.elapsed().as_secs_f64() + 1.0;
    assert!(
        f64::from(n1_ok) <= share,
        "node n1 admitted {n1_ok} with the store down; its share allows {share:.0} (the whole partner's {:.0})",
        60.0 + 10.0 * killed.elapsed().as_secs_f64()
    );

    redis.restart();
    assert!(
        n1.wait_log("cluster-wide limits resume", 5).await,
        "{}",
        n1.log()
    );
    assert_eq!(status(&mut conns[0]).await, 200);
    let mut r = redis.conn();
    let exists: bool = redis::cmd("EXISTS")
        .arg("gatehouse:bucket:acme:p")
        .query(&mut r)
        .unwrap();
    assert!(
        exists,
        "the cluster bucket is used again after the store came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_deny_mode_answers_503_for_limited_partners_while_the_store_is_down() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (h, _up, acme) = home_with_echo(&[ROUTE]).await;
    h.add_partner("free", &[ROUTE]);
    let free = h.issue("free");
    h.set_partner_limits("acme", &[("requests_per_minute", 600)]);
    h.set_cluster(&redis.url(), Some("deny"));
    let n1 = node(h.path(), "n1");
    assert_eq!(fresh_status(&n1, &h, &acme).await.0, 200);

    redis.kill();
    let (s, body) = fresh_status(&n1, &h, &acme).await;
    assert_eq!(s, 503, "{body}");
    assert!(body.contains("limit_store_unavailable"), "{body}");
    assert_eq!(
        fresh_status(&n1, &h, &free).await.0,
        200,
        "a partner without limits is not the store's business"
    );

    redis.restart();
    let mut back = false;
    for _ in 0..60 {
        if fresh_status(&n1, &h, &acme).await.0 == 200 {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "cluster limits did not resume: {}", n1.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_node_killed_with_sigkill_rejoins_with_every_acknowledged_exchange() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (h, _up, acme) = home_with_echo(&[ROUTE]).await;
    h.set_cluster(&redis.url(), Some("local"));
    let _n1 = node(h.path(), "n1");
    let mut n2 = node(h.path(), "n2");
    let mut conn = open(&n2, &h, &acme).await;
    let mut acknowledged = Vec::new();
    for _ in 0..25 {
        let r = conn.get("/v1/orders").await.unwrap();
        assert_eq!(r.status, 200);
        acknowledged.push(r.headers["x-request-id"].to_str().unwrap().to_string());
    }
    n2.child.kill().unwrap();
    n2.child.wait().unwrap();
    drop(n2);

    let _n2 = node(h.path(), "n2");
    let records = journal(&h, "n2");
    for id in &acknowledged {
        assert!(
            records
                .iter()
                .any(|r| r["request_id"] == id.as_str() && r["node"] == "n2"),
            "acknowledged exchange {id} lost by the SIGKILL"
        );
    }
    let mut seen = false;
    for _ in 0..40 {
        let view = fleet_view(&h);
        let ids: Vec<String> = view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["node"].as_str().unwrap_or("").to_string())
            .collect();
        if ids.contains(&"n1".to_string()) && ids.contains(&"n2".to_string()) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "the restarted node is not in the fleet view");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_spike_over_three_nodes_raises_one_alert() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (h, _up, acme) = home_with_echo(&[ROUTE]).await;
    h.edit_config(|doc| {
        doc["monitor"]["anomaly_warmup_minutes"] = toml_edit::value(0);
        doc["monitor"]["anomaly_floor_per_minute"] = toml_edit::value(30.0);
    });
    h.set_cluster(&redis.url(), Some("local"));
    let ids = ["n1", "n2", "n3"];
    let nodes: Vec<Broker> = ids.iter().map(|id| node(h.path(), id)).collect();
    let mut conns = Vec::new();
    for n in &nodes {
        conns.push(open(n, &h, &acme).await);
    }
    // The spike must fall in one UTC minute.
    let into_minute = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        % 60;
    if into_minute > 45 {
        tokio::time::sleep(Duration::from_secs(61 - into_minute)).await;
    }
    // 16 per node: no node alone crosses the floor of 30; the fleet (48) does.
    for i in 0..48 {
        assert_eq!(status(&mut conns[i % 3]).await, 200);
    }
    let count = || {
        ids.iter()
            .map(|id| {
                journal(&h, id)
                    .iter()
                    .filter(|r| r["kind"] == "alert" && r["reason"] == "rate_spike")
                    .count()
            })
            .sum::<usize>()
    };
    let mut alerts = 0;
    for _ in 0..50 {
        alerts = count();
        if alerts > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(alerts, 1, "one alert for the fleet's spike");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(), 1, "the other nodes raised the same alert again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_over_tls_with_a_password() {
    // The store's own PKI, made here: a CA and a server certificate for 127.0.0.1.
    let pki = server_pki("test redis CA");
    let Some(redis) = RedisServer::start_tls(&pki.cert_pem, &pki.key_pem, "s3cret-pass") else {
        return;
    };

    let (h, _up, acme) = home_with_echo(&[ROUTE]).await;
    h.set_partner_limits("acme", &[("requests_per_minute", 60), ("burst", 2)]);
    std::fs::write(h.path().join("certs/redis-ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(h.path().join("certs/redis.pass"), "s3cret-pass\n").unwrap();
    h.edit_config(|doc| {
        let mut t = toml_edit::Table::new();
        t["redis_url"] = toml_edit::value(format!("rediss://127.0.0.1:{}", redis.port));
        t["redis_ca"] = toml_edit::value("certs/redis-ca.pem");
        t["redis_password_file"] = toml_edit::value("certs/redis.pass");
        t["on_store_failure"] = toml_edit::value("deny");
        doc["cluster"] = toml_edit::Item::Table(t);
    });
    let n1 = node(h.path(), "n1");
    let mut conn = open(&n1, &h, &acme).await;
    // "deny" would answer 503 if the node could not reach the store.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(status(&mut conn).await);
    }
    assert_eq!(got, [200, 200, 429], "{}", n1.log());
    let mut view = serde_json::Value::Null;
    // The counts and the node's heartbeat reach the store separately.
    for _ in 0..100 {
        view = fleet_view(&h);
        if view["partners"]["acme"]["today"] == 3 && view["nodes"][0]["node"] == "n1" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(view["nodes"][0]["node"], "n1", "{view}");
    assert_eq!(view["partners"]["acme"]["today"], 3, "{view}");
    assert!(
        !n1.log().contains("s3cret-pass"),
        "the password reached the log"
    );

    // A wrong password is refused, and says so.
    std::fs::write(h.path().join("certs/redis.pass"), "wrong").unwrap();
    let out = h.run(&["status", "--fleet"]);
    assert!(!out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_on_store_failure_changed_by_reload_denies_on_every_node() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let (h, _up, acme) = home_with_echo(&[ROUTE]).await;
    h.set_partner_limits("acme", &[("requests_per_minute", 600)]);
    h.set_cluster(&redis.url(), Some("local"));
    let nodes: Vec<Broker> = ["n1", "n2", "n3"]
        .iter()
        .map(|id| node(h.path(), id))
        .collect();
    for n in &nodes {
        assert_eq!(fresh_status(n, &h, &acme).await.0, 200);
    }

    // The operator asks for "deny" and, in the same edit, changes a
    // setting only a restart applies; then reloads every node.
    h.edit_config(|doc| {
        doc["cluster"]["on_store_failure"] = toml_edit::value("deny");
        doc["server"]["max_connections"] = toml_edit::value(5000);
    });
    for n in &nodes {
        n.signal("HUP");
    }
    for n in &nodes {
        assert!(
            n.wait_log("applied: cluster.on_store_failure", 10).await,
            "{}",
            n.log()
        );
        assert!(
            n.log()
                .contains("server.max_connections changed: takes effect at restart")
        );
    }
    // Each node reports its own pending restart in the fleet view.
    let mut pending = 0;
    for _ in 0..50 {
        let view = fleet_view(&h);
        pending = view["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|n| n["restart_pending"] == serde_json::json!(["server.max_connections"]))
            .count();
        if pending == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pending, 3, "{}", fleet_view(&h));
    let text = h.ok(&["status", "--fleet"]);
    assert_eq!(
        text.matches("restart pending: server.max_connections")
            .count(),
        3,
        "{text}"
    );

    // The store goes away: the reloaded "deny" is in force on every node.
    redis.kill();
    for n in &nodes {
        let (s, body) = fresh_status(n, &h, &acme).await;
        assert_eq!(s, 503, "{body}\n{}", n.log());
        assert!(body.contains("limit_store_unavailable"), "{body}");
    }
}

/// A beat whose answer is lost (the store stalls past the node's timeout,
/// then runs what it was sent) is sent again, and the fleet's counts add it
/// once: the day's count is the number of calls made, not twice it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_counts_a_beat_sent_again_after_a_lost_answer_once() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (h, _up, acme) = home_with_echo(&[ROUTE]).await;
    h.set_cluster(&redis.url(), Some("local"));
    let n1 = node(h.path(), "n1");
    let mut conn = open(&n1, &h, &acme).await;
    assert_eq!(status(&mut conn).await, 200);
    let mut view = serde_json::Value::Null;
    for _ in 0..50 {
        view = fleet_view(&h);
        if view["partners"]["acme"]["today"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(view["partners"]["acme"]["today"], 1, "{view}");

    // The store stalls for 3 s: the next beat, carrying these five calls,
    // gets no answer within the node's 1 s and is sent again later; the
    // store runs both once it resumes.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .query(&mut redis.conn())
        .unwrap();
    for _ in 0..5 {
        assert_eq!(status(&mut conn).await, 200, "{}", n1.log());
    }
    tokio::time::sleep(Duration::from_millis(3500)).await;
    for _ in 0..50 {
        view = fleet_view(&h);
        if view["partners"]["acme"]["today"] != 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A few more beats: nothing is added twice.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let view = fleet_view(&h);
    assert_eq!(view["partners"]["acme"]["today"], 6, "{view}\n{}", n1.log());
}
