//! `Refusal`: the one type every refusal travels as, at the TLS level (no
//! HTTP status: the handshake is refused and recorded) or at the HTTP level
//! (a JSON answer). It carries a [`Reason`], which fixes the code, the
//! status, whether the connection closes and the default `Retry-After`;
//! the check that refused adds what only it knows (the exact `Retry-After`,
//! extra JSON fields, the operator-facing detail, the refused certificate's
//! fingerprint). The same code reaches the journal record, the metrics and
//! the partner's JSON `error`.

use http::StatusCode;

use crate::event::{Decision, Event, truncated};
use crate::reason::Reason;

/// One refusal (see the module doc).
#[derive(Debug, Clone)]
pub struct Refusal {
    /// Why (the journal `reason`, metrics label, JSON `error`).
    pub reason: Reason,
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
    /// A refusal of a request, as its reason says.
    pub fn new(reason: Reason) -> Refusal {
        Refusal {
            reason,
            status: reason.status(),
            close: reason.closes_connection(),
            retry_after_secs: reason.retry_after_secs(),
            extra: serde_json::Map::new(),
            detail: None,
            fingerprint: None,
        }
    }

    /// A refused handshake (no status; the connection closes).
    pub fn tls(reason: Reason) -> Refusal {
        Refusal {
            status: None,
            close: true,
            retry_after_secs: None,
            ..Refusal::new(reason)
        }
    }

    /// The reason code.
    pub fn code(&self) -> &'static str {
        self.reason.code()
    }

    /// Sets `Retry-After` to what the refusing check knows.
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

    /// Adds the refused certificate's fingerprint.
    pub fn fingerprint(mut self, fingerprint: impl Into<String>) -> Refusal {
        self.fingerprint = Some(fingerprint.into());
        self
    }

    /// Writes the refusal into its record: denied, reason, status, detail.
    pub fn mark(&self, ev: &mut Event) {
        ev.decision = Decision::Denied;
        ev.reason = Some(self.reason.code().to_string());
        ev.status = self.status.map(|s| s.as_u16());
        if let Some(d) = &self.detail {
            ev.detail = Some(truncated(d, 1024));
        }
        if self.fingerprint.is_some() {
            ev.cert_fingerprint = self.fingerprint.clone();
        }
    }

    /// The JSON body the partner gets: `{"error": ..., "request_id": id,
    /// ...extra}`, with the code in `limit` when the `error` is not the code
    /// (a limit's `rate_limited`).
    pub fn body_json(&self, request_id: &str) -> String {
        let mut body = serde_json::Map::new();
        body.insert("error".into(), self.reason.json_error().into());
        if self.reason.json_error() != self.reason.code() {
            body.insert("limit".into(), self.reason.code().into());
        }
        body.insert("request_id".into(), request_id.into());
        for (k, v) in &self.extra {
            body.insert(k.clone(), v.clone());
        }
        serde_json::Value::Object(body).to_string()
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(d) => write!(f, "{d} ({})", self.reason),
            None => write!(f, "refused: {}", self.reason),
        }
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_answers_rate_limited_with_its_code_in_limit() {
        let r = Refusal::new(Reason::RequestsPerMinute)
            .retry_after(7)
            .with("scope", "partner");
        let body: serde_json::Value = serde_json::from_str(&r.body_json("abc")).unwrap_or_default();
        assert_eq!(body["error"], Reason::RequestsPerMinute.json_error());
        assert_eq!(body["limit"], Reason::RequestsPerMinute.code());
        assert_eq!(body["scope"], "partner");
        assert_eq!(body["request_id"], "abc");
        assert_eq!(r.retry_after_secs, Some(7));
        assert_eq!(r.status, Some(StatusCode::TOO_MANY_REQUESTS));
    }

    #[test]
    fn a_refusal_takes_status_closing_and_retry_after_from_its_reason() {
        let r = Refusal::new(Reason::PartnerSuspended);
        assert_eq!(r.status, Some(StatusCode::FORBIDDEN));
        assert!(r.close);
        assert_eq!(r.retry_after_secs, None);
        let body: serde_json::Value = serde_json::from_str(&r.body_json("x")).unwrap_or_default();
        assert_eq!(body["error"], Reason::PartnerSuspended.code());
        assert!(body.get("limit").is_none());
        let t = Refusal::tls(Reason::Revoked);
        assert_eq!(t.status, None);
        assert!(t.close);
        let mut ev = Event::new(crate::event::EventKind::Exchange, "n1", Decision::Allowed);
        t.fingerprint("ab").detail("why").mark(&mut ev);
        assert_eq!(ev.decision, Decision::Denied);
        assert_eq!(ev.reason.as_deref(), Some(Reason::Revoked.code()));
        assert_eq!(ev.cert_fingerprint.as_deref(), Some("ab"));
        assert_eq!(ev.status, None);
    }
}
