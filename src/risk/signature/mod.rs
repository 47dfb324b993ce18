//! Signed requests: RFC 9421 HTTP Message Signatures over a request, with
//! an RFC 9530 `Content-Digest` of its body, verified with aws-lc-rs.
//!
//! What a signature must hold to be accepted: the covered components
//! `"@method" "@authority" "@path" "content-digest"` (and `"@query"` when
//! the request has a query), the parameters `created` (within
//! [`MAX_SKEW_SECS`] of now), `nonce` and `keyid` (a key the partner
//! holds: its connection certificate's SHA-256 fingerprint or a
//! `[[signing_keys]]` id); `alg`, when given, must be the key's. The
//! `Content-Digest` (sha-256 or sha-512) is recomputed over the body.
//! Whether a nonce was seen before is the caller's question (see
//! `nonce`): it is asked only after the signature verifies.
//!
//! The signature base is built here, from the request as received, with
//! the structured-field parsing of `sf`; no third-party RFC 9421 crate is
//! used (those on crates.io are 0.0.x releases that bring a second crypto
//! stack; the base construction is a page of code, tested against the
//! RFC's own example and against two partner-side libraries end to end).

pub mod nonce;
pub mod sf;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self as sig, UnparsedPublicKey};
use http::HeaderMap;

use sf::{Bare, Item, Member};

/// `created` may be this far from the broker's clock, either way.
pub const MAX_SKEW_SECS: i64 = 300;
/// The longest nonce accepted.
pub const MAX_NONCE: usize = 128;

/// A request as the signature sees it.
pub struct Message<'a> {
    pub method: &'a str,
    /// The authority (Host, or HTTP/2's `:authority`), as received.
    pub authority: &'a str,
    /// The path as received (not decoded).
    pub path: &'a str,
    /// The query without its `?`, when the target has one.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// A key a partner may sign with.
pub struct KeyRef<'a> {
    /// What `keyid` names it by.
    pub id: &'a str,
    /// Its SubjectPublicKeyInfo, DER.
    pub spki: &'a [u8],
}

/// A verified signature: what the journal keeps as evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub label: String,
    pub keyid: String,
    pub alg: Alg,
    /// The signature base, exactly as signed.
    pub base: String,
    pub signature: Vec<u8>,
    pub nonce: String,
    pub created: i64,
}

/// Why a signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigError {
    /// No `Signature-Input` / `Signature` at all.
    #[error("the request carries no Signature-Input and Signature")]
    Missing,
    /// A signature is there but does not hold (the text says why).
    #[error("{0}")]
    Invalid(String),
}

fn invalid(why: impl Into<String>) -> SigError {
    SigError::Invalid(why.into())
}

/// The signature algorithms accepted (by key type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    EcdsaP256Sha256,
    Ed25519,
    RsaPssSha512,
}

impl Alg {
    /// The RFC 9421 name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Alg::Ed25519 => "ed25519",
            Alg::RsaPssSha512 => "rsa-pss-sha512",
        }
    }
}

/// A public key, ready to verify.
struct PublicKey {
    alg: Alg,
    /// The key bytes aws-lc-rs takes (EC point, Ed25519 key, PKCS#1 RSA key).
    raw: Vec<u8>,
}

/// Why a public key cannot verify request signatures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("the key is not a SubjectPublicKeyInfo")]
    NotSpki,
    #[error("an EC key on a curve other than P-256")]
    Curve,
    #[error("a key of type {0}, which cannot sign requests")]
    Unsupported(String),
}

impl From<KeyError> for SigError {
    fn from(e: KeyError) -> SigError {
        invalid(e.to_string())
    }
}

fn public_key(spki: &[u8]) -> Result<PublicKey, KeyError> {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS,
        OID_SIG_ED25519,
    };
    use x509_parser::prelude::FromDer;
    let (_, info) =
        x509_parser::x509::SubjectPublicKeyInfo::from_der(spki).map_err(|_| KeyError::NotSpki)?;
    let oid = &info.algorithm.algorithm;
    let raw = info.subject_public_key.data.to_vec();
    let alg = if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = info
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if curve.as_ref() != Some(&OID_EC_P256) {
            return Err(KeyError::Curve);
        }
        Alg::EcdsaP256Sha256
    } else if *oid == OID_SIG_ED25519 {
        Alg::Ed25519
    } else if *oid == OID_PKCS1_RSAENCRYPTION || *oid == OID_PKCS1_RSASSAPSS {
        Alg::RsaPssSha512
    } else {
        return Err(KeyError::Unsupported(oid.to_string()));
    };
    Ok(PublicKey { alg, raw })
}

/// The algorithm a key (SubjectPublicKeyInfo DER) signs with, or why it
/// cannot sign requests (for configuration checks).
pub fn key_alg(spki: &[u8]) -> Result<Alg, KeyError> {
    public_key(spki).map(|k| k.alg)
}

/// Verifies the request's signature against `keys` at `now_secs` (see the
/// module doc). With several signatures, the first that verifies is taken;
/// when none does, the first one's problem is reported.
pub fn verify(msg: &Message<'_>, keys: &[KeyRef<'_>], now_secs: i64) -> Result<Verified, SigError> {
    let input = joined(msg.headers, "signature-input")?;
    let signature = joined(msg.headers, "signature")?;
    let (input, signature) = match (input, signature) {
        (None, None) => return Err(SigError::Missing),
        (Some(i), Some(s)) => (i, s),
        (None, Some(_)) => return Err(invalid("Signature without Signature-Input")),
        (Some(_), None) => return Err(invalid("Signature-Input without Signature")),
    };
    let inputs =
        sf::parse_dictionary(&input).map_err(|e| invalid(format!("Signature-Input is {e}")))?;
    let sigs =
        sf::parse_dictionary(&signature).map_err(|e| invalid(format!("Signature is {e}")))?;
    let mut first_problem = None;
    for (label, member) in &inputs {
        let Member::InnerList(components, params) = member else {
            first_problem.get_or_insert_with(|| {
                invalid(format!("Signature-Input `{label}` is not an inner list"))
            });
            continue;
        };
        let sig_bytes = match sigs.iter().find(|(l, _)| l == label) {
            Some((
                _,
                Member::Item(Item {
                    bare: Bare::Bytes(b),
                    ..
                }),
            )) => b.clone(),
            _ => {
                first_problem.get_or_insert_with(|| {
                    invalid(format!(
                        "no Signature `{label}` (a byte sequence) for Signature-Input `{label}`"
                    ))
                });
                continue;
            }
        };
        match verify_one(msg, keys, now_secs, label, components, params, sig_bytes) {
            Ok(v) => return Ok(v),
            Err(e) => {
                first_problem.get_or_insert(e);
            }
        }
    }
    Err(first_problem.unwrap_or_else(|| invalid("no signature in Signature-Input")))
}

/// A header's field values joined with `, ` (None when absent).
fn joined(headers: &HeaderMap, name: &str) -> Result<Option<String>, SigError> {
    let mut values = Vec::new();
    for v in headers.get_all(name) {
        let v = v
            .to_str()
            .map_err(|_| invalid(format!("{name} is not ASCII")))?;
        values.push(v.trim());
    }
    Ok((!values.is_empty()).then(|| values.join(", ")))
}

fn param<'p>(params: &'p sf::Params, name: &str) -> Option<&'p Bare> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

#[allow(clippy::too_many_arguments)]
fn verify_one(
    msg: &Message<'_>,
    keys: &[KeyRef<'_>],
    now_secs: i64,
    label: &str,
    components: &[Item],
    params: &sf::Params,
    signature: Vec<u8>,
) -> Result<Verified, SigError> {
    // What must be covered.
    let names: Vec<&str> = components
        .iter()
        .map(|c| match &c.bare {
            Bare::String(s) => Ok(s.as_str()),
            _ => Err(invalid("a covered component is not a string")),
        })
        .collect::<Result<_, _>>()?;
    let mut required = vec!["@method", "@authority", "@path", "content-digest"];
    if msg.query.is_some() {
        required.push("@query");
    }
    for r in required {
        if !names.contains(&r) {
            return Err(invalid(format!("the signature does not cover \"{r}\"")));
        }
    }
    // The parameters.
    let created = match param(params, "created") {
        Some(Bare::Integer(c)) => *c,
        _ => return Err(invalid("the signature has no created time")),
    };
    if (now_secs - created).abs() > MAX_SKEW_SECS {
        return Err(invalid(format!(
            "created {created} is more than {MAX_SKEW_SECS} s from the broker's clock ({now_secs})"
        )));
    }
    if let Some(e) = param(params, "expires") {
        match e {
            Bare::Integer(e) if *e >= now_secs => {}
            Bare::Integer(e) => return Err(invalid(format!("the signature expired at {e}"))),
            _ => return Err(invalid("expires is not an integer")),
        }
    }
    let nonce = match param(params, "nonce") {
        Some(Bare::String(n)) if !n.is_empty() && n.len() <= MAX_NONCE => n.clone(),
        Some(_) => {
            return Err(invalid(format!(
                "the nonce is not a string of 1 to {MAX_NONCE} characters"
            )));
        }
        None => return Err(invalid("the signature has no nonce")),
    };
    let keyid = match param(params, "keyid") {
        Some(Bare::String(k)) => k.clone(),
        _ => return Err(invalid("the signature has no keyid")),
    };
    let key = keys.iter().find(|k| k.id == keyid).ok_or_else(|| {
        invalid(format!(
            "keyid `{}` is not a key of this partner",
            crate::event::truncated(&keyid, 80)
        ))
    })?;
    let key = public_key(key.spki)?;
    if let Some(alg) = param(params, "alg") {
        match alg {
            Bare::String(a) if a == key.alg.name() => {}
            Bare::String(a) => {
                return Err(invalid(format!(
                    "alg `{}` is not the key's ({})",
                    crate::event::truncated(a, 40),
                    key.alg.name()
                )));
            }
            _ => return Err(invalid("alg is not a string")),
        }
    }
    // The body's digest.
    check_content_digest(msg)?;
    // The base, then the signature over it.
    let base = signature_base(msg, components, params)?;
    let ok = match key.alg {
        Alg::EcdsaP256Sha256 => UnparsedPublicKey::new(&sig::ECDSA_P256_SHA256_FIXED, &key.raw)
            .verify(base.as_bytes(), &signature),
        Alg::Ed25519 => {
            UnparsedPublicKey::new(&sig::ED25519, &key.raw).verify(base.as_bytes(), &signature)
        }
        Alg::RsaPssSha512 => UnparsedPublicKey::new(&sig::RSA_PSS_2048_8192_SHA512, &key.raw)
            .verify(base.as_bytes(), &signature),
    };
    ok.map_err(|_| invalid(format!("the signature does not verify with key `{keyid}`")))?;
    Ok(Verified {
        label: label.to_string(),
        keyid,
        alg: key.alg,
        base,
        signature,
        nonce,
        created,
    })
}

/// Checks `Content-Digest` against the body: every sha-256 and sha-512
/// member must match, and there must be one.
fn check_content_digest(msg: &Message<'_>) -> Result<(), SigError> {
    let field = joined(msg.headers, "content-digest")?
        .ok_or_else(|| invalid("the request has no Content-Digest"))?;
    let members =
        sf::parse_dictionary(&field).map_err(|e| invalid(format!("Content-Digest is {e}")))?;
    let mut checked = 0;
    for (alg, member) in &members {
        let algorithm = match alg.as_str() {
            "sha-256" => &digest::SHA256,
            "sha-512" => &digest::SHA512,
            _ => continue,
        };
        let Member::Item(Item {
            bare: Bare::Bytes(expected),
            ..
        }) = member
        else {
            return Err(invalid(format!(
                "Content-Digest {alg} is not a byte sequence"
            )));
        };
        if digest::digest(algorithm, msg.body).as_ref() != expected.as_slice() {
            return Err(invalid(format!(
                "Content-Digest {alg} does not match the body"
            )));
        }
        checked += 1;
    }
    if checked == 0 {
        return Err(invalid("Content-Digest has no sha-256 or sha-512 member"));
    }
    Ok(())
}

/// The authority, normalized as RFC 9110 section 4.2.3 says: lowercase,
/// without https's default port.
fn authority(a: &str) -> String {
    let a = a.to_ascii_lowercase();
    match a.strip_suffix(":443") {
        Some(host) => host.to_string(),
        None => a,
    }
}

/// The signature base (RFC 9421 section 2.5).
pub fn signature_base(
    msg: &Message<'_>,
    components: &[Item],
    params: &sf::Params,
) -> Result<String, SigError> {
    let mut base = String::new();
    let mut seen = Vec::with_capacity(components.len());
    for c in components {
        let id = sf::serialize_item(c);
        if seen.contains(&id) {
            return Err(invalid(format!("{id} is covered twice")));
        }
        seen.push(id.clone());
        let Bare::String(name) = &c.bare else {
            return Err(invalid("a covered component is not a string"));
        };
        if !c.params.is_empty() {
            return Err(invalid(format!(
                "{id}: component parameters are not supported; cover the whole field"
            )));
        }
        let value = match name.as_str() {
            "@method" => msg.method.to_string(),
            "@authority" => authority(msg.authority),
            "@path" => {
                if msg.path.is_empty() {
                    "/".to_string()
                } else {
                    msg.path.to_string()
                }
            }
            "@query" => format!("?{}", msg.query.unwrap_or("")),
            "@scheme" => "https".to_string(),
            "@target-uri" => {
                let mut t = format!("https://{}{}", authority(msg.authority), msg.path);
                if let Some(q) = msg.query {
                    t.push('?');
                    t.push_str(q);
                }
                t
            }
            "@request-target" => {
                let mut t = msg.path.to_string();
                if let Some(q) = msg.query {
                    t.push('?');
                    t.push_str(q);
                }
                t
            }
            n if n.starts_with('@') => {
                return Err(invalid(format!(
                    "{id}: this derived component is not supported"
                )));
            }
            n if n.bytes().any(|b| b.is_ascii_uppercase()) => {
                return Err(invalid(format!("{id}: a field name must be lowercase")));
            }
            n => joined(msg.headers, n)?.ok_or_else(|| {
                invalid(format!("{id} is covered but the request has no such field"))
            })?,
        };
        if value.contains('\n') || value.contains('\r') {
            return Err(invalid(format!("{id}: a value with a line break")));
        }
        base.push_str(&id);
        base.push_str(": ");
        base.push_str(&value);
        base.push('\n');
    }
    base.push_str("\"@signature-params\": ");
    base.push_str(&sf::serialize_inner_list(components, params));
    Ok(base)
}

#[cfg(test)]
mod tests;
