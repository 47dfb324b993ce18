//! A new user's first run: `gatehouse init`, `gatehouse check`, then
//! `gatehouse serve` on the untouched home. The fresh gatehouse.toml has
//! its example upstream commented out, so nothing it names can be missing:
//! `check` passes and says no upstream is configured, the broker serves and
//! is ready, and a partner call is denied (nowhere to relay), not an error.

use crate::common;

use common::broker::{TestHome, admin_get, get_once};

#[tokio::test]
async fn init_then_serve_serves_and_is_ready() {
    // Not `TestHome::new()`, which drops the example upstream itself.
    let h = TestHome {
        dir: tempfile::tempdir().unwrap(),
    };
    let gh = |args: &[&str]| h.run(args);
    let init = gh(&["init"]);
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let said = String::from_utf8_lossy(&init.stdout);
    assert!(said.contains("[upstreams.NAME]"), "{said}");
    let config = std::fs::read_to_string(h.path().join("gatehouse.toml")).unwrap();
    assert!(config.contains("# [upstreams.orders]"), "{config}");
    assert!(!config.contains("\n[upstreams."), "{config}");

    let check = gh(&["check"]);
    let out = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(out.lines().any(|l| l.starts_with("ok:")), "{out}");
    assert!(
        out.contains("no [upstreams.NAME] is configured yet"),
        "{out}"
    );

    let broker = h.start();
    let (code, body) = admin_get(broker.admin, "/readyz").await;
    assert_eq!(code, 200, "{body}\n{}", broker.log());
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["ready"],
        true
    );

    // A partner onboarded with no route gets a clean denial.
    assert!(gh(&["partner", "add", "acme"]).status.success());
    let out = h.path().join("acme");
    let issued = gh(&["cert", "issue", "acme", "--out", out.to_str().unwrap()]);
    assert!(issued.status.success());
    let acme = h.read_client(&out, "acme");
    let ca = std::fs::read_to_string(h.path().join("certs/ca.pem")).unwrap();
    let mut status = None;
    // The new partner file is picked up by the running broker within a second.
    for _ in 0..30 {
        let r = get_once(broker.addr, &ca, &acme, "/v1/orders").await;
        if let Ok(r) = r {
            status = Some(r.status.as_u16());
            if r.status == 403 {
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status, Some(403), "{}", broker.log());
}
