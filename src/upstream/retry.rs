//! The retry rules as a pure function of the method, whether the request
//! carries `Idempotency-Key`, whether its body is kept, and what failed.
//!
//! A request that never reached an endpoint (connect refused or reset, TLS
//! failure, a connection the upstream had closed before taking it) is
//! retried for any method: the upstream never saw it. After bytes were
//! sent, only GET, HEAD, OPTIONS, PUT, DELETE or a request carrying
//! `Idempotency-Key` is sent again, on a reset, a per-try timeout, or a
//! 502, 503 or 504 answer, and only when its body (at most
//! [`MAX_KEPT_BODY`] bytes) was kept. A POST or PATCH without
//! `Idempotency-Key` is never sent twice: the upstream may have executed it.

use http::{HeaderMap, Method, StatusCode};

/// Bodies up to this size are kept so that the request can be sent again.
pub const MAX_KEPT_BODY: u64 = 64 * 1024;

/// What went wrong with one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The request never left: connect refused/reset/timed out, TLS
    /// failure, or a connection closed before it took the request.
    NotSent,
    /// Reset or closed after (some of) the request was sent.
    Reset,
    /// No response head within `per_try_timeout`.
    PerTryTimeout,
    /// The endpoint answered with this status.
    Status(StatusCode),
}

impl Failure {
    /// The label of `gatehouse_upstream_retries_total{reason}`.
    pub fn label(&self) -> &'static str {
        match self {
            Failure::NotSent => "not_sent",
            Failure::Reset => "reset",
            Failure::PerTryTimeout => "per_try_timeout",
            Failure::Status(_) => "status_5xx",
        }
    }
}

/// Whether the upstream may safely see this request again once it has
/// seen it: an idempotent method, or the partner's `Idempotency-Key`.
pub fn repeatable(method: &Method, headers: &HeaderMap) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    ) || headers.contains_key("idempotency-key")
}

/// Whether an answer with this status is worth another attempt.
pub fn retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 502..=504)
}

/// Whether the failed attempt may be retried (attempt counts and the
/// budget are the caller's).
pub fn may_retry(failure: Failure, repeatable: bool, body_kept: bool) -> bool {
    match failure {
        Failure::NotSent => true,
        Failure::Reset | Failure::PerTryTimeout => repeatable && body_kept,
        Failure::Status(s) => retryable_status(s) && repeatable && body_kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_key() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("idempotency-key", http::HeaderValue::from_static("k1"));
        h
    }

    #[test]
    fn a_post_without_a_key_is_never_sent_twice() {
        let post = repeatable(&Method::POST, &HeaderMap::new());
        let patch = repeatable(&Method::PATCH, &HeaderMap::new());
        assert!(!post && !patch);
        for f in [
            Failure::Reset,
            Failure::PerTryTimeout,
            Failure::Status(StatusCode::BAD_GATEWAY),
            Failure::Status(StatusCode::SERVICE_UNAVAILABLE),
        ] {
            assert!(!may_retry(f, post, true), "{f:?}");
        }
        // It never reached an endpoint: safe for any method.
        assert!(may_retry(Failure::NotSent, post, false));
    }

    #[test]
    fn idempotent_or_keyed_requests_are_retried_when_their_body_was_kept() {
        assert!(repeatable(&Method::POST, &with_key()));
        for m in [
            Method::GET,
            Method::HEAD,
            Method::OPTIONS,
            Method::PUT,
            Method::DELETE,
        ] {
            let r = repeatable(&m, &HeaderMap::new());
            assert!(may_retry(Failure::Reset, r, true), "{m}");
            assert!(may_retry(Failure::PerTryTimeout, r, true), "{m}");
            assert!(!may_retry(Failure::Reset, r, false), "{m} body not kept");
        }
        assert!(may_retry(
            Failure::Status(StatusCode::GATEWAY_TIMEOUT),
            true,
            true
        ));
        assert!(!may_retry(
            Failure::Status(StatusCode::INTERNAL_SERVER_ERROR),
            true,
            true
        ));
    }
}
