use super::*;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair as _};

/// RFC 9421 appendix B.2.6's request and its signature base (the base is
/// the same whatever the key).
#[test]
fn the_base_is_the_rfcs() {
    let mut headers = HeaderMap::new();
    headers.insert("date", "Tue, 20 Apr 2021 02:07:55 GMT".parse().unwrap());
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert("content-length", "18".parse().unwrap());
    let msg = Message {
        method: "POST",
        authority: "example.com",
        path: "/foo",
        query: Some("param=Value&Pet=dog"),
        headers: &headers,
        body: br#"{"hello": "world"}"#,
    };
    let input = r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#;
    let d = sf::parse_dictionary(input).unwrap();
    let Member::InnerList(items, params) = &d[0].1 else {
        panic!()
    };
    let base = signature_base(&msg, items, params).unwrap();
    assert_eq!(
        base,
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT\n\"@method\": POST\n\"@path\": /foo\n\"@authority\": example.com\n\"content-type\": application/json\n\"content-length\": 18\n\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
    );
    // The RFC's own Ed25519 test key verifies its own signature over it.
    let rfc_pub = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        "MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=",
    )
    .unwrap();
    let rfc_sig = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==",
    )
    .unwrap();
    let key = public_key(&rfc_pub).unwrap();
    assert_eq!(key.alg, Alg::Ed25519);
    assert!(
        UnparsedPublicKey::new(&sig::ED25519, &key.raw)
            .verify(base.as_bytes(), &rfc_sig)
            .is_ok()
    );
}

struct Signed {
    headers: HeaderMap,
    spki: Vec<u8>,
}

const BODY: &[u8] = br#"{"amount": "10.00", "currency": "EUR"}"#;
const NOW: i64 = 1_800_000_000;

fn digest_header(body: &[u8]) -> String {
    let d = digest::digest(&digest::SHA256, body);
    format!(
        "sha-256=:{}:",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, d.as_ref())
    )
}

/// Signs the request `POST /v1/transfers?x=1` with a fresh key of `alg`.
fn signed(alg: &'static rcgen::SignatureAlgorithm, created: i64, nonce: &str) -> Signed {
    let kp = rcgen::KeyPair::generate_for(alg).unwrap();
    let spki = rcgen::PublicKeyData::subject_public_key_info(&kp);
    let pkcs8 = kp.serialize_der();
    let mut headers = HeaderMap::new();
    headers.insert("content-digest", digest_header(BODY).parse().unwrap());
    let input = format!(
        r#"("@method" "@authority" "@path" "@query" "content-digest");created={created};nonce="{nonce}";keyid="k1""#
    );
    let d = sf::parse_dictionary(&format!("s={input}")).unwrap();
    let Member::InnerList(items, params) = &d[0].1 else {
        panic!()
    };
    let msg = Message {
        method: "POST",
        authority: "broker.example:8443",
        path: "/v1/transfers",
        query: Some("x=1"),
        headers: &headers,
        body: BODY,
    };
    let base = signature_base(&msg, items, params).unwrap();
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let signature = if *alg == rcgen::PKCS_ED25519 {
        Ed25519KeyPair::from_pkcs8(&pkcs8)
            .unwrap()
            .sign(base.as_bytes())
            .as_ref()
            .to_vec()
    } else {
        let k = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8).unwrap();
        assert!(!k.public_key().as_ref().is_empty());
        k.sign(&rng, base.as_bytes()).unwrap().as_ref().to_vec()
    };
    headers.insert("signature-input", format!("s={input}").parse().unwrap());
    headers.insert(
        "signature",
        format!(
            "s=:{}:",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &signature)
        )
        .parse()
        .unwrap(),
    );
    Signed { headers, spki }
}

fn check(s: &Signed, body: &[u8], now: i64) -> Result<Verified, SigError> {
    let msg = Message {
        method: "POST",
        authority: "Broker.Example:8443",
        path: "/v1/transfers",
        query: Some("x=1"),
        headers: &s.headers,
        body,
    };
    verify(
        &msg,
        &[KeyRef {
            id: "k1",
            spki: &s.spki,
        }],
        now,
    )
}

#[test]
fn ecdsa_and_ed25519_verify_and_tampering_does_not() {
    for alg in [&rcgen::PKCS_ECDSA_P256_SHA256, &rcgen::PKCS_ED25519] {
        let s = signed(alg, NOW, "n-1");
        let v = check(&s, BODY, NOW + 10).unwrap();
        assert_eq!((v.keyid.as_str(), v.nonce.as_str()), ("k1", "n-1"));
        assert!(
            v.base
                .starts_with("\"@method\": POST\n\"@authority\": broker.example:8443\n")
        );
        let e = check(&s, br#"{"amount": "99.00", "currency": "EUR"}"#, NOW).unwrap_err();
        assert!(e.to_string().contains("Content-Digest"), "{e}");
        let e = check(&s, BODY, NOW + 301).unwrap_err();
        assert!(e.to_string().contains("created"), "{e}");
    }
}

#[test]
fn a_changed_digest_header_breaks_the_signature() {
    let mut s = signed(&rcgen::PKCS_ECDSA_P256_SHA256, NOW, "n");
    let other = br#"{"amount": "99.00", "currency": "EUR"}"#;
    s.headers
        .insert("content-digest", digest_header(other).parse().unwrap());
    let e = check(&s, other, NOW).unwrap_err();
    assert!(e.to_string().contains("does not verify"), "{e}");
}

#[test]
fn what_is_missing_is_named() {
    let s = signed(&rcgen::PKCS_ECDSA_P256_SHA256, NOW, "n");
    let msg = |h: &HeaderMap| {
        let m = Message {
            method: "POST",
            authority: "broker.example:8443",
            path: "/v1/transfers",
            query: Some("x=1"),
            headers: h,
            body: BODY,
        };
        verify(
            &m,
            &[KeyRef {
                id: "k1",
                spki: &s.spki,
            }],
            NOW,
        )
    };
    assert_eq!(msg(&HeaderMap::new()), Err(SigError::Missing));
    let mut h = s.headers.clone();
    h.remove("signature");
    assert!(matches!(msg(&h), Err(SigError::Invalid(_))));
    // Another key id.
    let m = Message {
        method: "POST",
        authority: "broker.example:8443",
        path: "/v1/transfers",
        query: Some("x=1"),
        headers: &s.headers,
        body: BODY,
    };
    let e = verify(
        &m,
        &[KeyRef {
            id: "k2",
            spki: &s.spki,
        }],
        NOW,
    )
    .unwrap_err();
    assert!(e.to_string().contains("not a key of this partner"), "{e}");
}
