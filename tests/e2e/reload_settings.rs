//! A reload never lies: each setting marked live in the inventory is put in
//! force by SIGHUP (the new behaviour is observed, and the reload's admin
//! record names the key), and a setting only a restart applies is reported
//! as such (WARN line, `gatehouse status`, `/status`, the metric, the
//! record, `gatehouse check`) until the restart puts it in force.

use std::time::Duration;

use http::Method;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common;
use common::broker::{
    Broker, ClientCert, Conn, TestHome, admin_get, admin_request, client_tls, home_with_echo,
    stalled_reader, start_slow_upstream, tls_connect,
};
use common::mirror::{mirror_totals, mirror_totals_until, mirrored_gets};
use common::reload::reload_applies;
use common::upstream::{EchoOptions, start_echo_upstream};
use common::webhook::Webhook;

/// Status of one request on a fresh connection; 0 when the connection or
/// the handshake failed.
async fn fresh(b: &Broker, h: &TestHome, cert: &ClientCert, method: Method, body: &[u8]) -> u16 {
    match Conn::open(b.addr, &h.ca_pem(), cert, false).await {
        Err(_) => 0,
        Ok(mut c) => match c.send(method, "/v1/orders", &[], body).await {
            Ok(r) => r.status.as_u16(),
            Err(_) => 0,
        },
    }
}

async fn get(b: &Broker, h: &TestHome, cert: &ClientCert) -> u16 {
    fresh(b, h, cert, Method::GET, b"").await
}

/// The journal writer's counters (`last_seq`, `durable_seq`, ...), asked
/// of the running broker over its admin socket.
fn writer_stats(h: &TestHome) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(h.path().join("data/admin.sock"))
        .expect("the admin socket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"{\"op\":\"status\"}\n").unwrap();
    for line in BufReader::new(s).lines().take(10) {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["type"] == "status" {
            return v["writer"].clone();
        }
    }
    panic!("no status from the admin socket");
}

/// Whether a plain TCP connection that never starts its TLS handshake is
/// closed by the broker within `wait`.
async fn closed_within(b: &Broker, wait: Duration) -> bool {
    let mut tcp = TcpStream::connect(b.addr).await.expect("connect");
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(wait, tcp.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Status of a GET carrying a header of `big`; 0 when the connection broke.
async fn with_header(c: &mut Conn, big: &str) -> u16 {
    c.send(Method::GET, "/v1/orders", &[("x-big", big)], b"")
        .await
        .map(|r| r.status.as_u16())
        .unwrap_or(0)
}

fn set_value(h: &TestHome, table: &str, key: &str, value: impl Into<toml_edit::Value>) {
    let v = value.into();
    h.edit_config(|doc| doc[table][key] = toml_edit::Item::Value(v));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_server_settings_take_effect_on_sighup() {
    let (h, _up, acme) = home_with_echo(&["GET,POST /v1/orders -> orders"]).await;
    let b = h.start();

    // [server] max_body_bytes: a 4 KiB body passes, then is refused (413).
    let body = vec![b'x'; 4096];
    assert_eq!(fresh(&b, &h, &acme, Method::POST, &body).await, 200);
    h.set_server("max_body_bytes", 1024);
    reload_applies(&b, &h, "server.max_body_bytes").await;
    assert_eq!(fresh(&b, &h, &acme, Method::POST, &body).await, 413);

    // [server] max_header_bytes: a 12 KB header passes the default 16 KiB,
    // then is refused at 8 KiB (HTTP/1.1's smallest read buffer).
    let big = "v".repeat(12_000);
    let mut c = Conn::open(b.addr, &h.ca_pem(), &acme, false).await.unwrap();
    assert_eq!(with_header(&mut c, &big).await, 200);
    h.set_server("max_header_bytes", 8192);
    reload_applies(&b, &h, "server.max_header_bytes").await;
    let mut c = Conn::open(b.addr, &h.ca_pem(), &acme, false).await.unwrap();
    assert_ne!(
        with_header(&mut c, &big).await,
        200,
        "a 12 KB header over an 8 KiB limit"
    );

    // [server] idle_timeout: an idle keep-alive connection is closed.
    h.set_server("idle_timeout", "1s");
    reload_applies(&b, &h, "server.idle_timeout").await;
    let mut c = Conn::open(b.addr, &h.ca_pem(), &acme, false).await.unwrap();
    assert_eq!(c.get("/v1/orders").await.unwrap().status, 200);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert!(
        c.get("/v1/orders").await.is_err(),
        "the connection idle for 3 s outlived idle_timeout = 1s"
    );

    // [server] max_pending_handshakes_per_addr: a second unfinished
    // handshake from the same address is closed at once.
    let _first = TcpStream::connect(b.addr).await.unwrap();
    assert!(!closed_within(&b, Duration::from_millis(1500)).await);
    h.set_server("max_pending_handshakes_per_addr", 1);
    reload_applies(&b, &h, "server.max_pending_handshakes_per_addr").await;
    let _first = TcpStream::connect(b.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(closed_within(&b, Duration::from_secs(5)).await);
    drop(_first);
    h.set_server("max_pending_handshakes_per_addr", 256);
    reload_applies(&b, &h, "server.max_pending_handshakes_per_addr").await;

    // [server] handshake_timeout: a connection that never handshakes is
    // cut after 1 s instead of 10 s.
    h.set_server("handshake_timeout", "1s");
    reload_applies(&b, &h, "server.handshake_timeout").await;
    assert!(closed_within(&b, Duration::from_secs(6)).await);

    // Nothing here waits for a restart: the reload said it all applied.
    assert!(!b.log().contains("takes effect at restart"), "{}", b.log());
    let (_, metrics) = admin_get(b.admin, "/metrics").await;
    assert!(
        metrics.contains("gatehouse_config_restart_pending 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_upstream_partner_monitor_journal_and_trust_settings_take_effect_on_sighup() {
    let (h, up1, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let up2 = start_echo_upstream(EchoOptions::default()).await;
    let b = h.start();
    assert_eq!(get(&b, &h, &acme).await, 200);
    assert_eq!(up1.calls(), 1);

    // [upstreams.orders] url: new requests go to the new upstream.
    let ca2 = h.path().join("certs/orders2-ca.pem");
    std::fs::write(&ca2, &up2.ca_pem).unwrap();
    h.edit_config(|doc| {
        doc["upstreams"]["orders"]["url"] = toml_edit::value(up2.url());
        doc["upstreams"]["orders"]["ca"] = toml_edit::value(ca2.display().to_string());
    });
    reload_applies(&b, &h, "upstreams.orders.url").await;
    assert_eq!(get(&b, &h, &acme).await, 200);
    assert_eq!((up1.calls(), up2.calls()), (1, 1));
    let seen = up2.seen();
    assert!(seen[0]["headers"]["x-gatehouse-identity"].is_string());

    // [upstreams.orders] signed_identity = false: no token any more.
    h.edit_config(|doc| doc["upstreams"]["orders"]["signed_identity"] = toml_edit::value(false));
    reload_applies(&b, &h, "upstreams.orders.signed_identity").await;
    assert_eq!(get(&b, &h, &acme).await, 200);
    let seen = up2.seen();
    assert!(
        seen[1]["headers"].get("x-gatehouse-identity").is_none(),
        "{seen:?}"
    );

    // [upstreams.orders] server_name: a name the upstream's certificate
    // does not carry fails verification (502), then passes again.
    h.edit_config(|doc| {
        doc["upstreams"]["orders"]["server_name"] = toml_edit::value("elsewhere.example")
    });
    reload_applies(&b, &h, "upstreams.orders.server_name").await;
    assert_eq!(get(&b, &h, &acme).await, 502);
    h.edit_config(|doc| doc["upstreams"]["orders"]["server_name"] = toml_edit::value("localhost"));
    reload_applies(&b, &h, "upstreams.orders.server_name").await;
    assert_eq!(get(&b, &h, &acme).await, 200);

    // Partner limits: a rate of 1 per minute with a burst of 1.
    h.set_partner_limits("acme", &[("requests_per_minute", 1), ("burst", 1)]);
    reload_applies(&b, &h, "partners/acme.toml limits.requests_per_minute").await;
    let statuses = [get(&b, &h, &acme).await, get(&b, &h, &acme).await];
    assert!(statuses.contains(&429), "{statuses:?}");
    h.set_partner_limits("acme", &[]);
    reload_applies(&b, &h, "partners/acme.toml limits.requests_per_minute").await;
    assert_eq!(get(&b, &h, &acme).await, 200);

    // [monitor] expiry_warning_days: a 90-day certificate becomes "expiring".
    let expiring =
        |doc: &serde_json::Value| doc["partners"][0]["certificates"][0]["expiring"].clone();
    let (_, s) = admin_get(b.admin, "/status").await;
    assert_eq!(expiring(&serde_json::from_str(&s).unwrap()), false);
    set_value(&h, "monitor", "expiry_warning_days", 3650);
    reload_applies(&b, &h, "monitor.expiry_warning_days").await;
    let (_, s) = admin_get(b.admin, "/status").await;
    assert_eq!(expiring(&serde_json::from_str(&s).unwrap()), true, "{s}");

    // [journal] checkpoint_every = 1: every record gets its checkpoint.
    let checkpoints = || {
        h.ok(&["log", "export", "--format", "jsonl"])
            .lines()
            .filter(|l| l.contains("\"type\":\"checkpoint\""))
            .count()
    };
    let before = checkpoints();
    set_value(&h, "journal", "checkpoint_every", 1);
    reload_applies(&b, &h, "journal.checkpoint_every").await;
    for _ in 0..3 {
        assert_eq!(get(&b, &h, &acme).await, 200);
    }
    let mut after = checkpoints();
    for _ in 0..50 {
        if after >= before + 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        after = checkpoints();
    }
    assert!(after >= before + 3, "checkpoints {before} -> {after}");

    // [journal] min_free: a margin larger than any disk fails the journal
    // closed (503, nothing relayed unrecorded); "0" turns it off again.
    // (The first reload's own record cannot be written: the log says it.)
    set_value(&h, "journal", "min_free", "1000000TiB");
    b.signal("HUP");
    assert!(
        b.wait_log("applied: journal.min_free", 10).await,
        "{}",
        b.log()
    );
    assert_eq!(get(&b, &h, &acme).await, 503);
    set_value(&h, "journal", "min_free", "0");
    b.signal("HUP");
    let mut status = 0;
    for _ in 0..100 {
        status = get(&b, &h, &acme).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "the journal did not resume: {}", b.log());

    // trust_domain: certificates of the old domain no longer identify a partner.
    h.edit_config(|doc| doc["trust_domain"] = toml_edit::value("elsewhere.example"));
    reload_applies(&b, &h, "trust_domain").await;
    assert_ne!(get(&b, &h, &acme).await, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_setting_waits_and_says_so_until_the_restart() {
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let mut b = h.start();
    assert_eq!(get(&b, &h, &acme).await, 200);
    let check = h.ok(&["check"]);
    assert!(
        check.contains("every setting in the files is in force"),
        "{check}"
    );
    // Strict durability: an answered exchange is on disk.
    let w = writer_stats(&h);
    assert_eq!(w["durable_seq"], w["last_seq"], "{w}");

    h.set_server("node_id", "node-b");
    h.set_server("max_connections", 2);
    set_value(&h, "journal", "durability", "relaxed");
    // Applied at once, but it only matters under relaxed durability.
    set_value(&h, "journal", "flush_interval", "1h");
    // `gatehouse check` asks the running broker and names both.
    let check = h.ok(&["check"]);
    assert!(
        check.contains(
            "takes effect at restart: journal.durability, server.max_connections, server.node_id"
        ),
        "{check}"
    );
    b.signal("HUP");
    assert!(
        b.wait_log("server.node_id changed: takes effect at restart", 10)
            .await,
        "{}",
        b.log()
    );
    assert!(
        b.log()
            .contains("server.max_connections changed: takes effect at restart")
    );
    assert!(
        b.log()
            .contains("configuration reloaded, but not all of it is in force")
    );
    let rec = h
        .wait_journal(10, |v| {
            v["reason"] == "config_reloaded"
                && v["detail"].as_str().is_some_and(|d| {
                    d.contains("restart pending (takes effect at restart): journal.durability, server.max_connections, server.node_id")
                })
        })
        .await
        .unwrap_or_else(|| panic!("no reload record lists the pending keys\n{}", b.log()));
    assert_eq!(rec["kind"], "admin");
    // The old value is still in force, and every view says a restart is pending.
    assert_eq!(rec["node"], "gatehouse-1");
    let status = h.ok(&["status"]);
    assert!(
        status.contains(
            "restart pending: journal.durability, server.max_connections, server.node_id"
        ),
        "{status}"
    );
    let (_, s) = admin_get(b.admin, "/status").await;
    let doc: serde_json::Value = serde_json::from_str(&s).unwrap();
    assert_eq!(
        doc["restart_pending"],
        serde_json::json!([
            "journal.durability",
            "server.max_connections",
            "server.node_id"
        ])
    );
    let (_, metrics) = admin_get(b.admin, "/metrics").await;
    assert!(
        metrics.contains("gatehouse_config_restart_pending 1"),
        "{metrics}"
    );
    // The console's overview carries the same list (shown as a badge).
    let (_, overview) = admin_get(b.admin, "/api/overview").await;
    let overview: serde_json::Value = serde_json::from_str(&overview).unwrap();
    assert_eq!(overview["restart_pending"], doc["restart_pending"]);

    // A restart puts the new value in force and clears the pending state.
    b.signal("TERM");
    let b = tokio::task::spawn_blocking(move || {
        assert!(b.wait_exit(15).is_some(), "the broker did not stop");
        b
    })
    .await
    .unwrap();
    drop(b);
    let b = h.start();
    assert_eq!(get(&b, &h, &acme).await, 200);
    let (_, metrics) = admin_get(b.admin, "/metrics").await;
    assert!(
        metrics.contains("gatehouse_config_restart_pending 0"),
        "{metrics}"
    );
    assert!(!h.ok(&["status"]).contains("restart pending"));
    let last = h
        .wait_journal(10, |v| v["kind"] == "exchange" && v["node"] == "node-b")
        .await;
    assert!(
        last.is_some(),
        "no exchange recorded by node-b after the restart"
    );
    // journal.durability = relaxed: answered exchanges wait for the next
    // flush (every hour, as flush_interval says).
    assert_eq!(get(&b, &h, &acme).await, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let w = writer_stats(&h);
    assert!(
        w["durable_seq"].as_u64() < w["last_seq"].as_u64(),
        "relaxed durability flushed at once: {w}"
    );
    // [journal] flush_interval, live: 50 ms flushes what waits.
    set_value(&h, "journal", "flush_interval", "50ms");
    reload_applies(&b, &h, "journal.flush_interval").await;
    let mut w = writer_stats(&h);
    for _ in 0..50 {
        if w["durable_seq"] == w["last_seq"] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        w = writer_stats(&h);
    }
    assert_eq!(w["durable_seq"], w["last_seq"], "not flushed: {w}");
    // server.max_connections = 2: with two connections open, a third is
    // not served until one closes.
    let mut one = Conn::open(b.addr, &h.ca_pem(), &acme, false).await.unwrap();
    let mut two = Conn::open(b.addr, &h.ca_pem(), &acme, false).await.unwrap();
    assert_eq!(one.get("/v1/orders").await.unwrap().status, 200);
    assert_eq!(two.get("/v1/orders").await.unwrap().status, 200);
    let third = tokio::time::timeout(
        Duration::from_secs(2),
        Conn::open(b.addr, &h.ca_pem(), &acme, false),
    )
    .await;
    assert!(
        !matches!(third, Ok(Ok(_))),
        "a third connection was served over max_connections = 2"
    );
    drop((one, two));
    let check = h.ok(&["check"]);
    assert!(
        check.contains("every setting in the files is in force"),
        "{check}"
    );
}

/// Whether a TLS connection that sends the start of a request head and
/// then nothing is closed by the broker within `wait`.
async fn stalled_head_closed_within(
    b: &Broker,
    h: &TestHome,
    cert: &ClientCert,
    wait: Duration,
) -> bool {
    let mut tls = tls_connect(b.addr, client_tls(&h.ca_pem(), Some(cert), &[b"http/1.1"]))
        .await
        .expect("connect");
    tls.write_all(b"GET /v1/orders HTTP/1.1\r\nhost: localhost\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(wait, tls.read_to_end(&mut out))
        .await
        .is_ok()
}

/// In which order a slow request (`/v1/slow`, sent first) and a fast one
/// (`/v1/orders`, sent 200 ms later) on one HTTP/2 connection are answered.
async fn answer_order_on_one_h2_connection(
    b: &Broker,
    h: &TestHome,
    cert: &ClientCert,
) -> Vec<&'static str> {
    use http_body_util::BodyExt;
    let Conn::H2(send) = Conn::open(b.addr, &h.ca_pem(), cert, true).await.unwrap() else {
        panic!("the broker did not negotiate HTTP/2");
    };
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let call = |path: &'static str| {
        let mut send = send.clone();
        let order = order.clone();
        tokio::spawn(async move {
            let req = http::Request::get(format!("https://localhost{path}"))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            send.ready().await.unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            resp.into_body().collect().await.unwrap();
            let name = if path == "/v1/slow" { "slow" } else { "fast" };
            order.lock().unwrap().push(name);
        })
    };
    let slow = call("/v1/slow");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let fast = call("/v1/orders");
    slow.await.unwrap();
    fast.await.unwrap();
    order.lock().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_timeouts_new_upstreams_and_ca_defaults_take_effect_on_sighup() {
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let slow = start_slow_upstream(Duration::from_millis(1500), "slow answer").await;
    h.add_upstream("slow", &format!("http://{slow}"), None);
    let p = h.path().join("partners/acme.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        format!(
            "{text}\n[[routes]]\nmethods = [\"GET\"]\npath = \"/v1/slow\"\nupstream = \"slow\"\n"
        ),
    )
    .unwrap();
    let b = h.start();
    let slow_status = || async {
        match Conn::open(b.addr, &h.ca_pem(), &acme, false).await {
            Err(_) => 0,
            Ok(mut c) => c
                .get("/v1/slow")
                .await
                .map(|r| r.status.as_u16())
                .unwrap_or(0),
        }
    };

    // [server] h2_max_concurrent_streams: with 1, a fast request sent
    // beside a slow one on the same HTTP/2 connection waits for it.
    assert_eq!(
        answer_order_on_one_h2_connection(&b, &h, &acme).await,
        ["fast", "slow"]
    );
    h.set_server("h2_max_concurrent_streams", 1);
    reload_applies(&b, &h, "server.h2_max_concurrent_streams").await;
    assert_eq!(
        answer_order_on_one_h2_connection(&b, &h, &acme).await,
        ["slow", "fast"]
    );

    // [upstreams.slow] response_timeout: 3 s lets a 1.5 s answer through, 1 s does not.
    assert_eq!(slow_status().await, 200);
    h.edit_config(|doc| doc["upstreams"]["slow"]["response_timeout"] = toml_edit::value("1s"));
    reload_applies(&b, &h, "upstreams.slow.response_timeout").await;
    assert_eq!(slow_status().await, 504);

    // [server] header_timeout: a request head that stalls is cut.
    assert!(!stalled_head_closed_within(&b, &h, &acme, Duration::from_millis(2500)).await);
    h.set_server("header_timeout", "1s");
    reload_applies(&b, &h, "server.header_timeout").await;
    assert!(stalled_head_closed_within(&b, &h, &acme, Duration::from_secs(8)).await);

    // A new upstream and a route to it, in one change of both files.
    let billing = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("billing", &billing);
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        format!("{text}\n[[routes]]\nmethods = [\"GET\"]\npath = \"/v1/billing\"\nupstream = \"billing\"\n"),
    )
    .unwrap();
    let detail = reload_applies(&b, &h, "upstreams.billing.url").await;
    for key in ["upstream", "methods", "path"] {
        assert!(
            detail.contains(&format!("partners/acme.toml routes[2].{key}")),
            "{detail}"
        );
    }
    let mut c = Conn::open(b.addr, &h.ca_pem(), &acme, false).await.unwrap();
    assert_eq!(c.get("/v1/billing").await.unwrap().status, 200);
    assert_eq!(billing.calls(), 1);

    // [ca] default_days: the next certificate issued takes it.
    set_value(&h, "ca", "default_days", 5);
    reload_applies(&b, &h, "ca.default_days").await;
    h.add_partner("beta", &["GET /v1/orders -> orders"]);
    let beta = h.issue("beta");
    let der = rustls::pki_types::CertificateDer::from_pem_slice(beta.cert_pem.as_bytes()).unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    let days = (x.validity().not_after.timestamp() - x.validity().not_before.timestamp()) / 86_400;
    assert!((4..=6).contains(&days), "{days} days");

    // [server] drain_timeout: a stop waits 1 s for the request in flight
    // (the upstream takes 1.5 s), so it is cut instead of answered.
    h.set_server("drain_timeout", "1s");
    h.edit_config(|doc| doc["upstreams"]["slow"]["response_timeout"] = toml_edit::value("5s"));
    reload_applies(&b, &h, "server.drain_timeout").await;
    let mut c = Conn::open(b.addr, &h.ca_pem(), &acme, false).await.unwrap();
    let in_flight = tokio::spawn(async move { c.get("/v1/slow").await.map(|r| r.status.as_u16()) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.signal("TERM");
    let answered = in_flight.await.unwrap();
    assert!(
        !matches!(answered, Ok(200)),
        "the request outlived drain_timeout = 1s: {answered:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_file_is_read_from_the_live_configuration() {
    let (h, _up, _acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    std::fs::write(h.path().join("token-a"), "first-token\n").unwrap();
    std::fs::write(h.path().join("token-b"), "second-token\n").unwrap();
    h.set_server("admin_public", true);
    h.set_server("admin_token_file", "token-a");
    let b = h.start();
    let status_with = |token: &'static str| async move {
        let auth = format!("Bearer {token}");
        admin_request(b.admin, "/status", &[("authorization", &auth)])
            .await
            .0
    };
    assert_eq!(status_with("first-token").await, 200);
    assert_eq!(status_with("second-token").await, 401);
    h.set_server("admin_token_file", "token-b");
    reload_applies(&b, &h, "server.admin_token_file").await;
    assert_eq!(status_with("second-token").await, 200);
    assert_eq!(status_with("first-token").await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_finishes_on_the_upstream_it_started_with() {
    let old = start_slow_upstream(Duration::from_millis(1500), "old upstream").await;
    let h = TestHome::new();
    h.add_upstream("orders", &format!("http://{old}"), None);
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    let acme = h.issue("acme");
    let new = start_echo_upstream(EchoOptions::default()).await;
    let b = h.start();

    let mut c = Conn::open(b.addr, &h.ca_pem(), &acme, false).await.unwrap();
    let in_flight =
        tokio::spawn(async move { c.get("/v1/orders").await.map(|r| (r.status, r.body)) });
    tokio::time::sleep(Duration::from_millis(300)).await;
    h.add_echo_upstream("orders", &new);
    reload_applies(&b, &h, "upstreams.orders.url").await;
    // New requests go to the new upstream at once...
    assert_eq!(get(&b, &h, &acme).await, 200);
    assert_eq!(new.calls(), 1);
    // ...while the one in flight is answered by the old one.
    let (status, body) = in_flight.await.unwrap().expect("answered");
    assert_eq!(status, 200);
    assert!(body.contains("old upstream"), "{body}");
}

/// Checkpoint lines in the journal's export.
fn checkpoints(h: &TestHome) -> usize {
    h.ok(&["log", "export", "--format", "jsonl"])
        .lines()
        .filter(|l| l.contains("\"type\":\"checkpoint\""))
        .count()
}

/// Sends a GET every 250 ms for `secs` seconds.
async fn trickle(b: &Broker, h: &TestHome, cert: &ClientCert, secs: u64) {
    for _ in 0..secs * 4 {
        assert_eq!(get(b, h, cert).await, 200);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_journal_settings_take_effect_on_sighup() {
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let b = h.start();

    // [journal] handshake_refusals_per_interval and
    // handshake_aggregate_interval: past 2 refusals from one address, the
    // rest fold into one aggregate record written when the 1 s interval
    // ends (by default, 10 per minute are written one by one).
    h.edit_config(|d| {
        d["journal"]["handshake_refusals_per_interval"] = toml_edit::value(2);
        d["journal"]["handshake_aggregate_interval"] = toml_edit::value("1s");
    });
    let detail = reload_applies(&b, &h, "journal.handshake_refusals_per_interval").await;
    assert!(
        detail.contains("journal.handshake_aggregate_interval"),
        "{detail}"
    );
    let (rogue, rogue_pem) = common::broker::foreign_ca();
    let stranger = common::broker::mint(&rogue, &rogue_pem, |_| {});
    for _ in 0..6 {
        let refused = tls_connect(
            b.addr,
            client_tls(&h.ca_pem(), Some(&stranger), &[b"http/1.1"]),
        )
        .await;
        assert!(
            refused.is_err(),
            "a handshake with a foreign certificate passed"
        );
    }
    let aggregate = h
        .wait_journal(10, |v| v["kind"] == "handshake_aggregate")
        .await
        .unwrap_or_else(|| panic!("no aggregate record\n{:#?}", h.journal()));
    assert!(
        aggregate["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("4 refused handshakes from 127.0.0.1")),
        "{aggregate}"
    );
    let single = h
        .journal()
        .into_iter()
        .filter(|v| v["kind"] == "handshake")
        .count();
    assert_eq!(single, 2, "refused handshakes recorded one by one");

    // [journal] checkpoint_interval: records trickling in get a signed
    // checkpoint every second (not every minute, the default).
    let before = checkpoints(&h);
    trickle(&b, &h, &acme, 2).await;
    assert_eq!(checkpoints(&h), before, "a checkpoint before the interval");
    set_value(&h, "journal", "checkpoint_interval", "1s");
    reload_applies(&b, &h, "journal.checkpoint_interval").await;
    let before = checkpoints(&h);
    trickle(&b, &h, &acme, 4).await;
    let after = checkpoints(&h);
    assert!(after >= before + 2, "checkpoints {before} -> {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_upstream_leg_settings_take_effect_on_sighup() {
    let (h, _up) = common::broker::home_with_mtls_orders().await;
    let acme = h.issue("acme");
    // An upstream that accepts TCP and never answers the TLS handshake.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..50 {
            let Ok((s, _)) = hang.accept().await else {
                return;
            };
            held.push(s);
        }
    });
    let (endless, _closed_after, writing) = common::broker::start_endless_upstream().await;
    h.add_upstream("hang", &format!("https://{hang_addr}"), Some(&h.ca_pem()));
    h.add_upstream("big", &format!("http://{endless}"), None);
    h.edit_config(|doc| {
        doc["upstreams"]["hang"]["connect_timeout"] = toml_edit::value("10s");
        doc["upstreams"]["hang"]["response_timeout"] = toml_edit::value("30s");
    });
    let p = h.path().join("partners/acme.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        format!(
            "{text}\n[[routes]]\nmethods = [\"GET\"]\npath = \"/v1/hang\"\nupstream = \"hang\"\n\n[[routes]]\nmethods = [\"GET\"]\npath = \"/big\"\nupstream = \"big\"\n"
        ),
    )
    .unwrap();
    h.set_server("idle_timeout", "2s");
    let b = h.start();
    assert_eq!(get(&b, &h, &acme).await, 200);

    // upstreams.orders client_cert / client_key: a certificate the
    // upstream does not trust is refused there; back to the default
    // (the broker's own certificate), it passes again.
    let (rogue, rogue_pem) = common::broker::foreign_ca();
    let other = common::broker::mint(&rogue, &rogue_pem, |_| {});
    std::fs::write(h.path().join("certs/other-client.pem"), &other.cert_pem).unwrap();
    let key = h.path().join("certs/other-client.key");
    std::fs::write(&key, &other.key_pem).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    h.edit_config(|doc| {
        doc["upstreams"]["orders"]["client_cert"] = toml_edit::value("certs/other-client.pem");
        doc["upstreams"]["orders"]["client_key"] = toml_edit::value("certs/other-client.key");
    });
    let detail = reload_applies(&b, &h, "upstreams.orders.client_cert").await;
    assert!(detail.contains("upstreams.orders.client_key"), "{detail}");
    // Refused in the handshake (503, no endpoint reached) or at the first
    // read after it (TLS 1.3 judges the client last: 502).
    let refused = get(&b, &h, &acme).await;
    assert!(matches!(refused, 502 | 503), "{refused}");
    h.edit_config(|doc| {
        let t = doc["upstreams"]["orders"].as_table_mut().unwrap();
        t.remove("client_cert");
        t.remove("client_key");
    });
    reload_applies(&b, &h, "upstreams.orders.client_key").await;
    assert_eq!(get(&b, &h, &acme).await, 200);

    // upstreams.hang connect_timeout: 10 s keeps the partner waiting past
    // 3 s; 500 ms answers it (with an error) well within that.
    let hang_status = || async {
        let mut c = Conn::open(b.addr, &h.ca_pem(), &acme, false).await.unwrap();
        tokio::time::timeout(Duration::from_secs(3), c.get("/v1/hang"))
            .await
            .ok()
            .map(|r| r.map(|r| r.status.as_u16()).unwrap_or(0))
    };
    assert_eq!(hang_status().await, None, "answered before connect_timeout");
    h.edit_config(|doc| doc["upstreams"]["hang"]["connect_timeout"] = toml_edit::value("500ms"));
    reload_applies(&b, &h, "upstreams.hang.connect_timeout").await;
    let status = hang_status().await;
    assert!(
        status.is_some_and(|s| s >= 500),
        "no error within 3 s of a 500 ms connect_timeout: {status:?}"
    );

    // [server] write_timeout: a partner that stops reading a huge response
    // is let go (and the upstream connection with it) after 1 s, not the
    // default 30 s.
    h.set_server("write_timeout", "1s");
    reload_applies(&b, &h, "server.write_timeout").await;
    // Kept open (unread) to the end of the test.
    let _tls = stalled_reader(b.addr, &h.ca_pem(), &acme, "/big").await;
    assert!(writing.load(std::sync::atomic::Ordering::SeqCst));
    let mut released = false;
    for _ in 0..150 {
        if !writing.load(std::sync::atomic::Ordering::SeqCst) {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        released,
        "the upstream connection was still pinned 15 s after the partner stopped reading"
    );
    let rec = h
        .wait_journal(5, |r| r["path"] == "/big" && r["reason"] == "incomplete")
        .await;
    assert!(rec.is_some(), "{:?}", h.journal());
}

/// (this update, next update) of the first CRL in `certs/crl.pem`.
fn crl_dates(h: &TestHome) -> (i64, i64) {
    let der = rustls::pki_types::CertificateRevocationListDer::from_pem_file(
        h.path().join("certs/crl.pem"),
    )
    .unwrap();
    let (_, crl) =
        <x509_parser::revocation_list::CertificateRevocationList as x509_parser::prelude::FromDer<_>>::from_der(der.as_ref()).unwrap();
    let next = crl.next_update().expect("next update").timestamp();
    (crl.last_update().timestamp(), next)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_ca_settings_take_effect_on_sighup() {
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let b = h.start();

    // [ca] overlap: a certificate renewed now stays valid beside its
    // successor for 2 s (not the default day), then is refused.
    set_value(&h, "ca", "overlap", "2s");
    reload_applies(&b, &h, "ca.overlap").await;
    let out = h.path().join("renewed");
    h.ok(&["cert", "renew", "acme", "--out", out.to_str().unwrap()]);
    let new = h.read_client(&out, "acme");
    // The broker takes in the new certificate within a second or so.
    let mut new_status = 0;
    for _ in 0..50 {
        new_status = get(&b, &h, &new).await;
        if new_status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(new_status, 200);
    let mut old_status = 200;
    for _ in 0..60 {
        old_status = get(&b, &h, &acme).await;
        if old_status != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(
        old_status, 200,
        "the old certificate outlived a 2 s overlap"
    );
    assert_eq!(get(&b, &h, &new).await, 200);

    // [ca] crl_validity: the next CRL signed is valid for 2 days (the
    // default is 7), and the broker enforces it.
    let (this, next) = crl_dates(&h);
    assert!((next - this - 7 * 86_400).abs() < 600, "{this} {next}");
    set_value(&h, "ca", "crl_validity", "2d");
    reload_applies(&b, &h, "ca.crl_validity").await;
    h.ok(&["cert", "revoke", &new.serial]);
    let (this, next) = crl_dates(&h);
    assert!((next - this - 2 * 86_400).abs() < 600, "{this} {next}");
    let mut status = 200;
    for _ in 0..30 {
        status = get(&b, &h, &new).await;
        if status != 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_ne!(status, 200, "the revoked certificate still passes");
}

/// Seconds into the current UTC minute.
fn second_of_minute() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() % 60)
}

/// The current UTC minute (since the epoch).
fn minute_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 60)
}

/// Waits, when the current UTC minute ends within `margin` seconds, until
/// the next one has begun: the anomaly detector counts per minute, and a
/// phase must not straddle two.
async fn clear_of_minute_end(margin: u64) {
    let s = second_of_minute();
    if s + margin >= 60 {
        tokio::time::sleep(Duration::from_millis((60 - s) * 1000 + 200)).await;
    }
}

/// `n` GETs on one connection; every one must pass.
async fn burst(b: &Broker, h: &TestHome, cert: &ClientCert, n: usize) {
    let mut c = Conn::open(b.addr, &h.ca_pem(), cert, false).await.unwrap();
    for _ in 0..n {
        assert_eq!(c.get("/v1/orders").await.unwrap().status, 200);
    }
}

/// Whether an alert record for `partner` is in the journal within `secs`.
async fn alerted(h: &TestHome, partner: &str, secs: u64) -> bool {
    h.wait_journal(secs, |v| v["kind"] == "alert" && v["partner"] == partner)
        .await
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_monitor_thresholds_and_webhook_take_effect_on_sighup() {
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let hook_a = Webhook::start().await;
    let hook_b = Webhook::start().await;
    let hook_c = Webhook::start_tls().await;
    h.edit_config(|d| {
        d["monitor"]["anomaly_warmup_minutes"] = toml_edit::value(0);
        d["monitor"]["anomaly_floor_per_minute"] = toml_edit::value(10_000.0);
        d["monitor"]["webhook_url"] = toml_edit::value(hook_a.url());
    });
    let mut certs = std::collections::HashMap::new();
    for id in ["beta", "gamma", "zeta", "eps", "delta"] {
        h.add_partner(id, &["GET /v1/orders -> orders"]);
        certs.insert(id, h.issue(id));
    }
    let b = h.start();
    // delta's baseline: 20 calls in this minute (under any floor so far).
    let seeded = minute_now();
    burst(&b, &h, &certs["delta"], 20).await;

    // [monitor] anomaly_floor_per_minute: 30 calls a minute are no spike
    // under a floor of 10000, and are one over a floor of 20.
    clear_of_minute_end(10).await;
    burst(&b, &h, &acme, 30).await;
    assert!(!alerted(&h, "acme", 1).await, "an alert under the floor");
    set_value(&h, "monitor", "anomaly_floor_per_minute", 20.0);
    reload_applies(&b, &h, "monitor.anomaly_floor_per_minute").await;
    burst(&b, &h, &acme, 1).await;
    assert!(alerted(&h, "acme", 5).await, "no alert over the new floor");
    let got = hook_a.wait_for(1, 5).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("\"acme\""), "{got:?}");

    // [monitor] webhook_url: the next alert goes to the new receiver only.
    h.edit_config(|d| d["monitor"]["webhook_url"] = toml_edit::value(hook_b.url()));
    reload_applies(&b, &h, "monitor.webhook_url").await;
    clear_of_minute_end(8).await;
    burst(&b, &h, &certs["beta"], 25).await;
    assert!(alerted(&h, "beta", 5).await);
    let got = hook_b.wait_for(1, 5).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("\"beta\""), "{got:?}");
    assert_eq!(hook_a.received().len(), 1, "the old receiver got more");

    // [monitor] webhook_ca: an https receiver whose certificate the
    // configured CA did not sign gets nothing; with its CA, it gets the next.
    std::fs::write(
        h.path().join("certs/hook-ca.pem"),
        hook_c.ca_pem.as_deref().unwrap(),
    )
    .unwrap();
    h.edit_config(|d| {
        d["monitor"]["webhook_url"] = toml_edit::value(hook_c.url());
        d["monitor"]["webhook_ca"] = toml_edit::value("certs/ca.pem");
    });
    reload_applies(&b, &h, "monitor.webhook_ca").await;
    clear_of_minute_end(8).await;
    burst(&b, &h, &certs["gamma"], 25).await;
    assert!(alerted(&h, "gamma", 5).await);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        hook_c.received().is_empty(),
        "delivered to an unverified receiver"
    );
    h.edit_config(|d| d["monitor"]["webhook_ca"] = toml_edit::value("certs/hook-ca.pem"));
    reload_applies(&b, &h, "monitor.webhook_ca").await;
    clear_of_minute_end(8).await;
    burst(&b, &h, &certs["zeta"], 25).await;
    assert!(alerted(&h, "zeta", 5).await);
    let got = hook_c.wait_for(1, 5).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("\"zeta\""), "{got:?}");

    // [monitor] anomaly_warmup_minutes: with an hour of history required,
    // eps's 25 calls raise nothing; with none, its next call does.
    set_value(&h, "monitor", "anomaly_warmup_minutes", 60);
    reload_applies(&b, &h, "monitor.anomaly_warmup_minutes").await;
    clear_of_minute_end(8).await;
    burst(&b, &h, &certs["eps"], 25).await;
    assert!(!alerted(&h, "eps", 1).await, "an alert before the warm-up");
    set_value(&h, "monitor", "anomaly_warmup_minutes", 0);
    reload_applies(&b, &h, "monitor.anomaly_warmup_minutes").await;
    burst(&b, &h, &certs["eps"], 1).await;
    assert!(alerted(&h, "eps", 5).await, "no alert after the warm-up");

    // [monitor] anomaly_factor: delta's baseline is 20 (or less, if more
    // than one minute passed) calls a minute; 40 calls now are under 10×
    // that, and over 1.5× that (and over the floor of 20).
    for _ in 0..70 {
        if minute_now() > seeded {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    clear_of_minute_end(10).await;
    burst(&b, &h, &certs["delta"], 40).await;
    assert!(
        !alerted(&h, "delta", 1).await,
        "an alert under 10x the baseline"
    );
    set_value(&h, "monitor", "anomaly_factor", 1.5);
    reload_applies(&b, &h, "monitor.anomaly_factor").await;
    burst(&b, &h, &certs["delta"], 1).await;
    assert!(
        alerted(&h, "delta", 5).await,
        "no alert over 1.5x the baseline"
    );
}

/// The acme partner file the partner test edits: `head` (top-level keys and
/// tables), then its routes (`orders` GET/POST, `slow` GET, `transfers`
/// POST), each route with the extra lines given.
struct AcmeFile<'a> {
    head: &'a str,
    orders: &'a str,
    slow: &'a str,
    transfers: &'a str,
    value_limits: &'a str,
}

const ACME: AcmeFile<'static> = AcmeFile {
    head: "name = \"Acme Logistics\"\nstatus = \"active\"\n",
    orders: "",
    slow: "",
    transfers: "value = { amount = \"/amount\", currency = \"/currency\" }\n",
    value_limits: "EUR = { per_call = \"100.00\", per_day = \"1000.00\" }\n",
};

impl AcmeFile<'_> {
    fn write(&self, h: &TestHome) {
        let AcmeFile {
            head,
            orders,
            slow,
            transfers,
            value_limits,
        } = self;
        std::fs::write(
            h.path().join("partners/acme.toml"),
            format!(
                "id = \"acme\"\n{head}\n\
                 [value_limits]\n{value_limits}\n\
                 [[routes]]\nmethods = [\"GET\", \"POST\"]\npath = \"/v1/orders\"\nupstream = \"orders\"\n{orders}\n\
                 [[routes]]\nmethods = [\"GET\"]\npath = \"/v1/slow\"\nupstream = \"slow\"\n{slow}\n\
                 [[routes]]\nmethods = [\"POST\"]\npath = \"/v1/transfers\"\nupstream = \"orders\"\n{transfers}\n"
            ),
        )
        .unwrap();
    }
}

/// Statuses of two GETs of `path` sent at once on two connections.
async fn two_at_once(b: &Broker, h: &TestHome, cert: &ClientCert, path: &'static str) -> Vec<u16> {
    let call = || {
        let (addr, ca, cert) = (b.addr, h.ca_pem(), cert.clone());
        tokio::spawn(async move {
            let mut c = Conn::open(addr, &ca, &cert, false).await.unwrap();
            c.get(path).await.map(|r| r.status.as_u16()).unwrap_or(0)
        })
    };
    let (one, two) = (call(), call());
    vec![one.await.unwrap(), two.await.unwrap()]
}

/// Status and `error` of one payment on a fresh connection.
async fn pay(b: &Broker, h: &TestHome, cert: &ClientCert, body: &str) -> (u16, String) {
    let mut c = Conn::open(b.addr, &h.ca_pem(), cert, false).await.unwrap();
    let r = c
        .send(
            Method::POST,
            "/v1/transfers",
            &[("content-type", "application/json")],
            body.as_bytes(),
        )
        .await
        .unwrap();
    let error = r.json()["error"].as_str().unwrap_or_default().to_string();
    (r.status.as_u16(), error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_partner_settings_take_effect_on_sighup() {
    let (h, up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let slow = start_slow_upstream(Duration::from_millis(1000), "slow answer").await;
    h.add_upstream("slow", &format!("http://{slow}"), None);
    h.edit_config(|d| {
        d["monitor"]["anomaly_warmup_minutes"] = toml_edit::value(0);
        d["monitor"]["anomaly_floor_per_minute"] = toml_edit::value(20.0);
    });
    ACME.write(&h);
    let b = h.start();
    let key = |k: &str| format!("partners/acme.toml {k}");
    let eur = |amount: &str| format!(r#"{{"amount": "{amount}", "currency": "EUR"}}"#);
    assert_eq!(get(&b, &h, &acme).await, 200);

    // name: the status view shows the new display name.
    AcmeFile {
        head: "name = \"Acme Freight\"\nstatus = \"active\"\n",
        ..ACME
    }
    .write(&h);
    reload_applies(&b, &h, &key("name")).await;
    let (_, s) = admin_get(b.admin, "/status").await;
    assert!(s.contains("\"name\":\"Acme Freight\""), "{s}");

    // status: suspended is refused, active again passes.
    AcmeFile {
        head: "name = \"Acme Freight\"\nstatus = \"suspended\"\n",
        ..ACME
    }
    .write(&h);
    reload_applies(&b, &h, &key("status")).await;
    assert_ne!(get(&b, &h, &acme).await, 200);
    ACME.write(&h);
    reload_applies(&b, &h, &key("status")).await;
    assert_eq!(get(&b, &h, &acme).await, 200);

    // limits.requests_per_day: a quota of 2 refuses the third call today.
    AcmeFile {
        head: "[limits]\nrequests_per_day = 2\n",
        ..ACME
    }
    .write(&h);
    reload_applies(&b, &h, &key("limits.requests_per_day")).await;
    let three = [
        get(&b, &h, &acme).await,
        get(&b, &h, &acme).await,
        get(&b, &h, &acme).await,
    ];
    assert!(three.contains(&429), "{three:?}");
    ACME.write(&h);
    reload_applies(&b, &h, &key("limits.requests_per_day")).await;

    // limits.max_concurrent: one call at a time; the second at once is 429.
    assert_eq!(two_at_once(&b, &h, &acme, "/v1/slow").await, [200, 200]);
    AcmeFile {
        head: "[limits]\nmax_concurrent = 1\n",
        ..ACME
    }
    .write(&h);
    reload_applies(&b, &h, &key("limits.max_concurrent")).await;
    let both = two_at_once(&b, &h, &acme, "/v1/slow").await;
    assert!(both.contains(&200) && both.contains(&429), "{both:?}");

    // routes[].limits.max_concurrent: the same, set on the route.
    ACME.write(&h);
    reload_applies(&b, &h, &key("limits.max_concurrent")).await;
    assert_eq!(two_at_once(&b, &h, &acme, "/v1/slow").await, [200, 200]);
    AcmeFile {
        slow: "limits = { max_concurrent = 1 }\n",
        ..ACME
    }
    .write(&h);
    reload_applies(&b, &h, &key("routes[1].limits.max_concurrent")).await;
    let both = two_at_once(&b, &h, &acme, "/v1/slow").await;
    assert!(both.contains(&200) && both.contains(&429), "{both:?}");

    // routes[].limits.requests_per_minute and burst: 1 a minute, burst 1.
    AcmeFile {
        orders: "limits = { requests_per_minute = 1, burst = 1 }\n",
        ..ACME
    }
    .write(&h);
    let detail = reload_applies(&b, &h, &key("routes[0].limits.requests_per_minute")).await;
    assert!(detail.contains(&key("routes[0].limits.burst")), "{detail}");
    let two = [get(&b, &h, &acme).await, get(&b, &h, &acme).await];
    assert!(two.contains(&429), "{two:?}");

    // routes[].limits.requests_per_day: a route quota of 1.
    ACME.write(&h);
    reload_applies(&b, &h, &key("routes[0].limits.burst")).await;
    assert_eq!(get(&b, &h, &acme).await, 200);
    AcmeFile {
        orders: "limits = { requests_per_day = 1 }\n",
        ..ACME
    }
    .write(&h);
    reload_applies(&b, &h, &key("routes[0].limits.requests_per_day")).await;
    let two = [get(&b, &h, &acme).await, get(&b, &h, &acme).await];
    assert!(two.contains(&429), "{two:?}");

    // routes[].strip_prefix: the upstream sees the path without the route's.
    ACME.write(&h);
    reload_applies(&b, &h, &key("routes[0].limits.requests_per_day")).await;
    assert_eq!(get(&b, &h, &acme).await, 200);
    assert_eq!(up.seen().last().unwrap()["path"], "/v1/orders");
    AcmeFile {
        orders: "strip_prefix = true\n",
        ..ACME
    }
    .write(&h);
    reload_applies(&b, &h, &key("routes[0].strip_prefix")).await;
    assert_eq!(get(&b, &h, &acme).await, 200);
    let path = up.seen().last().unwrap()["path"].clone();
    assert!(
        !path.as_str().unwrap_or("").starts_with("/v1/orders"),
        "{path}"
    );

    // routes[].max_body_bytes: 100 bytes pass, then 16 is the most.
    assert_eq!(fresh(&b, &h, &acme, Method::POST, &[b'x'; 100]).await, 200);
    AcmeFile {
        orders: "max_body_bytes = 16\n",
        ..ACME
    }
    .write(&h);
    reload_applies(&b, &h, &key("routes[0].max_body_bytes")).await;
    assert_eq!(fresh(&b, &h, &acme, Method::POST, &[b'x'; 100]).await, 413);

    // value_limits.EUR.per_call: 50 passes under 100, not under 10.
    ACME.write(&h);
    reload_applies(&b, &h, &key("routes[0].max_body_bytes")).await;
    assert_eq!(pay(&b, &h, &acme, &eur("50.00")).await.0, 200);
    AcmeFile {
        value_limits: "EUR = { per_call = \"10.00\", per_day = \"1000.00\" }\n",
        ..ACME
    }
    .write(&h);
    reload_applies(&b, &h, &key("value_limits.EUR.per_call")).await;
    assert_eq!(
        pay(&b, &h, &acme, &eur("50.00")).await,
        (403, "value_limit_per_call".to_string())
    );

    // value_limits.EUR.per_day: 50 more fit in 1000 today, not in 60.
    AcmeFile {
        value_limits: "EUR = { per_call = \"100.00\", per_day = \"60.00\" }\n",
        ..ACME
    }
    .write(&h);
    reload_applies(&b, &h, &key("value_limits.EUR.per_day")).await;
    assert_eq!(
        pay(&b, &h, &acme, &eur("50.00")).await,
        (429, "value_limit_daily".to_string())
    );

    // routes[].value.amount and value.currency: pointers to other fields.
    ACME.write(&h);
    reload_applies(&b, &h, &key("value_limits.EUR.per_day")).await;
    let other_fields = r#"{"sum": "5.00", "ccy": "EUR"}"#;
    assert_eq!(pay(&b, &h, &acme, other_fields).await.1, "value_unreadable");
    AcmeFile {
        transfers: "value = { amount = \"/sum\", currency = \"/ccy\" }\n",
        ..ACME
    }
    .write(&h);
    let detail = reload_applies(&b, &h, &key("routes[2].value.amount")).await;
    assert!(
        detail.contains(&key("routes[2].value.currency")),
        "{detail}"
    );
    assert_eq!(pay(&b, &h, &acme, other_fields).await.0, 200);

    // routes[].require_signature: an unsigned call is 401.
    ACME.write(&h);
    reload_applies(&b, &h, &key("routes[2].value.amount")).await;
    assert_eq!(pay(&b, &h, &acme, &eur("1.00")).await.0, 200);
    AcmeFile {
        transfers: "value = { amount = \"/amount\", currency = \"/currency\" }\nrequire_signature = true\n",
        ..ACME
    }
    .write(&h);
    reload_applies(&b, &h, &key("routes[2].require_signature")).await;
    assert_eq!(
        pay(&b, &h, &acme, &eur("1.00")).await,
        (401, "signature_required".to_string())
    );

    // routes[].risk and signing: a high-risk route of a partner that signs
    // needs a signature; either alone does not.
    let high = "value = { amount = \"/amount\", currency = \"/currency\" }\nrisk = \"high\"\n";
    AcmeFile {
        transfers: high,
        ..ACME
    }
    .write(&h);
    reload_applies(&b, &h, &key("routes[2].risk")).await;
    assert_eq!(pay(&b, &h, &acme, &eur("1.00")).await.0, 200);
    AcmeFile {
        head: "signing = true\n",
        transfers: high,
        ..ACME
    }
    .write(&h);
    reload_applies(&b, &h, &key("signing")).await;
    assert_eq!(
        pay(&b, &h, &acme, &eur("1.00")).await,
        (401, "signature_required".to_string())
    );
    AcmeFile {
        head: "signing = true\n",
        ..ACME
    }
    .write(&h);
    reload_applies(&b, &h, &key("routes[2].risk")).await;
    assert_eq!(pay(&b, &h, &acme, &eur("1.00")).await.0, 200);

    // renewal_window: self-service renewal opens 100 days before expiry
    // (by default 30: a 90-day certificate would wait 60 days).
    let (_, csr) = crate::renewal::hostile_csr();
    let r = crate::renewal::post_renew(&h, b.addr, &acme, &csr).await;
    assert_eq!(r.json()["error"], "renewal_not_yet_allowed", "{}", r.body);
    AcmeFile {
        head: "renewal_window = \"100d\"\n",
        ..ACME
    }
    .write(&h);
    reload_applies(&b, &h, &key("renewal_window")).await;
    let r = crate::renewal::post_renew(&h, b.addr, &acme, &csr).await;
    assert_eq!(r.status, 200, "{}", r.body);

    // id: a new partner file is a new partner; on_anomaly: its spike is
    // clamped (429) once the reload says "throttle".
    h.add_partner("omega", &["GET /v1/orders -> orders"]);
    reload_applies(&b, &h, "partners/omega.toml id").await;
    let omega = h.issue("omega");
    let mut status = 0;
    for _ in 0..30 {
        status = get(&b, &h, &omega).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
    let p = h.path().join("partners/omega.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(&p, format!("on_anomaly = \"throttle\"\n{text}")).unwrap();
    reload_applies(&b, &h, "partners/omega.toml on_anomaly").await;
    let mut c = Conn::open(b.addr, &h.ca_pem(), &omega, false)
        .await
        .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(c.get("/v1/orders").await.map_or(0, |r| r.status.as_u16()));
    }
    assert!(
        statuses.contains(&429),
        "a spike in throttle mode was not clamped: {statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_store_timeout_takes_effect_on_sighup() {
    let Some(redis) = common::redis_server::RedisServer::start() else {
        return;
    };
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    h.set_partner_limits("acme", &[("requests_per_minute", 600)]);
    h.set_cluster(&redis.url(), Some("deny"));
    let b = h.start();
    assert_eq!(get(&b, &h, &acme).await, 200);
    // The store stops answering for 1.5 s (CLIENT PAUSE).
    let pause = || {
        let _: () = redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(1500)
            .arg("ALL")
            .query(&mut redis.conn())
            .unwrap();
    };

    // [cluster] store_timeout 250 ms (the default): a limited call during
    // the pause gives up on the store and, as "deny" says, is refused.
    pause();
    assert_eq!(get(&b, &h, &acme).await, 503);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get(&b, &h, &acme).await, 200);

    // 5 s: the call waits out the pause and passes.
    h.edit_config(|d| d["cluster"]["store_timeout"] = toml_edit::value("5s"));
    reload_applies(&b, &h, "cluster.store_timeout").await;
    pause();
    assert_eq!(get(&b, &h, &acme).await, 200, "{}", b.log());
}

/// An Ed25519 key that signs requests, its public key written to
/// `keys/<name>.pem` in the home.
fn signing_key(h: &TestHome, name: &str) -> rcgen::KeyPair {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::create_dir_all(h.path().join("keys")).unwrap();
    std::fs::write(
        h.path().join(format!("keys/{name}.pem")),
        key.public_key_pem(),
    )
    .unwrap();
    key
}

/// A POST of `body` to /v1/transfers signed (RFC 9421, written out here:
/// method, authority, path and a SHA-256 Content-Digest, with a fresh
/// nonce) by `key` as `keyid`; status and `error`.
async fn signed_post(
    b: &Broker,
    h: &TestHome,
    cert: &ClientCert,
    key: &rcgen::KeyPair,
    keyid: &str,
) -> (u16, String) {
    use base64::Engine;
    use sha2::Digest;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let body = br#"{"amount": "1.00", "currency": "EUR"}"#;
    let digest = format!("sha-256=:{}:", b64(&sha2::Sha256::digest(body)));
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let nonce = hex::encode(rand::random::<[u8; 12]>());
    let params = format!(
        "(\"@method\" \"@authority\" \"@path\" \"content-digest\");created={created};nonce=\"{nonce}\";keyid=\"{keyid}\";alg=\"ed25519\""
    );
    let base = format!(
        "\"@method\": POST\n\"@authority\": localhost\n\"@path\": /v1/transfers\n\"content-digest\": {digest}\n\"@signature-params\": {params}"
    );
    let signature = rcgen::SigningKey::sign(key, base.as_bytes()).unwrap();
    let input = format!("sig1={params}");
    let sig = format!("sig1=:{}:", b64(&signature));
    let mut c = Conn::open(b.addr, &h.ca_pem(), cert, false).await.unwrap();
    let r = c
        .send(
            Method::POST,
            "/v1/transfers",
            &[
                ("content-type", "application/json"),
                ("content-digest", &digest),
                ("signature-input", &input),
                ("signature", &sig),
            ],
            body,
        )
        .await
        .unwrap();
    let error = r.json()["error"].as_str().unwrap_or_default().to_string();
    (r.status.as_u16(), error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_signing_keys_take_effect_on_sighup() {
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let first = signing_key(&h, "first");
    let second = signing_key(&h, "second");
    let write = |id: &str, public_key: &str| {
        std::fs::write(
            h.path().join("partners/acme.toml"),
            format!(
                "id = \"acme\"\nsigning = true\n\n[[routes]]\nmethods = [\"POST\"]\npath = \"/v1/transfers\"\nupstream = \"orders\"\nrisk = \"high\"\n\n[[signing_keys]]\nid = \"{id}\"\npublic_key = \"{public_key}\"\n"
            ),
        )
        .unwrap();
    };
    write("k1", "keys/first.pem");
    let b = h.start();
    assert_eq!(signed_post(&b, &h, &acme, &first, "k1").await.0, 200);

    // signing_keys[].id: the key now answers to k2 only.
    write("k2", "keys/first.pem");
    reload_applies(&b, &h, "partners/acme.toml signing_keys[0].id").await;
    assert_eq!(signed_post(&b, &h, &acme, &first, "k1").await.0, 401);
    assert_eq!(signed_post(&b, &h, &acme, &first, "k2").await.0, 200);

    // signing_keys[].public_key: k2 is now the second key.
    write("k2", "keys/second.pem");
    reload_applies(&b, &h, "partners/acme.toml signing_keys[0].public_key").await;
    assert_eq!(
        signed_post(&b, &h, &acme, &first, "k2").await,
        (401, "signature_invalid".to_string())
    );
    assert_eq!(signed_post(&b, &h, &acme, &second, "k2").await.0, 200);
}

/// The partner file's `[own_ca]` table, edited.
fn edit_own_ca(h: &TestHome, f: impl FnOnce(&mut toml_edit::Table)) {
    let p = h.path().join("partners/acme.toml");
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&p).unwrap().parse().unwrap();
    f(doc["own_ca"].as_table_mut().expect("[own_ca]"));
    std::fs::write(&p, doc.to_string()).unwrap();
}

/// Lowercase hex SHA-256 of the SubjectPublicKeyInfo of a PEM's first certificate.
fn spki_sha256(cert_pem: &str) -> String {
    use sha2::Digest;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    hex::encode(sha2::Sha256::digest(x.public_key().raw))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_own_ca_settings_take_effect_on_sighup() {
    use crate::partner_ca::{client, make_ca, make_leaf, openssl_available, revoke};
    if !openssl_available() {
        return;
    }
    let (h, _up, _acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    make_ca(dir, "bank");
    let uri = "https://bank.example/clients/acme";
    make_leaf(dir, "bank", "by-uri", "acme-api", &format!("URI:{uri}"));
    make_leaf(dir, "bank", "by-dns", "someone", "DNS:acme.bank.example");
    let (by_uri, by_dns) = (client(dir, "by-uri"), client(dir, "by-dns"));
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    h.ok(&[
        "partner",
        "trust",
        "acme",
        "--ca",
        &path("bank-root.pem"),
        "--match-san-uri",
        uri,
    ]);
    let b = h.start();
    let roots = h.roots_pem();
    let ok = |cert: &ClientCert| {
        let (addr, roots, cert) = (b.addr, roots.clone(), cert.clone());
        async move { get_once_status(addr, &roots, &cert).await == 200 }
    };
    assert!(ok(&by_uri).await);
    assert!(!ok(&by_dns).await);
    let key = |k: &str| format!("partners/acme.toml own_ca.{k}");

    // own_ca.match_san_uri: another URI, and the certificate no longer speaks for acme.
    edit_own_ca(&h, |t| {
        t["match_san_uri"] = toml_edit::value("https://bank.example/clients/other")
    });
    reload_applies(&b, &h, &key("match_san_uri")).await;
    assert!(!ok(&by_uri).await);

    // own_ca.match_subject_cn: matched by its subject CN instead.
    edit_own_ca(&h, |t| {
        t.remove("match_san_uri");
        t["match_subject_cn"] = toml_edit::value("acme-api");
    });
    reload_applies(&b, &h, &key("match_subject_cn")).await;
    assert!(ok(&by_uri).await);
    assert!(!ok(&by_dns).await);

    // own_ca.match_san_dns: matched by a DNS SAN.
    edit_own_ca(&h, |t| {
        t.remove("match_subject_cn");
        t["match_san_dns"] = toml_edit::value("acme.bank.example");
    });
    reload_applies(&b, &h, &key("match_san_dns")).await;
    assert!(ok(&by_dns).await);
    assert!(!ok(&by_uri).await);

    // own_ca.pin_spki: a pin of another key refuses it; its own admits it.
    let mut pins = toml_edit::Array::new();
    pins.push(spki_sha256(&by_uri.cert_pem));
    edit_own_ca(&h, |t| t["pin_spki"] = toml_edit::value(pins));
    reload_applies(&b, &h, &key("pin_spki")).await;
    assert!(!ok(&by_dns).await);
    let mut pins = toml_edit::Array::new();
    pins.push(spki_sha256(&by_dns.cert_pem));
    edit_own_ca(&h, |t| t["pin_spki"] = toml_edit::value(pins));
    reload_applies(&b, &h, &key("pin_spki")).await;
    assert!(ok(&by_dns).await);

    // own_ca.crl: a CRL that revokes it, named by a reload, refuses it.
    revoke(dir, "bank", "by-dns");
    assert!(
        ok(&by_dns).await,
        "revoked in a CRL the broker does not read"
    );
    edit_own_ca(&h, |t| t["crl"] = toml_edit::value(path("bank-crl.pem")));
    reload_applies(&b, &h, &key("crl")).await;
    assert!(!ok(&by_dns).await);
}

/// Status of a GET on a fresh connection; 0 when refused.
async fn get_once_status(addr: std::net::SocketAddr, roots: &str, cert: &ClientCert) -> u16 {
    common::broker::get_once(addr, roots, cert, "/v1/orders")
        .await
        .map_or(0, |r| r.status.as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_mirror_settings_take_effect_on_sighup() {
    use common::pool_backend::PoolBackend;
    let h = TestHome::new();
    let dir = h.path().join("backends");
    std::fs::create_dir_all(&dir).unwrap();
    let legacy = PoolBackend::start(&dir, "legacy", "json:legacy");
    let same = PoolBackend::start(&dir, "same", "json:same");
    let differs = PoolBackend::start(&dir, "differs", "json:total11");
    let text = PoolBackend::start(&dir, "text", "ok");
    let slow = PoolBackend::start(&dir, "slow", "sleep:1500");
    for (name, b) in [
        ("orders-legacy", &legacy),
        ("orders-same", &same),
        ("orders-differs", &differs),
        ("orders-text", &text),
        ("orders-slow", &slow),
    ] {
        h.add_upstream(name, &b.url(), None);
        h.edit_config(|d| d["upstreams"][name]["signed_identity"] = toml_edit::value(false));
    }
    h.add_partner("acme", &["GET,POST /v1 -> orders-legacy"]);
    let acme = h.issue("acme");
    let b = h.start();
    let mut c = Conn::open(b.addr, &h.ca_pem(), &acme, false).await.unwrap();
    let key = |k: &str| format!("upstreams.orders-legacy.mirror{k}");
    // Keys changed together are written in one go (the file watcher may
    // reload between two writes).
    let set_all = |pairs: Vec<(&str, toml_edit::Value)>| {
        h.edit_config(|d| {
            for (k, v) in pairs {
                d["upstreams"]["orders-legacy"]["mirror"][k] = toml_edit::Item::Value(v);
            }
        })
    };
    let set = |k: &str, v: toml_edit::Value| set_all(vec![(k, v)]);
    let diffs = || {
        h.journal()
            .into_iter()
            .filter(|r| r["kind"] == "mirror_diff")
            .collect::<Vec<_>>()
    };

    // mirror: off, the candidate sees nothing; on, every GET is copied.
    mirrored_gets(&mut c, 3).await;
    assert!(same.requests().is_empty());
    h.edit_config(|d| {
        let mut t = toml_edit::InlineTable::new();
        t.insert("to", "orders-same".into());
        t.insert("compare", true.into());
        d["upstreams"]["orders-legacy"]["mirror"] = toml_edit::value(t);
    });
    reload_applies(&b, &h, &key("")).await;
    mirrored_gets(&mut c, 3).await;
    let t = mirror_totals_until(b.admin, "orders-legacy", |t| t["match"] == 3).await;
    assert_eq!(t["match"], 3, "{t}");

    // mirror.to: the copies go to another candidate (one field differs).
    set("to", "orders-differs".into());
    reload_applies(&b, &h, &key(".to")).await;
    mirrored_gets(&mut c, 3).await;
    let t = mirror_totals_until(b.admin, "orders-legacy", |t| t["mismatch"] == 3).await;
    assert_eq!(t["mismatch"], 3, "{t}");
    assert_eq!(same.requests().len(), 3);
    assert_eq!(differs.requests().len(), 3);

    // mirror.compare = false: copied, never compared (no mismatch record).
    let before = diffs().len();
    set("compare", false.into());
    reload_applies(&b, &h, &key(".compare")).await;
    mirrored_gets(&mut c, 3).await;
    for _ in 0..30 {
        if differs.requests().len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(differs.requests().len(), 6);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(diffs().len(), before, "compared with compare = false");

    // mirror.ignore_json: compared again, the differing pointer ignored.
    set("compare", true.into());
    let mut pointers = toml_edit::Array::new();
    pointers.push("/total");
    set("ignore_json", pointers.into());
    reload_applies(&b, &h, &key(".ignore_json")).await;
    let matched = mirror_totals(b.admin, "orders-legacy").await["match"]
        .as_u64()
        .unwrap_or(0);
    mirrored_gets(&mut c, 3).await;
    let t = mirror_totals_until(b.admin, "orders-legacy", |t| {
        t["match"].as_u64() == Some(matched + 3)
    })
    .await;
    assert_eq!(t["match"].as_u64(), Some(matched + 3), "{t}");
    assert_eq!(diffs().len(), before);

    // mirror.ignore_headers: a plain-text candidate differs in its headers
    // (and body); ignoring content-type leaves it out of the record.
    set("to", "orders-text".into());
    reload_applies(&b, &h, &key(".to")).await;
    mirrored_gets(&mut c, 1).await;
    let header_lists = |recs: &[serde_json::Value]| -> Vec<String> {
        recs.iter()
            .map(|r| {
                let d: serde_json::Value =
                    serde_json::from_str(r["detail"].as_str().unwrap_or("{}")).unwrap_or_default();
                d["headers"].to_string()
            })
            .collect()
    };
    let mut recs = diffs();
    for _ in 0..30 {
        if recs.len() > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        recs = diffs();
    }
    let last = header_lists(&recs).pop().unwrap_or_default();
    assert!(last.contains("content-type"), "{last}");
    let mut names = toml_edit::Array::new();
    names.push("content-type");
    set("ignore_headers", names.into());
    reload_applies(&b, &h, &key(".ignore_headers")).await;
    let count = recs.len();
    mirrored_gets(&mut c, 1).await;
    for _ in 0..30 {
        recs = diffs();
        if recs.len() > count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let last = header_lists(&recs).pop().unwrap_or_default();
    assert!(
        recs.len() > count && !last.contains("content-type"),
        "{last}"
    );

    // mirror.percent = 0: nothing copied.
    set_all(vec![("to", "orders-same".into()), ("percent", 0.into())]);
    reload_applies(&b, &h, &key(".percent")).await;
    let seen = same.requests().len();
    mirrored_gets(&mut c, 3).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(same.requests().len(), seen, "copied at percent = 0");

    // mirror.methods: a POST is copied once methods names it.
    set("percent", 100.into());
    reload_applies(&b, &h, &key(".percent")).await;
    let post = async |c: &mut Conn| {
        let r = c
            .send(Method::POST, "/v1/orders", &[], b"{\"sku\":\"a\"}")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    };
    post(&mut c).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!same.requests().iter().any(|l| l.starts_with("POST")));
    let mut methods = toml_edit::Array::new();
    methods.push("GET");
    methods.push("POST");
    set("methods", methods.into());
    reload_applies(&b, &h, &key(".methods")).await;
    post(&mut c).await;
    let mut copied = false;
    for _ in 0..30 {
        copied = same.requests().iter().any(|l| l.starts_with("POST"));
        if copied {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(copied, "{:?}", same.requests());

    // mirror.timeout: a candidate taking 1.5 s is waited for under 4 s,
    // and counted as an error under 200 ms.
    set_all(vec![("to", "orders-slow".into()), ("timeout", "4s".into())]);
    reload_applies(&b, &h, &key(".timeout")).await;
    let t0 = mirror_totals(b.admin, "orders-legacy").await;
    mirrored_gets(&mut c, 1).await;
    let t = mirror_totals_until(b.admin, "orders-legacy", |t| {
        t["mismatch"] != t0["mismatch"]
    })
    .await;
    assert_eq!(t["error"], t0["error"], "{t}");
    set("timeout", "200ms".into());
    reload_applies(&b, &h, &key(".timeout")).await;
    mirrored_gets(&mut c, 1).await;
    let t = mirror_totals_until(b.admin, "orders-legacy", |t| t["error"] != t0["error"]).await;
    assert_ne!(t["error"], t0["error"], "{t}");

    // mirror.max_in_flight = 1: with one copy held by the slow candidate,
    // the next ones are dropped.
    set_all(vec![("timeout", "4s".into()), ("max_in_flight", 1.into())]);
    reload_applies(&b, &h, &key(".max_in_flight")).await;
    let t0 = mirror_totals(b.admin, "orders-legacy").await;
    mirrored_gets(&mut c, 3).await;
    let t = mirror_totals_until(b.admin, "orders-legacy", |t| t["dropped"] != t0["dropped"]).await;
    assert!(
        t["dropped"].as_u64() >= t0["dropped"].as_u64().map(|d| d + 1),
        "{t0} -> {t}"
    );

    // mirror.baseline: the live side is sampled a second time, marked.
    let marked = || {
        legacy
            .request_headers()
            .iter()
            .filter(|l| l.ends_with(" 1 acme"))
            .count()
    };
    assert_eq!(marked(), 0);
    set_all(vec![
        ("to", "orders-same".into()),
        ("max_in_flight", 64.into()),
        ("baseline", "orders-legacy".into()),
    ]);
    reload_applies(&b, &h, &key(".baseline")).await;
    mirrored_gets(&mut c, 2).await;
    let mut n = 0;
    for _ in 0..30 {
        n = marked();
        if n > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(n > 0, "no baseline call to the live side");
}
