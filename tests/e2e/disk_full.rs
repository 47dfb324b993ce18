//! A full disk under the journal: the broker fails closed (503, not ready)
//! while it is full and, once space comes back, takes traffic again by
//! itself, without a restart; every 200 it answered is on record and the
//! chain verifies. Whatever filled the disk (the journal itself, another
//! file), however space came back (a file deleted, the file system grown),
//! and also after `kill -9` while full: the journal opens and verifies.
//! With `[journal] min_free`, the broker refuses (503, `disk_low` alert)
//! before the disk is full and resumes when space is back. The disk is a
//! small tmpfs mounted on the home's `data/` (root only; skipped
//! elsewhere, failed in CI).

use crate::common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::broker::{Broker, ClientCert, Conn, TestHome, admin_get, home_with_echo};
use common::faultfs::SmallFs;

/// What fills the disk.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fill {
    /// The journal's own records: traffic only, then the tmpfs is grown.
    Journal,
    /// Another file, then deleted.
    Filler,
}

/// How the broker comes back once space is back.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Back {
    /// The same process, by itself.
    Live,
    /// `kill -9` while full; space freed; `log verify`, then `serve` again.
    Kill9,
}

/// A kept-alive mTLS connection to the broker, reopened when it closes.
struct Caller {
    conn: Option<Conn>,
    ca: String,
    cert: ClientCert,
}

impl Caller {
    /// One GET: (status, request id, body), or None when the connection broke.
    async fn get(
        &mut self,
        broker: &Broker,
        path: &str,
    ) -> Option<(u16, String, serde_json::Value)> {
        if self.conn.is_none() {
            self.conn = Conn::open(broker.addr, &self.ca, &self.cert, false)
                .await
                .ok();
        }
        let r = match self.conn.as_mut() {
            Some(c) => c.get(path).await.ok(),
            None => None,
        };
        if r.is_none() {
            self.conn = None;
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
    }
}

fn set_min_free(h: &TestHome, v: &str) {
    let v = v.to_string();
    h.edit_config(|doc| doc["journal"]["min_free"] = toml_edit::value(v));
}

/// Every answered 200 is on record, none recorded as 200 unanswered, and
/// the chain verifies.
fn assert_on_record(h: &TestHome, acked: &HashSet<String>) {
    h.ok(&["log", "verify"]);
    let records = h.journal();
    let ids: HashSet<&str> = records
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    let missing = acked.iter().filter(|id| !ids.contains(id.as_str())).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} answered 200s missing from the journal",
        acked.len()
    );
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
}

/// Waits (bounded) for a 200; records its id.
async fn await_200(
    caller: &mut Caller,
    broker: &Broker,
    acked: &mut HashSet<String>,
    secs: u64,
) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if let Some((200, id, _)) = caller.get(broker, "/v1/orders/after").await {
            acked.insert(id);
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn full_disk_round(fill: Fill, back: Back) {
    let (h, up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    // sled writes each 8 MiB log segment out in full before using it.
    // Filled by the journal: room for its first segment, not a second one
    // (the file system is grown after). Filled by another file: once that
    // file is deleted there must be room for the segment that failed.
    let size = match fill {
        Fill::Journal => "12m",
        Fill::Filler => "20m",
    };
    let Some(disk) = SmallFs::mount(&h.path().join("data"), size) else {
        return;
    };
    // No margin: the disk really fills up (the margin has its own test).
    set_min_free(&h, "0");
    let mut broker = h.start();
    let mut caller = Caller {
        conn: None,
        ca: h.ca_pem(),
        cert: acme,
    };
    let mut acked: HashSet<String> = HashSet::new();
    for i in 0..5 {
        let (status, id, _) = caller
            .get(&broker, &format!("/v1/orders/before-{i}"))
            .await
            .expect("answer");
        assert_eq!(status, 200);
        acked.insert(id);
    }

    let filler = (fill == Fill::Filler).then(|| disk.fill("filler"));
    // Traffic until the disk refuses a write (bounded).
    let t0 = Instant::now();
    let mut first_503 = None;
    for i in 0..500_000 {
        assert!(
            t0.elapsed() < Duration::from_secs(180),
            "still answering 200 after {i} requests on a {fill:?}-filled disk"
        );
        match caller.get(&broker, &format!("/v1/orders/full-{i}")).await {
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
        let r = caller
            .get(&broker, &format!("/v1/orders/while-full-{i}"))
            .await;
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
    // Full for a while, as before an operator reacts: the journal keeps
    // probing (reopening sled) on the full disk.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(admin_get(broker.admin, "/readyz").await.0, 503);

    if back == Back::Kill9 {
        broker.signal("KILL");
        assert!(
            broker.wait_exit(15).is_some(),
            "kill -9 did not end the broker"
        );
        caller.conn = None;
        // Opened while still full (an operator's `log verify`, a restart):
        // sled writes its snapshot at every open, and that write fails.
        let out = h.run(&["log", "verify"]);
        eprintln!(
            "log verify on the full disk: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
    }
    // Space comes back.
    match &filler {
        Some(f) => std::fs::remove_file(f).unwrap(),
        None => disk.resize("64m"),
    }
    let freed = Instant::now();
    if back == Back::Kill9 {
        // Opens and verifies without the broker, then serves.
        h.ok(&["log", "verify"]);
        broker = h.start();
    }
    assert!(
        await_200(&mut caller, &broker, &mut acked, 20).await,
        "no 200 within 20 s of space coming back: {}",
        broker.log()
    );
    eprintln!(
        "disk_full {fill:?}/{back:?}: 503 after {} requests on the filling disk, 200 again {:.1} s after space came back",
        first_503.unwrap_or(0),
        freed.elapsed().as_secs_f64()
    );
    assert!(
        broker.child.try_wait().unwrap().is_none(),
        "broker restarted"
    );
    assert_eq!(admin_get(broker.admin, "/readyz").await.0, 200);
    for i in 0..20 {
        let (status, id, _) = caller
            .get(&broker, &format!("/v1/orders/again-{i}"))
            .await
            .expect("answer");
        assert_eq!(status, 200);
        acked.insert(id);
    }
    caller.conn = None;
    broker.signal("TERM");
    assert!(
        broker.wait_exit(15).is_some_and(|s| s.success()),
        "{}",
        broker.log()
    );
    assert_on_record(&h, &acked);
    // And it serves again after a restart.
    let broker = h.start();
    assert!(
        await_200(&mut caller, &broker, &mut HashSet::new(), 20).await,
        "{}",
        broker.log()
    );
    drop(broker);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_journal_fills_the_disk_then_the_disk_grows_and_it_serves_again() {
    full_disk_round(Fill::Journal, Back::Live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filler_file_fills_the_disk_then_is_deleted_and_it_serves_again() {
    full_disk_round(Fill::Filler, Back::Live).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_the_journal_filled_the_disk_it_opens_and_verifies() {
    full_disk_round(Fill::Journal, Back::Kill9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_a_filler_filled_the_disk_it_opens_and_verifies() {
    full_disk_round(Fill::Filler, Back::Kill9).await;
}

/// `[journal] min_free`: under the margin the broker refuses before the
/// disk is full (503 `journal_unavailable`, not ready, alert `disk_low` in
/// metrics and status) and resumes by itself when space is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_min_free_it_refuses_with_disk_low_and_resumes() {
    let (h, up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let Some(disk) = SmallFs::mount(&h.path().join("data"), "48m") else {
        return;
    };
    set_min_free(&h, "16MiB");
    let mut broker = h.start();
    let mut caller = Caller {
        conn: None,
        ca: h.ca_pem(),
        cert: acme,
    };
    let mut acked: HashSet<String> = HashSet::new();
    for i in 0..5 {
        let (status, id, _) = caller
            .get(&broker, &format!("/v1/orders/before-{i}"))
            .await
            .expect("answer");
        assert_eq!(status, 200);
        acked.insert(id);
    }
    // Another file leaves 8 MiB free: under the margin, far from full.
    let filler = disk.fill_until_free("filler", 8 << 20);
    let t0 = Instant::now();
    let mut refused = None;
    while t0.elapsed() < Duration::from_secs(10) {
        match caller.get(&broker, "/v1/orders/low").await {
            Some((200, id, _)) => {
                acked.insert(id);
            }
            Some((503, _, body)) => {
                refused = Some(body);
                break;
            }
            other => panic!("unexpected answer under the margin: {other:?}"),
        }
    }
    let body = refused.expect("no 503 within 10 s of free space falling under min_free");
    assert_eq!(body["error"], "journal_unavailable", "{body}");
    assert!(
        disk.free() > 4 << 20,
        "the disk filled up: the margin did not hold"
    );
    let relayed = up.calls.load(std::sync::atomic::Ordering::SeqCst);
    let r = caller.get(&broker, "/v1/orders/low-again").await;
    assert!(matches!(r, Some((503, _, _))), "{r:?}");
    assert_eq!(up.calls.load(std::sync::atomic::Ordering::SeqCst), relayed);
    assert_eq!(admin_get(broker.admin, "/readyz").await.0, 503);
    // The alert: metrics, status, log.
    let mut seen = false;
    for _ in 0..40 {
        let (_, metrics) = admin_get(broker.admin, "/metrics").await;
        if metrics.lines().any(|l| {
            l.contains("alerts_open") && l.contains("kind=\"disk_low\"") && l.ends_with(" 1")
        }) {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen,
        "no open disk_low alert in /metrics: {}",
        admin_get(broker.admin, "/metrics").await.1
    );
    let status = h.ok(&["status", "--admin", &broker.admin.to_string()]);
    assert!(
        status.contains("disk_low"),
        "status does not show disk_low:\n{status}"
    );
    assert!(broker.log().contains("disk_low"), "no disk_low in the log");

    // Space back: 200 again, same process.
    std::fs::remove_file(&filler).unwrap();
    assert!(
        await_200(&mut caller, &broker, &mut acked, 15).await,
        "no 200 within 15 s of space coming back: {}",
        broker.log()
    );
    assert_eq!(admin_get(broker.admin, "/readyz").await.0, 200);
    assert!(
        broker.child.try_wait().unwrap().is_none(),
        "broker restarted"
    );
    caller.conn = None;
    broker.signal("TERM");
    assert!(broker.wait_exit(15).is_some_and(|s| s.success()));
    assert_on_record(&h, &acked);
    drop(disk);
}

/// `gatehouse check` validates `[journal] min_free`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_validates_min_free() {
    let (h, _up, _acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    for ok in ["256MiB", "2%", "0", "1GB"] {
        set_min_free(&h, ok);
        h.ok(&["check"]);
    }
    for (bad, says) in [
        ("12 parsecs", "is not a size"),
        ("75%", "at most 50"),
        ("4KiB", "below 1MiB"),
    ] {
        set_min_free(&h, bad);
        let out = h.run(&["check"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "check passed min_free = {bad}");
        assert!(
            err.contains("min_free") || err.contains(says),
            "{bad}: {err}"
        );
        assert!(err.contains(says), "{bad}: {err}");
    }
}
