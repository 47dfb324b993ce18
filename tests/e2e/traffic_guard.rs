//! Traffic guard end to end: rate limits with Retry-After, a per-route limit
//! tighter than the partner's, a daily quota, and anomaly alerts delivered
//! to the journal, the metrics and a webhook, with throttle mode cleared by
//! `partner resume`.

use crate::common;

use std::time::Duration;

use common::broker::{Conn, TestHome, admin_get};
use common::upstream::{EchoOptions, start_echo_upstream};
use common::webhook::Webhook;

fn write_partner(h: &TestHome, id: &str, body: &str) {
    std::fs::write(
        h.path().join(format!("partners/{id}.toml")),
        format!("id = \"{id}\"\n{body}"),
    )
    .unwrap();
}

#[tokio::test]
async fn bursts_get_429_with_retry_after_and_the_partner_recovers() {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("orders", &up);
    write_partner(
        &h,
        "acme",
        r#"
[limits]
requests_per_minute = 60
burst = 3

[[routes]]
methods = ["GET"]
path = "/v1/orders"
upstream = "orders"

[[routes]]
methods = ["GET"]
path = "/v1/reports"
upstream = "orders"
risk = "high"
limits = { requests_per_day = 2 }
"#,
    );
    let acme = h.issue("acme");
    let broker = h.start();
    let mut c = Conn::open(broker.addr, &h.ca_pem(), &acme, false)
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(c.get("/v1/orders").await.unwrap().status, 200);
    }
    let r = c.get("/v1/orders").await.unwrap();
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["error"], "rate_limited");
    assert_eq!(r.json()["limit"], "requests_per_minute");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    assert!(r.json()["request_id"].is_string());
    // The denial is journaled with the limit that bit.
    let rid = r.headers["x-request-id"].to_str().unwrap().to_string();
    let rec = h
        .wait_journal(5, |v| v["request_id"] == rid.as_str())
        .await
        .unwrap();
    assert_eq!(rec["reason"], "requests_per_minute");
    assert_eq!(rec["status"], 429);
    // After Retry-After, the partner is admitted again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(c.get("/v1/orders").await.unwrap().status, 200);

    // The high-risk route's own daily quota is tighter than the partner's.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(c.get("/v1/reports").await.unwrap().status, 200);
    assert_eq!(c.get("/v1/reports").await.unwrap().status, 200);
    let r = c.get("/v1/reports").await.unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["limit"], "requests_per_day");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry > 0 && retry <= 86_400);
    // The partner's other route is unaffected by the route's quota.
    assert_eq!(c.get("/v1/orders").await.unwrap().status, 200);

    // Metrics count the limit denials.
    let (st, metrics) = admin_get(broker.admin, "/metrics").await;
    assert_eq!(st, 200);
    assert!(
        metrics.contains("gatehouse_rate_limit_denials_total"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_traffic_spike_raises_one_alert_and_throttle_mode_clamps_until_resume() {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("orders", &up);
    let hook = Webhook::start().await;
    h.edit_config(|d| {
        d["monitor"]["anomaly_warmup_minutes"] = toml_edit::value(0);
        d["monitor"]["anomaly_floor_per_minute"] = toml_edit::value(20.0);
        d["monitor"]["webhook_url"] = toml_edit::value(hook.url());
    });
    write_partner(
        &h,
        "acme",
        r#"
on_anomaly = "throttle"

[[routes]]
methods = ["GET"]
path = "/v1/orders"
upstream = "orders"
"#,
    );
    let acme = h.issue("acme");
    let broker = h.start();
    let mut c = Conn::open(broker.addr, &h.ca_pem(), &acme, false)
        .await
        .unwrap();
    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(c.get("/v1/orders").await.unwrap().status.as_u16());
    }
    assert!(statuses[..20].iter().all(|s| *s == 200), "{statuses:?}");
    assert!(
        statuses.contains(&429),
        "throttle never clamped: {statuses:?}"
    );
    // Exactly one alert: journal, webhook, metric.
    let alerts: Vec<_> = {
        h.wait_journal(5, |v| v["kind"] == "alert")
            .await
            .expect("alert journaled");
        h.journal()
            .into_iter()
            .filter(|v| v["kind"] == "alert")
            .collect()
    };
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["partner"], "acme");
    assert_eq!(alerts[0]["reason"], "rate_spike");
    let delivered = hook.wait_for(1, 5).await;
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let body: serde_json::Value = serde_json::from_str(&delivered[0]).unwrap();
    assert_eq!(body["kind"], "rate_spike");
    assert_eq!(body["partner"], "acme");
    let (_, metrics) = admin_get(broker.admin, "/metrics").await;
    assert!(
        metrics.contains("gatehouse_alerts_total{kind=\"rate_spike\"} 1"),
        "{metrics}"
    );
    // The operator clears the throttle.
    let out = h.ok(&["partner", "resume", "acme"]);
    assert!(out.contains("cleared"), "{out}");
    let mut c = Conn::open(broker.addr, &h.ca_pem(), &acme, false)
        .await
        .unwrap();
    assert_eq!(c.get("/v1/orders").await.unwrap().status, 200);
}
