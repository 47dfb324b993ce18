//! The operator kit in `contrib/`: the Prometheus alerting rules pass
//! `promtool check rules` and their unit tests (`promtool test rules`: each
//! alert fires on the series that should fire it, and only on those); the
//! Grafana dashboard is valid JSON. (That both use only metric names the
//! broker exports is a unit test in `src/monitor/tests.rs`.)

use std::path::Path;
use std::process::Command;

use crate::common;

fn contrib() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/contrib"))
}

#[test]
fn promtool_checks_and_tests_the_alerting_rules() {
    if !common::tools::have("promtool") {
        return;
    }
    let dir = contrib().join("prometheus");
    let check = Command::new("promtool")
        .args(["check", "rules", "gatehouse-rules.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "{out}");
    assert!(out.contains("SUCCESS: 12 rules found"), "{out}");
    let test = Command::new("promtool")
        .args(["test", "rules", "gatehouse-rules.test.yml"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        test.status.success(),
        "{}{}",
        String::from_utf8_lossy(&test.stdout),
        String::from_utf8_lossy(&test.stderr)
    );
}

#[test]
fn the_grafana_dashboard_is_valid_json_with_panels() {
    let text = std::fs::read_to_string(contrib().join("grafana/gatehouse.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(doc["uid"], "gatehouse");
    let panels = doc["panels"].as_array().unwrap();
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for t in [
        "Requests per second by partner",
        "Latency p50 / p99 by partner",
        "Partner certificate expiry (days)",
        "Journal writable",
    ] {
        assert!(titles.contains(&t), "{t}: {titles:?}");
    }
    // Every panel but the rows queries something.
    for p in panels.iter().filter(|p| p["type"] != "row") {
        let targets = p["targets"].as_array().map(Vec::len).unwrap_or(0);
        assert!(targets > 0, "panel without a query: {}", p["title"]);
    }
}
