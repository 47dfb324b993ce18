//! Split upstreams with real backend processes: forty partners over a
//! 90/10 split (each always on one side, the share close to the weights),
//! the weights moved to 50/50 live (only partners that must move do, and
//! none leaves the side whose weight rose), a partner pinned to one side
//! (also pinned by a live reload), and `gatehouse check` explaining a split
//! or a pin written wrong. `/status` lists the split's weights and pins.

use std::collections::BTreeMap;

use crate::common::client::{Conn, admin_get};
use crate::common::home::TestHome;
use crate::common::pool_backend::PoolBackend;
use crate::common::reload::reload_applies;

/// Two pools, `orders-legacy` and `orders-v2` (each answering its name),
/// and `orders`, a split of them with the given weights.
fn legacy_and_v2(h: &TestHome, legacy: &PoolBackend, v2: &PoolBackend, weights: (u32, u32)) {
    h.append_config(&format!(
        "[upstreams.orders-legacy]\nurl = \"{}\"\nsigned_identity = false\n\n\
             [upstreams.orders-v2]\nurl = \"{}\"\nsigned_identity = false\n\n\
             [upstreams.orders]\nsplit = {{ orders-legacy = {}, orders-v2 = {} }}\n",
        legacy.url(),
        v2.url(),
        weights.0,
        weights.1
    ));
}

fn set_weights(h: &TestHome, legacy: i64, v2: i64) {
    h.edit_config(|d| {
        let mut t = toml_edit::InlineTable::new();
        t.insert("orders-legacy", legacy.into());
        t.insert("orders-v2", v2.into());
        d["upstreams"]["orders"]["split"] = toml_edit::value(t);
    });
}

fn backends(h: &TestHome) -> (PoolBackend, PoolBackend) {
    let dir = h.path().join("backends");
    std::fs::create_dir_all(&dir).unwrap();
    (
        PoolBackend::start(&dir, "orders-legacy", "ok"),
        PoolBackend::start(&dir, "orders-v2", "ok"),
    )
}

/// The side each partner reached over `calls` requests on one connection;
/// fails if a partner's requests reached both sides.
async fn sides(
    broker_addr: std::net::SocketAddr,
    ca: &str,
    certs: &[(String, crate::common::home::ClientCert)],
    calls: usize,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (id, cert) in certs {
        let mut c = Conn::open(broker_addr, ca, cert, false).await.unwrap();
        let mut seen = Vec::new();
        for i in 0..calls {
            let r = c.get(&format!("/v1/orders/{i}")).await.unwrap();
            assert_eq!(r.status, 200, "{id}: {}", r.body);
            seen.push(r.body);
        }
        seen.dedup();
        assert_eq!(seen.len(), 1, "{id} reached both sides: {seen:?}");
        out.insert(id.clone(), seen.remove(0));
    }
    out
}

#[tokio::test]
async fn forty_partners_over_90_10_stay_on_their_side_and_50_50_moves_only_those_that_must() {
    let h = TestHome::new();
    let (legacy, v2) = backends(&h);
    legacy_and_v2(&h, &legacy, &v2, (90, 10));
    let mut certs = Vec::new();
    for i in 0..40 {
        let id = format!("partner-{i:02}");
        h.add_partner(&id, &["GET /v1 -> orders"]);
        certs.push((id.clone(), h.issue(&id)));
    }
    let broker = h.start();
    // 40 partners × 5 calls: 200 calls.
    let before = sides(broker.addr, &h.ca_pem(), &certs, 5).await;
    let on_v2 = before.values().filter(|s| *s == "orders-v2").count();
    // 10 % of 40 is 4; the spread of 40 draws is about 2.
    assert!(
        (2..=7).contains(&on_v2),
        "{on_v2} of 40 partners on orders-v2 at 90/10: {before:?}"
    );
    assert_eq!(
        v2.requests().len(),
        on_v2 * 5,
        "orders-v2 saw exactly its partners' calls"
    );
    // The record names the split upstream and the side that answered.
    let journal = h.journal();
    let exchanges: Vec<&serde_json::Value> = journal
        .iter()
        .filter(|r| r["kind"] == "exchange" && r["status"] == 200)
        .collect();
    assert_eq!(exchanges.len(), 200);
    for r in &exchanges {
        let partner = r["partner"].as_str().unwrap();
        assert_eq!(r["upstream"], "orders", "{r}");
        assert_eq!(
            r["split_side"].as_str(),
            Some(before[partner].as_str()),
            "{r}"
        );
    }

    set_weights(&h, 50, 50);
    reload_applies(&broker, &h, "upstreams.orders.split").await;
    let after = sides(broker.addr, &h.ca_pem(), &certs, 3).await;
    let mut moved = 0;
    for (id, side) in &before {
        if side == "orders-v2" {
            assert_eq!(
                after[id], "orders-v2",
                "{id} left the side whose weight rose"
            );
        }
        moved += usize::from(after[id] != *side);
    }
    let on_v2_after = after.values().filter(|s| *s == "orders-v2").count();
    assert_eq!(
        moved,
        on_v2_after - on_v2,
        "only partners drawn to orders-v2 moved"
    );
    // Half of 40 is 20, give or take the spread.
    assert!(
        (13..=27).contains(&on_v2_after),
        "{on_v2_after} of 40 on orders-v2 at 50/50"
    );
}

#[tokio::test]
async fn a_pinned_partner_always_reaches_its_side_and_a_pin_applies_on_reload() {
    let h = TestHome::new();
    let (legacy, v2) = backends(&h);
    // Everyone on legacy by weight; only a pin reaches orders-v2.
    legacy_and_v2(&h, &legacy, &v2, (100, 0));
    h.add_partner("pilot", &["GET /v1 -> orders"]);
    h.add_partner("late", &["GET /v1 -> orders"]);
    h.add_partner("steady", &["GET /v1 -> orders"]);
    let pin = |id: &str| {
        let path = h.path().join("partners").join(format!("{id}.toml"));
        let mut doc: toml_edit::DocumentMut =
            std::fs::read_to_string(&path).unwrap().parse().unwrap();
        let mut t = toml_edit::InlineTable::new();
        t.insert("orders", "orders-v2".into());
        doc["pin"] = toml_edit::value(t);
        std::fs::write(&path, doc.to_string()).unwrap();
    };
    pin("pilot");
    let certs: Vec<_> = ["pilot", "late", "steady"]
        .iter()
        .map(|id| (id.to_string(), h.issue(id)))
        .collect();
    let broker = h.start();
    let first = sides(broker.addr, &h.ca_pem(), &certs, 10).await;
    assert_eq!(first["pilot"], "orders-v2");
    assert_eq!(first["late"], "orders-legacy");
    assert_eq!(first["steady"], "orders-legacy");
    assert_eq!(
        v2.requests().len(),
        10,
        "only the pilot's calls on orders-v2"
    );

    pin("late");
    reload_applies(&broker, &h, "partners/late.toml pin").await;
    let second = sides(broker.addr, &h.ca_pem(), &certs, 10).await;
    assert_eq!(second["pilot"], "orders-v2");
    assert_eq!(second["late"], "orders-v2", "the new pin applies live");
    assert_eq!(second["steady"], "orders-legacy");

    // The status shows the split's weights and who is pinned where.
    let (code, body) = admin_get(broker.admin, "/status").await;
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        status["splits"],
        serde_json::json!([{"name": "orders", "sides": [
            {"side": "orders-legacy", "weight": 100, "pinned": []},
            {"side": "orders-v2", "weight": 0, "pinned": ["late", "pilot"]},
        ]}]),
        "{body}"
    );
}

#[test]
fn check_explains_a_split_or_pin_written_wrong() {
    let h = TestHome::new();
    h.append_config(
        "[upstreams.legacy]\nurl = \"http://127.0.0.1:1\"\n\n\
         [upstreams.v2]\nurl = \"http://127.0.0.1:2\"\n\n\
         [upstreams.orders]\nsplit = { legacy = 90, v2 = 10 }\n\n\
         [upstreams.ghost]\nsplit = { legacy = 50, nowhere = 50 }\n\n\
         [upstreams.nested]\nsplit = { orders = 1, v2 = 1 }\n\n\
         [upstreams.empty]\nsplit = { legacy = 0, v2 = 0 }\n\n\
         [upstreams.both]\nurl = \"http://127.0.0.1:3\"\nsplit = { legacy = 1 }\n",
    );
    let out = h.run(&["check"]);
    assert!(!out.status.success());
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    for needle in [
        "[upstreams.ghost] split names `nowhere`, which is not an upstream",
        "[upstreams.nested] split names `orders`, itself a split",
        "[upstreams.empty] `split` weights add up to 0",
        "[upstreams.both] has both `split` and `url`/`endpoints`",
    ] {
        assert!(err.contains(needle), "{needle}:\n{err}");
    }
    assert!(
        !err.contains("[upstreams.orders]"),
        "a good split is no problem:\n{err}"
    );

    // A pin on a pool, and a pin to a side the split does not have.
    let h = TestHome::new();
    h.append_config(
        "[upstreams.legacy]\nurl = \"http://127.0.0.1:1\"\n\n\
         [upstreams.v2]\nurl = \"http://127.0.0.1:2\"\n\n\
         [upstreams.orders]\nsplit = { legacy = 90, v2 = 10 }\n",
    );
    h.add_partner("acme", &["GET /v1 -> orders"]);
    let path = h.path().join("partners").join("acme.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        format!("pin = {{ orders = \"v3\", legacy = \"v2\" }}\n{text}"),
    )
    .unwrap();
    let out = h.run(&["check"]);
    assert!(!out.status.success());
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    for needle in [
        "pin sends `orders` to `v3`, which is not one of its sides (legacy, v2)",
        "pin names `legacy`, which is not a split",
        "acme.toml:1",
    ] {
        assert!(err.contains(needle), "{needle}:\n{err}");
    }
}
