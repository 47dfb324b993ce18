//! `AdminView`: what the admin listener and the console read of the running
//! broker (the live state, the event sink, the identity key's JWKS and the
//! partner listener's state), and nothing more.

use std::sync::Arc;

use crate::gateway::Connections;
use crate::gateway::live::Live;
use crate::guard::EventSink;
use crate::identity_token::LiveIdentity;

/// What the admin listener reads: the live state, the event sink (journal
/// health, metrics, anomaly status), the identity key's JWKS and whether
/// the partner listener accepts.
pub struct AdminView {
    pub live: Arc<Live>,
    pub events: Arc<EventSink>,
    pub identity: Arc<LiveIdentity>,
    pub connections: Arc<Connections>,
}

impl AdminView {
    /// Whether the broker can take traffic (config loaded, journal writable, listening).
    pub fn ready(&self) -> bool {
        self.connections.listening() && self.events.writable()
    }
}

/// Today's totals of `partner` against its limits, per currency, for the
/// status view and the console: `[{currency, today, per_call, per_day}]`.
pub fn value_today(
    ledger: &crate::risk::Ledger,
    partner: &crate::config::Partner,
    now_ms: i64,
) -> serde_json::Value {
    let day = crate::risk::ledger::day_of(now_ms);
    partner
        .value_limits
        .iter()
        .map(|(currency, limit)| {
            serde_json::json!({
                "currency": currency,
                "today": ledger.total(&partner.id, currency, day).to_string(),
                "per_call": limit.per_call.map(|a| a.to_string()),
                "per_day": limit.per_day.map(|a| a.to_string()),
            })
        })
        .collect()
}
