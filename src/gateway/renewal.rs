//! Partner self-service renewal: `POST /.well-known/gatehouse/renew` on the
//! partner listener. The caller has already passed the handshake and the
//! per-request admission check (partner active, certificate unrevoked,
//! unexpired, not superseded past its overlap); this module decides whether
//! the presenting certificate may be renewed now (renewal window, one renewal
//! per certificate, a per-partner minimum interval), then hands the CSR to
//! `ca::lifecycle::renew_from_csr`, which signs only its public key and
//! supersedes exactly the presenting certificate.
//!
//! It owns the renewal rate state and the window rule; it does not touch
//! the CA files itself, and it never trusts anything in the CSR but its key.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use time::OffsetDateTime;

use crate::ca::CaError;
use crate::ca::inventory::{CertState, Inventory};
use crate::ca::lifecycle::{self, Supersede};
use crate::event::{Decision, EventKind};
use crate::gateway::Refusal;
use crate::gateway::live::Live;
use crate::guard::EventSink;
use crate::identity::PartnerIdentity;
use crate::timefmt::rfc3339;

/// The renewal endpoint's path.
pub const RENEW_PATH: &str = "/.well-known/gatehouse/renew";
/// Largest CSR body accepted (413 beyond).
pub const MAX_CSR_BODY: usize = crate::ca::csr::MAX_CSR_BYTES;
/// A partner may renew at most once per this interval.
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
    signing: tokio::sync::Mutex<()>,
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

/// A successful renewal.
#[derive(Debug)]
pub struct Renewed {
    /// New leaf followed by the issuing CA chain.
    pub chain_pem: String,
    pub old_serial: String,
    pub new_serial: String,
}

/// Handles one renewal request from `identity` (already admitted).
pub async fn handle(
    req: http::Request<Incoming>,
    identity: &PartnerIdentity,
    live: &Arc<Live>,
    renewals: &Renewals,
    events: &EventSink,
) -> Result<Renewed, Refusal> {
    let declared = req
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_CSR_BODY as u64) {
        return Err(
            Refusal::http(StatusCode::PAYLOAD_TOO_LARGE, "csr_too_large")
                .closing()
                .detail("the CSR body is larger than 64 KiB"),
        );
    }
    let body = match Limited::new(req.into_body(), MAX_CSR_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            return Err(
                Refusal::http(StatusCode::PAYLOAD_TOO_LARGE, "csr_too_large")
                    .closing()
                    .detail("the CSR body is larger than 64 KiB"),
            );
        }
        Err(e) => {
            return Err(Refusal::http(StatusCode::BAD_REQUEST, "bad_body")
                .detail(format!("the request body could not be read: {e}")));
        }
    };

    let partner = identity.partner.to_string();
    let serial = identity.serial.to_string();
    let _one_at_a_time = renewals.signing.lock().await;
    let since_last = renewals
        .last
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&partner)
        .map(Instant::elapsed);
    if let Some(elapsed) = since_last.filter(|e| *e < MIN_INTERVAL) {
        let wait = (MIN_INTERVAL - elapsed).as_secs().max(1);
        let r = Refusal::http(StatusCode::TOO_MANY_REQUESTS, "renewal_rate_limited")
            .detail(format!("partner {partner} renewed less than a minute ago"));
        return Err(r.retry_after(wait).with("retry_after_secs", wait));
    }

    let window = live
        .snapshot()
        .partners
        .get(&partner)
        .and_then(|e| e.partner.renewal_window);
    let home = live.home.clone();
    let (p, s) = (partner.clone(), serial.clone());
    let outcome = tokio::task::spawn_blocking(move || -> Result<Renewed, Refusal> {
        let inventory = Inventory::load(&home).map_err(internal)?;
        let rec = inventory.get(&s).cloned().ok_or_else(|| {
            Refusal::http(StatusCode::FORBIDDEN, "unknown_certificate")
                .detail(format!("certificate {s} is not in the inventory"))
        })?;
        let now = OffsetDateTime::now_utc();
        match rec.state(now) {
            CertState::Active => {}
            CertState::SupersededUntil(_) => {
                let mut r = Refusal::http(StatusCode::CONFLICT, "already_renewed")
                    .detail(format!("certificate {s} was already renewed"));
                if let Some(next) = &rec.superseded_by {
                    r = r.with("superseded_by", next.clone());
                }
                return Err(r);
            }
            other => {
                return Err(Refusal::http(StatusCode::FORBIDDEN, "not_renewable")
                    .detail(format!("certificate {s} is {other}")));
            }
        }
        let opens = window_opens(rec.not_before, rec.not_after, window);
        if now < opens {
            return Err(
                Refusal::http(StatusCode::FORBIDDEN, "renewal_not_yet_allowed")
                    .detail(format!(
                        "renewal of certificate {s} opens at {}",
                        rfc3339(opens)
                    ))
                    .with("renewal_opens_at", rfc3339(opens)),
            );
        }
        let days = successor_days(rec.not_before, rec.not_after);
        let done = lifecycle::renew_from_csr(
            &home,
            &p,
            &body,
            &Supersede::Serial(s.clone()),
            Some(days),
            None,
        )
        .map_err(|e| match e {
            CaError::Invalid(m) => Refusal::http(StatusCode::BAD_REQUEST, "bad_csr")
                .detail(m.clone())
                .with("message", m),
            e @ CaError::NotRenewable { .. } => {
                Refusal::http(StatusCode::CONFLICT, "already_renewed").detail(e.to_string())
            }
            other => internal(other),
        })?;
        Ok(Renewed {
            chain_pem: done.chain_pem,
            old_serial: s,
            new_serial: done.record.serial,
        })
    })
    .await
    .map_err(|e| internal(format!("renewal task failed: {e}")))??;

    renewals
        .last
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(partner.clone(), Instant::now());
    // The new certificate is usable at once, not only after the watcher's tick.
    let live2 = live.clone();
    match tokio::task::spawn_blocking(move || live2.reload(true)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("reload after renewal: {e}"),
        Err(e) => tracing::warn!("reload after renewal failed: {e}"),
    }
    let mut ev = events.event(EventKind::Admin, Decision::Allowed);
    ev.partner = Some(partner.clone());
    ev.cert_serial = Some(outcome.new_serial.clone());
    ev.reason = Some("cert_renewed".into());
    ev.detail = Some(format!(
        "self-service renewal by partner {partner}: certificate {} superseded by {}",
        outcome.old_serial, outcome.new_serial
    ));
    if let Err(e) = events.record(ev, None).await {
        tracing::error!("renewal of {partner} not recorded: {e}");
    }
    tracing::info!(partner = %partner, old = %outcome.old_serial, new = %outcome.new_serial, "certificate renewed by the partner");
    Ok(outcome)
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    tracing::error!("renewal failed: {e}");
    Refusal::http(StatusCode::INTERNAL_SERVER_ERROR, "renewal_failed").detail(e.to_string())
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
