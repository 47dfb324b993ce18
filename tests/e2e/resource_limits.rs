//! Resource limits and the admin surface, as an operator or a hostile
//! client meets them: the open-files limit raised at start (and a warning
//! when the hard limit is too low for `max_connections`), the cap on
//! unfinished handshakes per address, a partner that stops reading a large
//! response (its upstream connection is released within `write_timeout`),
//! the admin listener's connection cap and header timeout, and
//! `gatehouse status` finding the broker through `data/admin.sock`.

use crate::common;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::broker::{
    BIN, Broker, Conn, TestHome, client_tls, home_with_echo, stalled_reader,
    start_endless_upstream, tls_connect,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// (soft, hard) "Max open files" of a running process.
fn open_files_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let mut f = line["Max open files".len()..].split_whitespace();
    (f.next().unwrap().into(), f.next().unwrap().into())
}

#[tokio::test]
async fn serve_raises_the_open_files_limit_and_warns_when_it_is_too_low() {
    let h = TestHome::new();
    h.add_partner("acme", &[]);
    h.set_server("max_connections", 5000);
    // Started with soft 256 under a hard limit of 2048: too low for 5000
    // connections (two descriptors each).
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "ulimit -Sn 256 && ulimit -Hn 2048 && exec \"$0\" \"$@\"",
        BIN,
    ]);
    let broker = Broker::start_with(h.path(), cmd);
    assert_eq!(
        open_files_limit(broker.child.id()),
        ("2048".to_string(), "2048".to_string()),
        "the soft limit was not raised to the hard one"
    );
    assert!(
        broker.wait_log("open-files limit raised", 5).await,
        "{}",
        broker.log()
    );
    assert!(
        broker.wait_log("below what max_connections needs", 5).await,
        "{}",
        broker.log()
    );

    drop(broker);
    // With enough descriptors, no warning.
    h.set_server("max_connections", 100);
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "ulimit -Sn 256 && ulimit -Hn 4096 && exec \"$0\" \"$@\"",
        BIN,
    ]);
    let broker = Broker::start_with(h.path(), cmd);
    assert_eq!(open_files_limit(broker.child.id()).0, "4096");
    assert!(broker.wait_log("gatehouse serving", 5).await);
    assert!(
        !broker.log().contains("below what max_connections needs"),
        "{}",
        broker.log()
    );
}

#[tokio::test]
async fn one_address_cannot_hold_more_than_its_share_of_unfinished_handshakes() {
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    h.set_server("max_pending_handshakes_per_addr", 4);
    h.set_server("handshake_timeout", "20s");
    let broker = h.start();
    let ca = h.ca_pem();
    // Four connections that never start their handshake.
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(broker.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The fifth from the same address is closed at once, unanswered.
    let mut fifth = TcpStream::connect(broker.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), fifth.read(&mut buf))
        .await
        .expect("the fifth connection was left open");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let refused = tls_connect(broker.addr, client_tls(&ca, Some(&acme), &[b"http/1.1"])).await;
    assert!(refused.is_err(), "a partner got past the cap");
    assert!(
        h.wait_journal(5, |r| r["kind"] == "handshake"
            && r["reason"] == "too_many_pending_handshakes")
            .await
            .is_some()
    );
    // Once they go, the address is served again.
    drop(silent);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = Conn::open(broker.addr, &ca, &acme, false).await.unwrap();
    assert_eq!(c.get("/v1/orders/1").await.unwrap().status, 200);
}

#[tokio::test]
async fn a_partner_that_stops_reading_does_not_pin_the_upstream_connection() {
    let (up, closed_after_ms, writing) = start_endless_upstream().await;
    let h = TestHome::new();
    h.add_upstream("big", &format!("http://{up}"), None);
    h.add_partner("acme", &["GET /big -> big"]);
    h.set_server("write_timeout", "2s");
    h.set_server("idle_timeout", "2s");
    let acme = h.issue("acme");
    let broker = h.start();
    // Read the head and some body, then stop reading (the connection stays open).
    let mut tls = stalled_reader(broker.addr, &h.ca_pem(), &acme, "/big").await;
    assert!(
        writing.load(Ordering::SeqCst),
        "the upstream is not streaming"
    );
    let stopped = Instant::now();
    // Buffers fill within a moment, then `write_timeout` (2 s) runs.
    let mut released = false;
    for _ in 0..150 {
        if !writing.load(Ordering::SeqCst) {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = stopped.elapsed();
    assert!(
        released,
        "the upstream connection was still pinned {took:?} after the partner stopped reading"
    );
    assert!(
        took < Duration::from_secs(12),
        "released only after {took:?}"
    );
    assert!(closed_after_ms.load(Ordering::SeqCst) > 0);
    // On record as an exchange the partner did not take whole.
    let rec = h
        .wait_journal(5, |r| r["path"] == "/big" && r["reason"] == "incomplete")
        .await;
    assert!(rec.is_some(), "{:?}", h.journal());
    // The partner's connection is let go too: once what was buffered is
    // read, it ends (the body is gone); unread, it is cut after the idle
    // and write timeouts. Bounded by time: the buffers may hold megabytes.
    let mut closed = false;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(100), tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "the partner's stalled connection was never closed");
    drop(broker);
}

#[tokio::test]
async fn the_admin_listener_caps_connections_and_cuts_silent_ones() {
    let h = TestHome::new();
    h.add_partner("acme", &[]);
    let broker = h.start();
    // Fill every admin slot (64) with connections that never send a byte.
    let mut silent = Vec::new();
    for _ in 0..64 {
        silent.push(TcpStream::connect(broker.admin).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The next request waits for a slot: one frees when the silent ones are
    // cut by the header timeout (5 s).
    let t = Instant::now();
    let (status, _) = common::broker::admin_get(broker.admin, "/healthz").await;
    let took = t.elapsed();
    assert_eq!(status, 200);
    assert!(
        took >= Duration::from_secs(3),
        "answered in {took:?}: no connection cap"
    );
    assert!(
        took < Duration::from_secs(10),
        "answered only after {took:?}"
    );
    // The silent ones were closed.
    let mut buf = [0u8; 8];
    for s in silent.iter_mut().take(4) {
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_finds_the_broker_through_the_admin_socket() {
    let h = TestHome::new();
    h.add_partner("acme", &[]);
    // gatehouse.toml names an admin address nobody listens on; the broker
    // is started on another (`--admin 127.0.0.1:0`).
    h.set_server("admin", "127.0.0.1:1");
    let broker = h.start();
    let dir = h.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .arg("--home")
            .arg(dir)
            .args(["status", "--json"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["partners"][0]["id"], "acme", "{doc}");
    drop(broker);
    // With the broker stopped, status says so.
    let out = h.run(&["status"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not running"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
