//! Why the upstream leg of one request failed, as the partner and the
//! record see it: a reason code and an HTTP status.

use std::error::Error as StdError;

use crate::reason::Reason;

/// Why the upstream leg failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    /// No response head within the per-try or the response timeout (504).
    #[error("no response head in time")]
    Timeout,
    /// The upstream's certificate failed verification (502).
    #[error("upstream TLS: {0}")]
    Tls(String),
    /// No endpoint could be reached: every one refused, reset or timed out
    /// at connect, or none is healthy (503 + Retry-After).
    #[error("no endpoint reachable: {detail}")]
    Unavailable {
        detail: String,
        retry_after_secs: u64,
    },
    /// `max_in_flight` reached and the queue full, or the wait in it too
    /// long (503 + Retry-After).
    #[error("upstream saturated: {detail}")]
    Saturated {
        detail: String,
        retry_after_secs: u64,
    },
    /// The request body exceeded its limit while streaming (413).
    #[error("request body over its limit")]
    BodyTooLarge,
    /// Reset after the request was sent, or anything else on the leg (502).
    #[error("upstream error: {0}")]
    Other(String),
}

impl UpstreamError {
    /// The reason a refusal for this failure gives (its code, status and
    /// `Retry-After` are the reason's).
    pub fn reason(&self) -> Reason {
        match self {
            UpstreamError::Timeout => Reason::UpstreamTimeout,
            UpstreamError::Tls(_) => Reason::UpstreamTls,
            UpstreamError::Unavailable { .. } => Reason::UpstreamUnavailable,
            UpstreamError::Saturated { .. } => Reason::UpstreamSaturated,
            UpstreamError::BodyTooLarge => Reason::BodyTooLarge,
            UpstreamError::Other(_) => Reason::UpstreamError,
        }
    }

    /// Seconds for `Retry-After`, where the answer carries one.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            UpstreamError::Unavailable {
                retry_after_secs, ..
            }
            | UpstreamError::Saturated {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            _ => None,
        }
    }
}

/// Why a pool cannot be built from its settings (at start or reload; the
/// running configuration then stays in force).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBuildError {
    #[error("[upstreams.{name}] endpoint {why}")]
    Endpoint {
        name: String,
        why: crate::config::EndpointUrlError,
    },
    #[error("[upstreams.{0}] has no endpoint: give `url` or `endpoints`")]
    NoEndpoint(String),
    #[error("[upstreams.{0}] is https but has no `ca`")]
    NoCa(String),
    #[error("[upstreams.{name}] server_name `{server_name}` is not a valid name")]
    ServerName { name: String, server_name: String },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Finds a rustls error anywhere in an error chain, looking through the
/// `io::Error` and boxed-error wrappers the connector stack adds.
pub(crate) fn find_rustls<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        && let Some(t) = find_rustls(inner)
    {
        return Some(t);
    }
    e.source().and_then(find_rustls)
}

/// The whole chain of an error, `a: b: c`.
pub(crate) fn chain_text(e: &(dyn StdError + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether a failed send was the partner's body going over its limit.
pub(crate) fn is_body_limit(e: &(dyn StdError + 'static)) -> bool {
    let mut source: Option<&(dyn StdError + 'static)> = Some(e);
    while let Some(s) = source {
        if s.downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            return true;
        }
        source = s.source();
    }
    false
}
