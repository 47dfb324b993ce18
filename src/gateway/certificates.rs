//! The certificate door: the endpoints through which a partner gets its
//! certificates, beside the API call's phases (which never reach the CA).
//! `POST /.well-known/gatehouse/renew` (self-service renewal) and EST
//! (RFC 7030: `cacerts`, `simpleenroll` with an invitation's secret,
//! `simplereenroll`, the renewal in EST's formats; see `est`). The door runs an
//! endpoint's steps (`renewal` decides and signs) and records the
//! certificate's lifecycle around them through the event sink: a record
//! that must be durable before anything is signed, and one once it is.
//! The exchange itself is recorded by `respond::finish`, like every other.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use hyper::body::Incoming;

use crate::event::{Decision, EventKind};
use crate::gateway::exchange::PendingRecord;
use crate::gateway::refusal::Refusal;
use crate::gateway::renewal::{self, RenewalKind, Renewed};
use crate::gateway::respond::Answer;
use crate::gateway::session::ConnCtx;
use crate::gateway::{Gateway, est};
use crate::guard::EventSink;
use crate::identity::PartnerIdentity;
use crate::reason::Reason;

/// `Retry-After` when the journal cannot record a signing before it happens.
const JOURNAL_RETRY_SECS: u64 = 5;

/// A certificate endpoint on the partner listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /.well-known/gatehouse/renew`: a successor for the presenting
    /// certificate, from a CSR.
    Renew,
    /// EST `GET /.well-known/est/cacerts`: the CA certificates.
    EstCacerts,
    /// EST `POST /.well-known/est/simpleenroll`: a certificate for an
    /// invitation's secret (also answered without a client certificate).
    EstEnroll,
    /// EST `POST /.well-known/est/simplereenroll`: the renewal, in EST's formats.
    EstReenroll,
}

impl Endpoint {
    /// The certificate endpoint `req` asks for, if any.
    pub fn of<B>(req: &http::Request<B>) -> Option<Endpoint> {
        match (req.method(), req.uri().path()) {
            (&Method::POST, renewal::RENEW_PATH) => Some(Endpoint::Renew),
            (&Method::GET, est::CACERTS_PATH) => Some(Endpoint::EstCacerts),
            (&Method::POST, est::SIMPLEENROLL_PATH) => Some(Endpoint::EstEnroll),
            (&Method::POST, est::SIMPLEREENROLL_PATH) => Some(Endpoint::EstReenroll),
            _ => None,
        }
    }
}

/// Serves an (admitted) certificate request; its exchange record gets the
/// endpoint as its route and what was done as its detail.
pub async fn serve(
    endpoint: Endpoint,
    req: http::Request<Incoming>,
    conn: &ConnCtx,
    gw: &Arc<Gateway>,
    record: &mut PendingRecord,
) -> Result<Answer, Refusal> {
    match endpoint {
        Endpoint::Renew => {
            record.event.route = Some(renewal::RENEW_PATH.to_string());
            let renewed = renewal_request(req, &conn.identity, gw).await?;
            record.event.detail = Some(renewed.summary());
            if let Some(fleet) = &gw.fleet {
                fleet.clone().partner_changed(&conn.identity.partner);
            }
            Ok(Answer::Local {
                content_type: "application/x-pem-file",
                body: renewed.chain_pem,
            })
        }
        Endpoint::EstCacerts => est::cacerts(gw, &mut record.event).map(local),
        Endpoint::EstEnroll => est::enrol(req, conn.peer, gw, &mut record.event)
            .await
            .map(local),
        Endpoint::EstReenroll => {
            record.event.route = Some(est::SIMPLEREENROLL_PATH.to_string());
            let csr = est::read_csr_pem(req).await?;
            let renewed = renewal_from_csr(Bytes::from(csr), &conn.identity, gw).await?;
            record.event.detail = Some(renewed.summary());
            if let Some(fleet) = &gw.fleet {
                fleet.clone().partner_changed(&conn.identity.partner);
            }
            Ok(local(est::certs_only(&renewed.chain_pem)))
        }
    }
}

/// The broker's own answer of an EST endpoint.
fn local((content_type, body): (&'static str, String)) -> Answer {
    Answer::Local { content_type, body }
}

/// One renewal request from `identity` (already admitted).
async fn renewal_request(
    req: http::Request<Incoming>,
    identity: &PartnerIdentity,
    gw: &Arc<Gateway>,
) -> Result<Renewed, Refusal> {
    let csr = renewal::read_csr(req).await?;
    renewal_from_csr(csr, identity, gw).await
}

/// One renewal from `identity` (already admitted) for a PEM CSR already read.
async fn renewal_from_csr(
    csr: Bytes,
    identity: &PartnerIdentity,
    gw: &Arc<Gateway>,
) -> Result<Renewed, Refusal> {
    let key = renewal::csr_key(&csr)?;
    let (gw, partner, serial) = (
        gw.clone(),
        identity.partner.to_string(),
        identity.serial.to_string(),
    );
    // Once the CSR is in, the renewal runs to its end even if the partner
    // leaves: what is signed is recorded, and a retry finds it.
    tokio::spawn(async move { renew(&gw, &partner, &serial, csr, key).await })
        .await
        .map_err(|e| renewal::internal(format!("renewal task failed: {e}")))?
}

/// One renewal, one at a time: plan, rate, record, sign, record.
async fn renew(
    gw: &Arc<Gateway>,
    partner: &str,
    serial: &str,
    csr: Bytes,
    key: Vec<u8>,
) -> Result<Renewed, Refusal> {
    let _one_at_a_time = gw.renewals.signing.lock().await;
    let issue = {
        let (g, p, s) = (gw.clone(), partner.to_string(), serial.to_string());
        match renewal::blocking(move || renewal::plan(&g, &p, &s, &key)).await? {
            renewal::Plan::Redeliver(renewed) => return Ok(renewed),
            renewal::Plan::Issue(issue) => issue,
        }
    };
    gw.renewals.check_rate(partner)?;
    record_issuing(&gw.events, partner, serial, &issue).await?;
    let (home, p, s) = (
        gw.live.home.clone(),
        partner.to_string(),
        serial.to_string(),
    );
    let renewed = renewal::blocking(move || renewal::sign(&home, &p, &s, &csr, &issue)).await?;
    gw.renewals.note(partner);
    // The new certificate is usable at once, not only after the watcher's tick.
    let live = gw.live.clone();
    match tokio::task::spawn_blocking(move || live.reload(true)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!("reload after renewal: {e}"),
        Err(e) => tracing::warn!("reload after renewal failed: {e}"),
    }
    record_renewed(&gw.events, partner, &renewed).await;
    Ok(renewed)
}

/// Records that a certificate is about to be signed, and waits for the
/// journal to hold it: if it cannot, nothing is signed (503).
async fn record_issuing(
    events: &EventSink,
    partner: &str,
    serial: &str,
    issue: &renewal::Issue,
) -> Result<(), Refusal> {
    let mut ev = events.event(EventKind::Admin, Decision::Allowed);
    ev.partner = Some(partner.to_string());
    ev.cert_serial = Some(serial.to_string());
    ev.reason = Some("cert_renewal_issuing".into());
    ev.detail = Some(match issue {
        renewal::Issue::Renew { .. } => format!(
            "self-service renewal by partner {partner}: signing a successor to certificate {serial}"
        ),
        renewal::Issue::Replace { successor, .. } => format!(
            "self-service renewal by partner {partner}, retried with another key: signing a replacement for {successor}, the never-used successor to certificate {serial}"
        ),
    });
    events.record(ev, None).await.map_err(|e| {
        tracing::error!("renewal of {partner} not signed: the journal cannot record it: {e}");
        Refusal::new(Reason::JournalUnavailable)
            .retry_after(JOURNAL_RETRY_SECS)
            .detail(format!(
                "the renewal of certificate {serial} could not be recorded before signing ({e}); nothing was issued"
            ))
    })
}

/// Records the renewal done (`cert_renewed`); the record before signing
/// already tells of it if this one fails.
async fn record_renewed(events: &EventSink, partner: &str, renewed: &Renewed) {
    let mut ev = events.event(EventKind::Admin, Decision::Allowed);
    ev.partner = Some(partner.to_string());
    ev.cert_serial = Some(renewed.new_serial.clone());
    ev.reason = Some("cert_renewed".into());
    let replaced = match &renewed.kind {
        RenewalKind::Replaced { revoked } => {
            format!("; it replaces {revoked}, revoked (superseded) before it was ever used")
        }
        _ => String::new(),
    };
    ev.detail = Some(format!(
        "self-service renewal by partner {partner}: certificate {} superseded by {}{replaced}",
        renewed.old_serial, renewed.new_serial
    ));
    if let Err(e) = events.record(ev, None).await {
        tracing::error!("renewal of {partner} not recorded: {e}");
    }
    tracing::info!(partner = %partner, old = %renewed.old_serial, new = %renewed.new_serial, "certificate renewed by the partner");
}
