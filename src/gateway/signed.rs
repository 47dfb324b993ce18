//! The signature phase of a route that requires a signed request: checks
//! the RFC 9421 signature over the request as received (and the body read
//! whole) against the keys the partner holds (its connection
//! certificate's, keyid = the certificate's SHA-256 fingerprint, and its
//! `[[signing_keys]]`), then that the nonce is new (fleet-wide in a fleet).
//! 401 `signature_required` without one, 401 `signature_invalid` with the
//! problem otherwise.

use http::request::Parts;

use super::Gateway;
use super::refusal::Refusal;
use super::session::ConnCtx;
use crate::config::Partner;
use crate::reason::Reason;
use crate::risk::signature::nonce::NonceCheck;
use crate::risk::signature::{self, KeyRef, Message, SigError, Verified};

/// The longest signature base kept (and verified).
pub const MAX_SIGNATURE_BASE: usize = 16 * 1024;

fn refused(e: SigError) -> Refusal {
    match e {
        SigError::Missing => Refusal::new(Reason::SignatureRequired)
            .with("problem", e.to_string())
            .detail(e.to_string()),
        SigError::Invalid(why) => Refusal::new(Reason::SignatureInvalid)
            .with("problem", why.clone())
            .detail(why),
    }
}

/// Checks the request's signature and nonce (see the module doc).
pub async fn check(
    gw: &Gateway,
    conn: &ConnCtx,
    partner: &Partner,
    parts: &Parts,
    body: &[u8],
) -> Result<Verified, Refusal> {
    let authority = match parts.uri.authority() {
        Some(a) => a.as_str(),
        None => parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
    };
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let msg = Message {
        method: parts.method.as_str(),
        authority,
        path,
        query,
        headers: &parts.headers,
        body,
    };
    let mut keys = Vec::with_capacity(1 + partner.signing_keys.len());
    keys.push(KeyRef {
        id: &conn.identity.fingerprint,
        spki: &conn.identity.spki,
    });
    for k in &partner.signing_keys {
        keys.push(KeyRef {
            id: &k.id,
            spki: &k.spki,
        });
    }
    let now_secs = crate::event::now_ms().div_euclid(1000);
    let verified = signature::verify(&msg, &keys, now_secs).map_err(refused)?;
    if verified.base.len() > MAX_SIGNATURE_BASE {
        return Err(refused(SigError::Invalid(format!(
            "the signature base is longer than {MAX_SIGNATURE_BASE} bytes"
        ))));
    }
    let seen = match &gw.fleet {
        Some(fleet) => {
            fleet
                .first_use_of_nonce(&partner.id, &verified.nonce, now_secs)
                .await?
        }
        None => gw.live.nonces.check(&partner.id, &verified.nonce, now_secs),
    };
    match seen {
        NonceCheck::Fresh => Ok(verified),
        NonceCheck::Replayed => Err(refused(SigError::Invalid(
            "the nonce was used before (a replay)".into(),
        ))),
        NonceCheck::Full => Err(refused(SigError::Invalid(
            "too many signed calls in the nonce window to remember another nonce".into(),
        ))),
    }
}
