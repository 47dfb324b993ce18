//! Reloading a running broker and reading what the reload said: SIGHUP,
//! then the reload's admin record (`config_reloaded`) naming a key as
//! applied, or the WARN line saying a key waits for a restart.

use super::broker::{Broker, TestHome};

/// Sends SIGHUP and waits (bounded) for the reload's admin record
/// (`config_reloaded`) that names `key` as applied; returns its detail.
///
/// The file watcher may have taken the edit in before the signal: then the
/// latest reload record already there names the key (and the SIGHUP's own
/// reload finds nothing new). Any other record must come after the signal,
/// so a record of an earlier change never counts.
pub async fn reload_applies(b: &Broker, h: &TestHome, key: &str) -> String {
    let names_key = |v: &serde_json::Value| {
        v["reason"] == "config_reloaded"
            && v["detail"]
                .as_str()
                .is_some_and(|d| applied_keys(d).iter().any(|k| k == key))
    };
    let before = h.journal();
    let after = before
        .iter()
        .filter_map(|v| v["seq"].as_u64())
        .max()
        .unwrap_or(0);
    let latest_reload = before
        .iter()
        .filter(|v| {
            v["kind"] == "admin"
                && matches!(
                    v["reason"].as_str(),
                    Some("config_reloaded" | "config_reload_refused")
                )
        })
        .max_by_key(|v| v["seq"].as_u64());
    b.signal("HUP");
    if let Some(rec) = latest_reload.filter(|v| names_key(v)) {
        return rec["detail"].as_str().unwrap_or_default().to_string();
    }
    let rec = h
        .wait_journal(10, |v| {
            v["seq"].as_u64().is_some_and(|s| s > after) && names_key(v)
        })
        .await;
    let Some(rec) = rec else {
        panic!(
            "no config_reloaded record names {key} as applied\n{}",
            b.log()
        );
    };
    assert_eq!(rec["kind"], "admin", "{rec}");
    rec["detail"].as_str().unwrap_or_default().to_string()
}

/// The sequence number of the journal's last record (0: none yet).
fn last_seq(h: &TestHome) -> u64 {
    h.journal()
        .iter()
        .filter_map(|v| v["seq"].as_u64())
        .max()
        .unwrap_or(0)
}

/// The keys after `applied: ` in a reload record's detail.
pub fn applied_keys(detail: &str) -> Vec<String> {
    let Some(rest) = detail.split("applied: ").nth(1) else {
        return Vec::new();
    };
    let list = rest.split(';').next().unwrap_or_default();
    list.split(", ").map(|k| k.trim().to_string()).collect()
}

/// Sends SIGHUP and waits (bounded) until the broker has said, for each of
/// `keys`, that it takes effect at restart (WARN line), and the reload's
/// admin record lists them as pending.
pub async fn reload_leaves_pending(b: &Broker, h: &TestHome, keys: &[&str]) {
    let after = last_seq(h);
    b.signal("HUP");
    for key in keys {
        assert!(
            b.wait_log(&format!("{key} changed: takes effect at restart"), 10)
                .await,
            "no WARN says {key} takes effect at restart\n{}",
            b.log()
        );
    }
    let rec = h
        .wait_journal(10, |v| {
            v["seq"].as_u64().is_some_and(|s| s > after)
                && v["reason"] == "config_reloaded"
                && v["detail"].as_str().is_some_and(|d| {
                    d.split("restart pending (takes effect at restart): ")
                        .nth(1)
                        .is_some_and(|l| keys.iter().all(|k| l.contains(k)))
                })
        })
        .await;
    assert!(
        rec.is_some(),
        "no reload record lists {keys:?} as pending\n{}",
        b.log()
    );
}
