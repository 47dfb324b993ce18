//! The one place an exchange's outcome becomes the partner's response and
//! its record. A refusal is recorded, then answered as JSON. A local answer
//! (the renewal endpoint's certificate) is recorded, then sent. A relayed
//! response is recorded before its end reaches the partner: small ones are
//! read whole, recorded, then sent in one write; larger ones stream through
//! `RecordedBody`, which holds back the last frame until the record is
//! written, inside a `WriteGuard` that lets the body (and its upstream
//! connection) go when the partner stops reading for `write_timeout`. If the journal fails, the partner gets 503: nothing leaves
//! unrecorded.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Body;

use crate::event::{Decision, RecordAck};
use crate::gateway::exchange::{PendingRecord, RecordedBody};
use crate::gateway::mirror::LiveBody;
use crate::gateway::refusal::Refusal;
use crate::gateway::relay::{BoxError, Upstream, strip_hop_by_hop};
use crate::gateway::session::ConnCtx;
use crate::gateway::write_guard::WriteGuard;
use crate::reason::Reason;

/// The body of every response the broker sends to partners.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Relayed responses with a Content-Length up to this are read whole,
/// recorded, then sent head and body together (one write; the size of one
/// TLS record) instead of streamed with the last frame held back for the
/// record. Small enough that holding it per in-flight exchange stays within
/// what the upstream connection's read buffer holds anyway.
const WHOLE_BODY_MAX: u64 = 16 * 1024;

/// What the phases produced, when they did not refuse.
// Made once per request and moved once, on the stack: boxing the relayed
// response would cost an allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Answer {
    /// The broker's own answer (200 with a body).
    Local {
        content_type: &'static str,
        body: String,
    },
    /// The upstream's response, to relay.
    Relayed {
        response: Response<LiveBody>,
        upstream: Arc<Upstream>,
        is_head: bool,
        /// How long a streamed body may wait for the partner to read on.
        write_timeout: std::time::Duration,
    },
}

/// Turns the outcome into the response, recording the exchange first.
pub async fn finish(
    mut record: PendingRecord,
    outcome: Result<Answer, Refusal>,
    conn: &ConnCtx,
    request_id: &str,
) -> Response<ResponseBody> {
    match outcome {
        Err(refusal) => refuse(record, &refusal, conn, request_id).await,
        Ok(Answer::Local { content_type, body }) => {
            record.event.decision = Decision::Allowed;
            record.event.status = Some(200);
            record.event.response_bytes = body.len() as u64;
            let resp = local_response(StatusCode::OK, content_type, body, request_id);
            once_recorded(record.submit(), resp, request_id, false).await
        }
        Ok(Answer::Relayed {
            response,
            upstream,
            is_head,
            write_timeout,
        }) => {
            let relayed = Relayed {
                upstream: &upstream,
                is_head,
                write_timeout,
            };
            relay(record, response, relayed, conn, request_id).await
        }
    }
}

/// The outcome of a broker endpoint answered by the broker itself (EST):
/// a body of `content_type`, or a refusal; recorded first, then answered.
pub async fn finish_local(
    mut record: PendingRecord,
    outcome: Result<(&'static str, String), Refusal>,
    request_id: &str,
) -> Response<ResponseBody> {
    let mut resp = match outcome {
        Ok((content_type, body)) => {
            record.event.decision = Decision::Allowed;
            record.event.status = Some(200);
            record.event.response_bytes = body.len() as u64;
            let resp = local_response(StatusCode::OK, content_type, body, request_id);
            once_recorded(record.submit(), resp, request_id, false).await
        }
        Err(refusal) => {
            refusal.mark(&mut record.event);
            let resp = refusal_response(&refusal, request_id);
            once_recorded(record.submit(), resp, request_id, refusal.close).await
        }
    };
    add_challenge(&mut resp);
    resp
}

/// `WWW-Authenticate` for a local 401 (EST's `simpleenroll` asks for HTTP
/// Basic credentials).
fn add_challenge(resp: &mut Response<ResponseBody>) {
    if resp.status() == http::StatusCode::UNAUTHORIZED {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"gatehouse enrolment\""),
        );
    }
}

/// A refusal: recorded first (strict: synced), then answered.
async fn refuse(
    mut record: PendingRecord,
    refusal: &Refusal,
    conn: &ConnCtx,
    request_id: &str,
) -> Response<ResponseBody> {
    if refusal.close {
        conn.request_close();
    }
    refusal.mark(&mut record.event);
    let resp = refusal_response(refusal, request_id);
    once_recorded(record.submit(), resp, request_id, refusal.close).await
}

/// Where a relayed response came from and how it is sent.
struct Relayed<'a> {
    upstream: &'a Upstream,
    is_head: bool,
    write_timeout: std::time::Duration,
}

/// Relays the upstream's response, recorded before its end reaches the partner.
async fn relay(
    mut record: PendingRecord,
    response: Response<LiveBody>,
    relayed: Relayed<'_>,
    conn: &ConnCtx,
    request_id: &str,
) -> Response<ResponseBody> {
    let Relayed {
        upstream,
        is_head,
        write_timeout,
    } = relayed;
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Ok(v) = HeaderValue::from_str(request_id) {
        parts.headers.insert("x-request-id", v);
    }
    if conn.closing() {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    record.event.decision = Decision::Allowed;
    record.event.status = Some(parts.status.as_u16());
    let content_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if is_head || body.is_end_stream() || content_length == Some(0) {
        // Nothing to hold back: record before the head leaves.
        drop(body);
        let resp = Response::from_parts(parts, Empty::new().map_err(|e| match e {}).boxed_unsync());
        return once_recorded(record.submit(), resp, request_id, false).await;
    }
    if let Some(n) = content_length.filter(|n| *n <= WHOLE_BODY_MAX) {
        return whole_response(parts, body, n, record, upstream, request_id).await;
    }
    // The partner must keep reading, or the body (and its upstream
    // connection) is let go after `write_timeout`.
    let body = RecordedBody::new(body, content_length, record);
    Response::from_parts(
        parts,
        WriteGuard::new(body, write_timeout, request_id.to_string()).boxed_unsync(),
    )
}

/// A small relayed response (Content-Length `n` <= `WHOLE_BODY_MAX`): read
/// the body whole, record the exchange, then answer. The partner sees
/// nothing before the record is written, gets the head and body in one
/// write, and gets a clean 502/504 (not a cut-off body) when the upstream
/// fails mid-body, or 503 when the journal cannot take the record.
async fn whole_response(
    parts: http::response::Parts,
    body: LiveBody,
    n: u64,
    mut record: PendingRecord,
    upstream: &Upstream,
    request_id: &str,
) -> Response<ResponseBody> {
    let refusal = match tokio::time::timeout(upstream.response_timeout, body.collect()).await {
        Ok(Ok(collected)) => {
            let bytes = collected.to_bytes();
            if bytes.len() as u64 == n {
                record.event.response_bytes = n;
                let resp = Response::from_parts(
                    parts,
                    Full::new(bytes).map_err(|e| match e {}).boxed_unsync(),
                );
                return once_recorded(record.submit(), resp, request_id, false).await;
            }
            tracing::warn!(upstream = %upstream.name, request_id, "upstream body shorter than its Content-Length");
            Refusal::new(Reason::UpstreamBodyError)
        }
        Ok(Err(e)) => {
            tracing::warn!(upstream = %upstream.name, request_id, "upstream body failed: {e}");
            Refusal::new(Reason::UpstreamBodyError)
        }
        Err(_) => Refusal::new(Reason::UpstreamTimeout),
    };
    refusal.mark(&mut record.event);
    let resp = refusal_response(&refusal, request_id);
    once_recorded(record.submit(), resp, request_id, false).await
}

/// Answers `resp` once its record is written (strict: synced). If the
/// journal failed, the partner gets 503 instead: nothing leaves unrecorded.
async fn once_recorded(
    ack: RecordAck,
    resp: Response<ResponseBody>,
    request_id: &str,
    close: bool,
) -> Response<ResponseBody> {
    match ack.await {
        Ok(()) => resp,
        Err(_) => {
            let mut r = Refusal::new(Reason::JournalUnavailable);
            r.close = close;
            refusal_response(&r, request_id)
        }
    }
}

/// The JSON answer to a refusal, with `Retry-After` and `Connection: close`
/// when it asks for them.
fn refusal_response(refusal: &Refusal, request_id: &str) -> Response<ResponseBody> {
    let status = refusal.status.unwrap_or(StatusCode::FORBIDDEN);
    let mut resp = local_response(
        status,
        "application/json",
        refusal.body_json(request_id),
        request_id,
    );
    let h = resp.headers_mut();
    if let Some(secs) = refusal.retry_after_secs
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        h.insert(header::RETRY_AFTER, v);
    }
    if refusal.close {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// A response the broker makes itself (not relayed), tagged with the request id.
fn local_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
    request_id: &str,
) -> Response<ResponseBody> {
    let mut resp = Response::new(
        Full::new(body.into())
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-request-id", v);
    }
    resp
}
