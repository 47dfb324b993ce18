use std::collections::{BTreeMap, HashMap, HashSet};

use time::Duration;

use super::*;
use crate::ca::inventory::{RecordStatus, RevocationReason};
use crate::config::{LimitSpec, Partner, PartnerStatus};

use super::expiry::tests::{NOW, cert, inv};
const NOW_MS: i64 = 1_780_315_200_000;

fn exchange(partner: &str, method: &str, path: &str, status: u16, reason: Option<&str>) -> Event {
    let decision = if reason.is_some() {
        Decision::Denied
    } else {
        Decision::Allowed
    };
    let mut ev = Event::new(EventKind::Exchange, "node-1", decision);
    ev.time_ms = NOW_MS;
    ev.partner = Some(partner.into());
    ev.method = Some(method.into());
    ev.path = Some(path.into());
    ev.status = Some(status);
    ev.reason = reason.map(Into::into);
    ev.duration_us = 4_000;
    ev.client_addr = Some("203.0.113.9:5555".into());
    ev
}

fn granted(mut ev: Event, route: &str) -> Event {
    ev.route = Some(route.into());
    ev.upstream = Some("orders".into());
    ev
}

/// Samples of the rendered text: `name{labels}` → value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    parse_exposition(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// A small OpenMetrics/Prometheus text checker: every sample line is
/// `name{labels} value` with a float value, every sample belongs to a family
/// declared with `# TYPE`, and the text ends with `# EOF`.
/// Where exposition text breaks the format (the line, in the message).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Malformed(String);

fn parse_exposition(text: &str) -> Result<BTreeMap<String, f64>, Malformed> {
    let mut families: Vec<(String, String)> = Vec::new();
    let mut out = BTreeMap::new();
    let mut saw_eof = false;
    for line in text.lines() {
        if saw_eof {
            return Err(Malformed(format!("text after # EOF: {line}")));
        }
        if line == "# EOF" {
            saw_eof = true;
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (Some(name), Some(kind), None) = (it.next(), it.next(), it.next()) else {
                return Err(Malformed(format!("bad TYPE line: {line}")));
            };
            if ![
                "counter",
                "gauge",
                "histogram",
                "summary",
                "info",
                "unknown",
            ]
            .contains(&kind)
            {
                return Err(Malformed(format!("unknown type: {line}")));
            }
            families.push((name.to_string(), kind.to_string()));
            continue;
        }
        if line.starts_with("# HELP ") || line.starts_with("# UNIT ") {
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            return Err(Malformed(format!("unexpected line: {line:?}")));
        }
        let (series, value) = line
            .rsplit_once(' ')
            .ok_or_else(|| Malformed(format!("no value: {line}")))?;
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            "NaN" => f64::NAN,
            v => v
                .parse()
                .map_err(|_| Malformed(format!("bad value: {line}")))?,
        };
        let name = match series.find('{') {
            Some(i) => {
                let labels = &series[i..];
                if !labels.ends_with('}') {
                    return Err(Malformed(format!("bad labels: {line}")));
                }
                let inner = &labels[1..labels.len() - 1];
                for pair in split_labels(inner) {
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| Malformed(format!("bad label: {line}")))?;
                    let ok_name =
                        !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    if !(ok_name && v.starts_with('"') && v.ends_with('"') && v.len() >= 2) {
                        return Err(Malformed(format!("bad label: {line}")));
                    }
                }
                &series[..i]
            }
            None => series,
        };
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
        {
            return Err(Malformed(format!("bad metric name: {line}")));
        }
        let declared = families.iter().any(|(f, kind)| {
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                _ => &[""],
            };
            suffixes
                .iter()
                .any(|s| name.strip_suffix(s) == Some(f.as_str()))
                || name == f
        });
        if !declared {
            return Err(Malformed(format!("sample of an undeclared family: {line}")));
        }
        if out.insert(series.to_string(), value).is_some() {
            return Err(Malformed(format!("duplicate series: {line}")));
        }
    }
    if !saw_eof {
        return Err(Malformed("no # EOF".into()));
    }
    Ok(out)
}

/// Splits `a="x",b="y,z"` on commas outside quotes.
fn split_labels(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if start < s.len() {
        out.push(&s[start..]);
    }
    out
}

fn value(m: &Monitor, series: &str) -> f64 {
    samples(&m.render()).get(series).copied().unwrap_or(0.0)
}

fn series_count(m: &Monitor) -> usize {
    samples(&m.render()).len()
}

#[test]
fn monitor_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Monitor>();
}

#[test]
fn exchanges_count_by_partner_route_method_status_decision_and_risk() {
    let m = Monitor::new();
    let denied = exchange("acme", "GET", "/v1/x", 403, Some("route_not_granted"));
    for _ in 0..3 {
        m.observe_event(&denied, None);
    }
    let ok = granted(
        exchange("acme", "POST", "/v1/orders/7", 201, None),
        "/v1/orders",
    );
    m.observe_event(&ok, Some(Risk::High));
    let s = samples(&m.render());
    assert_eq!(
        s[r#"gatehouse_requests_total{partner="acme",route="none",method="GET",status_class="4xx",decision="denied",risk="normal"}"#],
        3.0
    );
    assert_eq!(
        s[r#"gatehouse_requests_total{partner="acme",route="/v1/orders",method="POST",status_class="2xx",decision="allowed",risk="high"}"#],
        1.0
    );
    assert_eq!(
        s[r#"gatehouse_request_denials_total{partner="acme",reason="route_not_granted"}"#],
        3.0
    );
    assert_eq!(
        s[r#"gatehouse_request_duration_seconds_count{partner="acme",route="none",risk="normal"}"#],
        3.0
    );
    assert_eq!(
        s[r#"gatehouse_request_duration_seconds_bucket{le="0.004",partner="acme",route="/v1/orders",risk="high"}"#],
        1.0
    );
    // Nothing else moved.
    assert!(
        !s.keys()
            .any(|k| k.starts_with("gatehouse_rate_limit_denials_total"))
    );
    assert_eq!(s["gatehouse_config_reloads_total"], 0.0);
}

#[test]
fn rate_limit_denials_count_by_partner_and_limit_kind() {
    let m = Monitor::new();
    for reason in [
        "requests_per_minute",
        "max_concurrent",
        "throttled",
        "requests_per_minute",
    ] {
        m.observe_event(&exchange("acme", "GET", "/v1/x", 429, Some(reason)), None);
    }
    assert_eq!(
        value(
            &m,
            r#"gatehouse_rate_limit_denials_total{partner="acme",limit="requests_per_minute"}"#
        ),
        2.0
    );
    assert_eq!(
        value(
            &m,
            r#"gatehouse_rate_limit_denials_total{partner="acme",limit="max_concurrent"}"#
        ),
        1.0
    );
}

#[test]
fn handshakes_connections_reloads_alerts_upstream_and_journal_count() {
    let m = Monitor::new();
    let mut hs = Event::new(EventKind::Handshake, "n", Decision::Denied);
    hs.reason = Some("unknown_ca".into());
    hs.client_addr = Some("198.51.100.1:1".into());
    m.observe_event(&hs, None);
    m.observe_event(&hs, None);
    m.handshake_ok("full");
    m.handshake_ok("resumed");
    m.handshake_ok("full");
    m.connection_opened();
    m.connection_opened();
    m.connection_closed();
    let mut reload = Event::new(EventKind::Admin, "n", Decision::Allowed);
    reload.reason = Some("config_reloaded".into());
    m.observe_event(&reload, None);
    reload.reason = Some("config_reload_refused".into());
    m.observe_event(&reload, None);
    m.observe_event(&reload, None);
    reload.reason = Some("cert_issued".into());
    m.observe_event(&reload, None);
    let mut alert = Event::new(EventKind::Alert, "n", Decision::Allowed);
    alert.reason = Some("traffic_spike".into());
    alert.partner = Some("acme".into());
    alert.time_ms = NOW_MS;
    m.observe_event(&alert, None);
    m.upstream("orders", 0.02, None);
    m.upstream("orders", 0.5, Some("upstream_timeout"));
    m.journal_batch(8, 0.003, false);
    m.journal_batch(2, 0.1, true);

    let s = samples(&m.render());
    assert_eq!(
        s[r#"gatehouse_tls_handshakes_total{outcome="refused",reason="unknown_ca"}"#],
        2.0
    );
    assert_eq!(
        s[r#"gatehouse_tls_handshakes_total{outcome="ok",reason="full"}"#],
        2.0
    );
    assert_eq!(
        s[r#"gatehouse_tls_handshakes_total{outcome="ok",reason="resumed"}"#],
        1.0
    );
    assert_eq!(s["gatehouse_active_connections"], 1.0);
    assert_eq!(s["gatehouse_config_reloads_total"], 1.0);
    assert_eq!(s["gatehouse_config_reload_failures_total"], 2.0);
    assert_eq!(s[r#"gatehouse_alerts_total{kind="traffic_spike"}"#], 1.0);
    assert_eq!(
        s[r#"gatehouse_upstream_duration_seconds_count{upstream="orders"}"#],
        2.0
    );
    assert_eq!(
        s[r#"gatehouse_upstream_errors_total{upstream="orders",error="upstream_timeout"}"#],
        1.0
    );
    assert_eq!(s["gatehouse_journal_append_seconds_count"], 2.0);
    assert_eq!(s["gatehouse_journal_batch_records_sum"], 10.0);
    assert_eq!(s["gatehouse_journal_append_failures_total"], 1.0);
    assert_eq!(m.open_alerts(NOW_MS).len(), 1);
    assert!(m.open_alerts(NOW_MS + ALERT_OPEN_MS).is_empty());
}

#[test]
fn rendered_text_is_valid_exposition_with_types() {
    let m = Monitor::new();
    m.observe_event(
        &exchange("acme", "GET", "/v1/x", 403, Some("route_not_granted")),
        None,
    );
    m.handshake_ok("full");
    m.set_cert_expiry(&inv(vec![cert("aa", "acme", 10)]), NOW);
    let text = m.render();
    let s = samples(&text);
    assert!(!s.is_empty());
    for family in [
        "gatehouse_requests counter",
        "gatehouse_request_duration_seconds histogram",
        "gatehouse_active_connections gauge",
        "gatehouse_certificate_expiry_seconds gauge",
        "gatehouse_tls_handshakes counter",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family}\n")),
            "{family}\n{text}"
        );
    }
    // The checker itself refuses broken text.
    assert!(parse_exposition("foo 1\n# EOF\n").is_err());
    assert!(parse_exposition("# TYPE foo gauge\nfoo one\n# EOF\n").is_err());
    assert!(parse_exposition("# TYPE foo gauge\nfoo 1\n").is_err());
    assert!(parse_exposition("# TYPE foo gauge\nfoo{a=\"x\"} 1\n# EOF\n").is_ok());
}

#[test]
fn label_cardinality_stays_bounded_with_hostile_inputs() {
    let m = Monitor::new();
    let methods = ["GET", "POST", "BREW", "get", "PROPFIND", "X-\"evil\""];
    // Warm up: one event of each shape.
    let shape = |i: usize| {
        let mut ev = exchange(
            "acme",
            methods[i % methods.len()],
            &format!("/v1/orders/{i}/../../admin?x={i}"),
            if i.is_multiple_of(2) { 403 } else { 404 },
            Some("route_not_granted"),
        );
        ev.client_addr = Some(format!(
            "{}.{}.{}.{}:{}",
            i % 251,
            (i / 7) % 251,
            (i / 13) % 251,
            i % 199,
            1024 + i
        ));
        ev.request_id = Some(format!("{i:032x}"));
        ev.duration_us = (i as u64 * 7919) % 10_000_000;
        ev
    };
    for i in 0..12 {
        m.observe_event(&shape(i), None);
    }
    let before = series_count(&m);
    for i in 12..10_012 {
        m.observe_event(&shape(i), None);
    }
    let text = m.render();
    let s = samples(&text);
    assert_eq!(s.len(), before, "series grew with raw paths/IPs");
    assert!(!text.contains("/v1/orders/"), "a raw path became a label");
    assert!(!text.contains("203.0.113") && !text.contains(":1024"));
    assert!(text.contains(r#"method="OTHER""#));
    let total: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("gatehouse_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(total, 10_012.0);

    // A reason that is not a code cannot mint arbitrary labels either.
    for i in 0..100 {
        m.observe_event(
            &exchange("acme", "GET", "/", 403, Some(&format!("bad reason {i}"))),
            None,
        );
    }
    assert!(
        value(
            &m,
            r#"gatehouse_request_denials_total{partner="acme",reason="other"}"#
        ) == 100.0
    );
}

#[test]
fn cert_expiry_gauges_follow_the_inventory() {
    let m = Monitor::new();
    let mut revoked = cert("cc", "acme", 50);
    revoked.status = RecordStatus::Revoked;
    revoked.reason = Some(RevocationReason::KeyCompromise);
    let first = inv(vec![
        cert("aa", "acme", 10),
        cert("bb", "globex", 1),
        revoked,
        cert("dd", "acme", -2),
    ]);
    m.set_cert_expiry(&first, NOW);
    let s = samples(&m.render());
    assert_eq!(
        s[r#"gatehouse_certificate_expiry_seconds{partner="acme",serial="aa"}"#],
        (10 * 86_400) as f64
    );
    assert_eq!(
        s[r#"gatehouse_certificate_expiry_seconds{partner="globex",serial="bb"}"#],
        86_400.0
    );
    assert_eq!(
        s.keys()
            .filter(|k| k.starts_with("gatehouse_certificate_expiry_seconds"))
            .count(),
        2
    );
    // aa is gone (renewed away and removed), ee is new: the stale series goes.
    m.set_cert_expiry(
        &inv(vec![cert("bb", "globex", 1), cert("ee", "acme", 90)]),
        NOW + Duration::hours(1),
    );
    let s = samples(&m.render());
    assert!(!s.contains_key(r#"gatehouse_certificate_expiry_seconds{partner="acme",serial="aa"}"#));
    assert_eq!(
        s[r#"gatehouse_certificate_expiry_seconds{partner="globex",serial="bb"}"#],
        (86_400 - 3_600) as f64
    );
    assert!(s.contains_key(r#"gatehouse_certificate_expiry_seconds{partner="acme",serial="ee"}"#));
}

#[test]
fn recent_windows_count_per_partner_and_drop_old_minutes() {
    let m = Monitor::new();
    let mut old = exchange("acme", "GET", "/a", 200, None);
    old.time_ms = NOW_MS - 2 * 60 * 60 * 1000;
    m.observe_event(&old, None);
    m.observe_event(&exchange("acme", "GET", "/a", 200, None), None);
    m.observe_event(
        &exchange("acme", "GET", "/a", 403, Some("route_not_granted")),
        None,
    );
    m.observe_event(&exchange("globex", "GET", "/a", 200, None), None);
    let w = m.recent("acme", NOW_MS);
    assert_eq!((w.requests, w.denials), (2, 1));
    assert_eq!(w.p50_ms, Some(5.0));
    assert_eq!(m.recent("globex", NOW_MS).requests, 1);
    assert_eq!(m.recent("nobody", NOW_MS), PartnerWindow::default());
    // An hour later, everything has dropped out.
    assert_eq!(m.recent("acme", NOW_MS + 60 * 60 * 1000).requests, 0);
}

#[test]
fn status_json_shape() {
    let m = Monitor::new();
    m.observe_event(
        &exchange("acme", "GET", "/a", 403, Some("route_not_granted")),
        None,
    );
    let mut alert = Event::new(EventKind::Alert, "n", Decision::Allowed);
    alert.reason = Some("traffic_spike".into());
    alert.partner = Some("acme".into());
    alert.time_ms = NOW_MS;
    m.observe_event(&alert, None);
    let partners = vec![
        Partner {
            id: "globex".into(),
            name: "Globex".into(),
            status: PartnerStatus::Suspended,
            on_anomaly: Default::default(),
            renewal_window: None,
            own_ca: None,
            value_limits: Default::default(),
            signing: false,
            signing_keys: Vec::new(),
            pin: Default::default(),
            limits: LimitSpec::default(),
            routes: vec![],
        },
        Partner {
            id: "acme".into(),
            name: "Acme Logistics".into(),
            status: PartnerStatus::Active,
            on_anomaly: Default::default(),
            renewal_window: None,
            own_ca: None,
            value_limits: Default::default(),
            signing: false,
            signing_keys: Vec::new(),
            pin: Default::default(),
            limits: LimitSpec {
                requests_per_minute: Some(600),
                burst: Some(50),
                ..LimitSpec::default()
            },
            routes: vec![],
        },
    ];
    let inventory = inv(vec![cert("aa", "acme", 5), cert("bb", "globex", 100)]);
    let mut limits = HashMap::new();
    limits.insert(
        "globex".to_string(),
        serde_json::json!({"requests_per_minute": 10, "remaining": 4}),
    );
    let v = status_json(&m, &partners, &inventory, &limits, NOW, 14);
    assert_eq!(v["generated_at"], "2026-06-01T12:00:00Z");
    let rows = v["partners"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    let acme = &rows[0];
    assert_eq!(acme["id"], "acme");
    assert_eq!(acme["name"], "Acme Logistics");
    assert_eq!(acme["status"], "active");
    assert_eq!(acme["last_hour"]["requests"], 1);
    assert_eq!(acme["last_hour"]["denials"], 1);
    assert_eq!(acme["last_hour"]["p50_ms"], 5.0);
    assert_eq!(acme["limits"]["requests_per_minute"], 600);
    assert_eq!(acme["certificates"][0]["serial"], "aa");
    assert_eq!(acme["certificates"][0]["days_to_expiry"], 5);
    assert_eq!(acme["certificates"][0]["expiring"], true);
    assert_eq!(acme["alerts"][0]["kind"], "traffic_spike");
    let globex = &rows[1];
    assert_eq!(globex["status"], "suspended");
    assert_eq!(globex["last_hour"]["requests"], 0);
    assert!(globex["last_hour"]["p99_ms"].is_null());
    assert_eq!(globex["limits"]["remaining"], 4);
    assert_eq!(globex["certificates"][0]["expiring"], false);
    assert!(globex["alerts"].as_array().unwrap().is_empty());
    assert_eq!(v["expiring"][0]["serial"], "aa");
    assert_eq!(v["alerts"].as_array().unwrap().len(), 1);
}

/// Every family the monitor has, with at least one sample.
fn every_family() -> Monitor {
    let m = Monitor::new();
    m.observe_event(
        &exchange("acme", "GET", "/v1/x", 429, Some("requests_per_minute")),
        None,
    );
    m.observe_event(
        &granted(
            exchange("acme", "GET", "/v1/orders/1", 503, None),
            "/v1/orders",
        ),
        None,
    );
    let mut hs = Event::new(EventKind::Handshake, "n", Decision::Denied);
    hs.reason = Some("unknown_ca".into());
    m.observe_event(&hs, None);
    m.handshake_ok("full");
    m.connection_opened();
    m.upstream("orders", 0.5, Some("upstream_timeout"));
    m.journal_batch(2, 0.1, true);
    let mut alert = Event::new(EventKind::Alert, "n", Decision::Denied);
    alert.reason = Some("denial_spike".into());
    alert.time_ms = crate::event::now_ms();
    m.observe_event(&alert, None);
    let mut reload = Event::new(EventKind::Admin, "n", Decision::Allowed);
    reload.reason = Some("config_reloaded".into());
    m.observe_event(&reload, None);
    m.set_cert_expiry(&inv(vec![cert("aa", "acme", 10)]), NOW);
    // A plain-http pool of one (nothing is sent: only its families show).
    let settings: crate::config::UpstreamSettings =
        toml::from_str("url = \"http://127.0.0.1:9\"").expect("parses");
    let pool = crate::upstream::Pool::build(
        "orders",
        &settings,
        &crate::home::Home::new("/nonexistent"),
        None,
    )
    .expect("a plain-http pool needs no files");
    m.pools.observe(&HashMap::from([(
        "orders".to_string(),
        std::sync::Arc::new(pool),
    )]));
    m
}

#[test]
fn the_classic_text_format_declares_every_sample_with_help_and_type() {
    let m = every_family();
    let text = m.render_text();
    assert!(!text.contains("# EOF"));
    let mut help = HashSet::new();
    let mut types = HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, h) = rest.split_once(' ').unwrap();
            assert!(!h.trim().is_empty(), "empty help: {line}");
            help.insert(name.to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_string(), kind.to_string());
        } else {
            let name = line.split(['{', ' ']).next().unwrap();
            let family = types
                .iter()
                .find(|(f, kind)| {
                    name == f.as_str()
                        || (kind.as_str() == "histogram"
                            && ["_bucket", "_sum", "_count"]
                                .iter()
                                .any(|suf| name == format!("{f}{suf}")))
                })
                .map(|(f, _)| f.clone())
                .unwrap_or_else(|| panic!("sample without a TYPE: {line}\n{text}"));
            assert!(help.contains(&family), "no HELP for {family}\n{text}");
            if types[&family] == "counter" {
                assert!(family.ends_with("_total"), "{family}");
            }
        }
    }
    for family in [
        "gatehouse_requests_total",
        "gatehouse_rate_limit_denials_total",
        "gatehouse_upstream_responses_total",
        "gatehouse_upstream_errors_total",
        "gatehouse_alerts_total",
        "gatehouse_alerts_open",
        "gatehouse_journal_writable",
        "gatehouse_journal_append_failures_total",
        "gatehouse_config_reloads_total",
        "gatehouse_config_reload_failures_total",
    ] {
        assert!(types.contains_key(family), "{family} missing\n{text}");
    }
}

#[test]
fn open_alerts_and_journal_health_are_gauges() {
    let m = every_family();
    let s = samples(&m.render());
    assert_eq!(s[r#"gatehouse_alerts_open{kind="denial_spike"}"#], 1.0);
    // The failed batch above.
    assert_eq!(s["gatehouse_journal_writable"], 0.0);
    m.set_journal_writable(true);
    assert_eq!(samples(&m.render())["gatehouse_journal_writable"], 1.0);
    assert_eq!(
        s[r#"gatehouse_upstream_responses_total{upstream="orders",status_class="5xx"}"#],
        1.0
    );
    // An alert over an hour old is no longer open; its kind stays at 0.
    let m = Monitor::new();
    let mut old = Event::new(EventKind::Alert, "n", Decision::Denied);
    old.reason = Some("rate_spike".into());
    old.time_ms = crate::event::now_ms() - ALERT_OPEN_MS - 1000;
    m.observe_event(&old, None);
    assert_eq!(
        samples(&m.render())[r#"gatehouse_alerts_open{kind="rate_spike"}"#],
        0.0
    );
}

/// The `gatehouse_*` names in `text` (metric names in PromQL).
fn metric_names(text: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("gatehouse_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_grafana_dashboard_and_alerting_rules_use_real_metric_names() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib");
    let dashboard = std::fs::read_to_string(root.join("grafana/gatehouse.json")).unwrap();
    let rules = std::fs::read_to_string(root.join("prometheus/gatehouse-rules.yml")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    let panels = doc["panels"].as_array().expect("panels");
    let exprs: Vec<&str> = panels
        .iter()
        .flat_map(|p| p["targets"].as_array().into_iter().flatten())
        .filter_map(|t| t["expr"].as_str())
        .collect();
    assert!(exprs.len() >= 15, "{} queries", exprs.len());
    let m = every_family();
    let rendered: HashSet<String> = samples(&m.render())
        .keys()
        .map(|k| k.split('{').next().unwrap_or(k).to_string())
        .collect();
    let used = metric_names(&exprs.join("\n"));
    let in_rules = metric_names(&rules);
    assert!(in_rules.len() >= 8, "{in_rules:?}");
    for name in used.iter().chain(&in_rules) {
        assert!(
            rendered.contains(name),
            "{name} is not a metric the broker exports: {rendered:?}"
        );
    }
    // The dashboard covers what operators look for.
    for needed in [
        "gatehouse_requests_total",
        "gatehouse_request_denials_total",
        "gatehouse_request_duration_seconds_bucket",
        "gatehouse_certificate_expiry_seconds",
        "gatehouse_journal_writable",
        "gatehouse_journal_append_seconds_bucket",
    ] {
        assert!(used.contains(needed), "dashboard lacks {needed}");
    }
}
