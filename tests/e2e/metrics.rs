//! The monitor in the real broker: `/metrics` counts each denied request
//! exactly once under its partner, and `gatehouse status --json` reaches the
//! running broker and lists the partner; without a broker it says so and
//! exits non-zero. A relayed call on a high-risk route is counted under
//! its configured route with `risk="high"`, and its upstream time too.
//! `promtool check metrics` (Prometheus' own linter) passes on a live
//! `/metrics` after real traffic, and a scraper that asks for OpenMetrics
//! gets OpenMetrics.

use crate::common;

use common::broker::{TestHome, admin_get, admin_request, get_once};
use common::upstream::{EchoOptions, start_echo_upstream};

const DENIED_SERIES: &str = r#"gatehouse_requests_total{partner="acme",route="none",method="GET",status_class="4xx",decision="denied",risk="normal"}"#;

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn metrics_count_each_denial_once_and_status_lists_the_partner() {
    let h = TestHome::new();
    h.add_partner("acme", &[]);
    let acme = h.issue("acme");
    let broker = h.start();
    let ca = h.ca_pem();

    let (code, before) = admin_get(broker.admin, "/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(sample(&before, DENIED_SERIES), None, "{before}");

    for n in 1..=3 {
        let r = get_once(broker.addr, &ca, &acme, &format!("/v1/orders/{n}?q={n}"))
            .await
            .unwrap();
        assert_eq!(r.status, 403);
        let (code, metrics) = admin_get(broker.admin, "/metrics").await;
        assert_eq!(code, 200);
        assert_eq!(sample(&metrics, DENIED_SERIES), Some(n as f64), "{metrics}");
    }
    let (_, metrics) = admin_get(broker.admin, "/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            r#"gatehouse_request_denials_total{partner="acme",reason="route_not_granted"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &metrics,
            r#"gatehouse_tls_handshakes_total{outcome="ok",reason="full"}"#
        ),
        Some(3.0)
    );
    // No raw path reaches a label; the issued certificate's expiry is there.
    assert!(!metrics.contains("/v1/orders/"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            r#"gatehouse_certificate_expiry_seconds{{partner="acme",serial="{}"}}"#,
            acme.serial
        )),
        "{metrics}"
    );
    // The classic text format by default (what curl and promtool read).
    assert!(!metrics.contains("# EOF"), "{metrics}");
    assert!(
        metrics.contains("# TYPE gatehouse_requests_total counter\n"),
        "{metrics}"
    );
    // Every exchange went through a journal group commit.
    let batches = sample(&metrics, "gatehouse_journal_batch_records_count").unwrap_or(0.0);
    let records = sample(&metrics, "gatehouse_journal_batch_records_sum").unwrap_or(0.0);
    assert!(
        batches >= 1.0 && records >= 3.0,
        "batches {batches}, records {records}: {metrics}"
    );
    assert!(
        metrics.contains("gatehouse_journal_append_seconds_count"),
        "{metrics}"
    );

    // The operator view.
    let admin = broker.admin.to_string();
    let out = h.run(&["status", "--json", "--admin", &admin]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let partners = doc["partners"].as_array().unwrap();
    let p = partners.iter().find(|p| p["id"] == "acme").unwrap();
    assert_eq!(p["last_hour"]["requests"], 3);
    assert_eq!(p["last_hour"]["denials"], 3);
    assert_eq!(p["certificates"][0]["serial"], acme.serial.as_str());

    let out = h.run(&["status", "--admin", &admin]);
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("acme"), "{table}");

    // Broker gone: one line, non-zero.
    drop(broker);
    let out = h.run(&["status", "--admin", &admin]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not running"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[tokio::test]
async fn a_high_risk_route_is_counted_apart_with_its_upstream_time() {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("orders", &up);
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    let file = h.path().join("partners/acme.toml");
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    doc["routes"][0]["risk"] = toml_edit::value("high");
    std::fs::write(&file, doc.to_string()).unwrap();
    let acme = h.issue("acme");
    let broker = h.start();
    let ca = h.ca_pem();

    let r = get_once(broker.addr, &ca, &acme, "/v1/orders/42?x=1")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let (_, metrics) = admin_get(broker.admin, "/metrics").await;
    assert_eq!(
        sample(
            &metrics,
            r#"gatehouse_requests_total{partner="acme",route="/v1/orders",method="GET",status_class="2xx",decision="allowed",risk="high"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            r#"gatehouse_upstream_duration_seconds_count{upstream="orders"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(!metrics.contains("/v1/orders/42"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_checks_live_metrics() {
    if !common::tools::have("promtool") {
        return;
    }
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("orders", &up);
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    let file = h.path().join("partners/acme.toml");
    let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    doc["limits"]["requests_per_minute"] = toml_edit::value(60);
    doc["limits"]["burst"] = toml_edit::value(3);
    std::fs::write(&file, doc.to_string()).unwrap();
    let acme = h.issue("acme");
    let broker = h.start();
    let ca = h.ca_pem();

    // Traffic that fills every kind of family: allowed (upstream response),
    // denied by route, denied by the rate limit, a refused handshake.
    let mut limited = false;
    for n in 0..8 {
        let r = get_once(broker.addr, &ca, &acme, &format!("/v1/orders/{n}"))
            .await
            .unwrap();
        limited |= r.status == 429;
    }
    assert!(limited, "the burst of 3 never answered 429");
    let r = get_once(broker.addr, &ca, &acme, "/v1/other").await;
    assert!(r.is_ok());
    let (foreign, foreign_pem) = common::broker::foreign_ca();
    let rogue = common::broker::mint(&foreign, &foreign_pem, |_| {});
    assert!(
        get_once(broker.addr, &ca, &rogue, "/v1/orders/1")
            .await
            .is_err()
    );

    let (code, head, metrics) = admin_request(broker.admin, "/metrics", &[]).await;
    assert_eq!(code, 200);
    assert!(
        head.contains("content-type: text/plain; version=0.0.4"),
        "{head}"
    );
    for family in [
        "gatehouse_requests_total",
        "gatehouse_request_denials_total",
        "gatehouse_rate_limit_denials_total",
        "gatehouse_upstream_responses_total",
        "gatehouse_tls_handshakes_total",
        "gatehouse_certificate_expiry_seconds",
        "gatehouse_journal_writable",
        "gatehouse_upstream_endpoint_healthy",
        "gatehouse_upstream_endpoint_in_flight",
        "gatehouse_upstream_endpoint_requests_total",
        "gatehouse_upstream_endpoint_ejections_total",
        "gatehouse_upstream_retries_total",
        "gatehouse_upstream_queue_depth",
        "gatehouse_upstream_in_flight",
        "gatehouse_upstream_healthy_endpoints",
    ] {
        assert!(
            metrics.contains(&format!("# HELP {family} ")),
            "{family}: {metrics}"
        );
    }
    assert!(
        metrics.contains("gatehouse_journal_writable 1\n"),
        "{metrics}"
    );
    let checked = promtool_check_metrics(&metrics);
    assert!(
        checked.status.success(),
        "promtool check metrics: {}\n{metrics}",
        String::from_utf8_lossy(&checked.stdout) + String::from_utf8_lossy(&checked.stderr)
    );

    // A scraper asking for OpenMetrics (as Prometheus does) gets it.
    let (code, head, om) = admin_request(
        broker.admin,
        "/metrics",
        &[(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )],
    )
    .await;
    assert_eq!(code, 200);
    assert!(
        head.contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(om.trim_end().ends_with("# EOF"), "{om}");
    assert!(om.contains("# TYPE gatehouse_requests counter\n"), "{om}");
}

/// `promtool check metrics` with `text` on its standard input.
fn promtool_check_metrics(text: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    let mut stdin = child.stdin.take().expect("promtool stdin");
    stdin.write_all(text.as_bytes()).expect("write to promtool");
    drop(stdin);
    child.wait_with_output().expect("promtool output")
}
