//! What the journal keeps beyond the hash chain: a signed checkpoint at
//! least every `checkpoint_interval` while records come in (so the unsigned
//! tail is short in time, not only in records), and a `data/` folder closed
//! to other users (and `check` flags a loose one).

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::broker::{Conn, TestHome, home_with_echo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_interval_signs_the_tail_within_seconds_of_the_last_exchange() {
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    h.edit_config(|doc| {
        doc["journal"]["checkpoint_interval"] = toml_edit::value("2s");
    });
    let broker = h.start();
    let ca = h.ca_pem();
    let mut c = Conn::open(broker.addr, &ca, &acme, false).await.unwrap();
    for i in 0..5 {
        assert_eq!(c.get(&format!("/v1/orders/{i}")).await.unwrap().status, 200);
    }
    let last_exchange = Instant::now();
    let tail = || -> u64 {
        let v: serde_json::Value =
            serde_json::from_str(&h.ok(&["log", "verify", "--json"])).expect("verify --json");
        assert_eq!(v["ok"], true, "{v}");
        v["unsigned_tail"].as_u64().expect("unsigned_tail")
    };
    let first = tail();
    loop {
        let t = tail();
        if t == 0 {
            break;
        }
        assert!(
            last_exchange.elapsed() < Duration::from_secs(6),
            "unsigned tail still {t} (was {first}) 6 s after the last exchange with checkpoint_interval = 2s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        first > 0 || last_exchange.elapsed() >= Duration::from_millis(1500),
        "signed before the interval"
    );
    // Idle: no records, no more checkpoints.
    let count = |h: &TestHome| {
        h.ok(&["log", "export", "--format", "jsonl"])
            .lines()
            .filter(|l| l.contains("\"type\":\"checkpoint\""))
            .count()
    };
    let before = count(&h);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count(&h), before, "checkpoints while idle");
    drop(broker);
}

#[test]
fn the_data_folder_is_private_and_check_flags_a_loose_one() {
    let h = TestHome::new();
    let data = h.path().join("data");
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "data/ created {mode:o}");
    h.ok(&["check"]);
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = h.run(&["check"]);
    assert!(!out.status.success(), "check passed a data/ open to others");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("open to other users"), "{err}");
}
