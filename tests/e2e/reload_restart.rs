//! Settings only a restart applies: the listeners' addresses, the admin
//! listener's exposure, joining a fleet and the fleet's store. Changed and
//! reloaded, each is named in a WARN line, the reload's record, `gatehouse
//! status` and the `gatehouse_config_restart_pending` metric while the old
//! value stays in force; after a restart the metric is 0 and the new value
//! is what the broker runs with.

use std::time::Duration;

use crate::common;
use common::broker::{
    Broker, ClientCert, Conn, TestHome, admin_get, admin_request, home_with_echo,
};
use common::pki::server_pki;
use common::redis_server::RedisServer;
use common::reload::reload_leaves_pending;

/// Status of one GET on a fresh connection to `addr`; 0 when refused.
async fn get_at(addr: std::net::SocketAddr, h: &TestHome, cert: &ClientCert) -> u16 {
    match Conn::open(addr, &h.ca_pem(), cert, false).await {
        Err(_) => 0,
        Ok(mut c) => c
            .get("/v1/orders")
            .await
            .map(|r| r.status.as_u16())
            .unwrap_or(0),
    }
}

/// The value of `gatehouse_config_restart_pending` on `admin`'s /metrics.
async fn restart_pending_metric(admin: std::net::SocketAddr) -> String {
    let (_, metrics) = admin_get(admin, "/metrics").await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_config_restart_pending "))
        .unwrap_or("(absent)")
        .to_string()
}

/// SIGTERM, and waits (bounded) for the broker to exit.
async fn stop(mut b: Broker) {
    b.signal("TERM");
    tokio::task::spawn_blocking(move || {
        assert!(b.wait_exit(15).is_some(), "the broker did not stop");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_addresses_and_admin_exposure_take_effect_at_restart() {
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    h.set_server("listen", "127.0.0.1:0");
    h.set_server("admin", "127.0.0.1:0");
    std::fs::write(h.path().join("admin.token"), "the-token\n").unwrap();
    let b = Broker::start_on_configured_addresses(h.path());
    assert_eq!(b.addr.ip().to_string(), "127.0.0.1");
    assert_eq!(get_at(b.addr, &h, &acme).await, 200);

    h.set_server("listen", "127.0.0.2:0");
    h.set_server("admin", "127.0.0.3:0");
    h.set_server("admin_public", true);
    h.set_server("admin_token_file", "admin.token");
    let pending = ["server.admin", "server.admin_public", "server.listen"];
    reload_leaves_pending(&b, &h, &pending).await;
    // The old values stay in force, and every view says a restart is due.
    assert_eq!(get_at(b.addr, &h, &acme).await, 200);
    assert_eq!(
        admin_get(b.admin, "/status").await.0,
        200,
        "the token is asked before the restart"
    );
    assert_eq!(restart_pending_metric(b.admin).await, "1");
    let status = h.ok(&["status"]);
    assert!(
        status.contains("restart pending: server.admin, server.admin_public, server.listen"),
        "{status}"
    );

    stop(b).await;
    let b = Broker::start_on_configured_addresses(h.path());
    assert_eq!(b.addr.ip().to_string(), "127.0.0.2");
    assert_eq!(b.admin.ip().to_string(), "127.0.0.3");
    assert_eq!(get_at(b.addr, &h, &acme).await, 200);
    assert_eq!(restart_pending_metric(b.admin).await, "0");
    // admin_public: the admin listener now asks for the bearer token.
    assert_eq!(admin_get(b.admin, "/status").await.0, 401);
    let (code, _, _) =
        admin_request(b.admin, "/status", &[("authorization", "Bearer the-token")]).await;
    assert_eq!(code, 200);
    assert!(!h.ok(&["status"]).contains("restart pending"));
}

/// The store's keys matching `pattern`.
fn keys(redis: &RedisServer, pattern: &str) -> Vec<String> {
    redis::cmd("KEYS")
        .arg(pattern)
        .query(&mut redis.conn())
        .unwrap_or_default()
}

/// The nodes `gatehouse status --fleet` sees through the store the files name.
fn fleet_nodes(h: &TestHome) -> Vec<String> {
    let out = h.run(&["status", "--fleet", "--json"]);
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        return Vec::new();
    };
    v["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits (bounded) until `f` holds.
async fn eventually(secs: u64, f: impl Fn() -> bool) -> bool {
    for _ in 0..secs * 10 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_a_fleet_and_moving_its_store_take_effect_at_restart() {
    let Some(first) = RedisServer::start() else {
        return;
    };
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    h.set_partner_limits("acme", &[("requests_per_minute", 600)]);
    let b = h.start();
    assert_eq!(get_at(b.addr, &h, &acme).await, 200);

    // [cluster] added: joining a fleet waits for the restart.
    h.set_cluster(&first.url(), None);
    reload_leaves_pending(&b, &h, &["cluster", "cluster.redis_url"]).await;
    assert_eq!(get_at(b.addr, &h, &acme).await, 200);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        keys(&first, "*").is_empty(),
        "a single node wrote to the store"
    );
    assert_eq!(restart_pending_metric(b.admin).await, "1");
    stop(b).await;
    let b = h.start();
    assert_eq!(restart_pending_metric(b.admin).await, "0");
    assert!(
        eventually(10, || !keys(&first, "gatehouse:node:*").is_empty()).await,
        "the restarted node never beat in the store"
    );
    assert_eq!(fleet_nodes(&h), ["gatehouse-1"]);

    // The store moves: TLS with its own CA, an ACL user with a password
    // file, and another key prefix. All of it waits for the restart.
    let pki = server_pki("test redis CA");
    let Some(second) = RedisServer::start_tls_with(
        &pki.cert_pem,
        &pki.key_pem,
        "default-pass",
        &["--user", "fleet", "on", ">fleet-pass", "~*", "&*", "+@all"],
    ) else {
        return;
    };
    std::fs::write(h.path().join("certs/redis-ca.pem"), &pki.ca_pem).unwrap();
    std::fs::write(h.path().join("certs/redis.pass"), "fleet-pass\n").unwrap();
    h.edit_config(|doc| {
        let t = &mut doc["cluster"];
        t["redis_url"] = toml_edit::value(format!("rediss://127.0.0.1:{}", second.port));
        t["redis_ca"] = toml_edit::value("certs/redis-ca.pem");
        t["redis_password_file"] = toml_edit::value("certs/redis.pass");
        t["redis_username"] = toml_edit::value("fleet");
        t["key_prefix"] = toml_edit::value("orders-fleet");
    });
    let pending = [
        "cluster.key_prefix",
        "cluster.redis_ca",
        "cluster.redis_password_file",
        "cluster.redis_url",
        "cluster.redis_username",
    ];
    reload_leaves_pending(&b, &h, &pending).await;
    assert_eq!(restart_pending_metric(b.admin).await, "1");
    let status = h.ok(&["status"]);
    assert!(
        status.contains(&format!("restart pending: {}", pending.join(", "))),
        "{status}"
    );
    // Still on the first store: its heartbeat comes back there once removed.
    let _: () = redis::cmd("FLUSHALL").query(&mut first.conn()).unwrap();
    assert!(
        eventually(10, || !keys(&first, "gatehouse:node:*").is_empty()).await,
        "the node left the first store before its restart"
    );
    assert!(
        fleet_nodes(&h).is_empty(),
        "a node in the new store before the restart"
    );

    stop(b).await;
    let b = h.start();
    assert_eq!(restart_pending_metric(b.admin).await, "0");
    assert_eq!(get_at(b.addr, &h, &acme).await, 200);
    // The new store, through its CA, user, password and prefix, has the node.
    assert!(
        eventually(10, || fleet_nodes(&h) == ["gatehouse-1"]).await,
        "the restarted node is not in the new store: {:?}\n{}",
        fleet_nodes(&h),
        b.log()
    );
    assert!(!h.ok(&["status"]).contains("restart pending"));
}
