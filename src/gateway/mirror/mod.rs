//! Mirroring: a copy of a live request sent to a candidate upstream (an
//! upstream's `mirror = { to = ... }`), whose answer the partner never waits
//! for and never sees, and, with `compare = true`, compared with the live
//! answer. A request is mirrored when its upstream has a mirror, its method
//! is named, it falls in the sampled `percent`, its body is within
//! `BODY_MAX` and one of the mirror's `max_in_flight` slots is free;
//! otherwise it is not (a body too large or no free slot counts as
//! `dropped`). The copy carries the partner's identity headers, an identity
//! token for the candidate, and `X-Gatehouse-Mirror: 1`; it runs in a task
//! of its own, bounded by the mirror's `timeout`. A mismatch becomes a
//! journal record of kind `mirror_diff` (the header names and JSON
//! pointers that differ, never body content). With `baseline`, a sample of
//! mirrored requests whose live answer came from the baseline also goes to
//! it a second time: what differs between its two answers is learned as
//! noise for the route and no longer counts.
//!
//! `compare` is the comparison (pure), `capture` the live body's tap,
//! `board` the counts, slots, noise and latest mismatches.

pub mod board;
pub mod capture;
pub mod compare;

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Body, Incoming};
use serde_json::json;
use tokio::sync::{OwnedSemaphorePermit, oneshot};

use crate::config::MirrorSettings;
use crate::event::{Decision, EventKind, now_ms};
use crate::gateway::Gateway;
use crate::gateway::live::Snapshot;
use crate::gateway::refusal::Refusal;
use crate::gateway::relay::Upstream;
use crate::gateway::session::ConnCtx;
use crate::identity_token::TokenSubject;
use crate::reason::Reason;

pub use board::{MirrorBoard, MirrorResult};
pub use capture::{Captured, LiveBody, Tap};

use capture::CAPTURE_MAX;
use compare::{Answer, Differences, Ignores};

/// Request bodies mirrored at most; a larger one (or one of unknown
/// length) is not mirrored and counts as `dropped`.
pub const BODY_MAX: u64 = 64 * 1024;

/// The header that marks a mirrored request.
pub const MIRROR_HEADER: &str = "x-gatehouse-mirror";

/// What `choose` needs to know of the live request.
pub struct Candidate<'a> {
    /// The upstream the route names (the one carrying `mirror`).
    pub upstream: &'a str,
    /// The pool that answers the live request (a split's side, or the
    /// upstream itself).
    pub live_pool: &'a str,
    pub route: &'a str,
    pub method: &'a Method,
    /// The path sent upstream, and the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
    /// The body's length: 0 for none, `None` when not known before it is read.
    pub body_len: Option<u64>,
}

/// A request chosen for mirroring, holding its slot.
pub struct Mirror {
    upstream: String,
    settings: MirrorSettings,
    candidate: Arc<Upstream>,
    candidate_uri: Uri,
    /// The baseline's pool and address when this request samples noise.
    baseline: Option<(Arc<Upstream>, Uri)>,
    route: String,
    permit: OwnedSemaphorePermit,
}

/// Whether (and where) this request is mirrored; counts the ones dropped.
pub fn choose(gw: &Gateway, snapshot: &Snapshot, c: &Candidate<'_>) -> Option<Mirror> {
    let settings = snapshot
        .gateway
        .upstreams
        .get(c.upstream)?
        .mirror
        .as_ref()?;
    // A partner already on the candidate (a split's side, a pin) is not
    // mirrored to it again.
    if c.live_pool == settings.to || !settings.mirrors_method(c.method.as_str()) {
        return None;
    }
    let board = &gw.live.mirrors;
    if !board.sampled(c.upstream, settings.percent) {
        return None;
    }
    let candidate = snapshot.upstreams.get(&settings.to)?.clone();
    let dropped = || {
        count(gw, c.upstream, c.route, MirrorResult::Dropped);
        None
    };
    if c.body_len.is_none_or(|n| n > BODY_MAX) {
        return dropped();
    }
    let Some(permit) = board.slot(c.upstream, &settings.to, settings.max_in_flight) else {
        return dropped();
    };
    let candidate_uri = candidate.uri_for(c.path, c.query).ok()?;
    let baseline = match &settings.baseline {
        Some(b) if settings.compare && b == c.live_pool => {
            if board.baseline_sample(c.route, c.upstream) {
                let pool = snapshot.upstreams.get(b)?.clone();
                let uri = pool.uri_for(c.path, c.query).ok()?;
                Some((pool, uri))
            } else {
                None
            }
        }
        _ => None,
    };
    Some(Mirror {
        upstream: c.upstream.to_string(),
        settings: settings.clone(),
        candidate,
        candidate_uri,
        baseline,
        route: c.route.to_string(),
        permit,
    })
}

/// Reads a request body to mirror whole (its declared length is within
/// `BODY_MAX` and the route's limit `max`).
pub async fn read_body(body: Incoming, max: u64) -> Result<Bytes, Refusal> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    match Limited::new(body, max as usize).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Refusal::new(Reason::BodyTooLarge))
        }
        Err(e) => Err(Refusal::new(Reason::BadBody)
            .detail(format!("the request body could not be read: {e}"))),
    }
}

/// Who and what the mirrored request is about (for its record).
pub struct Origin<'a> {
    pub conn: &'a ConnCtx,
    pub request_id: &'a str,
}

impl Mirror {
    /// Starts the mirror of the live request whose upstream head is
    /// `method` + `live_headers` and whose body is `body`: the copies leave
    /// now, in a task of their own. Returns where the live answer goes
    /// (the tap's sender) once the live response is known.
    pub fn start(
        self,
        gw: &Arc<Gateway>,
        origin: Origin<'_>,
        method: &Method,
        live_headers: &HeaderMap,
        body: Bytes,
    ) -> Option<(oneshot::Sender<Captured>, bool)> {
        let partner = origin.conn.identity.partner.to_string();
        let mut headers = live_headers.clone();
        headers.insert(MIRROR_HEADER, HeaderValue::from_static("1"));
        let baseline_req = self.baseline.as_ref().map(|(_, uri)| {
            // The baseline is the live pool: the live token is its token.
            request(method, uri.clone(), headers.clone(), body.clone())
        });
        headers.remove(crate::identity_token::HEADER);
        if self.candidate.signed_identity {
            let subject = TokenSubject {
                partner: &origin.conn.identity.partner,
                serial: &origin.conn.identity.serial,
                route: &self.route,
                request_id: origin.request_id,
                upstream: &self.candidate.name,
            };
            match gw
                .identity
                .sign(&subject)
                .map(|t| HeaderValue::from_str(&t))
            {
                Ok(Ok(token)) => {
                    headers.insert(crate::identity_token::HEADER, token);
                }
                _ => {
                    tracing::warn!(upstream = %self.upstream, request_id = origin.request_id, "mirror not sent: its identity token could not be signed");
                    count(gw, &self.upstream, &self.route, MirrorResult::Error);
                    return None;
                }
            }
        }
        let candidate_req = request(method, self.candidate_uri.clone(), headers, body);
        let (tx, rx) = oneshot::channel();
        let keep_body = self.settings.compare;
        let job = Job {
            gw: gw.clone(),
            partner,
            request_id: origin.request_id.to_string(),
            method: method.to_string(),
            mirror: self,
        };
        tokio::spawn(job.run(candidate_req, baseline_req, rx));
        Some((tx, keep_body))
    }
}

fn request(
    method: &Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Request<crate::gateway::relay::RelayBody> {
    let mut req = Request::new(Full::new(body).map_err(|e| match e {}).boxed());
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = headers;
    req
}

/// Counts one result, in the metric and on the board.
fn count(gw: &Gateway, upstream: &str, route: &str, result: MirrorResult) {
    gw.events.monitor().mirror(upstream, result.label());
    gw.live.mirrors.count(upstream, route, result, now_ms());
}

/// An answer read for the comparison.
struct Fetched {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    body_whole: bool,
}

impl Fetched {
    fn answer(&self) -> Answer<'_> {
        Answer {
            status: self.status,
            headers: &self.headers,
            body: &self.body,
            body_whole: self.body_whole,
        }
    }
}

/// Why a mirror has no result to compare.
#[derive(Debug, thiserror::Error)]
enum MirrorError {
    #[error("the candidate failed: {0}")]
    Candidate(String),
    #[error("the live answer was not captured (the live request failed or its body was cut)")]
    Live,
    #[error("the mirror took longer than its timeout")]
    Timeout,
}

/// One mirrored request in its task.
struct Job {
    gw: Arc<Gateway>,
    partner: String,
    request_id: String,
    method: String,
    mirror: Mirror,
}

type MirrorRequest = Request<crate::gateway::relay::RelayBody>;

impl Job {
    async fn run(
        self,
        candidate_req: MirrorRequest,
        baseline_req: Option<MirrorRequest>,
        live: oneshot::Receiver<Captured>,
    ) {
        let timeout = self.mirror.settings.timeout;
        let outcome =
            tokio::time::timeout(timeout, self.compare(candidate_req, baseline_req, live))
                .await
                .unwrap_or(Err(MirrorError::Timeout));
        let result = match outcome {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(upstream = %self.mirror.upstream, request_id = %self.request_id, "mirror: {e}");
                MirrorResult::Error
            }
        };
        count(&self.gw, &self.mirror.upstream, &self.mirror.route, result);
        drop(self.mirror.permit);
    }

    async fn compare(
        &self,
        candidate_req: MirrorRequest,
        baseline_req: Option<MirrorRequest>,
        live: oneshot::Receiver<Captured>,
    ) -> Result<MirrorResult, MirrorError> {
        let m = &self.mirror;
        let keep = m.settings.compare;
        let baseline = async {
            match (baseline_req, &m.baseline) {
                (Some(req), Some((pool, _))) => Some(fetch(pool, req, keep).await),
                _ => None,
            }
        };
        let (candidate, baseline) =
            tokio::join!(fetch(&m.candidate, candidate_req, keep), baseline);
        let candidate = candidate?;
        let live = live.await.map_err(|_| MirrorError::Live)?;
        if !m.settings.compare {
            return Ok(if live.status == candidate.status {
                MirrorResult::Match
            } else {
                MirrorResult::Mismatch
            });
        }
        let live = Fetched {
            status: live.status,
            headers: live.headers,
            body: live.body,
            body_whole: live.body_whole,
        };
        let configured = Ignores::new(&m.settings.ignore_headers, &m.settings.ignore_json);
        if let Some(Ok(base)) = baseline {
            let noise = compare::compare(&live.answer(), &base.answer(), &configured);
            let new = self.gw.live.mirrors.learn_noise(
                &m.route,
                &m.upstream,
                &noise.patterns,
                &noise.headers,
            );
            if !new.is_empty() {
                tracing::info!(upstream = %m.upstream, route = %m.route, "mirror: learned noise (differs between two answers of {}): {}", m.settings.baseline.as_deref().unwrap_or("-"), new.join(", "));
            }
        }
        let mut ignores = configured;
        let noise = self.gw.live.mirrors.noise(&m.route);
        for p in &noise.pointers {
            ignores.add_pointer(p);
        }
        for h in &noise.headers {
            ignores.add_header(h);
        }
        let d = compare::compare(&live.answer(), &candidate.answer(), &ignores);
        if d.none() {
            return Ok(MirrorResult::Match);
        }
        self.record(&live, &candidate, &d);
        Ok(MirrorResult::Mismatch)
    }

    /// The `mirror_diff` record of a mismatch (and the console's note).
    fn record(&self, live: &Fetched, candidate: &Fetched, d: &Differences) {
        let m = &self.mirror;
        let headers: Vec<String> = d.headers.iter().cloned().collect();
        let pointers: Vec<String> = d.pointers.iter().cloned().collect();
        let body = match d.body {
            compare::BodyOutcome::Same => "same",
            compare::BodyOutcome::Json => "json",
            compare::BodyOutcome::Bytes => "bytes",
            compare::BodyOutcome::NotCompared => "not_compared",
        };
        let mut ev = self
            .gw
            .events
            .event(EventKind::MirrorDiff, Decision::Allowed);
        ev.partner = Some(self.partner.clone());
        ev.route = Some(m.route.clone());
        ev.upstream = Some(m.upstream.clone());
        ev.method = Some(self.method.clone());
        ev.request_id = Some(self.request_id.clone());
        ev.status = Some(live.status);
        ev.detail = Some(
            json!({
                "candidate": m.candidate.name,
                "live_status": live.status,
                "candidate_status": candidate.status,
                "headers": headers,
                "pointers": pointers,
                "more_pointers": d.more_pointers,
                "body": body,
            })
            .to_string(),
        );
        let time_ms = ev.time_ms;
        // Reported, not awaited: no partner waits for this record.
        drop(self.gw.events.record(ev, None));
        self.gw.live.mirrors.note_mismatch(board::RecentMismatch {
            time_ms,
            upstream: m.upstream.clone(),
            candidate: m.candidate.name.clone(),
            route: m.route.clone(),
            partner: self.partner.clone(),
            request_id: self.request_id.clone(),
            live_status: live.status,
            candidate_status: candidate.status,
            headers,
            pointers,
        });
    }
}

/// Sends `req` through `pool` and reads the answer to its end, keeping
/// its body up to `CAPTURE_MAX` when `keep_body`. Read to the end, the
/// connection goes back to the pool (one dropped early is closed, and the
/// next copy would pay a new TLS handshake).
async fn fetch(
    pool: &Arc<Upstream>,
    req: MirrorRequest,
    keep_body: bool,
) -> Result<Fetched, MirrorError> {
    let relayed = pool
        .send(req)
        .await
        .map_err(|f| MirrorError::Candidate(f.error.to_string()))?;
    let (parts, mut body) = relayed.response.into_parts();
    let mut buf = bytes::BytesMut::new();
    let mut whole = keep_body;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| MirrorError::Candidate(e.to_string()))?;
        if let Some(d) = frame.data_ref()
            && whole
        {
            if buf.len() + d.len() > CAPTURE_MAX {
                whole = false;
                buf = bytes::BytesMut::new();
            } else {
                buf.extend_from_slice(d);
            }
        }
    }
    Ok(Fetched {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: buf.freeze(),
        body_whole: whole,
    })
}
