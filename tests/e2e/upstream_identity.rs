//! Signed identity for upstreams, end to end: the real broker adds
//! `X-Gatehouse-Identity` to each relayed request; the echo upstream
//! receives it; it verifies with `jsonwebtoken` against the JWKS fetched
//! from the admin listener, and its claims name the partner, serial, route
//! and request id. A forged header from the partner never gets through; a
//! tampered token fails; a key rotation keeps earlier tokens verifiable.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::broker::{Conn, TestHome, admin_get};
use common::upstream::{EchoOptions, start_echo_upstream};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    serial: String,
    route: String,
    rid: String,
    iat: i64,
    exp: i64,
}

fn validation() -> Validation {
    let mut v = Validation::new(Algorithm::ES256);
    v.leeway = 0;
    v.set_audience(&["orders"]);
    v.set_issuer(&["gatehouse/gatehouse-1"]);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    v
}

fn verify(token: &str, jwks: &JwkSet) -> jsonwebtoken::errors::Result<Claims> {
    let kid = decode_header(token)?.kid.unwrap_or_default();
    let jwk = jwks
        .find(&kid)
        .ok_or_else(|| jsonwebtoken::errors::Error::from(ErrorKind::InvalidKeyFormat))?;
    let key = DecodingKey::from_jwk(jwk)?;
    decode::<Claims>(token, &key, &validation()).map(|d| d.claims)
}

async fn fetch_jwks(admin: std::net::SocketAddr) -> JwkSet {
    let (status, body) = admin_get(admin, "/.well-known/jwks.json").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("a JWK set")
}

fn last_token(up: &common::upstream::EchoUpstream) -> String {
    up.seen()
        .last()
        .and_then(|v| {
            v["headers"]["x-gatehouse-identity"]
                .as_str()
                .map(String::from)
        })
        .expect("the upstream received x-gatehouse-identity")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_verifies_the_partner_identity_token() {
    let h = TestHome::new();
    // A home made before this feature: no identity key yet; `serve` makes it.
    std::fs::remove_file(h.path().join("certs/identity-signing.key")).expect("init made the key");
    std::fs::remove_file(h.path().join("certs/identity-jwks.json")).expect("init made the JWKS");
    let up = start_echo_upstream(EchoOptions::mtls(h.upstream_client_ca_pem())).await;
    h.add_upstream("orders", &up.url(), Some(&up.ca_pem));
    h.add_partner("acme", &["GET,POST /v1/orders -> orders"]);
    let acme = h.issue("acme");
    let broker = h.start();
    let ca = h.ca_pem();

    let key_mode = std::fs::metadata(h.path().join("certs/identity-signing.key"))
        .expect("serve created the key")
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);

    let mut conn = Conn::open(broker.addr, &ca, &acme, false)
        .await
        .expect("connect");
    // The partner tries to pass its own identity token: it is replaced.
    let reply = conn
        .send(
            http::Method::GET,
            "/v1/orders/7",
            &[(
                "x-gatehouse-identity",
                "eyJhbGciOiJub25lIn0.eyJzdWIiOiJnbG9iZXgifQ.",
            )],
            b"",
        )
        .await
        .expect("request");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let token = last_token(&up);
    assert!(
        !token.contains("eyJzdWIiOiJnbG9iZXgifQ"),
        "forged token relayed"
    );

    let jwks = fetch_jwks(broker.admin).await;
    assert_eq!(jwks.keys.len(), 1);
    let on_file: JwkSet = serde_json::from_slice(
        &std::fs::read(h.path().join("certs/identity-jwks.json")).expect("jwks file"),
    )
    .expect("JWKS file parses");
    assert_eq!(
        on_file, jwks,
        "the admin listener serves the file's key set"
    );

    let claims = verify(&token, &jwks).expect("the token verifies");
    assert_eq!(claims.sub, "acme");
    assert_eq!(claims.serial, acme.serial);
    assert_eq!(claims.route, "/v1/orders");
    assert_eq!(claims.aud, "orders");
    assert_eq!(claims.iss, "gatehouse/gatehouse-1");
    let rid = reply.headers["x-request-id"].to_str().expect("ascii");
    assert_eq!(claims.rid, rid);
    assert_eq!(claims.exp - claims.iat, 60);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!((claims.iat - now).abs() <= 5, "iat is now");

    // A tampered payload (another partner's name, same signature) fails.
    let parts: Vec<&str> = token.split('.').collect();
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("utf8");
    let forged = payload.replace("\"acme\"", "\"globex\"");
    assert_ne!(forged, payload);
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        URL_SAFE_NO_PAD.encode(forged),
        parts[2]
    );
    let err = verify(&tampered, &jwks).expect_err("tampered token refused");
    assert_eq!(*err.kind(), ErrorKind::InvalidSignature);
    // One flipped character in the payload fails too (whatever the reason).
    let mut flipped = parts[1].as_bytes().to_vec();
    flipped[10] = if flipped[10] == b'A' { b'B' } else { b'A' };
    let flipped = format!(
        "{}.{}.{}",
        parts[0],
        String::from_utf8(flipped).expect("ascii"),
        parts[2]
    );
    assert!(verify(&flipped, &jwks).is_err());

    // The same token once expired: `exp` in the past is refused.
    let mut late = validation();
    late.reject_tokens_expiring_in_less_than = 61;
    let kid = decode_header(&token).expect("header").kid.expect("kid");
    let key = DecodingKey::from_jwk(jwks.find(&kid).expect("kid")).expect("key");
    let err = decode::<Claims>(&token, &key, &late).expect_err("expiring token refused");
    assert_eq!(*err.kind(), ErrorKind::ExpiredSignature);

    // Rotation: new key published next to the old one; old tokens still verify.
    let out = h.ok(&["cert", "server-renew", "--identity-key", "--json"]);
    let report: serde_json::Value = serde_json::from_str(&out).expect("json");
    let new_kid = report["identity_kid"].as_str().expect("kid").to_string();
    assert_eq!(report["identity_previous_kid"], kid.as_str());
    let mut rotated = None;
    for _ in 0..40 {
        let set = fetch_jwks(broker.admin).await;
        if set.keys.len() == 2 && set.find(&new_kid).is_some() {
            rotated = Some(set);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let rotated = rotated.expect("the broker serves the rotated key set within 2 s");
    verify(&token, &rotated).expect("a token from before the rotation still verifies");
    let mut signed_with_new = None;
    for _ in 0..40 {
        let reply = conn.get("/v1/orders").await.expect("request");
        assert_eq!(reply.status, 200);
        let t = last_token(&up);
        if decode_header(&t).expect("header").kid.as_deref() == Some(new_kid.as_str()) {
            signed_with_new = Some(t);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = signed_with_new.expect("new tokens use the new key within 2 s");
    verify(&t, &rotated).expect("the new token verifies");
}
