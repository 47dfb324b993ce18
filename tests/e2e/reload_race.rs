//! Operators racing the broker's reload: a burst of edits to a partner
//! file, each the same length, with SIGHUPs sprinkled in, and a last edit
//! that lands while a SIGHUP reload is still reading the other (1,500)
//! partner files; whatever the timing, the last edit is the one in force a
//! moment later.

use crate::common;

use std::time::Duration;

use common::broker::{Conn, home_with_echo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_edit_of_a_burst_is_always_picked_up() {
    let (h, _up, acme) = home_with_echo(&["GET /v1/r00 -> orders"]).await;
    // Partners read after acme's file (sorted by name): a reload takes a
    // while, and acme's file is read at its start.
    for i in 0..1500 {
        std::fs::write(
            h.path().join(format!("partners/zz{i:04}.toml")),
            format!(
                "id = \"zz{i:04}\"\nname = \"filler\"\nstatus = \"active\"\n\n[[routes]]\nmethods = [\"GET\"]\npath = \"/v1/zz{i}\"\nupstream = \"orders\"\n"
            ),
        )
        .unwrap();
    }
    let broker = h.start();
    let mut c = Conn::open(broker.addr, &h.ca_pem(), &acme, false)
        .await
        .unwrap();
    assert_eq!(c.get("/v1/r00").await.unwrap().status, 200);
    let path = h.path().join("partners/acme.toml");
    let template = std::fs::read_to_string(&path).unwrap();
    assert!(template.contains("/v1/r00"), "{template}");
    let mut n = 0u32;
    for round in 0..4 {
        // A burst: edits a few milliseconds apart, a SIGHUP now and then.
        for i in 0..40u32 {
            n = (n + 1) % 100;
            std::fs::write(&path, template.replace("/v1/r00", &format!("/v1/r{n:02}"))).unwrap();
            if (i + round) % 7 == 0 {
                broker.signal("HUP");
            }
            tokio::time::sleep(Duration::from_millis(u64::from(i % 4) * 3)).await;
        }
        // The last edit lands while a SIGHUP reload reads the fillers; no
        // SIGHUP after it: the watcher must see it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        broker.signal("HUP");
        tokio::time::sleep(Duration::from_millis(10 + 20 * round as u64)).await;
        n = (n + 1) % 100;
        std::fs::write(&path, template.replace("/v1/r00", &format!("/v1/r{n:02}"))).unwrap();
        let last = format!("/v1/r{n:02}");
        let before = format!("/v1/r{:02}", (n + 99) % 100);
        let mut ok = false;
        for _ in 0..60 {
            if c.get(&last).await.unwrap().status == 200
                && c.get(&before).await.unwrap().status == 403
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            ok,
            "round {round}: the last edit ({last}) was not picked up within 6 s:\n{}",
            broker.log()
        );
        // Settle, then check it stays (no later reload brings an old one back).
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(c.get(&last).await.unwrap().status, 200, "round {round}");
    }
}
