//! Reloading a running broker and reading what the reload said: SIGHUP,
//! then the reload's admin record (`config_reloaded`) naming a key as
//! applied, or the WARN line saying a key waits for a restart.

use super::broker::{Broker, TestHome};

/// Sends SIGHUP, waits (bounded) for that reload's admin record
/// (`config_reloaded`: the files as they are now are in force), and returns
/// the detail of the record that names `key` as applied: that one, or,
/// when the file watcher took the edit in just before the signal (the
/// SIGHUP's reload then finds nothing new), the watcher's record just
/// before it.
pub async fn reload_applies(b: &Broker, h: &TestHome, key: &str) -> String {
    let names_key = |v: &serde_json::Value| {
        v["reason"] == "config_reloaded"
            && v["detail"]
                .as_str()
                .is_some_and(|d| applied_keys(d).iter().any(|k| k == key))
    };
    let after = last_seq(h);
    b.signal("HUP");
    let Some(rec) = h
        .wait_journal(10, |v| {
            v["seq"].as_u64().is_some_and(|s| s > after) && v["reason"] == "config_reloaded"
        })
        .await
    else {
        panic!("no config_reloaded record after SIGHUP\n{}", b.log());
    };
    assert_eq!(rec["kind"], "admin", "{rec}");
    if names_key(&rec) {
        return rec["detail"].as_str().unwrap_or_default().to_string();
    }
    let seq = rec["seq"].as_u64().unwrap_or(0);
    let journal = h.journal();
    let previous = journal
        .iter()
        .filter(|v| {
            v["seq"].as_u64().is_some_and(|s| s < seq)
                && v["kind"] == "admin"
                && matches!(
                    v["reason"].as_str(),
                    Some("config_reloaded" | "config_reload_refused")
                )
        })
        .max_by_key(|v| v["seq"].as_u64());
    match previous.filter(|v| names_key(v)) {
        Some(p) => p["detail"].as_str().unwrap_or_default().to_string(),
        None => panic!(
            "no config_reloaded record names {key} as applied (the SIGHUP's says: {})\n{}",
            rec["detail"],
            b.log()
        ),
    }
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
