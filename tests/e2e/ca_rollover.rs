//! CA rollover against a running broker: `ca rotate` → certificates from both
//! CAs accepted → `ca retire` refused while old certificates are usable →
//! revoke them → retire succeeds → a certificate from the old CA is refused
//! at the handshake. Also: the cross-signed chain lets a client that pinned
//! the old root keep verifying the broker.

use crate::common;

use std::time::Duration;

use common::broker::{ClientCert, TestHome, client_tls, get_once, mint, tls_connect};
use common::upstream::{EchoOptions, EchoUpstream, start_echo_upstream};

async fn setup() -> (TestHome, EchoUpstream) {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_upstream(
        "orders",
        &format!("https://127.0.0.1:{}", up.addr.port()),
        Some(&up.ca_pem),
    );
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    (h, up)
}

fn bundle(h: &TestHome) -> String {
    std::fs::read_to_string(h.path().join("certs/ca-bundle.pem")).unwrap()
}

fn ca_of(h: &TestHome, serial: &str) -> String {
    let list: serde_json::Value = serde_json::from_str(&h.ok(&["cert", "list", "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["serial"] == serial)
        .unwrap()["ca_fingerprint"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn status(h: &TestHome, addr: std::net::SocketAddr, c: &ClientCert) -> Result<u16, String> {
    get_once(addr, &bundle(h), c, "/v1/orders")
        .await
        .map(|r| r.status.as_u16())
}

#[tokio::test]
async fn rotate_trust_both_retire_when_unused_then_the_old_ca_is_refused() {
    let (h, _up) = setup().await;
    let old_ca_pem = h.ca_pem();
    let old_ca_key = std::fs::read_to_string(h.path().join("certs/ca.key")).unwrap();
    let old = h.issue("acme");
    let broker = h.start();
    assert_eq!(status(&h, broker.addr, &old).await, Ok(200));

    let out = h.ok(&["ca", "rotate"]);
    assert!(out.contains("new issuing CA"), "{out}");
    assert_ne!(h.ca_pem(), old_ca_pem);
    assert_eq!(bundle(&h).matches("BEGIN CERTIFICATE").count(), 2);
    // The broker picks up the new CA and its new server certificate live.
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let new = h.issue("acme");
    assert_ne!(ca_of(&h, &old.serial), ca_of(&h, &new.serial));
    assert!(
        h.ok(&["cert", "list"])
            .contains(&ca_of(&h, &new.serial)[..12])
    );
    assert_eq!(
        status(&h, broker.addr, &old).await,
        Ok(200),
        "old CA's certificate"
    );
    assert_eq!(
        status(&h, broker.addr, &new).await,
        Ok(200),
        "new CA's certificate"
    );
    // A client trusting only the new CA verifies the broker.
    assert_eq!(
        get_once(broker.addr, &h.ca_pem(), &new, "/v1/orders")
            .await
            .unwrap()
            .status,
        200
    );

    // Retire is refused while the old certificate is usable, naming it.
    let refused = h.run(&["ca", "retire", "previous"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains(&old.serial) && err.contains("acme"), "{err}");
    // The old CA's certificates can be revoked (its CRL is signed by its own key).
    h.ok(&["cert", "revoke", &old.serial]);
    let out = h.ok(&["ca", "retire", "previous"]);
    assert!(out.contains("retired CA"), "{out}");
    assert_eq!(bundle(&h).matches("BEGIN CERTIFICATE").count(), 1);
    assert!(
        !h.path()
            .join("certs/ca-previous")
            .read_dir()
            .unwrap()
            .any(|_| true)
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // A certificate the old CA signs now is refused at the handshake (unknown CA).
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &old_ca_pem,
        rcgen::KeyPair::from_pem(&old_ca_key).unwrap(),
    )
    .unwrap();
    let forged = mint(&issuer, &old_ca_pem, |_| {});
    let hs = tls_connect(
        broker.addr,
        client_tls(&bundle(&h), Some(&forged), &[b"http/1.1"]),
    )
    .await;
    assert!(hs.is_err(), "a certificate of the retired CA was accepted");
    let ev = h
        .wait_journal(5, |v| {
            v["kind"] == "handshake" && v["reason"] == "unknown_ca"
        })
        .await;
    assert!(ev.is_some(), "no unknown_ca handshake record");
    assert_eq!(status(&h, broker.addr, &new).await, Ok(200));
    assert!(h.ok(&["check"]).contains("ok"));
}

#[tokio::test]
async fn cross_signing_keeps_clients_that_pinned_the_old_root_working() {
    let (h, _up) = setup().await;
    let old_ca_pem = h.ca_pem();
    let acme = h.issue("acme");
    h.ok(&["ca", "rotate", "--cross-sign"]);
    let broker = h.start();
    // The client trusts only the old root: the broker's chain carries the cross certificate.
    assert_eq!(
        get_once(broker.addr, &old_ca_pem, &acme, "/v1/orders")
            .await
            .unwrap()
            .status,
        200
    );
    // And one trusting only the new root as well.
    assert_eq!(
        get_once(broker.addr, &h.ca_pem(), &acme, "/v1/orders")
            .await
            .unwrap()
            .status,
        200
    );
    let cas: serde_json::Value = serde_json::from_str(&h.ok(&["ca", "list", "--json"])).unwrap();
    assert_eq!(cas.as_array().unwrap().len(), 2);
    assert_eq!(cas[1]["usable_certs"], 1);
}
