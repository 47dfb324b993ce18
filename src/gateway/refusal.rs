//! `Refusal`: every refusal the broker makes, at the TLS level (no HTTP
//! status: the handshake is refused and recorded) or at the HTTP level
//! (status, reason code, whether the connection closes, `Retry-After`, extra
//! JSON fields). Each phase of the request returns `Result<_, Refusal>`; the
//! typed errors of the modules it calls (target check, limits, upstream)
//! convert into one here, so reason codes are the modules' own, defined
//! once, and the same code reaches the metrics label, the journal and the
//! partner's JSON error.

use http::StatusCode;

use crate::event::Event;
use crate::gateway::relay::UpstreamError;
use crate::guard::limits::LimitDenied;
use crate::policy::{Denial, TargetError};

/// Reason codes the gateway itself gives (the modules' own come from their
/// error types' `code()`).
pub mod code {
    /// The journal cannot take records: fail closed.
    pub const JOURNAL_UNAVAILABLE: &str = "journal_unavailable";
    /// Content-Length values spelled differently (reachable over HTTP/2;
    /// hyper refuses them, and re-frames Content-Length beside
    /// Transfer-Encoding, on HTTP/1.1).
    pub const AMBIGUOUS_FRAMING: &str = "ambiguous_framing";
    /// An absolute-form or authority-form target on HTTP/1.1, or an
    /// upstream URI that cannot be built.
    pub const BAD_TARGET: &str = "bad_target";
    /// The route names an upstream the configuration does not have.
    pub const UPSTREAM_UNKNOWN: &str = "upstream_unknown";
    /// The declared body is over the route's (or the server's) limit.
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    /// The upstream identity token could not be signed (fail closed).
    pub const IDENTITY_SIGNING_FAILED: &str = "identity_signing_failed";
    /// The upstream's body failed or was shorter than announced.
    pub const UPSTREAM_BODY_ERROR: &str = "upstream_body_error";
    /// The upstream's body did not come in time.
    pub const UPSTREAM_TIMEOUT: &str = "upstream_timeout";
    /// The handshake did not finish in time.
    pub const HANDSHAKE_TIMEOUT: &str = "handshake_timeout";
    /// The partner presented no certificate.
    pub const NO_CERTIFICATE: &str = "no_certificate";
    /// The client's address already has `max_pending_handshakes_per_addr`
    /// handshakes in progress: closed before the handshake.
    pub const TOO_MANY_PENDING_HANDSHAKES: &str = "too_many_pending_handshakes";
}

/// One refusal (see the module doc).
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The reason code (journal `reason`, metrics label, JSON `error`).
    pub code: &'static str,
    /// The HTTP status; `None` for a refusal at the TLS level.
    pub status: Option<StatusCode>,
    /// Close the connection after this answer (and refuse further requests on it).
    pub close: bool,
    /// Seconds for `Retry-After`.
    pub retry_after_secs: Option<u64>,
    /// Extra fields of the JSON body.
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// For the journal and the operator's log (never sent to the partner).
    pub detail: Option<String>,
    /// The refused certificate's fingerprint (TLS level), when known.
    pub fingerprint: Option<String>,
}

impl Refusal {
    /// An HTTP-level refusal.
    pub fn http(status: StatusCode, code: &'static str) -> Refusal {
        Refusal {
            code,
            status: Some(status),
            close: false,
            retry_after_secs: None,
            extra: serde_json::Map::new(),
            detail: None,
            fingerprint: None,
        }
    }

    /// A refused handshake.
    pub fn tls(code: &'static str) -> Refusal {
        Refusal {
            status: None,
            ..Refusal::http(StatusCode::FORBIDDEN, code)
        }
    }

    /// The connection closes after the answer.
    pub fn closing(mut self) -> Refusal {
        self.close = true;
        self
    }

    /// Adds `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> Refusal {
        self.retry_after_secs = Some(secs);
        self
    }

    /// Adds a field to the JSON body.
    pub fn with(mut self, key: &str, value: impl Into<serde_json::Value>) -> Refusal {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    /// Adds the operator-facing detail.
    pub fn detail(mut self, detail: impl Into<String>) -> Refusal {
        self.detail = Some(detail.into());
        self
    }

    /// Writes the refusal into its record: denied, reason, status, detail.
    pub fn mark(&self, ev: &mut Event) {
        ev.decision = crate::event::Decision::Denied;
        ev.reason = Some(self.code.to_string());
        ev.status = self.status.map(|s| s.as_u16());
        if let Some(d) = &self.detail {
            ev.detail = Some(crate::event::truncated(d, 1024));
        }
        if self.fingerprint.is_some() {
            ev.cert_fingerprint = self.fingerprint.clone();
        }
    }

    /// The JSON body the partner gets: `{"error": code, "request_id": id, ...extra}`.
    pub fn body_json(&self, request_id: &str) -> String {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), self.code.into());
        body.insert("request_id".into(), request_id.into());
        for (k, v) in &self.extra {
            body.insert(k.clone(), v.clone());
        }
        serde_json::Value::Object(body).to_string()
    }
}

impl From<TargetError> for Refusal {
    fn from(e: TargetError) -> Refusal {
        Refusal::http(StatusCode::BAD_REQUEST, e.code())
    }
}

impl From<Denial> for Refusal {
    fn from(d: Denial) -> Refusal {
        Refusal::http(StatusCode::FORBIDDEN, d.code())
    }
}

impl From<LimitDenied> for Refusal {
    fn from(denied: LimitDenied) -> Refusal {
        let mut r = Refusal::http(StatusCode::TOO_MANY_REQUESTS, denied.limit.code())
            .retry_after(denied.retry_after_secs);
        if let serde_json::Value::Object(fields) = denied.body_json() {
            // Its own `error` ("rate_limited") stands over the reason code.
            r.extra.extend(fields);
        }
        r
    }
}

impl From<UpstreamError> for Refusal {
    fn from(e: UpstreamError) -> Refusal {
        let mut r = Refusal::http(e.status(), e.code());
        if let Some(secs) = e.retry_after_secs() {
            r = r.retry_after(secs);
        }
        if matches!(e, UpstreamError::BodyTooLarge) {
            r.closing()
        } else {
            r
        }
    }
}
