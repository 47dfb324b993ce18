//! Relaying: identity headers set, spoofed ones dropped, deny by default,
//! HTTP/2, the upstream's certificate verified, the broker's own client
//! certificate presented, upstream failures mapped to 502/504, body limits.

use crate::common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::broker::ClientCert;
use common::broker::{
    Conn, TestHome, get_once, home_with_echo, home_with_plain_upstream, start_raw_upstream,
};
use common::upstream::{EchoOptions, EchoUpstream, start_echo_upstream};
use http::Method;

#[tokio::test]
async fn allowed_call_is_relayed_with_the_broker_identity_headers() {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions {
        client_ca_pem: Some(h.upstream_client_ca_pem()),
        ..Default::default()
    })
    .await;
    h.add_echo_upstream("orders", &up);
    h.add_partner("acme", &["GET,POST /v1/orders -> orders"]);
    let acme = h.issue("acme");
    let broker = h.start();
    let mut c = Conn::open(broker.addr, &h.ca_pem(), &acme, false)
        .await
        .unwrap();
    let r = c
        .send(
            Method::POST,
            "/v1/orders/7?x=1",
            &[
                ("x-gatehouse-partner", "globex"),
                ("x-gatehouse-cert-serial", "00"),
                (
                    "x-forwarded-client-cert",
                    "Hash=evil;URI=spiffe://gatehouse.local/partner/globex",
                ),
                ("forwarded", "for=6.6.6.6"),
                ("x-forwarded-for", "6.6.6.6"),
                ("x-request-id", "forged"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "1"),
                ("x-custom", "kept"),
            ],
            b"hello",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let echo = r.json();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/v1/orders/7?x=1");
    assert_eq!(echo["body_bytes"], 5);
    let hd = &echo["headers"];
    assert_eq!(hd["x-gatehouse-partner"], "acme");
    assert_eq!(hd["x-gatehouse-cert-serial"], acme.serial.as_str());
    let xfcc = hd["x-forwarded-client-cert"].as_str().unwrap();
    assert!(
        xfcc.starts_with("Hash=") && xfcc.ends_with(";URI=spiffe://gatehouse.local/partner/acme"),
        "{xfcc}"
    );
    assert!(!xfcc.contains("evil"));
    assert_eq!(hd["x-forwarded-for"], "127.0.0.1");
    assert!(hd.get("forwarded").is_none());
    assert!(hd.get("x-hop").is_none());
    assert_eq!(hd["x-custom"], "kept");
    let rid = r.headers["x-request-id"].to_str().unwrap();
    assert_eq!(hd["x-request-id"], rid);
    assert_ne!(rid, "forged");
    // The upstream required a client certificate and saw the broker's.
    assert_eq!(echo["client_cert_cn"], "gatehouse-broker");
    assert_eq!(up.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn ungranted_calls_are_denied_and_never_relayed() {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("orders", &up);
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    h.add_partner("globex", &["GET /v1/invoices -> orders"]);
    let acme = h.issue("acme");
    let broker = h.start();
    let mut c = Conn::open(broker.addr, &h.ca_pem(), &acme, false)
        .await
        .unwrap();
    for (m, p) in [
        (Method::DELETE, "/v1/orders/7"),
        (Method::POST, "/v1/orders"),
        (Method::GET, "/v1/orders-export"),
        (Method::GET, "/v1/invoices"),
        (Method::GET, "/v1/nonexistent"),
        (Method::GET, "/"),
    ] {
        let r = c.send(m.clone(), p, &[], b"").await.unwrap();
        assert_eq!(r.status, 403, "{m} {p}");
        assert_eq!(r.json()["error"], "route_not_granted", "{m} {p}");
        assert_eq!(
            r.json()["request_id"],
            r.headers["x-request-id"].to_str().unwrap()
        );
    }
    assert_eq!(up.calls.load(Ordering::SeqCst), 0);
    let r = c.get("/v1/orders/7").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn http2_is_served_and_relayed() {
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let broker = h.start();
    let mut c = Conn::open(broker.addr, &h.ca_pem(), &acme, true)
        .await
        .unwrap();
    for i in 0..3 {
        let r = c.get(&format!("/v1/orders/{i}")).await.unwrap();
        assert_eq!(r.version, http::Version::HTTP_2);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["path"], format!("/v1/orders/{i}"));
        assert_eq!(r.json()["headers"]["x-gatehouse-partner"], "acme");
    }
    let r = c.get("/v2").await.unwrap();
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn an_upstream_with_a_certificate_from_the_wrong_ca_gets_502_and_no_request() {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions {
        wrong_ca: true,
        ..Default::default()
    })
    .await;
    h.add_echo_upstream("orders", &up);
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    let acme = h.issue("acme");
    let broker = h.start();
    let r = get_once(broker.addr, &h.ca_pem(), &acme, "/v1/orders")
        .await
        .unwrap();
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"], "upstream_tls", "{}", broker.log());
    assert_eq!(up.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn upstream_down_is_503_with_retry_after_and_silent_upstream_is_504() {
    let h = TestHome::new();
    // A port with nothing listening.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    // A listener that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..16 {
            if let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        }
    });
    h.add_upstream("down", &format!("http://{closed}"), None);
    h.add_upstream("slow", &format!("http://{silent_addr}"), None);
    h.edit_config(|d| d["upstreams"]["slow"]["response_timeout"] = toml_edit::value("1s"));
    h.add_partner("acme", &["GET /down -> down", "GET /slow -> slow"]);
    let acme = h.issue("acme");
    let broker = h.start();
    let r = get_once(broker.addr, &h.ca_pem(), &acme, "/down")
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "upstream_unavailable");
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    let t = std::time::Instant::now();
    let r = get_once(broker.addr, &h.ca_pem(), &acme, "/slow")
        .await
        .unwrap();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// A home whose partner `acme` may POST at most 1000 bytes to
/// `/v1/orders` (an echo upstream behind it), and acme's certificate.
async fn home_with_a_1000_byte_body_limit() -> (TestHome, EchoUpstream, ClientCert) {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("orders", &up);
    h.add_partner("acme", &["POST /v1/orders -> orders"]);
    let p = h.path().join("partners/acme.toml");
    let text = std::fs::read_to_string(&p).unwrap().replace(
        "upstream = \"orders\"",
        "upstream = \"orders\"\nmax_body_bytes = 1000",
    );
    std::fs::write(&p, text).unwrap();
    let acme = h.issue("acme");
    (h, up, acme)
}

#[tokio::test]
async fn request_bodies_over_the_route_limit_get_413() {
    let (h, up, acme) = home_with_a_1000_byte_body_limit().await;
    let broker = h.start();
    let mut c = Conn::open(broker.addr, &h.ca_pem(), &acme, false)
        .await
        .unwrap();
    let r = c
        .send(Method::POST, "/v1/orders", &[], &[b'x'; 1000])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let mut c = Conn::open(broker.addr, &h.ca_pem(), &acme, false)
        .await
        .unwrap();
    let r = c
        .send(Method::POST, "/v1/orders", &[], &[b'x'; 1001])
        .await
        .unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "body_too_large");
    assert_eq!(up.calls.load(Ordering::SeqCst), 1);
}

/// A chunked request body (no Content-Length, so the declared-size check
/// cannot refuse it up front) that grows past the route's limit while it
/// streams: refused with 413 `body_too_large`, the connection closed, and
/// the refusal on record.
#[tokio::test]
async fn a_chunked_request_body_over_the_route_limit_gets_413_on_record() {
    let (h, _up, acme) = home_with_a_1000_byte_body_limit().await;
    let broker = h.start();
    let chunk = format!("400\r\n{}\r\n", "x".repeat(0x400));
    let request = format!(
        "POST /v1/orders HTTP/1.1\r\nhost: l\r\ntransfer-encoding: chunked\r\n\r\n{}0\r\n\r\n",
        chunk.repeat(4)
    );
    let resp = common::broker::raw_exchange(
        broker.addr,
        &h.ca_pem(),
        &acme,
        request.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("body_too_large"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("connection: close"),
        "the connection must close after a body over the limit: {resp}"
    );
    drop(broker);
    let rec = h
        .wait_journal(5, |v| v["path"] == "/v1/orders")
        .await
        .expect("the refusal is on record");
    assert_eq!(rec["status"], 413);
    assert_eq!(rec["reason"], "body_too_large");
}

#[tokio::test]
async fn the_signed_identity_can_be_turned_off_per_upstream() {
    let h = TestHome::new();
    let (up, legacy) = (
        start_echo_upstream(EchoOptions::default()).await,
        start_echo_upstream(EchoOptions::default()).await,
    );
    h.add_echo_upstream("orders", &up);
    h.add_echo_upstream("legacy", &legacy);
    h.edit_config(|d| d["upstreams"]["legacy"]["signed_identity"] = toml_edit::value(false));
    h.add_partner(
        "acme",
        &["GET /v1/orders -> orders", "GET /legacy -> legacy"],
    );
    let acme = h.issue("acme");
    let broker = h.start();
    let mut c = Conn::open(broker.addr, &h.ca_pem(), &acme, false)
        .await
        .unwrap();
    let forged = [("x-gatehouse-identity", "forged")];
    let r = c
        .send(Method::GET, "/v1/orders", &forged, b"")
        .await
        .unwrap();
    let token = r.json()["headers"]["x-gatehouse-identity"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    let r = c.send(Method::GET, "/legacy", &forged, b"").await.unwrap();
    assert_eq!(r.status, 200);
    assert!(
        r.json()["headers"].get("x-gatehouse-identity").is_none(),
        "{}",
        r.body
    );
    assert_eq!(r.json()["headers"]["x-gatehouse-partner"], "acme");
}

/// A small response (read whole before it is sent) whose upstream closes
/// mid-body: the partner gets a clean 502, never a cut-off 200, and the
/// exchange is on record as that 502.
#[tokio::test]
async fn a_small_response_cut_off_by_the_upstream_is_a_502_on_record() {
    let addr = start_raw_upstream(vec![(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part",
        Duration::ZERO,
    )])
    .await;
    let (h, acme) = home_with_plain_upstream(addr);
    let (r, rec) = get_orders_and_its_record(&h, &acme).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"], "upstream_body_error");
    assert_eq!(rec["status"], 502);
    assert_eq!(rec["reason"], "upstream_body_error");
}

/// Responses above the whole-response size (16 KiB) stream through, with
/// their last frame held for the record: the partner gets every byte and
/// the record counts them.
#[tokio::test]
async fn a_large_response_streams_through_whole_and_on_record() {
    let body: &'static str = Box::leak("0123456789abcdef".repeat(6400).into_boxed_str());
    let upstream = common::broker::start_slow_upstream(Duration::ZERO, body).await;
    let (h, acme) = home_with_plain_upstream(upstream);
    let (r, rec) = get_orders_and_its_record(&h, &acme).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 102_400);
    assert!(r.body == body, "the body arrived altered");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["response_bytes"], 102_400);
}

/// A chunked response (no Content-Length) streams through, its end held
/// for the record: the partner gets every chunk, the record counts them.
#[tokio::test]
async fn a_chunked_response_streams_through_and_is_on_record() {
    let addr = start_raw_upstream(vec![
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
            Duration::from_millis(50),
        ),
        (b"6\r\n world\r\n0\r\n\r\n", Duration::from_millis(200)),
    ])
    .await;
    let (h, acme) = home_with_plain_upstream(addr);
    let (r, rec) = get_orders_and_its_record(&h, &acme).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "hello world");
    assert_eq!(rec["status"], 200);
    assert_eq!(rec["response_bytes"], 11);
}

/// Starts the broker of `h`, GETs `/v1/orders` as `acme`, stops the broker
/// and returns the response and the exchange's journal record.
async fn get_orders_and_its_record(
    h: &TestHome,
    acme: &common::broker::ClientCert,
) -> (common::broker::Reply, serde_json::Value) {
    let broker = h.start();
    let r = get_once(broker.addr, &h.ca_pem(), acme, "/v1/orders")
        .await
        .unwrap();
    drop(broker);
    let rec = h
        .wait_journal(5, |v| v["path"] == "/v1/orders")
        .await
        .expect("the exchange is on record");
    (r, rec)
}
