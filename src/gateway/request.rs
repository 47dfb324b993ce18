//! A partner's API call, once `door` has admitted it, as phases: frame (no
//! smuggling shapes) → target (origin form, no traversal tricks) →
//! authorize (deny by default) → the pool (for a split upstream, this
//! partner's side) → limit (rate, quota, concurrency, body size) →
//! signature (a route that requires one: RFC 9421, nonce never twice) →
//! value (a route with a `value`: amount within the partner's value
//! limits, reserved) → build the upstream request → relay, with, when the
//! route's upstream has a `mirror` and this request is chosen, its copy
//! sent first in a task of its own (`mirror`; the partner never waits for
//! it) and the live answer tapped for the comparison. Each phase returns
//! `Result<_, Refusal>`; `respond::finish` turns the outcome into the
//! response and the record, the same way for every phase. Certificates
//! have their own door (`certificates`); nothing here reaches the CA.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, Version};
use http_body_util::{BodyExt, Empty, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};

use crate::gateway::Gateway;
use crate::gateway::exchange::PendingRecord;
use crate::gateway::header_guard::TrailerFilter;
use crate::gateway::live::{PartnerEntry, Snapshot};
use crate::gateway::refusal::Refusal;
use crate::gateway::relay::{
    Annotations, RelayBody, Upstream, UpstreamError, upstream_request_headers,
};
use crate::gateway::respond::Answer;
use crate::gateway::session::ConnCtx;
use crate::gateway::{mirror, signed, value};
use crate::identity_token::TokenSubject;
use crate::policy::{Permit, check_target};
use crate::reason::Reason;
use crate::upstream::UpstreamBody;

/// The raw request-target (path and query) as the partner sent it.
pub(crate) fn raw_target(req: &Request<Incoming>) -> &str {
    req.uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
}

/// The phases of an admitted API call, in order; the first refusal ends them.
pub(crate) async fn phases(
    req: Request<Incoming>,
    conn: &ConnCtx,
    gw: &Arc<Gateway>,
    snapshot: Arc<Snapshot>,
    record: &mut PendingRecord,
    request_id: &str,
) -> Result<Answer, Refusal> {
    // Admitted from this snapshot, so the partner is in it.
    let entry = snapshot
        .partners
        .get(&*conn.identity.partner)
        .ok_or_else(|| Refusal::new(Reason::UnknownPartner))?;
    let declared_length = frame(req.headers())?;
    let target = target(&req)?;
    let permit = authorize(entry, req.method(), target.path, record)?;
    let pool = match snapshot.splits.get(permit.upstream) {
        Some(split) => {
            let side = split
                .side_for(
                    &conn.identity.partner,
                    entry.partner.pin.get(permit.upstream),
                )
                .ok_or_else(|| Refusal::new(Reason::UpstreamUnknown))?;
            record.event.split_side = Some(side.to_string());
            side
        }
        None => permit.upstream,
    };
    let upstream = snapshot
        .upstreams
        .get(pool)
        .cloned()
        .ok_or_else(|| Refusal::new(Reason::UpstreamUnknown))?;
    let max_body = limit(conn, gw, &snapshot, &permit, declared_length, record).await?;
    let uri = upstream
        .uri_for(&permit.upstream_path, target.query)
        .map_err(|_| Refusal::new(Reason::BadTarget))?;
    let route = permit.route.path.clone();
    let mirror = mirror::choose(
        gw,
        &snapshot,
        &mirror::Candidate {
            upstream: permit.upstream,
            live_pool: pool,
            route: &route,
            method: req.method(),
            path: &permit.upstream_path,
            query: target.query,
            body_len: if req.body().is_end_stream() {
                Some(0)
            } else {
                declared_length
            },
        },
    );
    let value_spec = permit.route.value.clone();
    let needs_signature = entry.partner.requires_signature(permit.route);
    // Only signed and valued calls need the partner past the snapshot.
    let partner = (value_spec.is_some() || needs_signature).then(|| entry.partner.clone());
    let write_timeout = snapshot.gateway.server.write_timeout;
    drop(snapshot);

    let is_head = req.method() == Method::HEAD;
    let over_limit = Arc::new(AtomicBool::new(false));
    let (parts, body) = req.into_parts();
    // A mirrored request's body (within `mirror::BODY_MAX`) is read whole:
    // the same bytes go to both sides.
    let mut mirror_body = None;
    let (body, reservation) = if let Some(partner) = &partner {
        // Signed and valued calls are judged on the whole body.
        let max = max_body.min(value::MAX_VALUE_BODY);
        let bytes = value::read_body(body, max).await?;
        record.event.request_bytes = bytes.len() as u64;
        if needs_signature {
            let verified = signed::check(gw, conn, partner, &parts, &bytes).await?;
            record.event.signature_keyid = Some(verified.keyid);
            record.event.signature_base = Some(verified.base);
            record.event.signature = Some(format!(
                "{}:{}",
                verified.alg.name(),
                base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    &verified.signature
                )
            ));
        }
        let reserved = match &value_spec {
            Some(spec) => {
                let reserved = value::check(gw, partner, spec, &bytes).await?;
                record.event.value_amount = Some(reserved.value.amount.to_string());
                record.event.value_currency = Some(reserved.value.currency.clone());
                Some(reserved)
            }
            None => None,
        };
        if mirror.is_some() {
            mirror_body = Some(bytes.clone());
        }
        let body: RelayBody = Full::new(bytes).map_err(|e| match e {}).boxed();
        (body, reserved)
    } else if mirror.is_some() {
        let bytes = mirror::read_body(body, max_body).await?;
        record.event.request_bytes = bytes.len() as u64;
        mirror_body = Some(bytes.clone());
        let body: RelayBody = Full::new(bytes).map_err(|e| match e {}).boxed();
        (body, None)
    } else {
        let cap = BodyCap {
            max: max_body,
            exceeded: over_limit.clone(),
        };
        (streamed_body(body, cap), None)
    };
    let upstream_req = build_upstream_request(
        Request::from_parts(parts, body),
        uri,
        conn,
        gw,
        &upstream,
        &route,
        request_id,
    )?;
    // The copies leave before the live request: nothing here waits for them.
    let tap = match (mirror, mirror_body) {
        (Some(m), Some(bytes)) => m.start(
            gw,
            mirror::Origin { conn, request_id },
            upstream_req.method(),
            upstream_req.headers(),
            bytes,
        ),
        _ => None,
    };
    let response = relay(gw, &upstream, upstream_req, request_id, record)
        .await
        .map_err(|refusal| {
            // An HTTP/2 upstream leg reports a body error only as a reset
            // stream; the cap says whether it was the body limit.
            if over_limit.load(Ordering::Relaxed) {
                Refusal::from(UpstreamError::BodyTooLarge)
            } else {
                refusal
            }
        })?;
    let response = match tap {
        Some((tx, keep_body)) => {
            let (parts, body) = response.into_parts();
            let tap = mirror::Tap::new(parts.status.as_u16(), parts.headers.clone(), tx, keep_body);
            Response::from_parts(parts, mirror::LiveBody::tapped(body, tap))
        }
        None => response.map(mirror::LiveBody::plain),
    };
    if let Some(reserved) = reservation
        && response.status().is_success()
    {
        gw.events.monitor().value(
            &conn.identity.partner,
            &reserved.value.currency,
            reserved.value.amount,
        );
        reserved.keep();
    }
    Ok(Answer::Relayed {
        response,
        upstream,
        is_head,
        write_timeout,
    })
}

/// Framing: refuses Content-Length values spelled differently, and returns
/// the declared Content-Length. HTTP/1.1 never gets here with an ambiguous
/// shape (hyper answers 400 to differing lengths, and drops Content-Length
/// beside Transfer-Encoding, closing the connection after the answer);
/// HTTP/2 accepts `5` and `05` together, as equal numbers.
fn frame(headers: &HeaderMap) -> Result<Option<u64>, Refusal> {
    let lengths: Vec<&HeaderValue> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    if lengths.windows(2).any(|w| w[0] != w[1]) {
        return Err(Refusal::new(Reason::AmbiguousFraming));
    }
    Ok(lengths
        .first()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok()))
}

/// The target: origin-form (HTTP/1.1) and free of traversal tricks.
fn target(req: &Request<Incoming>) -> Result<crate::policy::Target<'_>, Refusal> {
    if req.version() != Version::HTTP_2
        && (req.uri().scheme().is_some() || req.uri().authority().is_some())
    {
        return Err(Refusal::new(Reason::BadTarget));
    }
    Ok(check_target(raw_target(req))?)
}

/// Authorization: deny by default. Records the granted route and upstream.
fn authorize<'a>(
    entry: &'a PartnerEntry,
    method: &Method,
    path: &'a str,
    record: &mut PendingRecord,
) -> Result<Permit<'a>, Refusal> {
    let permit = entry.routes.authorize(method.as_str(), path)?;
    record.event.route = Some(permit.route.path.clone());
    record.event.upstream = Some(permit.upstream.to_string());
    record.risk = Some(permit.route.risk);
    Ok(permit)
}

/// Rate, quota and concurrency limits (partner and route; the admission is
/// held until the record is handed over), then the body limit. Returns the
/// body limit for the relay. In a fleet, rate and quota are the fleet's
/// (one store round trip; see [`super::Membership`]).
async fn limit(
    conn: &ConnCtx,
    gw: &Gateway,
    snapshot: &Snapshot,
    permit: &Permit<'_>,
    declared_length: Option<u64>,
    record: &mut PendingRecord,
) -> Result<u64, Refusal> {
    let now_ms = crate::event::now_ms();
    let admission = match &gw.fleet {
        None => snapshot
            .limits
            .check(&conn.identity.partner, Some(permit.route_index), now_ms)?,
        Some(fleet) => {
            fleet
                .limit(snapshot, &conn.identity.partner, permit.route_index, now_ms)
                .await?
        }
    };
    record.hold(Box::new(admission));
    let max_body = permit
        .route
        .max_body_bytes
        .unwrap_or(snapshot.gateway.server.max_body_bytes);
    if declared_length.is_some_and(|n| n > max_body) {
        return Err(Refusal::new(Reason::BodyTooLarge));
    }
    record.event.request_bytes = declared_length.unwrap_or(0);
    Ok(max_body)
}

/// The request body's limit while it streams; `exceeded` is set when the
/// partner's body goes past it.
struct BodyCap {
    max: u64,
    exceeded: Arc<AtomicBool>,
}

/// The upstream request: the partner's, re-addressed, with the broker's
/// identity headers (and the signed identity, when the upstream asks for
/// it; fail closed: no token, no relay), hop-by-hop and spoofable headers
/// gone, and the body bounded by the limit.
fn build_upstream_request(
    req: Request<RelayBody>,
    uri: http::Uri,
    conn: &ConnCtx,
    gw: &Gateway,
    upstream: &Upstream,
    route: &str,
    request_id: &str,
) -> Result<Request<RelayBody>, Refusal> {
    let token = if upstream.signed_identity {
        let subject = TokenSubject {
            partner: &conn.identity.partner,
            serial: &conn.identity.serial,
            route,
            request_id,
            upstream: &upstream.name,
        };
        match gw.identity.sign(&subject) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(request_id = %request_id, "{e}");
                return Err(Refusal::new(Reason::IdentitySigningFailed));
            }
        }
    } else {
        None
    };
    let (mut parts, body) = req.into_parts();
    upstream_request_headers(
        &mut parts.headers,
        &Annotations {
            partner: &conn.identity.partner,
            serial: &conn.identity.serial,
            fingerprint: &conn.identity.fingerprint,
            uri: &conn.identity.uri,
            request_id,
            client_ip: &conn.peer_ip,
            identity: token.as_deref(),
        },
    );
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    Ok(Request::from_parts(parts, body))
}

/// The partner's body as it streams to the upstream, bounded by the cap.
fn streamed_body(body: Incoming, cap: BodyCap) -> RelayBody {
    if body.is_end_stream() {
        Empty::new().map_err(|e| match e {}).boxed()
    } else {
        let exceeded = cap.exceeded;
        TrailerFilter::new(Limited::new(body, cap.max as usize).map_err(move |e| {
            if e.downcast_ref::<LengthLimitError>().is_some() {
                exceeded.store(true, Ordering::Relaxed);
            }
            e
        }))
        .boxed()
    }
}

/// Sends the request through the upstream's pool (timed for the
/// metrics); the record gets the endpoint and the attempts.
async fn relay(
    gw: &Gateway,
    upstream: &Arc<Upstream>,
    req: Request<RelayBody>,
    request_id: &str,
    record: &mut PendingRecord,
) -> Result<Response<UpstreamBody>, Refusal> {
    let started = Instant::now();
    let sent = upstream.send(req).await;
    gw.events.monitor().upstream(
        &upstream.name,
        started.elapsed().as_secs_f64(),
        sent.as_ref().err().map(|e| e.error.reason().metric_label()),
    );
    match sent {
        Ok(relayed) => {
            record.event.upstream_endpoint = Some(relayed.endpoint);
            record.event.attempts = relayed.attempts;
            Ok(relayed.response)
        }
        Err(failure) => {
            record.event.upstream_endpoint = failure.endpoint;
            record.event.attempts = failure.attempts;
            tracing::warn!(upstream = %upstream.name, request_id = %request_id, "upstream failed: {}", failure.error);
            let refusal = Refusal::from(failure.error.clone());
            Err(refusal.detail(failure.error.to_string()))
        }
    }
}
