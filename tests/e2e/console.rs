//! The operator console's HTTP side on a real broker: the page and its
//! assets with their security headers, the overview JSON (partners, routes,
//! per-minute series, denial reasons, expiring certificates), the journal
//! API finding a denied request by its request id, a record's chain
//! position and checkpoint coverage; and with a public admin listener, the
//! bearer token: required by the console's JSON and `/status`, not by
//! `/healthz`, `/readyz` or `/metrics`. (The page itself in a browser:
//! `scripts/console-check.sh`.)

use crate::common;

use common::broker::{TestHome, admin_request, get_once, home_with_echo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_serves_its_page_and_the_data_behind_it() {
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    h.add_partner("globex", &["GET /v1/invoices -> orders"]);
    let out = h.path().join("globex-cert");
    h.ok(&[
        "cert",
        "issue",
        "globex",
        "--days",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    let globex = h.read_client(&out, "globex");
    let broker = h.start();
    let ca = h.ca_pem();
    for n in 0..3 {
        let r = get_once(broker.addr, &ca, &acme, &format!("/v1/orders/{n}"))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let denied = get_once(broker.addr, &ca, &globex, "/v1/orders/1")
        .await
        .unwrap();
    assert_eq!(denied.status, 403);
    let rid = denied.headers["x-request-id"].to_str().unwrap().to_string();

    let (code, head, page) = admin_request(broker.admin, "/", &[]).await;
    assert_eq!(code, 200);
    assert!(page.contains("<script src=\"/console/app.js\""), "{page}");
    for h in [
        "content-security-policy: default-src 'none'; script-src 'self'",
        "frame-ancestors 'none'",
        "x-content-type-options: nosniff",
        "x-frame-options: deny",
        "content-type: text/html",
    ] {
        assert!(head.contains(h), "{h}: {head}");
    }
    let (code, head, js) = admin_request(broker.admin, "/console/app.js", &[]).await;
    assert_eq!(code, 200);
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(
        !js.contains(".innerHTML"),
        "the console builds the DOM without innerHTML"
    );

    let (code, _, body) = admin_request(broker.admin, "/api/overview", &[]).await;
    assert_eq!(code, 200, "{body}");
    let o: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(o["health"]["ready"], true);
    let partner = |id: &str| {
        o["partners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .cloned()
            .unwrap()
    };
    let a = partner("acme");
    assert_eq!(a["routes"][0], "GET /v1/orders -> orders");
    let series = a["series"].as_array().unwrap();
    assert_eq!(series.len(), 60);
    assert_eq!(
        series
            .iter()
            .map(|m| m["requests"].as_u64().unwrap())
            .sum::<u64>(),
        3
    );
    // The upstream's endpoint and its state.
    let orders = &o["upstreams"][0];
    assert_eq!(orders["name"], "orders", "{body}");
    assert_eq!(orders["endpoints"][0]["state"], "up", "{body}");
    assert_eq!(orders["endpoints"][0]["success"], 3, "{body}");
    assert!(page.contains("id=\"upstreams\""), "{page}");
    // No mirror configured: the mirrors panel has nothing to show.
    assert_eq!(o["mirrors"]["upstreams"], serde_json::json!([]), "{body}");
    assert!(page.contains("id=\"mirrors\""), "{page}");
    let g = partner("globex");
    assert_eq!(g["denial_reasons"]["route_not_granted"], 1);
    assert_eq!(g["certificates"][0]["expiring"], true);
    assert_eq!(g["certificates"][0]["serial"], globex.serial.as_str());

    // The journal filter finds the denied request by its request id.
    let (code, _, body) =
        admin_request(broker.admin, &format!("/api/journal?request_id={rid}"), &[]).await;
    assert_eq!(code, 200, "{body}");
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    let recs = j["records"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "{body}");
    assert_eq!(recs[0]["decision"], "denied");
    assert_eq!(recs[0]["partner"], "globex");
    let seq = recs[0]["seq"].as_u64().unwrap();
    // The other filters, as `log query` has them.
    let (_, _, body) = admin_request(
        broker.admin,
        "/api/journal?partner=acme&decision=allowed&status=200&since=1h&order=oldest",
        &[],
    )
    .await;
    let j: serde_json::Value = serde_json::from_str(&body).unwrap();
    let seqs: Vec<u64> = j["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 3, "{body}");
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let (code, _, body) = admin_request(broker.admin, "/api/journal?decision=maybe", &[]).await;
    assert_eq!(code, 400, "{body}");

    // A record's place in the chain, and no checkpoint yet (one comes every
    // 10000 records or at shutdown).
    let (code, _, body) =
        admin_request(broker.admin, &format!("/api/journal/record?seq={seq}"), &[]).await;
    assert_eq!(code, 200, "{body}");
    let d: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(d["record"]["request_id"], rid.as_str());
    assert_eq!(d["chain"]["seq"], seq);
    assert_eq!(d["chain"]["last_seq"], seq);
    assert_eq!(d["chain"]["hash"], d["record"]["hash"]);
    assert!(d["checkpoint"].is_null(), "{body}");
    let (code, _, _) = admin_request(broker.admin, "/api/journal/record?seq=999999", &[]).await;
    assert_eq!(code, 404);
}

#[tokio::test]
async fn a_public_admin_listener_wants_the_bearer_token() {
    let h = TestHome::new();
    let token = "a-long-random-admin-token-0123456789";
    std::fs::write(h.path().join("certs/admin.token"), format!("{token}\n")).unwrap();
    h.set_server("admin_public", true);
    h.set_server("admin_token_file", "certs/admin.token");
    let broker = h.start();
    let bearer = format!("Bearer {token}");
    for path in ["/api/overview", "/api/journal", "/status"] {
        let (code, head, body) = admin_request(broker.admin, path, &[]).await;
        assert_eq!(code, 401, "{path}: {body}");
        assert!(head.contains("www-authenticate: bearer"), "{head}");
        let (code, _, _) = admin_request(
            broker.admin,
            path,
            &[("authorization", "Bearer wrong-token")],
        )
        .await;
        assert_eq!(code, 401, "{path} with a wrong token");
        let (code, _, body) =
            admin_request(broker.admin, path, &[("authorization", &bearer)]).await;
        assert_eq!(code, 200, "{path} with the token: {body}");
    }
    // Health and metrics stay open; the page holds no data and loads.
    for path in ["/healthz", "/readyz", "/metrics", "/"] {
        let (code, _, _) = admin_request(broker.admin, path, &[]).await;
        assert_eq!(code, 200, "{path}");
    }
    // `gatehouse status` sends the token from the home's config.
    let admin = broker.admin.to_string();
    let out = h.run(&["status", "--json", "--admin", &admin]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The token file replaced: the new token works at once, the old one no more.
    std::fs::write(h.path().join("certs/admin.token"), "the-next-token\n").unwrap();
    let (code, _, _) = admin_request(broker.admin, "/status", &[("authorization", &bearer)]).await;
    assert_eq!(code, 401);
    let (code, _, _) = admin_request(
        broker.admin,
        "/status",
        &[("authorization", "Bearer the-next-token")],
    )
    .await;
    assert_eq!(code, 200);
}

#[tokio::test]
async fn a_public_admin_listener_without_a_token_file_serves_no_data() {
    let h = TestHome::new();
    h.set_server("admin_public", true);
    let broker = h.start();
    let (code, _, body) = admin_request(broker.admin, "/api/overview", &[]).await;
    assert_eq!(code, 401);
    assert!(body.contains("admin_token_file"), "{body}");
    let (code, _, _) = admin_request(broker.admin, "/healthz", &[]).await;
    assert_eq!(code, 200);
}
