//! Partner self-service renewal: `POST /.well-known/gatehouse/renew` on the
//! partner listener. The caller has already passed the handshake and the
//! per-request admission check (partner active, certificate unrevoked,
//! unexpired, not superseded past its overlap); this module decides what
//! the request gets, in phases: read the CSR (bounded) and verify its key;
//! plan from the inventory (renew an active certificate inside its window,
//! deliver again the successor already issued for this key, replace a
//! successor never seen at a handshake, or refuse); the per-partner minimum
//! interval; sign through `ca::lifecycle`. The certificate door
//! (`certificates`) runs these steps in order and records around them: a
//! journal record *before* signing (no certificate is issued that the
//! journal does not know of), and `cert_renewed` after.
//!
//! Renewal is idempotent so a lost answer cannot lock a partner out: the
//! same presenting certificate with a CSR for the same key gets the same
//! successor again (200, not rate limited). It owns the renewal rate state
//! and the window rule; it does not touch the CA files itself, and it never
//! trusts anything in the CSR but its key.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

use crate::ca::CaError;
use crate::ca::inventory::{CertState, Inventory, IssuedCert};
use crate::ca::lifecycle::{self, Supersede};
use crate::gateway::{Gateway, Refusal};
use crate::home::Home;
use crate::reason::Reason;
use crate::timefmt::rfc3339;

/// The renewal endpoint's path.
pub const RENEW_PATH: &str = "/.well-known/gatehouse/renew";
/// Largest CSR body accepted (413 beyond).
pub const MAX_CSR_BODY: usize = crate::ca::csr::MAX_CSR_BYTES;
/// A partner may renew (or replace a successor) at most once per this interval.
pub const MIN_INTERVAL: Duration = Duration::from_secs(60);
/// Share of a certificate's lifetime, at its end, during which renewal is
/// open when the partner file sets no `renewal_window`.
pub const DEFAULT_WINDOW_DIVISOR: i32 = 3;

/// Renewal state shared by every connection.
#[derive(Default)]
pub struct Renewals {
    /// When each partner last renewed (for the minimum interval).
    last: std::sync::Mutex<HashMap<String, Instant>>,
    /// One renewal at a time: the check-then-write on the inventory must
    /// not interleave (one renewal per certificate serial).
    pub(crate) signing: tokio::sync::Mutex<()>,
}

impl Renewals {
    /// 429 with `Retry-After` when `partner` renewed less than a minute ago.
    pub(crate) fn check_rate(&self, partner: &str) -> Result<(), Refusal> {
        let since_last = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(partner)
            .map(Instant::elapsed);
        match since_last.filter(|e| *e < MIN_INTERVAL) {
            None => Ok(()),
            Some(elapsed) => {
                let wait = (MIN_INTERVAL - elapsed).as_secs().max(1);
                let r = Refusal::new(Reason::RenewalRateLimited)
                    .detail(format!("partner {partner} renewed less than a minute ago"));
                Err(r.retry_after(wait).with("retry_after_secs", wait))
            }
        }
    }

    /// Starts `partner`'s minimum interval now.
    pub(crate) fn note(&self, partner: &str) {
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(partner.to_string(), Instant::now());
    }
}

/// When renewal opens for a certificate valid `not_before..not_after`:
/// `window` before `not_after` (never before `not_before`), else at two
/// thirds of the lifetime.
pub fn window_opens(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    window: Option<Duration>,
) -> OffsetDateTime {
    match window.and_then(|w| time::Duration::try_from(w).ok()) {
        Some(w) => not_after
            .checked_sub(w)
            .map_or(not_before, |t| t.max(not_before)),
        None => not_after - (not_after - not_before) / DEFAULT_WINDOW_DIVISOR,
    }
}

/// The lifetime a renewed certificate gets: the predecessor's, in whole
/// days (at least one), so a partner on short-lived certificates stays so.
pub fn successor_days(not_before: OffsetDateTime, not_after: OffsetDateTime) -> u32 {
    let secs = (not_after - not_before - crate::ca::BACKDATE).whole_seconds();
    let days = (secs + 43_200) / 86_400;
    u32::try_from(days.max(1)).unwrap_or(u32::MAX)
}

/// What a renewal request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewalKind {
    /// A successor was issued for the presenting certificate.
    Issued,
    /// The successor already issued for this key, delivered again.
    Redelivered,
    /// A never-used successor (`revoked`) was replaced for a new key.
    Replaced { revoked: String },
}

/// A successful renewal.
#[derive(Debug)]
pub struct Renewed {
    /// New leaf followed by the issuing CA chain.
    pub chain_pem: String,
    pub old_serial: String,
    pub new_serial: String,
    pub kind: RenewalKind,
}

impl Renewed {
    /// One line for the exchange's record.
    pub fn summary(&self) -> String {
        match &self.kind {
            RenewalKind::Issued => format!("renewed; new serial {}", self.new_serial),
            RenewalKind::Redelivered => format!(
                "renewal retried with the same key; serial {} delivered again",
                self.new_serial
            ),
            RenewalKind::Replaced { revoked } => format!(
                "renewal retried with another key; new serial {} replaces {revoked} (revoked, never used)",
                self.new_serial
            ),
        }
    }
}

/// What to sign.
#[derive(Debug)]
pub(crate) enum Issue {
    /// A first successor for an active certificate.
    Renew { days: u32 },
    /// A replacement for `successor`, issued but never seen at a handshake.
    Replace { successor: String, days: u32 },
}

/// What the inventory says the request gets.
pub(crate) enum Plan {
    Redeliver(Renewed),
    Issue(Issue),
}

/// The CSR body, at most `MAX_CSR_BODY` bytes (413 beyond).
pub(crate) async fn read_csr(req: http::Request<Incoming>) -> Result<Bytes, Refusal> {
    let too_large =
        || Refusal::new(Reason::CsrTooLarge).detail("the CSR body is larger than 64 KiB");
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_CSR_BODY as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), MAX_CSR_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(too_large())
        }
        Err(e) => Err(Refusal::new(Reason::BadBody)
            .detail(format!("the request body could not be read: {e}"))),
    }
}

/// The CSR's verified public key (the subjectPublicKey bits, which name
/// the key and, by their form and length, its type).
pub(crate) fn csr_key(csr: &[u8]) -> Result<Vec<u8>, Refusal> {
    let spki = crate::ca::csr::verified_public_key(csr).map_err(ca_refusal)?;
    Ok(rcgen::PublicKeyData::der_bytes(&spki).to_vec())
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Refusal> + Send + 'static,
) -> Result<T, Refusal> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| internal(format!("renewal task failed: {e}")))?
}

/// Reads the inventory and decides what the request gets (blocking).
pub(crate) fn plan(gw: &Gateway, partner: &str, serial: &str, key: &[u8]) -> Result<Plan, Refusal> {
    let inventory = Inventory::load(&gw.live.home).map_err(internal)?;
    let rec = inventory.get(serial).ok_or_else(|| {
        Refusal::new(Reason::UnknownCertificate)
            .detail(format!("certificate {serial} is not in the inventory"))
    })?;
    let now = OffsetDateTime::now_utc();
    let days = successor_days(rec.not_before, rec.not_after);
    match rec.state(now) {
        CertState::Active => {
            let window = gw
                .live
                .snapshot()
                .partners
                .get(partner)
                .and_then(|e| e.partner.renewal_window);
            let opens = window_opens(rec.not_before, rec.not_after, window);
            if now < opens {
                return Err(Refusal::new(Reason::RenewalNotYetAllowed)
                    .detail(format!(
                        "renewal of certificate {serial} opens at {}",
                        rfc3339(opens)
                    ))
                    .with("renewal_opens_at", rfc3339(opens)));
            }
            Ok(Plan::Issue(Issue::Renew { days }))
        }
        CertState::SupersededUntil(_) => retry_plan(gw, &inventory, rec, key, now),
        other => {
            Err(Refusal::new(Reason::NotRenewable)
                .detail(format!("certificate {serial} is {other}")))
        }
    }
}

/// A renewal from a certificate already renewed: the same key gets its
/// successor again; another key replaces a successor never seen at a
/// handshake; anything else is 409 `already_renewed`.
fn retry_plan(
    gw: &Gateway,
    inventory: &Inventory,
    rec: &IssuedCert,
    key: &[u8],
    now: OffsetDateTime,
) -> Result<Plan, Refusal> {
    let already = |why: &str| {
        let mut r = Refusal::new(Reason::AlreadyRenewed).detail(format!(
            "certificate {} was already renewed{why}",
            rec.serial
        ));
        if let Some(next) = &rec.superseded_by {
            r = r.with("superseded_by", next.clone());
        }
        r
    };
    let next = rec
        .superseded_by
        .as_deref()
        .and_then(|s| inventory.get(s))
        .filter(|n| n.partner == rec.partner && n.state(now) == CertState::Active)
        .ok_or_else(|| already(""))?;
    let home = &gw.live.home;
    let chain_pem = lifecycle::issued_chain(home, next).map_err(internal)?;
    if leaf_key(&chain_pem)? == key {
        return Ok(Plan::Redeliver(Renewed {
            chain_pem,
            old_serial: rec.serial.clone(),
            new_serial: next.serial.clone(),
            kind: RenewalKind::Redelivered,
        }));
    }
    if gw.seen.was_seen(home, &next.serial) {
        return Err(already(&format!(
            "; its successor {} is in use, so it cannot be replaced",
            next.serial
        )));
    }
    Ok(Plan::Issue(Issue::Replace {
        successor: next.serial.clone(),
        days: successor_days(rec.not_before, rec.not_after),
    }))
}

/// The subjectPublicKey bits of the first certificate in `chain_pem`.
fn leaf_key(chain_pem: &str) -> Result<Vec<u8>, Refusal> {
    let der = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .ok_or_else(|| internal("the issued certificate's file holds no certificate"))?
        .map_err(|e| internal(format!("the issued certificate's file is not PEM: {e}")))?;
    let (_, x) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| internal(format!("the issued certificate cannot be parsed: {e}")))?;
    Ok(x.public_key().subject_public_key.data.to_vec())
}

/// Signs what the plan says (blocking).
pub(crate) fn sign(
    home: &Home,
    partner: &str,
    serial: &str,
    csr: &[u8],
    issue: &Issue,
) -> Result<Renewed, Refusal> {
    let (done, kind) = match issue {
        Issue::Renew { days } => (
            lifecycle::renew_from_csr(
                home,
                partner,
                csr,
                &Supersede::Serial(serial.to_string()),
                Some(*days),
                None,
            ),
            RenewalKind::Issued,
        ),
        Issue::Replace { successor, days } => (
            lifecycle::replace_successor(home, partner, csr, serial, successor, Some(*days)),
            RenewalKind::Replaced {
                revoked: successor.clone(),
            },
        ),
    };
    let done = done.map_err(ca_refusal)?;
    Ok(Renewed {
        chain_pem: done.chain_pem,
        old_serial: serial.to_string(),
        new_serial: done.record.serial,
        kind,
    })
}

pub(crate) fn ca_refusal(e: CaError) -> Refusal {
    match e {
        CaError::Invalid(m) => Refusal::new(Reason::BadCsr)
            .detail(m.clone())
            .with("message", m),
        e @ CaError::NotRenewable { .. } => {
            Refusal::new(Reason::AlreadyRenewed).detail(e.to_string())
        }
        other => internal(other),
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> Refusal {
    tracing::error!("renewal failed: {e}");
    Refusal::new(Reason::RenewalFailed).detail(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_window_is_the_last_third() {
        let nb = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let na = nb + time::Duration::days(90);
        assert_eq!(window_opens(nb, na, None), nb + time::Duration::days(60));
        assert_eq!(
            window_opens(nb, na, Some(Duration::from_secs(30 * 86_400))),
            nb + time::Duration::days(60)
        );
        assert_eq!(
            window_opens(nb, na, Some(Duration::from_secs(900 * 86_400))),
            nb
        );
    }

    #[test]
    fn successors_keep_the_lifetime() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let nb = now - crate::ca::BACKDATE;
        assert_eq!(successor_days(nb, now + time::Duration::days(3)), 3);
        assert_eq!(successor_days(nb, now + time::Duration::days(90)), 90);
        assert_eq!(successor_days(nb, now + time::Duration::hours(1)), 1);
    }
}
