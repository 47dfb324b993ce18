//! The journal end to end: every exchange on record with its fields, the
//! chain verifies, kill -9 loses no exchange a partner saw complete, a
//! journal that cannot write fails closed (503, nothing relayed, not
//! ready), and a handshake flood is aggregated.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::broker::{
    Conn, TestHome, admin_get, client_tls, foreign_ca, get_once, home_with_echo, mint, tls_connect,
};
use tokio::sync::Mutex;

#[tokio::test]
async fn every_field_is_recorded_and_the_chain_verifies() {
    let (h, _up, acme) = home_with_echo(&["POST /v1/orders -> orders"]).await;
    let broker = h.start();
    let ca = h.ca_pem();
    let mut c = Conn::open(broker.addr, &ca, &acme, false).await.unwrap();
    let ok = c
        .send(http::Method::POST, "/v1/orders/7", &[], b"12345")
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    let denied = c.get("/v1/admin").await.unwrap();
    assert_eq!(denied.status, 403);
    let bad = c.get("/v1/orders/%2e%2e/x").await.unwrap();
    assert_eq!(bad.status, 400);
    let (rogue, rogue_pem) = foreign_ca();
    let foreign = mint(&rogue, &rogue_pem, |_| {});
    assert!(
        tls_connect(broker.addr, client_tls(&ca, Some(&foreign), &[b"http/1.1"]))
            .await
            .is_err()
    );

    let rid = |r: &common::broker::Reply| r.headers["x-request-id"].to_str().unwrap().to_string();
    let rec = h
        .wait_journal(5, |r| r["request_id"] == rid(&ok).as_str())
        .await
        .expect("allowed exchange recorded");
    for (k, v) in [
        ("kind", "exchange"),
        ("partner", "acme"),
        ("cert_serial", acme.serial.as_str()),
        ("tls_version", "TLSv1.3"),
        ("method", "POST"),
        ("path", "/v1/orders/7"),
        ("route", "/v1/orders"),
        ("upstream", "orders"),
        ("decision", "allowed"),
        ("node", "gatehouse-1"),
    ] {
        assert_eq!(rec[k], v, "{k}: {rec:#}");
    }
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["request_bytes"], 5);
    assert!(rec["response_bytes"].as_u64().unwrap() > 0);
    assert!(rec["duration_us"].as_u64().unwrap() > 0);
    assert_eq!(rec["cert_fingerprint"].as_str().unwrap().len(), 64);
    assert!(
        rec["client_addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(rec["hash"].as_str().unwrap().len(), 64);
    assert!(rec["time"].as_str().unwrap().ends_with('Z'));

    let rec = h
        .wait_journal(5, |r| r["request_id"] == rid(&denied).as_str())
        .await
        .unwrap();
    assert_eq!(rec["decision"], "denied");
    assert_eq!(rec["reason"], "route_not_granted");
    assert_eq!(rec["status"], 403);
    let rec = h
        .wait_journal(5, |r| r["request_id"] == rid(&bad).as_str())
        .await
        .unwrap();
    assert_eq!(rec["decision"], "denied");
    assert_eq!(rec["status"], 400);
    assert_eq!(rec["path"], "/v1/orders/%2e%2e/x");
    assert!(
        h.wait_journal(5, |r| r["kind"] == "handshake"
            && r["reason"] == "unknown_ca")
            .await
            .is_some()
    );

    // Query by partner through the running broker, and verify.
    let q = h.ok(&[
        "log",
        "query",
        "--partner",
        "acme",
        "--since",
        "1h",
        "--json",
    ]);
    assert_eq!(q.lines().count(), 3, "{q}");
    h.ok(&["log", "verify"]);
    // Sequence numbers are dense.
    let seqs: Vec<u64> = h
        .journal()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    drop(c);
    drop(broker);
    // And after the broker is gone, straight from the database.
    h.ok(&["log", "verify"]);
    let q = h.ok(&[
        "log",
        "query",
        "--partner",
        "acme",
        "--decision",
        "denied",
        "--json",
    ]);
    assert_eq!(q.lines().count(), 2, "{q}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_loses_no_exchange_a_partner_saw_complete() {
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let mut broker = h.start();
    let ca = h.ca_pem();
    let completed = Arc::new(Mutex::new(Vec::<String>::new()));
    let started = Instant::now();
    // The writers' own bound; the kill comes long before it.
    let give_up_at = started + Duration::from_secs(40);
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (ca, acme, completed) = (ca.clone(), acme.clone(), completed.clone());
        let addr = broker.addr;
        tasks.push(tokio::spawn(async move {
            let Ok(mut c) = Conn::open(addr, &ca, &acme, w % 2 == 1).await else {
                return;
            };
            for i in 0..100_000 {
                match c.get(&format!("/v1/orders/{w}-{i}")).await {
                    Ok(r) if r.status == 200 => {
                        completed
                            .lock()
                            .await
                            .push(r.headers["x-request-id"].to_str().unwrap().to_string());
                    }
                    _ => return,
                }
                if Instant::now() > give_up_at {
                    return;
                }
            }
        }));
    }
    // Killed mid-load: after at least 1.5 s and 60 completed calls
    // (however slow the machine), bounded at 20 s.
    while (started.elapsed() < Duration::from_millis(1500) || completed.lock().await.len() < 60)
        && started.elapsed() < Duration::from_secs(20)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.signal("KILL");
    assert!(broker.wait_exit(5).is_some());
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
    }
    let completed = completed.lock().await.clone();
    assert!(completed.len() > 50, "too little load: {}", completed.len());
    // Straight from the database after the crash.
    let records = h.journal();
    let ids: std::collections::HashSet<&str> = records
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    let missing: Vec<_> = completed
        .iter()
        .filter(|id| !ids.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} completed exchanges missing from the journal",
        missing.len(),
        completed.len()
    );
    h.ok(&["log", "verify"]);
    // Restart: sequence numbers carry on densely.
    let before = records.last().unwrap()["seq"].as_u64().unwrap();
    let broker = h.start();
    assert_eq!(
        get_once(broker.addr, &ca, &acme, "/v1/orders/after")
            .await
            .unwrap()
            .status,
        200
    );
    let rec = h
        .wait_journal(5, |r| r["path"] == "/v1/orders/after")
        .await
        .unwrap();
    assert!(rec["seq"].as_u64().unwrap() > before);
    let seqs: Vec<u64> = h
        .journal()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1));
}

#[tokio::test]
async fn a_journal_that_cannot_write_fails_closed_and_recovers() {
    let (h, up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let broker = h.start();
    let ca = h.ca_pem();
    assert_eq!(admin_get(broker.admin, "/readyz").await.0, 200);
    assert_eq!(
        get_once(broker.addr, &ca, &acme, "/v1/orders")
            .await
            .unwrap()
            .status,
        200
    );
    let calls = up.calls.load(Ordering::SeqCst);
    h.ok(&["log", "fault-drill", "fail"]);
    // The failure shows at the next write; then every call is 503, none relayed.
    let mut saw_503 = 0;
    for _ in 0..20 {
        // The call in flight when writes start failing is cut off (its end is
        // withheld: it could not be recorded); later ones get 503.
        let Ok(r) = get_once(broker.addr, &ca, &acme, "/v1/orders").await else {
            continue;
        };
        if r.status == 503 {
            assert_eq!(r.json()["error"], "journal_unavailable");
            saw_503 += 1;
            if saw_503 == 3 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(saw_503, 3);
    let relayed_during = up.calls.load(Ordering::SeqCst) - calls;
    assert!(
        relayed_during <= 1,
        "relayed {relayed_during} calls that could not be recorded"
    );
    let calls = up.calls.load(Ordering::SeqCst);
    assert_eq!(admin_get(broker.admin, "/readyz").await.0, 503);
    assert_eq!(
        get_once(broker.addr, &ca, &acme, "/v1/orders")
            .await
            .unwrap()
            .status,
        503
    );
    assert_eq!(up.calls.load(Ordering::SeqCst), calls);
    h.ok(&["log", "fault-drill", "recover"]);
    let mut ok = false;
    for _ in 0..50 {
        if get_once(broker.addr, &ca, &acme, "/v1/orders")
            .await
            .unwrap()
            .status
            == 200
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "did not recover");
    assert_eq!(admin_get(broker.admin, "/readyz").await.0, 200);
}

#[tokio::test]
async fn a_handshake_flood_is_aggregated() {
    let h = TestHome::new();
    h.add_partner("acme", &[]);
    let mut broker = h.start();
    let ca = h.ca_pem();
    let (rogue, rogue_pem) = foreign_ca();
    let foreign = mint(&rogue, &rogue_pem, |_| {});
    let cfg = client_tls(&ca, Some(&foreign), &[b"http/1.1"]);
    for _ in 0..300 {
        let _ = tls_connect(broker.addr, cfg.clone()).await;
    }
    // Stop the broker: the open aggregate is written at shutdown.
    broker.signal("TERM");
    assert!(broker.wait_exit(15).is_some_and(|s| s.success()));
    let records = h.journal();
    let single = records.iter().filter(|r| r["kind"] == "handshake").count();
    let aggregates: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "handshake_aggregate")
        .collect();
    assert!(single <= 10, "{single} single handshake records");
    assert!(!aggregates.is_empty(), "no aggregate record");
    assert!(
        records.len() < 30,
        "{} records for 300 refused handshakes",
        records.len()
    );
    let detail = aggregates[0]["detail"].as_str().unwrap_or("");
    assert!(detail.contains("127.0.0.1"), "{detail}");
    h.ok(&["log", "verify"]);
}
