//! A full disk under the journal: the broker fails closed (503, not ready)
//! while it is full and, once space comes back, takes traffic again by
//! itself, without a restart; every 200 it answered is on record and the
//! chain verifies. The disk is a small tmpfs mounted on the home's `data/`
//! (root only; skipped elsewhere, failed in CI).

use crate::common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::broker::{Conn, admin_get, home_with_echo};
use common::faultfs::SmallFs;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_closed_and_recovers_without_a_restart() {
    let (h, up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let Some(disk) = SmallFs::mount(&h.path().join("data"), "8m") else {
        return;
    };
    let mut broker = h.start();
    let ca = h.ca_pem();
    let mut acked: HashSet<String> = HashSet::new();
    let mut conn: Option<Conn> = None;
    // One request on a kept-alive connection (reopened when the broker
    // closes it); the status and request id.
    macro_rules! call {
        ($path:expr) => {{
            if conn.is_none() {
                conn = Conn::open(broker.addr, &ca, &acme, false).await.ok();
            }
            let r = match conn.as_mut() {
                Some(c) => c.get($path).await.ok(),
                None => None,
            };
            if r.is_none() {
                conn = None;
            }
            r.map(|r| {
                let id = r
                    .headers
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                (r.status.as_u16(), id, r.json())
            })
        }};
    }
    for i in 0..5 {
        let (status, id, _) = call!(&format!("/v1/orders/before-{i}")).expect("answer");
        assert_eq!(status, 200);
        acked.insert(id);
    }

    let filler = disk.fill("filler");
    // The journal's file has room left in its current segment; keep going
    // until the disk refuses a write (bounded).
    let t0 = Instant::now();
    let mut first_503 = None;
    for i in 0..20_000 {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "still answering 200 after {i} requests on a full disk"
        );
        match call!(&format!("/v1/orders/full-{i}")) {
            Some((200, id, _)) => {
                acked.insert(id);
            }
            Some((503, _, body)) => {
                assert_eq!(body["error"], "journal_unavailable", "{body}");
                first_503 = Some(i);
                break;
            }
            Some((other, _, body)) => panic!("unexpected {other}: {body}"),
            None => {} // the response that could not be recorded was cut off
        }
    }
    assert!(first_503.is_some(), "never failed closed");
    // Full: every call is 503 and nothing is relayed; not ready.
    let relayed = up.calls.load(std::sync::atomic::Ordering::SeqCst);
    for i in 0..5 {
        let r = call!(&format!("/v1/orders/while-full-{i}"));
        assert!(
            matches!(r, Some((503, _, _)) | None),
            "answered while the disk is full: {r:?}"
        );
    }
    assert_eq!(
        up.calls.load(std::sync::atomic::Ordering::SeqCst),
        relayed,
        "relayed calls that could not be recorded"
    );
    assert_eq!(admin_get(broker.admin, "/readyz").await.0, 503);

    // Space comes back: 200 again within seconds, same process.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    let mut back = false;
    while freed.elapsed() < Duration::from_secs(15) {
        if let Some((200, id, _)) = call!("/v1/orders/after") {
            acked.insert(id);
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        back,
        "no 200 within 15 s of space coming back: {}",
        broker.log()
    );
    eprintln!(
        "disk_full: 503 after {} requests on the full disk, 200 again {:.1} s after space came back",
        first_503.unwrap_or(0),
        freed.elapsed().as_secs_f64()
    );
    assert!(
        broker.child.try_wait().unwrap().is_none(),
        "broker restarted"
    );
    assert_eq!(admin_get(broker.admin, "/readyz").await.0, 200);
    for i in 0..20 {
        let (status, id, _) = call!(&format!("/v1/orders/again-{i}")).expect("answer");
        assert_eq!(status, 200);
        acked.insert(id);
    }
    drop(conn);
    broker.signal("TERM");
    assert!(broker.wait_exit(15).is_some_and(|s| s.success()));

    h.ok(&["log", "verify"]);
    let records = h.journal();
    let ids: HashSet<&str> = records
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !ids.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} answered 200s missing from the journal",
        missing.len(),
        acked.len()
    );
    // Nothing recorded as a 200 that the partner did not get as one.
    let recorded_200: HashSet<&str> = records
        .iter()
        .filter(|r| r["status"] == 200)
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    let extra: Vec<&&str> = recorded_200
        .iter()
        .filter(|id| !acked.contains(**id))
        .collect();
    assert!(
        extra.len() <= 1,
        "records of 200s no partner received: {extra:?}"
    );
    drop(disk);
}
