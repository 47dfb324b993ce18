//! Hostile input: bad request targets (traversal, encoded separators,
//! control characters, absolute form, over-long), request smuggling shapes,
//! oversized headers and slow headers. None is relayed; none crashes the broker.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::broker::{Conn, TestHome, home_with_echo, raw_exchange, start_slow_upstream};
use common::upstream::{EchoOptions, start_echo_upstream};

#[tokio::test]
async fn bad_targets_get_400_and_are_never_relayed() {
    let (h, up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let broker = h.start();
    let ca = h.ca_pem();
    let long = format!("/v1/orders/{}", "a".repeat(9000));
    let targets = [
        "/v1/orders/../admin",
        "/v1/orders/%2e%2e/admin",
        "/v1/orders/%2E%2E/admin",
        "/v1/orders/.%2e/admin",
        "/v1/orders/./x",
        "/v1/orders/%2fadmin",
        "/v1/orders/%2Fadmin",
        "/v1/orders/%5cadmin",
        "/v1/orders/%00",
        "/v1/orders/%zz",
        "http://localhost/v1/orders",
        long.as_str(),
    ];
    for t in targets {
        let req = format!("GET {t} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
        let resp = raw_exchange(
            broker.addr,
            &ca,
            &acme,
            req.as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        let status_line = resp.lines().next().unwrap_or("");
        assert!(
            status_line.contains(" 400 ")
                || status_line.contains(" 414 ")
                || status_line.contains(" 431 "),
            "{t:.60}: {status_line:?}"
        );
    }
    // A raw backslash is refused too (hyper or the target check).
    let resp = raw_exchange(
        broker.addr,
        &ca,
        &acme,
        b"GET /v1/orders\\..\\x HTTP/1.1\r\nhost: l\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert_eq!(
        up.calls.load(Ordering::SeqCst),
        0,
        "a bad target reached the upstream"
    );
    // Still serving.
    let mut c = Conn::open(broker.addr, &ca, &acme, false).await.unwrap();
    assert_eq!(c.get("/v1/orders/7").await.unwrap().status, 200);
}

#[tokio::test]
async fn smuggling_shapes_are_refused_or_neutralized() {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("orders", &up);
    h.add_partner(
        "acme",
        &["POST /v1/orders -> orders", "GET /v1/secret -> orders"],
    );
    let acme = h.issue("acme");
    let broker = h.start();
    let ca = h.ca_pem();
    // Conflicting lengths: 400, nothing relayed.
    let shapes: [&[u8]; 2] = [
        b"POST /v1/orders HTTP/1.1\r\nhost: l\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
        b"POST /v1/orders HTTP/1.1\r\nhost: l\r\ncontent-length: 5, 6\r\n\r\nhello!",
    ];
    for s in shapes {
        let resp = raw_exchange(broker.addr, &ca, &acme, s, Duration::from_secs(5)).await;
        assert!(
            resp.starts_with("HTTP/1.1 400"),
            "{}: {resp}",
            String::from_utf8_lossy(s)
        );
        assert_eq!(
            resp.matches("HTTP/1.1").count(),
            1,
            "a second response: {resp}"
        );
    }
    assert_eq!(up.calls.load(Ordering::SeqCst), 0);
    // Content-Length with Transfer-Encoding: hyper resolves it as RFC 9112
    // §6.3 says (chunked wins, the length is dropped, the connection closes
    // after the response). The smuggled second request is never read, and
    // the upstream gets one cleanly re-framed request.
    let smuggle = b"POST /v1/orders HTTP/1.1\r\nhost: l\r\ncontent-length: 30\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/secret HTTP/1.1\r\nhost: l\r\n\r\n";
    let resp = raw_exchange(broker.addr, &ca, &acme, smuggle, Duration::from_secs(5)).await;
    assert_eq!(
        resp.matches("HTTP/1.1 ").count(),
        1,
        "the smuggled request was answered: {resp}"
    );
    let seen = up.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["path"], "/v1/orders");
    assert_eq!(seen[0]["body_bytes"], 0);
    assert!(
        seen[0]["headers"]
            .get("content-length")
            .is_none_or(|v| v == "0"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn oversized_headers_get_431_and_slow_headers_are_cut() {
    let h = TestHome::new();
    h.add_partner("acme", &[]);
    h.set_server("header_timeout", "1s");
    let acme = h.issue("acme");
    let broker = h.start();
    let ca = h.ca_pem();
    let big = format!(
        "GET /v1 HTTP/1.1\r\nhost: l\r\nx-big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let resp = raw_exchange(
        broker.addr,
        &ca,
        &acme,
        big.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 431"), "{resp:.200}");
    // Slowloris: half a header, then silence; the broker closes at the timeout.
    let t = Instant::now();
    let resp = raw_exchange(
        broker.addr,
        &ca,
        &acme,
        b"GET /v1 HTTP/1.1\r\nhost: l\r\nx-slow: ",
        Duration::from_secs(8),
    )
    .await;
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "slow header kept the connection for {took:?}: {resp}"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_but_busy_ones_are_not() {
    let h = TestHome::new();
    // An upstream slower than the idle timeout: a busy connection must survive it.
    let slow_addr = start_slow_upstream(Duration::from_millis(1800), "ok").await;
    h.add_upstream("slow", &format!("http://{slow_addr}"), None);
    h.add_partner("acme", &["GET /slow -> slow"]);
    h.set_server("idle_timeout", "1s");
    let acme = h.issue("acme");
    let broker = h.start();
    let ca = h.ca_pem();
    let mut c = Conn::open(broker.addr, &ca, &acme, false).await.unwrap();
    let r = c.get("/slow").await.unwrap();
    assert_eq!(
        r.status, 200,
        "a request longer than the idle timeout was cut"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        c.get("/slow").await.is_err(),
        "an idle connection stayed open"
    );
}
