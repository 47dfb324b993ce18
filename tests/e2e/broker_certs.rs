//! The broker's own certificates without restarts: `cert server-renew`
//! while a partner holds a keep-alive connection; new connections see the
//! new server certificate within about a second, the open one keeps
//! working, and the upstream sees the new broker client certificate. And
//! the broker warns (log, journal alert) before its own certificates expire.

use crate::common;

use std::time::{Duration, Instant};

use common::broker::{Conn, TestHome, first_cert_der, get_once, server_leaf};
use common::upstream::{EchoOptions, start_echo_upstream};

fn serial_of_pem_file(path: &std::path::Path) -> String {
    let der = first_cert_der(path);
    let (_, x) = x509_parser::parse_x509_certificate(&der).expect("certificate");
    hex::encode(x.raw_serial())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_renew_is_picked_up_without_dropping_connections() {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::mtls(h.upstream_client_ca_pem())).await;
    h.add_upstream("orders", &up.url(), Some(&up.ca_pem));
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    let acme = h.issue("acme");
    let broker = h.start();
    let ca = h.ca_pem();
    let certs = h.path().join("certs");

    let mut kept = Conn::open(broker.addr, &ca, &acme, false)
        .await
        .expect("connect");
    let r = kept.get("/v1/orders").await.expect("first request");
    assert_eq!(r.status, 200, "{}", r.body);
    let old_client_serial = up.seen()[0]["client_cert_serial"]
        .as_str()
        .expect("the upstream saw a client certificate")
        .to_string();
    assert_eq!(
        old_client_serial,
        serial_of_pem_file(&certs.join("broker-client.pem"))
    );
    let old_leaf = server_leaf(broker.addr, &ca, &acme).await;
    assert_eq!(old_leaf, first_cert_der(&certs.join("server.pem")));

    let out = h.ok(&["cert", "server-renew", "--json"]);
    let renewed = Instant::now();
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        report["hostnames"],
        serde_json::json!(["localhost", "127.0.0.1"]),
        "the current names are kept"
    );
    let new_leaf_on_disk = first_cert_der(&certs.join("server.pem"));
    assert_ne!(new_leaf_on_disk, old_leaf);
    assert_eq!(
        report["server_serial"].as_str(),
        Some(serial_of_pem_file(&certs.join("server.pem")).as_str())
    );

    // New connections see the new server certificate within about a second.
    let mut seen_after = None;
    while renewed.elapsed() < Duration::from_secs(5) {
        if server_leaf(broker.addr, &ca, &acme).await == new_leaf_on_disk {
            seen_after = Some(renewed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let seen_after = seen_after.expect("the broker serves the new server certificate");
    eprintln!("new server certificate served {seen_after:?} after server-renew returned");
    assert!(
        seen_after <= Duration::from_millis(1500),
        "picked up after {seen_after:?}"
    );

    // The connection opened before the renewal still works.
    let r = kept
        .get("/v1/orders")
        .await
        .expect("kept connection still works");
    assert_eq!(r.status, 200, "{}", r.body);

    // The upstream leg presents the new broker client certificate.
    let new_client_serial = report["client_serial"]
        .as_str()
        .expect("serial")
        .to_string();
    assert_ne!(new_client_serial, old_client_serial);
    let r = get_once(broker.addr, &ca, &acme, "/v1/orders")
        .await
        .expect("new connection");
    assert_eq!(r.status, 200, "{}", r.body);
    let last = up.seen().last().cloned().expect("seen");
    assert_eq!(last["client_cert_serial"], new_client_serial.as_str());
    assert!(
        !broker.log().contains("configuration change refused"),
        "{}",
        broker.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_renew_takes_new_hostnames() {
    let h = TestHome::new();
    let out = h.ok(&[
        "cert",
        "server-renew",
        "--hostname",
        "broker.example.com",
        "--hostname",
        "localhost",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(
        report["hostnames"],
        serde_json::json!(["broker.example.com", "localhost"])
    );
    use std::os::unix::fs::PermissionsExt;
    for key in ["server.key", "broker-client.key"] {
        let mode = std::fs::metadata(h.path().join("certs").join(key))
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // No temporary files left behind.
    let leftovers: Vec<_> = std::fs::read_dir(h.path().join("certs"))
        .expect("certs")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    h.ok(&["check"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_warns_before_its_own_certificates_expire() {
    let h = TestHome::new();
    // The broker's certificates last 397 days: inside a 400-day window.
    h.edit_config(|doc| doc["monitor"]["expiry_warning_days"] = toml_edit::value(400));
    let broker = h.start();
    assert!(
        broker.wait_log("broker_cert_expiry", 5).await,
        "{}",
        broker.log()
    );
    assert!(
        broker.log().contains("cert server-renew"),
        "{}",
        broker.log()
    );
    let alerts: Vec<_> = {
        let mut found = Vec::new();
        for _ in 0..50 {
            found = h
                .journal()
                .into_iter()
                .filter(|r| r["reason"] == "broker_cert_expiry")
                .collect();
            if found.len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        found
    };
    assert_eq!(alerts.len(), 2, "server and broker-client: {alerts:?}");
    let (status, metrics) = common::broker::admin_get(broker.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.contains("broker_cert_expiry") && l.trim_end().ends_with(" 2")),
        "{metrics}"
    );
}

/// Replaces `to` with `from`'s content by rename (as an operator's tool would).
fn install(from: &std::path::Path, to: &std::path::Path) {
    let tmp = to.with_extension("installing");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, to).expect("rename");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_without_its_key_keeps_the_old_one_until_the_key_arrives() {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::mtls(h.upstream_client_ca_pem())).await;
    h.add_upstream("orders", &up.url(), Some(&up.ca_pem));
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    let acme = h.issue("acme");
    let certs = h.path().join("certs");
    // Make a new pair aside, then put the old one back before serving.
    let saved = h.path().join("saved");
    let fresh = h.path().join("fresh");
    std::fs::create_dir_all(&saved).expect("dir");
    std::fs::create_dir_all(&fresh).expect("dir");
    let files = [
        "server.pem",
        "server.key",
        "broker-client.pem",
        "broker-client.key",
    ];
    for f in files {
        std::fs::copy(certs.join(f), saved.join(f)).expect("save");
    }
    h.ok(&["cert", "server-renew"]);
    for f in files {
        std::fs::copy(certs.join(f), fresh.join(f)).expect("keep");
        install(&saved.join(f), &certs.join(f));
    }
    let broker = h.start();
    let ca = h.ca_pem();
    let old_leaf = first_cert_der(&certs.join("server.pem"));
    let new_leaf = first_cert_der(&fresh.join("server.pem"));
    let old_client = serial_of_pem_file(&certs.join("broker-client.pem"));
    let new_client = serial_of_pem_file(&fresh.join("broker-client.pem"));

    // Only the certificates arrive: a mismatch with the keys in place.
    // First the server certificate alone (the config reloads, the TLS
    // rebuild fails and is retried at each tick)...
    install(&fresh.join("server.pem"), &certs.join("server.pem"));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(server_leaf(broker.addr, &ca, &acme).await, old_leaf);
    // ...then the client certificate (the whole reload is refused).
    install(
        &fresh.join("broker-client.pem"),
        &certs.join("broker-client.pem"),
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        server_leaf(broker.addr, &ca, &acme).await,
        old_leaf,
        "the old certificate and key keep serving"
    );
    let r = get_once(broker.addr, &ca, &acme, "/v1/orders")
        .await
        .expect("still serving");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        up.seen().last().expect("seen")["client_cert_serial"],
        old_client.as_str()
    );

    // The keys follow: picked up without any other change.
    install(&fresh.join("server.key"), &certs.join("server.key"));
    install(
        &fresh.join("broker-client.key"),
        &certs.join("broker-client.key"),
    );
    let started = Instant::now();
    let mut ok = false;
    while started.elapsed() < Duration::from_secs(3) {
        if server_leaf(broker.addr, &ca, &acme).await == new_leaf {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ok, "new pair not picked up: {}", broker.log());
    assert!(
        broker.log().contains("the running one stays in force"),
        "the mismatch was reported: {}",
        broker.log()
    );
    let r = get_once(broker.addr, &ca, &acme, "/v1/orders")
        .await
        .expect("new connection");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        up.seen().last().expect("seen")["client_cert_serial"],
        new_client.as_str()
    );
}
