//! The exchange event: what the gateway reports about every exchange
//! (allowed or denied) and every refused handshake, and the `Recorder` it
//! hands events to. The journal is the durable recorder; the gateway knows
//! only this interface, so the request path does not change with the sink.
//!
//! Field meanings: docs/architecture.md, "The exchange record".

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

/// What kind of thing a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// One HTTP exchange (allowed or denied).
    Exchange,
    /// One refused TLS handshake.
    Handshake,
    /// Several refused handshakes from one address, aggregated.
    HandshakeAggregate,
    /// A monitoring alert.
    Alert,
    /// A CA operation (issue, renew, revoke) or a config reload.
    Admin,
    /// A mirrored request whose candidate answered otherwise than the live
    /// side (what differs, never body content).
    MirrorDiff,
}

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allowed,
    Denied,
}

/// One event, before the journal gives it a sequence number and hash.
/// Unset fields are `None` (e.g. no partner for a handshake without a certificate).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// Milliseconds since the Unix epoch, UTC.
    pub time_ms: i64,
    pub node: String,
    pub partner: Option<String>,
    pub cert_serial: Option<String>,
    pub cert_fingerprint: Option<String>,
    pub client_addr: Option<String>,
    pub tls_version: Option<String>,
    pub method: Option<String>,
    pub path: Option<String>,
    pub route: Option<String>,
    pub upstream: Option<String>,
    pub decision: Decision,
    /// Reason code for denials (`route_not_granted`, `bad_target`, `revoked`, ...).
    pub reason: Option<String>,
    pub status: Option<u16>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub duration_us: u64,
    pub request_id: Option<String>,
    /// Free text: aggregated counts, alert details, admin action details.
    pub detail: Option<String>,
    /// The upstream endpoint (address) that answered, or was tried last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_endpoint: Option<String>,
    /// Attempts the upstream leg took (0: none was made).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// Whose CA issued the client certificate, when it was the partner's
    /// own (`[own_ca]`): that CA's subject. `None`: ours, or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// A call on a route with a `value`: its amount (exact decimal text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_amount: Option<String>,
    /// A call on a route with a `value`: its currency code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_currency: Option<String>,
    /// A signed call: the key id its signature names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_keyid: Option<String>,
    /// A signed call: the RFC 9421 signature base, exactly as signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_base: Option<String>,
    /// A signed call: the signature (base64) and its algorithm,
    /// `ALG:BASE64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// For a route to a split upstream (`upstream`): the side (pool) the
    /// partner was sent to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_side: Option<String>,
}

impl Event {
    /// An empty event of `kind` at the current time.
    pub fn new(kind: EventKind, node: &str, decision: Decision) -> Event {
        Event {
            kind,
            time_ms: now_ms(),
            node: node.to_string(),
            partner: None,
            cert_serial: None,
            cert_fingerprint: None,
            client_addr: None,
            tls_version: None,
            method: None,
            path: None,
            route: None,
            upstream: None,
            decision,
            reason: None,
            status: None,
            request_bytes: 0,
            response_bytes: 0,
            duration_us: 0,
            request_id: None,
            detail: None,
            upstream_endpoint: None,
            attempts: 0,
            issuer: None,
            value_amount: None,
            value_currency: None,
            signature_keyid: None,
            signature_base: None,
            signature: None,
            split_side: None,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `s` cut to at most `max` bytes (on a character boundary), marked with `…`
/// when cut: bounds what one record keeps of a partner-controlled string.
pub fn truncated(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Why an event could not be recorded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("journal unavailable: {0}")]
pub struct RecordError(pub String);

/// Resolves when the event is as durable as the configured durability asks
/// (strict: flushed to disk; relaxed: accepted by the writer).
pub type RecordAck = Pin<Box<dyn Future<Output = Result<(), RecordError>> + Send>>;

/// Where events go.
pub trait Recorder: Send + Sync + 'static {
    /// Hands over one event. The caller awaits the ack before it lets the
    /// partner see the end of the response.
    fn record(&self, event: Event) -> RecordAck;
    /// Whether new events can be recorded now (false: fail closed, 503).
    fn writable(&self) -> bool;
    /// Announces a record on its way (a request or a handshake in
    /// progress) until the returned guard is released or dropped. A hint
    /// only: the journal's group commit waits a little for announced
    /// records, and never for anyone when nothing is announced.
    fn expect_record(&self) -> ExpectedRecord {
        ExpectedRecord::none()
    }
}

/// A record announced to the recorder (see [`Recorder::expect_record`]);
/// counts once, until `release` or drop.
pub struct ExpectedRecord {
    counter: Option<Arc<AtomicUsize>>,
    released: AtomicBool,
}

impl ExpectedRecord {
    /// Announces nothing.
    pub fn none() -> Self {
        ExpectedRecord {
            counter: None,
            released: AtomicBool::new(true),
        }
    }

    /// Counts one expected record on `counter` until released.
    pub fn counting(counter: Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        ExpectedRecord {
            counter: Some(counter),
            released: AtomicBool::new(false),
        }
    }

    /// The record was handed over, or will not come.
    pub fn release(&self) {
        if let Some(c) = &self.counter
            && !self.released.swap(true, Ordering::Relaxed)
        {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for ExpectedRecord {
    fn drop(&mut self) {
        self.release();
    }
}

/// A recorder that writes each event as a structured tracing line.
pub struct TracingRecorder;

impl Recorder for TracingRecorder {
    fn record(&self, event: Event) -> RecordAck {
        match serde_json::to_string(&event) {
            Ok(line) => tracing::info!(target: "gatehouse::gateway::exchange", "{line}"),
            Err(e) => tracing::warn!("cannot encode event: {e}"),
        }
        Box::pin(async { Ok(()) })
    }
    fn writable(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expected_record_counts_once_until_released_or_dropped() {
        let counter = Arc::new(AtomicUsize::new(0));
        let a = ExpectedRecord::counting(counter.clone());
        let b = ExpectedRecord::counting(counter.clone());
        assert_eq!(counter.load(Ordering::Relaxed), 2);
        a.release();
        a.release();
        assert_eq!(counter.load(Ordering::Relaxed), 1, "released once");
        drop(a);
        assert_eq!(
            counter.load(Ordering::Relaxed),
            1,
            "no second release on drop"
        );
        drop(b);
        assert_eq!(counter.load(Ordering::Relaxed), 0, "dropped unreleased");
        drop(ExpectedRecord::none());
        assert_eq!(counter.load(Ordering::Relaxed), 0);
    }
}
