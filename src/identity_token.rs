//! Signed identity for upstreams: the `X-Gatehouse-Identity` header, a
//! compact JWS (ES256) the broker adds to every relayed request so a backend
//! can *verify* who the partner is instead of trusting plain headers.
//!
//! This module owns the identity signing key (`certs/identity-signing.key`,
//! P-256, PKCS#8, mode 0600 — separate from the CA key, which it never
//! touches) and the published key set (`certs/identity-jwks.json`, the
//! current key and the one before it, so tokens signed just before a
//! rotation still verify). The admin listener serves the same set at
//! `/.well-known/jwks.json`.
//!
//! Claims: `iss` (`gatehouse/<node id>`), `sub` (partner id), `aud`
//! (upstream name), `serial` (the partner's certificate serial), `route`
//! (the granted route), `rid` (request id, also `X-Request-Id`), `iat`,
//! `exp` (`iat` + 60 s). The `kid` is the RFC 7638 SHA-256 thumbprint of the
//! public JWK. JWK and thumbprint come from `jsonwebtoken`; the per-request
//! signing holds the parsed aws-lc-rs key and the encoded JOSE header, so a
//! token costs one claims serialization, base64 and one ECDSA signature.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, EllipticCurveKeyParameters,
    EllipticCurveKeyType, Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};

use crate::home::{Home, HomeError, write_key, write_public};

/// The request header carrying the token to the upstream.
pub const HEADER: &str = "x-gatehouse-identity";
/// Token lifetime: `exp` = `iat` + this many seconds.
pub const LIFETIME_SECS: i64 = 60;
/// Keys published in the JWKS: the current one and its predecessor.
pub const PUBLISHED_KEYS: usize = 2;
/// Where the admin listener serves the key set.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// What went wrong with the identity key or a token.
#[derive(Debug, thiserror::Error)]
pub enum TokenKeyError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(
        "{path}: {msg}; move it away and run `gatehouse cert server-renew --identity-key` to make a new one"
    )]
    Key { path: PathBuf, msg: String },
    #[error("signing the identity token failed: {0}")]
    Sign(String),
}

/// Why key material cannot be an identity signer.
#[derive(Debug, thiserror::Error)]
pub enum KeyFormError {
    #[error("not a P-256 private key in PKCS#8 form")]
    NotP256Pkcs8,
    #[error("the public key is not an uncompressed P-256 point")]
    NotUncompressedPoint,
    #[error("JWK thumbprint: {0}")]
    Thumbprint(String),
    #[error("the token header cannot be encoded: {0}")]
    Header(serde_json::Error),
}

/// The claims of an identity token, as an upstream decodes them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub serial: String,
    pub route: String,
    pub rid: String,
    pub iat: i64,
    pub exp: i64,
}

/// The same claims, borrowed (the request path serializes these).
#[derive(Serialize)]
struct ClaimsRef<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    serial: &'a str,
    route: &'a str,
    rid: &'a str,
    iat: i64,
    exp: i64,
}

/// What one relayed request is signed for.
#[derive(Debug, Clone, Copy)]
pub struct TokenSubject<'a> {
    pub partner: &'a str,
    pub serial: &'a str,
    pub route: &'a str,
    pub request_id: &'a str,
    pub upstream: &'a str,
}

/// The issuer claim for a broker node.
pub fn issuer(node_id: &str) -> String {
    format!("gatehouse/{node_id}")
}

/// A loaded signing key, ready for the request path.
pub struct IdentitySigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    issuer: String,
    /// base64url of the JOSE header `{"typ":"JWT","alg":"ES256","kid":…}`.
    header_b64: String,
    jwk: Jwk,
}

impl std::fmt::Debug for IdentitySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySigner")
            .field("kid", &self.kid())
            .field("issuer", &self.issuer)
            .finish()
    }
}

impl IdentitySigner {
    /// Builds a signer from a PKCS#8 DER P-256 key.
    pub fn from_pkcs8(der: &[u8], issuer: &str) -> Result<IdentitySigner, KeyFormError> {
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
            .map_err(|_| KeyFormError::NotP256Pkcs8)?;
        let jwk = public_jwk(key.public_key().as_ref())?;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = jwk.common.key_id.clone();
        let header_json = serde_json::to_vec(&header).map_err(KeyFormError::Header)?;
        Ok(IdentitySigner {
            key,
            rng: SystemRandom::new(),
            issuer: issuer.to_string(),
            header_b64: URL_SAFE_NO_PAD.encode(header_json),
            jwk,
        })
    }

    /// The key id (RFC 7638 thumbprint of the public JWK).
    pub fn kid(&self) -> &str {
        self.jwk.common.key_id.as_deref().unwrap_or("")
    }

    /// The public JWK (with `kid`, `use`, `alg`).
    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// Signs a token for `subject`, issued at `now` (unix seconds).
    pub fn sign(&self, subject: &TokenSubject<'_>, now: i64) -> Result<String, TokenKeyError> {
        let claims = ClaimsRef {
            iss: &self.issuer,
            sub: subject.partner,
            aud: subject.upstream,
            serial: subject.serial,
            route: subject.route,
            rid: subject.request_id,
            iat: now,
            exp: now + LIFETIME_SECS,
        };
        let payload =
            serde_json::to_vec(&claims).map_err(|e| TokenKeyError::Sign(e.to_string()))?;
        let mut token = String::with_capacity(self.header_b64.len() + payload.len() * 4 / 3 + 96);
        token.push_str(&self.header_b64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(&payload, &mut token);
        let sig = self
            .key
            .sign(&self.rng, token.as_bytes())
            .map_err(|_| TokenKeyError::Sign("ECDSA signature failed".into()))?;
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(sig.as_ref(), &mut token);
        Ok(token)
    }
}

/// The public JWK of an uncompressed P-256 point, `kid` = its thumbprint.
fn public_jwk(point: &[u8]) -> Result<Jwk, KeyFormError> {
    if point.len() != 65 || point[0] != 0x04 {
        return Err(KeyFormError::NotUncompressedPoint);
    }
    let mut jwk = Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::ES256),
            ..CommonParameters::default()
        },
        algorithm: AlgorithmParameters::EllipticCurve(EllipticCurveKeyParameters {
            key_type: EllipticCurveKeyType::EC,
            curve: EllipticCurve::P256,
            x: URL_SAFE_NO_PAD.encode(&point[1..33]),
            y: URL_SAFE_NO_PAD.encode(&point[33..65]),
        }),
    };
    let kid = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| KeyFormError::Thumbprint(e.to_string()))?;
    jwk.common.key_id = Some(kid);
    Ok(jwk)
}

/// A new P-256 key, PKCS#8 PEM.
fn generate_key_pem() -> Result<String, TokenKeyError> {
    let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .map_err(|_| TokenKeyError::Sign("cannot generate a P-256 key".into()))?;
    Ok(pem::encode_config(
        &pem::Pem::new("PRIVATE KEY", doc.as_ref().to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    ))
}

fn key_error(path: &Path, msg: impl Into<String>) -> TokenKeyError {
    TokenKeyError::Key {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// Reads `certs/identity-signing.key` into a signer.
fn load_signer(home: &Home, issuer: &str) -> Result<IdentitySigner, TokenKeyError> {
    let path = home.identity_key();
    let text = crate::home::read_to_string(&path)?;
    let block =
        pem::parse(text.as_bytes()).map_err(|e| key_error(&path, format!("not PEM: {e}")))?;
    if block.tag() != "PRIVATE KEY" {
        return Err(key_error(
            &path,
            format!("holds a `{}` block, not a PKCS#8 PRIVATE KEY", block.tag()),
        ));
    }
    IdentitySigner::from_pkcs8(block.contents(), issuer)
        .map_err(|m| key_error(&path, m.to_string()))
}

/// Reads the published key set; a missing file is an empty set, an
/// unreadable one is reported and treated as empty (it is rewritten).
fn read_jwks(home: &Home) -> JwkSet {
    let path = home.identity_jwks();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::warn!(
                "{}: not a JWK set ({e}); rewriting it with the current key",
                path.display()
            );
            JwkSet::default()
        }),
        Err(_) => JwkSet::default(),
    }
}

/// `current` first, then up to `PUBLISHED_KEYS - 1` other keys from `old`.
fn compose(current: &Jwk, old: &JwkSet) -> JwkSet {
    let mut keys = vec![current.clone()];
    keys.extend(
        old.keys
            .iter()
            .filter(|k| k.common.key_id.is_some() && k.common.key_id != current.common.key_id)
            .take(PUBLISHED_KEYS - 1)
            .cloned(),
    );
    JwkSet { keys }
}

fn write_jwks(home: &Home, set: &JwkSet) -> Result<(), TokenKeyError> {
    let mut json =
        serde_json::to_vec_pretty(set).map_err(|e| TokenKeyError::Sign(e.to_string()))?;
    json.push(b'\n');
    write_public(&home.identity_jwks(), &json)?;
    Ok(())
}

/// Makes sure the key exists (creating it, 0600, when missing — homes made
/// before this feature) and that the JWKS file publishes it. Returns the
/// signer and the published set.
pub fn ensure(home: &Home, issuer: &str) -> Result<(IdentitySigner, JwkSet), TokenKeyError> {
    if !home.identity_key().exists() {
        write_key(&home.identity_key(), &generate_key_pem()?)?;
        tracing::info!(
            "created the upstream identity signing key {}",
            home.identity_key().display()
        );
    }
    let signer = load_signer(home, issuer)?;
    let on_file = read_jwks(home);
    let set = compose(signer.jwk(), &on_file);
    if set != on_file {
        write_jwks(home, &set)?;
    }
    Ok((signer, set))
}

/// What a rotation did.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub previous_kid: Option<String>,
    pub kid: String,
}

/// Rotates the identity key: a new key; the JWKS publishes it and keeps the
/// previous one. The JWKS is written first, so a verifier never sees a
/// token whose key is not yet published.
pub fn rotate(home: &Home) -> Result<Rotation, TokenKeyError> {
    let previous = if home.identity_key().exists() {
        Some(load_signer(home, "")?)
    } else {
        None
    };
    let pem = generate_key_pem()?;
    let block = pem::parse(pem.as_bytes()).map_err(|e| TokenKeyError::Sign(e.to_string()))?;
    let next = IdentitySigner::from_pkcs8(block.contents(), "")
        .map_err(|e| TokenKeyError::Sign(e.to_string()))?;
    let mut old = read_jwks(home);
    if let Some(p) = &previous {
        // The key in use goes right after the new one, whatever the file said.
        old = compose(p.jwk(), &old);
    }
    write_jwks(home, &compose(next.jwk(), &old))?;
    write_key(&home.identity_key(), &pem)?;
    Ok(Rotation {
        previous_kid: previous.map(|p| p.kid().to_string()),
        kid: next.kid().to_string(),
    })
}

/// The key material the running broker uses.
pub struct Published {
    pub signer: IdentitySigner,
    /// The JWKS as served at `/.well-known/jwks.json`.
    pub jwks_json: String,
}

/// The broker's identity key, reloaded when its files change.
pub struct LiveIdentity {
    home: Home,
    issuer: String,
    current: ArcSwap<Published>,
    stamp: Mutex<u64>,
}

impl LiveIdentity {
    /// Loads (or creates) the key and the JWKS.
    pub fn load(home: &Home, node_id: &str) -> Result<LiveIdentity, TokenKeyError> {
        let issuer = issuer(node_id);
        let stamp = Self::stamp_of(home);
        let published = Self::build(home, &issuer)?;
        Ok(LiveIdentity {
            home: home.clone(),
            issuer,
            current: ArcSwap::from_pointee(published),
            stamp: Mutex::new(stamp),
        })
    }

    fn stamp_of(home: &Home) -> u64 {
        crate::home::stamp_files(&[home.identity_key(), home.identity_jwks()])
    }

    fn build(home: &Home, issuer: &str) -> Result<Published, TokenKeyError> {
        let (signer, set) = ensure(home, issuer)?;
        let jwks_json =
            serde_json::to_string(&set).map_err(|e| TokenKeyError::Sign(e.to_string()))?;
        Ok(Published { signer, jwks_json })
    }

    /// The current key material.
    pub fn current(&self) -> Arc<Published> {
        self.current.load_full()
    }

    /// Signs a token with the current key at the current time.
    pub fn sign(&self, subject: &TokenSubject<'_>) -> Result<String, TokenKeyError> {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.current.load().signer.sign(subject, now)
    }

    /// Reloads when the key or JWKS file changed (a rotation). On an error
    /// the running key stays; it is retried when the files change again.
    /// Returns whether a new key or set was loaded.
    pub fn refresh(&self) -> Result<bool, TokenKeyError> {
        let stamp = Self::stamp_of(&self.home);
        let mut last = self.stamp.lock().unwrap_or_else(|p| p.into_inner());
        if *last == stamp {
            return Ok(false);
        }
        *last = stamp;
        let next = Self::build(&self.home, &self.issuer)?;
        // `build` may have rewritten the JWKS: do not see that as a change.
        *last = Self::stamp_of(&self.home);
        self.current.store(Arc::new(next));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};

    fn home() -> (tempfile::TempDir, Home) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("certs")).expect("certs dir");
        let home = Home::new(dir.path());
        (dir, home)
    }

    fn subject() -> TokenSubject<'static> {
        TokenSubject {
            partner: "acme",
            serial: "0a1b",
            route: "/v1/orders",
            request_id: "r1",
            upstream: "orders",
        }
    }

    fn validation() -> Validation {
        let mut v = Validation::new(Algorithm::ES256);
        v.leeway = 0;
        v.set_audience(&["orders"]);
        v.set_issuer(&["gatehouse/node-a"]);
        v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        v
    }

    fn verify(token: &str, set: &JwkSet) -> jsonwebtoken::errors::Result<IdentityClaims> {
        let kid = decode_header(token)?.kid.unwrap_or_default();
        let jwk = set.find(&kid).expect("kid published");
        let key = DecodingKey::from_jwk(jwk)?;
        decode::<IdentityClaims>(token, &key, &validation()).map(|d| d.claims)
    }

    #[test]
    fn tokens_verify_with_jsonwebtoken_and_carry_the_claims() {
        let (_d, home) = home();
        let (signer, set) = ensure(&home, "gatehouse/node-a").expect("ensure");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let token = signer.sign(&subject(), now).expect("sign");
        let claims = verify(&token, &set).expect("verifies");
        assert_eq!(claims.sub, "acme");
        assert_eq!(claims.serial, "0a1b");
        assert_eq!(claims.route, "/v1/orders");
        assert_eq!(claims.rid, "r1");
        assert_eq!(claims.aud, "orders");
        assert_eq!(claims.exp - claims.iat, LIFETIME_SECS);
        let header = decode_header(&token).expect("header");
        assert_eq!(header.alg, Algorithm::ES256);
        assert_eq!(header.kid.as_deref(), Some(signer.kid()));
    }

    #[test]
    fn an_expired_token_is_refused() {
        let (_d, home) = home();
        let (signer, set) = ensure(&home, "gatehouse/node-a").expect("ensure");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let token = signer.sign(&subject(), now - 120).expect("sign");
        let err = verify(&token, &set).expect_err("expired");
        assert_eq!(
            *err.kind(),
            jsonwebtoken::errors::ErrorKind::ExpiredSignature
        );
    }

    #[test]
    fn a_tampered_token_is_refused() {
        let (_d, home) = home();
        let (signer, set) = ensure(&home, "gatehouse/node-a").expect("ensure");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let token = signer.sign(&subject(), now).expect("sign");
        let parts: Vec<&str> = token.split('.').collect();
        let payload = URL_SAFE_NO_PAD.decode(parts[1]).expect("b64");
        let forged = String::from_utf8(payload)
            .expect("utf8")
            .replace("\"acme\"", "\"globex\"");
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(forged),
            parts[2]
        );
        let err = verify(&forged, &set).expect_err("tampered");
        assert_eq!(
            *err.kind(),
            jsonwebtoken::errors::ErrorKind::InvalidSignature
        );
    }

    #[test]
    fn key_is_private_and_kid_is_the_rfc7638_thumbprint() {
        use std::os::unix::fs::PermissionsExt;
        let (_d, home) = home();
        let (signer, _) = ensure(&home, "gatehouse/node-a").expect("ensure");
        let mode = std::fs::metadata(home.identity_key())
            .expect("key")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // RFC 7638: SHA-256 over {"crv","kty","x","y"} in lexical order.
        let AlgorithmParameters::EllipticCurve(ec) = &signer.jwk().algorithm else {
            panic!("EC key expected");
        };
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            ec.x, ec.y
        );
        use sha2::Digest;
        let expect = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical.as_bytes()));
        assert_eq!(signer.kid(), expect);
    }

    #[test]
    fn rotation_publishes_the_new_key_and_keeps_the_previous_one() {
        let (_d, home) = home();
        let (first, _) = ensure(&home, "gatehouse/node-a").expect("ensure");
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let old_token = first.sign(&subject(), now).expect("sign");
        let r1 = rotate(&home).expect("rotate");
        assert_eq!(r1.previous_kid.as_deref(), Some(first.kid()));
        let (second, set) = ensure(&home, "gatehouse/node-a").expect("ensure");
        assert_eq!(second.kid(), r1.kid);
        assert_eq!(set.keys.len(), 2);
        verify(&old_token, &set).expect("a token from before the rotation still verifies");
        let r2 = rotate(&home).expect("rotate again");
        let (_, set) = ensure(&home, "gatehouse/node-a").expect("ensure");
        let kids: Vec<_> = set
            .keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect();
        assert_eq!(kids, vec![r2.kid, r1.kid], "the oldest key is dropped");
    }

    /// Per-token cost. Run: `cargo test --release --lib identity_token::tests::signing_cost -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn signing_cost() {
        let (_d, home) = home();
        let (signer, _) = ensure(&home, "gatehouse/gatehouse-1").expect("ensure");
        let subject = TokenSubject {
            partner: "acme-logistics",
            serial: "5f3a9c0e1d2b4a6f8e7d6c5b4a392817",
            route: "/v1/orders",
            request_id: "0123456789abcdef0123456789abcdef",
            upstream: "orders",
        };
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        for _ in 0..1000 {
            signer.sign(&subject, now).expect("sign");
        }
        let n = 20_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(signer.sign(&subject, now).expect("sign"));
        }
        let ours = t.elapsed() / n;
        // For comparison: jsonwebtoken::encode (re-parses the key each call).
        let der = pem::parse(std::fs::read(home.identity_key()).expect("key"))
            .expect("pem")
            .into_contents();
        let key = jsonwebtoken::EncodingKey::from_ec_der(&der);
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(signer.kid().to_string());
        let claims = IdentityClaims {
            iss: "gatehouse/gatehouse-1".into(),
            sub: subject.partner.into(),
            aud: subject.upstream.into(),
            serial: subject.serial.into(),
            route: subject.route.into(),
            rid: subject.request_id.into(),
            iat: now,
            exp: now + 60,
        };
        let t = std::time::Instant::now();
        for _ in 0..n / 4 {
            std::hint::black_box(jsonwebtoken::encode(&header, &claims, &key).expect("encode"));
        }
        let theirs = t.elapsed() / (n / 4);
        println!("identity token: {ours:?} per token (jsonwebtoken::encode: {theirs:?})");
    }
}
