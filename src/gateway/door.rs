//! Every request's way in: the record it will leave (every exit is
//! recorded, the same way, by `respond::finish`), admission (journal
//! writable, partner active, certificate still good), then the door it
//! takes: the certificate door (`certificates`: renewal, and EST enrolment
//! beside it when it comes) or the partner's API call (`request`: the
//! phases that end at the upstream). Neither door knows the other.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::event::{Decision, Event, EventKind, truncated};
use crate::gateway::Gateway;
use crate::gateway::certificates::{self, Endpoint};
use crate::gateway::exchange::PendingRecord;
use crate::gateway::live::Snapshot;
use crate::gateway::refusal::Refusal;
use crate::gateway::request;
use crate::gateway::respond::{self, Answer, ResponseBody};
use crate::gateway::session::ConnCtx;
use crate::reason::Reason;

/// Longest path kept in a record (the journal's growth per record is bounded).
const MAX_RECORDED_PATH: usize = 2048;

/// Handles one request from a verified partner connection.
pub async fn handle(
    req: Request<Incoming>,
    conn: Arc<ConnCtx>,
    gw: Arc<Gateway>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    let in_flight = conn.begin_request();
    // Announced to the journal until the record is handed over, or until
    // this function returns: a streamed response's record comes at the end
    // of its body, which may be long after.
    let expected = Arc::new(gw.events.expect_record());
    let _expected_until_return = ReleaseOnDrop(expected.clone());
    let request_id = format!("{:032x}", rand::random::<u128>());
    let mut record = PendingRecord::new(
        exchange_event(&req, &conn, &gw, &request_id),
        started,
        gw.events.clone(),
        Some(expected),
    );
    record.hold(Box::new(in_flight));
    let outcome = enter(req, &conn, &gw, &mut record, &request_id).await;
    respond::finish(record, outcome, &conn, &request_id).await
}

/// Admission, then the door the request asks for.
async fn enter(
    req: Request<Incoming>,
    conn: &ConnCtx,
    gw: &Arc<Gateway>,
    record: &mut PendingRecord,
    request_id: &str,
) -> Result<Answer, Refusal> {
    let snapshot = gw.live.snapshot();
    admit(conn, gw, &snapshot)?;
    // Admitted first: suspended, revoked, expired and superseded
    // certificates reach no door.
    match Endpoint::of(&req) {
        Some(endpoint) => {
            drop(snapshot);
            certificates::serve(endpoint, req, conn, gw, record).await
        }
        None => request::phases(req, conn, gw, snapshot, record, request_id).await,
    }
}

/// The record as the request arrives: who, from where, what.
fn exchange_event(
    req: &Request<Incoming>,
    conn: &ConnCtx,
    gw: &Gateway,
    request_id: &str,
) -> Event {
    let mut ev = gw.events.event(EventKind::Exchange, Decision::Denied);
    ev.partner = Some(conn.identity.partner.to_string());
    ev.cert_serial = Some(conn.identity.serial.to_string());
    ev.cert_fingerprint = Some(conn.identity.fingerprint.to_string());
    ev.issuer = conn.identity.own_issuer.as_deref().map(String::from);
    ev.client_addr = Some(conn.peer.to_string());
    ev.tls_version = Some(conn.tls_version.to_string());
    ev.method = Some(req.method().as_str().to_string());
    ev.request_id = Some(request_id.to_string());
    let path = request::raw_target(req).split('?').next().unwrap_or("");
    ev.path = Some(truncated(path, MAX_RECORDED_PATH));
    ev
}

/// Admission: the journal can record (fail closed: never answer a call
/// that cannot be recorded), the partner is active, its certificate still
/// good. A refused certificate or partner closes the connection.
fn admit(conn: &ConnCtx, gw: &Gateway, snapshot: &Snapshot) -> Result<(), Refusal> {
    if !gw.events.writable() {
        return Err(Refusal::new(Reason::JournalUnavailable));
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    snapshot.admit(&conn.identity, now).map_err(Refusal::new)?;
    if let Some(fleet) = &gw.fleet {
        fleet.admit(&conn.identity)?;
    }
    Ok(())
}

/// Releases a record's announcement when dropped (see `handle`).
struct ReleaseOnDrop(Arc<crate::event::ExpectedRecord>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}
