//! Enrolment over EST (RFC 7030) on the partner listener:
//! `GET /.well-known/est/cacerts` (the CA certificates, certs-only PKCS#7),
//! `POST /.well-known/est/simpleenroll` (HTTP Basic `ID:SECRET` from a
//! one-time invitation and a base64 PKCS#10; the first certificate) and
//! `POST /.well-known/est/simplereenroll` (mutual TLS: the self-service
//! renewal of `renewal`, in EST's formats).
//!
//! A connection without a client certificate is served by [`anonymous`]
//! alone: it has no partner identity and never reaches the request phases,
//! so nothing but `cacerts` and `simpleenroll` answers it; every other path
//! is 403 `no_certificate`, recorded. Enrolment attempts are limited per
//! client address; every attempt (enrolled, refused, locked) is a record,
//! and a certificate is signed only after the journal holds the record
//! that announces it. Only the CSR's public key is used.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::header;
use http::{Method, Request, Response};
use hyper::body::Incoming;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::ca::CaError;
use crate::config::PartnerStatus;
use crate::config::validate_partner_id;
use crate::enrolment::{InvitationError, invitation, pkcs7};
use crate::event::{Decision, Event, EventKind, truncated};
use crate::gateway::exchange::PendingRecord;
use crate::gateway::respond::{self, ResponseBody};
use crate::gateway::{Gateway, Refusal, renewal};
use crate::reason::Reason;

/// The CA certificates.
pub const CACERTS_PATH: &str = "/.well-known/est/cacerts";
/// A first certificate, with an invitation's secret.
pub const SIMPLEENROLL_PATH: &str = "/.well-known/est/simpleenroll";
/// A renewal, with the current certificate (mutual TLS).
pub const SIMPLEREENROLL_PATH: &str = "/.well-known/est/simplereenroll";
/// Enrolment attempts one address may make per minute.
pub const MAX_ATTEMPTS_PER_MINUTE: u32 = 10;
/// Addresses whose attempts are counted at once (memory stays bounded;
/// beyond it, enrolment waits for the oldest minute to pass).
const MAX_TRACKED_ADDRESSES: usize = 10_000;
const MINUTE: Duration = Duration::from_secs(60);
/// How long a connection without a client certificate may stay open.
pub const ANONYMOUS_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Longest path kept in a record.
const MAX_RECORDED_PATH: usize = 2048;

/// Enrolment state shared by every connection.
#[derive(Default)]
pub struct Enrolments {
    /// Attempts per address in the current minute.
    attempts: std::sync::Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// One redemption at a time (the invitation file is read, then written).
    redeeming: tokio::sync::Mutex<()>,
}

impl Enrolments {
    /// Counts an attempt from `ip`; 429 beyond the limit.
    fn attempt(&self, ip: IpAddr) -> Result<(), Refusal> {
        let mut map = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if map.len() >= MAX_TRACKED_ADDRESSES && !map.contains_key(&ip) {
            map.retain(|_, (start, _)| now.duration_since(*start) < MINUTE);
        }
        let refuse = |wait: Duration| {
            let secs = wait.as_secs().max(1);
            Refusal::new(Reason::EnrolmentRateLimited)
                .detail(format!(
                    "more than {MAX_ATTEMPTS_PER_MINUTE} enrolment attempts a minute from {ip}"
                ))
                .retry_after(secs)
        };
        if map.len() >= MAX_TRACKED_ADDRESSES && !map.contains_key(&ip) {
            return Err(refuse(MINUTE));
        }
        let entry = map.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= MINUTE {
            *entry = (now, 0);
        }
        if entry.1 >= MAX_ATTEMPTS_PER_MINUTE {
            return Err(refuse(MINUTE.saturating_sub(now.duration_since(entry.0))));
        }
        entry.1 += 1;
        Ok(())
    }
}

/// Serves one request of a connection without a client certificate.
pub async fn anonymous(
    req: Request<Incoming>,
    peer: SocketAddr,
    tls_version: &'static str,
    gw: Arc<Gateway>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let request_id = format!("{:032x}", rand::random::<u128>());
    let mut ev = gw.events.event(EventKind::Exchange, Decision::Denied);
    ev.client_addr = Some(peer.to_string());
    ev.tls_version = Some(tls_version.to_string());
    ev.method = Some(req.method().as_str().to_string());
    ev.request_id = Some(request_id.clone());
    ev.path = Some(truncated(req.uri().path(), MAX_RECORDED_PATH));
    let mut record = PendingRecord::new(ev, started, gw.events.clone(), None);
    let outcome = match (req.method(), req.uri().path()) {
        (&Method::GET, CACERTS_PATH) => cacerts(&gw, &mut record.event),
        (&Method::POST, SIMPLEENROLL_PATH) => enrol(req, peer, &gw, &mut record.event).await,
        _ => Err(Refusal::new(Reason::NoCertificate).detail(
            "no client certificate: this connection may only fetch the CA certificates or enrol (EST)",
        )),
    };
    respond::finish_local(record, outcome, &request_id).await
}

/// `cacerts`: the roots partners trust and the issuing CA (certs-only).
pub fn cacerts(gw: &Gateway, ev: &mut Event) -> Result<(&'static str, String), Refusal> {
    ev.route = Some(CACERTS_PATH.to_string());
    let home = &gw.live.home;
    let internal = |e: CaError| {
        tracing::error!("EST cacerts: {e}");
        Refusal::new(Reason::RenewalFailed)
            .detail(format!("the CA certificates cannot be read: {e}"))
    };
    let mut pem = crate::ca::pki::trust_bundle_pem(home).map_err(internal)?;
    pem.push_str(
        &crate::ca::Authority::load(home)
            .map_err(internal)?
            .chain_to_send(),
    );
    let mut seen = std::collections::HashSet::new();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|c| seen.insert(c.as_ref().to_vec()))
        .collect();
    Ok((
        pkcs7::CONTENT_TYPE,
        pkcs7::certs_only_base64(certs.iter().map(|c| c.as_ref())),
    ))
}

/// The PEM CSR in an EST body (base64 DER; whitespace ignored).
pub(crate) async fn read_csr_pem(req: Request<Incoming>) -> Result<Vec<u8>, Refusal> {
    let body = renewal::read_csr(req).await?;
    csr_pem_from_base64(&body)
}

fn csr_pem_from_base64(body: &Bytes) -> Result<Vec<u8>, Refusal> {
    let der = pkcs7::decode_base64_body(body).map_err(|e| {
        Refusal::new(Reason::BadCsr).detail(format!(
            "the body is not base64 (EST sends the DER CSR in base64): {e}"
        ))
    })?;
    Ok(crate::ca::pem_block("CERTIFICATE REQUEST", &der).into_bytes())
}

/// A chain (PEM) as EST's certs-only answer.
pub(crate) fn certs_only(chain_pem: &str) -> (&'static str, String) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .filter_map(Result::ok)
        .collect();
    (
        pkcs7::CONTENT_TYPE,
        pkcs7::certs_only_base64(certs.iter().map(|c| c.as_ref())),
    )
}

/// `ID:SECRET` from `Authorization: Basic`.
fn basic_credentials(req: &Request<Incoming>) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_string(), secret.to_string()))
}

fn unauthorized(why: impl Into<String>) -> Refusal {
    Refusal::new(Reason::EnrolmentUnauthorized).detail(why)
}

/// `simpleenroll`: a partner's first certificate for its invitation.
pub async fn enrol(
    req: Request<Incoming>,
    peer: SocketAddr,
    gw: &Arc<Gateway>,
    ev: &mut Event,
) -> Result<(&'static str, String), Refusal> {
    ev.route = Some(SIMPLEENROLL_PATH.to_string());
    gw.enrolments.attempt(peer.ip())?;
    let (id, secret) = basic_credentials(&req).ok_or_else(|| {
        unauthorized("no HTTP Basic credentials (the partner id and the invitation's secret)")
    })?;
    if validate_partner_id(&id).is_err() {
        return Err(unauthorized("the user name is not a partner id"));
    }
    ev.partner = Some(id.clone());
    let snapshot = gw.live.snapshot();
    match snapshot.partners.get(&id).map(|e| e.partner.status) {
        None => return Err(unauthorized(format!("no invitation for partner {id}"))),
        Some(PartnerStatus::Suspended) => {
            return Err(
                Refusal::new(Reason::PartnerSuspended).detail(format!("partner {id} is suspended"))
            );
        }
        Some(_) => {}
    }
    drop(snapshot);
    // The CSR is read and checked before the invitation is spent.
    let csr = read_csr_pem(req).await?;
    crate::ca::csr::verified_public_key(&csr).map_err(|e| {
        let m = e.to_string();
        Refusal::new(Reason::BadCsr)
            .detail(m.clone())
            .with("message", m)
    })?;
    if !gw.events.writable() {
        return Err(Refusal::new(Reason::JournalUnavailable).retry_after(5));
    }
    let home = gw.live.home.clone();
    let _one_at_a_time = gw.enrolments.redeeming.lock().await;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let redeemed = {
        let (home, id) = (home.clone(), id.clone());
        blocking(move || invitation::redeem(&home, &id, &secret, now).map_err(redeem_refusal))
            .await?
    };
    let _ = redeemed;
    // Announced before signing: no certificate the journal does not know of.
    let mut issuing = gw.events.event(EventKind::Admin, Decision::Allowed);
    issuing.partner = Some(id.clone());
    issuing.client_addr = Some(peer.to_string());
    issuing.reason = Some("cert_enrolment_issuing".into());
    issuing.detail = Some(format!(
        "enrolment of partner {id} with its invitation (EST): signing its certificate"
    ));
    if let Err(e) = gw.events.record(issuing, None).await {
        release(&home, &id).await;
        return Err(Refusal::new(Reason::JournalUnavailable)
            .retry_after(5)
            .detail(format!(
                "the enrolment could not be recorded before signing ({e}); nothing was issued and the invitation stays open"
            )));
    }
    let signed = {
        let (home, id) = (home.clone(), id.clone());
        blocking(move || {
            crate::ca::lifecycle::enrol_from_csr(&home, &id, &csr).map_err(|e| match e {
                CaError::Invalid(m) => Refusal::new(Reason::BadCsr).detail(m),
                other => {
                    tracing::error!("enrolment failed: {other}");
                    Refusal::new(Reason::RenewalFailed).detail(other.to_string())
                }
            })
        })
        .await
    };
    let signed = match signed {
        Ok(s) => s,
        Err(r) => {
            release(&home, &id).await;
            return Err(r);
        }
    };
    // The new certificate is usable at once, not only after the watcher's tick.
    let live = gw.live.clone();
    match tokio::task::spawn_blocking(move || live.reload(true)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("reload after enrolment: {e}"),
        Err(e) => tracing::warn!("reload after enrolment failed: {e}"),
    }
    if let Some(fleet) = &gw.fleet {
        fleet.clone().partner_changed(&id);
    }
    ev.cert_serial = Some(signed.record.serial.clone());
    ev.cert_fingerprint = Some(signed.record.fingerprint.clone());
    ev.detail = Some(format!(
        "enrolled: partner {id} redeemed its invitation; certificate {} issued",
        signed.record.serial
    ));
    tracing::info!(partner = %id, serial = %signed.record.serial, "partner enrolled with its invitation");
    Ok(certs_only(&signed.chain_pem))
}

/// Opens a spent invitation again after the certificate could not be issued.
async fn release(home: &crate::home::Home, id: &str) {
    let (home, id) = (home.clone(), id.to_string());
    let _ = tokio::task::spawn_blocking(move || {
        if let Err(e) = invitation::release(&home, &id) {
            tracing::warn!("the invitation of {id} stays spent: {e}");
        }
    })
    .await;
}

fn redeem_refusal(e: InvitationError) -> Refusal {
    match e {
        InvitationError::None(p) => unauthorized(format!("no invitation for partner {p}")),
        InvitationError::WrongSecret {
            partner,
            tries,
            locked: false,
        } => unauthorized(format!(
            "wrong secret for partner {partner}'s invitation ({tries} of {} wrong tries)",
            invitation::MAX_WRONG_SECRETS
        )),
        InvitationError::WrongSecret { partner, .. } => Refusal::new(Reason::InvitationLocked)
            .detail(format!(
                "wrong secret for partner {partner}'s invitation: locked now after {} wrong tries",
                invitation::MAX_WRONG_SECRETS
            )),
        e @ InvitationError::Locked(_) => {
            Refusal::new(Reason::InvitationLocked).detail(e.to_string())
        }
        e @ InvitationError::Used(_) => Refusal::new(Reason::InvitationUsed).detail(e.to_string()),
        e @ InvitationError::Expired(_) => {
            Refusal::new(Reason::InvitationExpired).detail(e.to_string())
        }
        other => {
            tracing::error!("enrolment: {other}");
            Refusal::new(Reason::RenewalFailed).detail(other.to_string())
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        Refusal::new(Reason::RenewalFailed).detail(format!("enrolment task failed: {e}"))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_limited_per_address() {
        let e = Enrolments::default();
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        for _ in 0..MAX_ATTEMPTS_PER_MINUTE {
            assert!(e.attempt(a).is_ok());
        }
        let refused = e.attempt(a).err().map(|r| r.reason);
        assert_eq!(refused, Some(Reason::EnrolmentRateLimited));
        assert!(e.attempt(b).is_ok(), "another address has its own count");
    }

    #[test]
    fn a_csr_body_is_base64_der_with_any_line_breaks() {
        let pem = csr_pem_from_base64(&Bytes::from_static(b"MIIB\r\nAAAA\n")).unwrap();
        let text = String::from_utf8(pem).unwrap();
        assert!(text.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(csr_pem_from_base64(&Bytes::from_static(b"not base64!")).is_err());
    }
}
