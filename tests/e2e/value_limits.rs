//! Value limits end to end: a route whose JSON body carries an amount and a
//! currency, a partner with `[value_limits]`, a real echo upstream and a
//! real broker. Over `per_call` is 403, past the UTC day's total 429 (the
//! calls add up), an upstream 500 gives its amount back, unreadable bodies
//! are 400 saying which part, two currencies are counted apart, and in a
//! fleet of two nodes with a real Redis the calls share one daily total.
//! A refused call never reaches the upstream.

use std::path::Path;

use http::Method;

use crate::common;
use common::broker::{Broker, ClientCert, Conn, Reply, TestHome, admin_get};
use common::redis_server::RedisServer;
use common::upstream::{EchoOptions, EchoUpstream, start_echo_upstream};

const LIMITS: &str = r#"
[[routes]]
methods = ["POST"]
path = "/v1/transfers"
upstream = "orders"
risk = "high"
value = { amount = "/amount", currency = "/currency" }
max_body_bytes = 4096

[value_limits]
EUR = { per_call = "100.00", per_day = "250.00" }
USD = { per_day = "30" }
"#;

/// A home with the echo upstream `orders` and partner `acme` whose file is
/// `LIMITS`; its certificate.
async fn setup() -> (TestHome, EchoUpstream, ClientCert) {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("orders", &up);
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    std::fs::write(
        h.path().join("partners/acme.toml"),
        format!("id = \"acme\"\n{LIMITS}"),
    )
    .unwrap();
    let acme = h.issue("acme");
    (h, up, acme)
}

async fn transfer(c: &mut Conn, body: &str) -> Reply {
    c.send(
        Method::POST,
        "/v1/transfers",
        &[("content-type", "application/json")],
        body.as_bytes(),
    )
    .await
    .expect("the broker answers")
}

async fn pay(c: &mut Conn, amount: &str, currency: &str) -> Reply {
    transfer(
        c,
        &format!(r#"{{"amount": {amount}, "currency": "{currency}", "to": "DE89"}}"#),
    )
    .await
}

async fn open(b: &Broker, h: &TestHome, acme: &ClientCert) -> Conn {
    Conn::open(b.addr, &h.ca_pem(), acme, false)
        .await
        .expect("connect")
}

#[tokio::test]
async fn per_call_over_is_403_and_never_reaches_the_upstream() {
    let (h, up, acme) = setup().await;
    let b = h.start();
    let mut c = open(&b, &h, &acme).await;
    let r = pay(&mut c, "\"100.01\"", "EUR").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "value_limit_per_call");
    assert_eq!(r.json()["per_call"], "100.00");
    assert_eq!(up.calls(), 0);
    // Exactly the limit passes, as a JSON number or a string.
    let r = pay(&mut c, "100.00", "EUR").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.calls(), 1);
    // The upstream got the body whole.
    assert!(up.seen()[0]["body_bytes"].as_u64().unwrap() > 30);
    let rec = h
        .wait_journal(5, |v| v["reason"] == "value_limit_per_call")
        .await
        .expect("the refusal is on record");
    assert_eq!(rec["status"], 403);
}

#[tokio::test]
async fn the_day_total_adds_up_and_a_call_past_it_is_429() {
    let (h, up, acme) = setup().await;
    let b = h.start();
    let mut c = open(&b, &h, &acme).await;
    for _ in 0..2 {
        assert_eq!(pay(&mut c, "100", "EUR").await.status, 200);
    }
    let r = pay(&mut c, "\"50.01\"", "EUR").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"], "value_limit_daily");
    assert_eq!(r.json()["today"], "200.00");
    assert_eq!(r.json()["per_day"], "250.00");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    // The rest of the day's allowance still passes, to the last cent.
    assert_eq!(pay(&mut c, "50.00", "EUR").await.status, 200);
    assert_eq!(pay(&mut c, "0.01", "EUR").await.status, 429);
    assert_eq!(up.calls(), 3);
    // Zero is a value too, and it fits.
    assert_eq!(pay(&mut c, "0", "EUR").await.status, 200);

    // The operator sees today's total against the limit, and the metrics
    // count what was relayed.
    let status: serde_json::Value =
        serde_json::from_str(&h.ok(&["status", "--json"])).expect("status JSON");
    let acme = status["partners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "acme")
        .unwrap()
        .clone();
    let eur = acme["value_today"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["currency"] == "EUR")
        .unwrap()
        .clone();
    assert_eq!(eur["today"], "250.00");
    assert_eq!(eur["per_day"], "250.00");
    let table = h.ok(&["status"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains("acme") && l.contains("EUR") && l.contains("250.00")),
        "{table}"
    );
    let (_, metrics) = admin_get(b.admin, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("gatehouse_value_total{")
                && l.contains("currency=\"EUR\"")
                && l.ends_with(" 250.0")),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_upstream_failure_gives_the_amount_back() {
    let (h, up, acme) = setup().await;
    let b = h.start();
    let mut c = open(&b, &h, &acme).await;
    let failing = c
        .send(
            Method::POST,
            "/v1/transfers",
            &[
                ("content-type", "application/json"),
                ("x-echo-status", "500"),
            ],
            br#"{"amount": "30", "currency": "USD"}"#,
        )
        .await
        .unwrap();
    assert_eq!(failing.status, 500, "the upstream's answer is relayed");
    let rejected = c
        .send(
            Method::POST,
            "/v1/transfers",
            &[
                ("content-type", "application/json"),
                ("x-echo-status", "409"),
            ],
            br#"{"amount": "30", "currency": "USD"}"#,
        )
        .await
        .unwrap();
    assert_eq!(rejected.status, 409);
    // Both were given back: the whole day's USD 30 is still there.
    let r = pay(&mut c, "30", "USD").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = pay(&mut c, "0.0001", "USD").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(up.calls(), 3);
}

#[tokio::test]
async fn unreadable_bodies_are_400_saying_which_part() {
    let (h, up, acme) = setup().await;
    let b = h.start();
    let mut c = open(&b, &h, &acme).await;
    for (body, kind) in [
        ("amount=5&currency=EUR", "not_json"),
        (r#"{"amount": 5, "currency": "EUR""#, "not_json"),
        (r#"{"currency": "EUR"}"#, "field_missing"),
        (r#"{"amount": 5}"#, "field_missing"),
        (
            r#"{"amount": 5, "currency": "GBP"}"#,
            "currency_without_limit",
        ),
        (r#"{"amount": "5,00", "currency": "EUR"}"#, "bad_amount"),
        (r#"{"amount": 1e-7, "currency": "EUR"}"#, "bad_amount"),
        (r#"{"amount": -5, "currency": "EUR"}"#, "bad_amount"),
        (r#"{"amount": 5, "currency": "eur"}"#, "bad_currency"),
        (
            r#"{"amount": 5, "amount": 5000, "currency": "EUR"}"#,
            "not_json",
        ),
    ] {
        let r = transfer(&mut c, body).await;
        assert_eq!(r.status, 400, "{body}: {}", r.body);
        assert_eq!(r.json()["error"], "value_unreadable", "{body}");
        assert_eq!(r.json()["problem_kind"], kind, "{body}: {}", r.body);
        assert!(r.json()["problem"].as_str().is_some_and(|p| !p.is_empty()));
    }
    // A body past the route's limit is 413, not read to its end.
    let big = format!(
        r#"{{"amount": 5, "currency": "EUR", "pad": "{}"}}"#,
        "x".repeat(8192)
    );
    let r = transfer(&mut c, &big).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(up.calls(), 0, "nothing unreadable reached the upstream");
}

#[tokio::test]
async fn two_currencies_are_counted_apart() {
    let (h, up, acme) = setup().await;
    let b = h.start();
    let mut c = open(&b, &h, &acme).await;
    assert_eq!(pay(&mut c, "30", "USD").await.status, 200);
    assert_eq!(pay(&mut c, "1", "USD").await.status, 429);
    // USD's day is over; EUR's is untouched.
    for _ in 0..2 {
        assert_eq!(pay(&mut c, "100", "EUR").await.status, 200);
    }
    assert_eq!(pay(&mut c, "60", "EUR").await.status, 429);
    assert_eq!(up.calls(), 3);
}

#[tokio::test]
async fn a_single_node_rebuilds_the_day_total_from_its_journal() {
    let (h, up, acme) = setup().await;
    let b = h.start();
    let mut c = open(&b, &h, &acme).await;
    for _ in 0..2 {
        assert_eq!(pay(&mut c, "100", "EUR").await.status, 200);
    }
    let failing = c
        .send(
            Method::POST,
            "/v1/transfers",
            &[
                ("content-type", "application/json"),
                ("x-echo-status", "503"),
            ],
            br#"{"amount": "40", "currency": "EUR"}"#,
        )
        .await
        .unwrap();
    assert_eq!(failing.status, 503);
    drop(c);
    drop(b);
    // The records carry the value.
    let records = h.journal();
    let valued: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["value_currency"] == "EUR")
        .collect();
    assert_eq!(valued.len(), 3, "{records:?}");
    assert!(
        valued
            .iter()
            .all(|r| r["value_amount"] == "100.00" || r["value_amount"] == "40.00")
    );
    // After a restart the day's 200 (not the failed 40) still counts.
    let b = h.start();
    let mut c = open(&b, &h, &acme).await;
    let r = pay(&mut c, "50.01", "EUR").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["today"], "200.00");
    assert_eq!(pay(&mut c, "50", "EUR").await.status, 200);
    assert_eq!(up.calls(), 4);
}

fn data_dir(home: &Path, id: &str) -> String {
    home.join(format!("data-{id}")).display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_of_two_shares_one_daily_total() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let (h, up, acme) = setup().await;
    h.edit_config(|doc| {
        let mut t = toml_edit::Table::new();
        t["redis_url"] = toml_edit::value(redis.url());
        t["on_store_failure"] = toml_edit::value("deny");
        doc["cluster"] = toml_edit::Item::Table(t);
    });
    let n1 = Broker::start_args(
        h.path(),
        &["--node-id", "n1", "--data", &data_dir(h.path(), "n1")],
    );
    let n2 = Broker::start_args(
        h.path(),
        &["--node-id", "n2", "--data", &data_dir(h.path(), "n2")],
    );
    let mut c1 = open(&n1, &h, &acme).await;
    let mut c2 = open(&n2, &h, &acme).await;
    // 6 × 40 = 240 of 250, alternating nodes: each node alone would allow 250.
    for i in 0..6 {
        let c = if i % 2 == 0 { &mut c1 } else { &mut c2 };
        let r = pay(c, "40", "EUR").await;
        assert_eq!(r.status, 200, "call {i}: {}", r.body);
    }
    let r = pay(&mut c2, "40", "EUR").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["today"], "240.00");
    let r = pay(&mut c1, "40", "EUR").await;
    assert_eq!(r.status, 429, "{}", r.body);
    // A failed call on one node gives back on the fleet's total.
    let failing = c1
        .send(
            Method::POST,
            "/v1/transfers",
            &[
                ("content-type", "application/json"),
                ("x-echo-status", "502"),
            ],
            br#"{"amount": "10", "currency": "EUR"}"#,
        )
        .await
        .unwrap();
    assert_eq!(failing.status, 502);
    let mut given_back = false;
    for _ in 0..50 {
        let r = pay(&mut c2, "10", "EUR").await;
        if r.status == 200 {
            given_back = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        given_back,
        "the fleet's total got the failed call's 10 back"
    );
    assert_eq!(up.calls(), 8);
    // The total survives both nodes: it is the store's.
    drop((n1, n2));
    let n3 = Broker::start_args(
        h.path(),
        &["--node-id", "n3", "--data", &data_dir(h.path(), "n3")],
    );
    let mut c3 = open(&n3, &h, &acme).await;
    let r = pay(&mut c3, "0.01", "EUR").await;
    assert_eq!(r.status, 429, "{}", r.body);
}
