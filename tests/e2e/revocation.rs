//! Revocation, suspension and removal bite within a second, on connections
//! that are already open (HTTP/1.1 keep-alive and HTTP/2) and on new ones,
//! without a restart.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::broker::{ClientCert, Conn, TestHome, client_tls, home_with_echo, tls_connect};
use common::upstream::EchoUpstream;

async fn setup() -> (TestHome, EchoUpstream, ClientCert) {
    home_with_echo(&["GET /v1/orders -> orders"]).await
}

/// Polls on the open connection until a 403 with `reason` comes back; returns how long it took.
async fn until_refused(c: &mut Conn, reason: &str) -> Duration {
    let t = Instant::now();
    for _ in 0..100 {
        match c.get("/v1/orders").await {
            Ok(r) if r.status == 403 => {
                assert_eq!(r.json()["error"], reason, "{}", r.body);
                return t.elapsed();
            }
            Ok(r) => assert_eq!(r.status, 200),
            Err(e) => panic!("connection failed before the refusal: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never refused");
}

#[tokio::test]
async fn revocation_bites_on_an_open_keep_alive_connection_within_a_second() {
    let (h, up, acme) = setup().await;
    let broker = h.start();
    let mut c = Conn::open(broker.addr, &h.ca_pem(), &acme, false)
        .await
        .unwrap();
    assert_eq!(c.get("/v1/orders").await.unwrap().status, 200);
    let calls_before = up.calls.load(Ordering::SeqCst);
    h.ok(&["cert", "revoke", &acme.serial, "--reason", "keyCompromise"]);
    let took = until_refused(&mut c, "revoked").await;
    assert!(took <= Duration::from_millis(1500), "took {took:?}");
    // The CLI's revocation is on the broker's audit trail.
    let rec = h
        .wait_journal(5, |v| v["kind"] == "admin" && v["reason"] == "cert_revoked")
        .await
        .expect("revocation journaled");
    assert_eq!(rec["cert_serial"], acme.serial.as_str());
    assert_eq!(rec["partner"], "acme");
    // The connection is closed after the refusal.
    assert!(c.get("/v1/orders").await.is_err(), "connection stayed open");
    // New connections are refused at the handshake.
    assert!(
        tls_connect(
            broker.addr,
            client_tls(&h.ca_pem(), Some(&acme), &[b"http/1.1"])
        )
        .await
        .is_err()
    );
    // Nothing after the revocation reached the upstream (beyond the polls that raced it).
    let after = up.calls.load(Ordering::SeqCst);
    assert!(after - calls_before <= 30);
}

#[tokio::test]
async fn suspension_bites_on_an_open_http2_connection_and_resume_restores() {
    let (h, _up, acme) = setup().await;
    let broker = h.start();
    let mut c = Conn::open(broker.addr, &h.ca_pem(), &acme, true)
        .await
        .unwrap();
    assert_eq!(c.get("/v1/orders").await.unwrap().status, 200);
    h.ok(&["partner", "suspend", "acme"]);
    let took = until_refused(&mut c, "partner_suspended").await;
    assert!(took <= Duration::from_millis(1500), "took {took:?}");
    // GOAWAY: no new stream is accepted on that connection.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        c.get("/v1/orders").await.is_err(),
        "HTTP/2 connection stayed usable"
    );
    h.ok(&["partner", "resume", "acme"]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut c = Conn::open(broker.addr, &h.ca_pem(), &acme, false)
        .await
        .unwrap();
    assert_eq!(c.get("/v1/orders").await.unwrap().status, 200);
}

#[tokio::test]
async fn removal_and_rotation_overlap() {
    let (h, _up, acme) = setup().await;
    let broker = h.start();
    // Rotation: the old certificate keeps working during its overlap.
    let out = h.path().join("renewed");
    h.ok(&[
        "cert",
        "renew",
        "acme",
        "--overlap",
        "1h",
        "--out",
        out.to_str().unwrap(),
    ]);
    let new = h.read_client(&out, "acme");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut old_conn = Conn::open(broker.addr, &h.ca_pem(), &acme, false)
        .await
        .unwrap();
    assert_eq!(old_conn.get("/v1/orders").await.unwrap().status, 200);
    let mut new_conn = Conn::open(broker.addr, &h.ca_pem(), &new, false)
        .await
        .unwrap();
    assert_eq!(new_conn.get("/v1/orders").await.unwrap().status, 200);
    // Removal revokes everything, at once.
    h.ok(&["partner", "remove", "acme"]);
    until_refused(&mut new_conn, "revoked").await;
}
