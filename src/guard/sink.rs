//! The one event sink. Every event the broker makes (an exchange, a refused
//! handshake, an admin action, an alert) goes through [`EventSink::record`],
//! which hands it, in this order, to the monitor (metrics, operator view),
//! the anomaly detector (baselines, spikes: it may raise an alert, which
//! comes back through here) and the journal. No call site can skip one.
//!
//! Contract: `record` hands the event over at once (the monitor and the
//! detector have seen it when it returns); the returned acknowledgement
//! resolves when the journal holds the record as durably as
//! `[journal] durability` asks (strict: synced; relaxed: accepted by the
//! writer). A caller that lets a partner see the end of a response awaits it
//! first; a caller that only reports (alerts, admin events) may drop it.

use std::sync::Arc;

use crate::config::Risk;
use crate::event::{Decision, Event, EventKind, ExpectedRecord, RecordAck, Recorder};
use crate::guard::alerts::{AlertNotice, AlertSink};
use crate::guard::anomaly::{Alert, Detector};
use crate::guard::monitor::Monitor;

/// Where an anomaly throttle is applied (the live limits). The gateway's
/// live state implements it; the guard does not know the gateway.
pub trait Throttles: Send + Sync {
    /// Clamps `partner` to `per_minute` requests per minute, or lifts the clamp.
    fn set_throttle(&self, partner: &str, per_minute: Option<f64>);
}

/// What a fleet (`[cluster]`) hooks into the sink: it counts each
/// partner's exchanges for the fleet-wide baselines, and raises anomaly
/// alerts once per fleet instead of once per node.
pub trait FleetHooks: Send + Sync {
    /// An exchange of `partner` was recorded on this node.
    fn exchange(&self, partner: &str);
    /// Takes an anomaly alert to raise once per fleet; `false`: raise it here.
    fn claim_alert(&self, notice: &AlertNotice) -> bool;
}

/// The event sink: monitor, detector, journal (see the module doc).
pub struct EventSink {
    journal: Arc<dyn Recorder>,
    monitor: Arc<Monitor>,
    detector: Arc<Detector>,
    alerts: AlertSink,
    throttles: Arc<dyn Throttles>,
    node: String,
    fleet: std::sync::OnceLock<Arc<dyn FleetHooks>>,
}

impl EventSink {
    pub fn new(
        journal: Arc<dyn Recorder>,
        monitor: Arc<Monitor>,
        detector: Arc<Detector>,
        alerts: AlertSink,
        throttles: Arc<dyn Throttles>,
        node: &str,
    ) -> EventSink {
        EventSink {
            journal,
            monitor,
            detector,
            alerts,
            throttles,
            node: node.to_string(),
            fleet: std::sync::OnceLock::new(),
        }
    }

    /// Hooks a fleet in (once; a second call is ignored).
    pub fn set_fleet_hooks(&self, hooks: Arc<dyn FleetHooks>) {
        let _ = self.fleet.set(hooks);
    }

    /// Records one event (see the module doc for what the ack means).
    /// `risk` is the granted route's risk, for an exchange that had one.
    pub fn record(&self, event: Event, risk: Option<Risk>) -> RecordAck {
        self.monitor.observe_event(&event, risk);
        let alert = match (event.kind, event.partner.as_deref()) {
            (EventKind::Exchange, Some(partner)) => {
                if let Some(f) = self.fleet.get() {
                    f.exchange(partner);
                }
                let denied = matches!(event.status, Some(403) | Some(429));
                self.detector
                    .observe_request(partner, denied, event.time_ms)
            }
            (EventKind::Handshake, _) if event.decision == Decision::Denied => event
                .client_addr
                .as_deref()
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                .and_then(|a| {
                    self.detector
                        .observe_refused_handshake(a.ip(), event.time_ms)
                }),
            _ => None,
        };
        let ack = self.journal.record(event);
        if let Some(alert) = alert {
            self.raise(alert);
        }
        ack
    }

    /// An empty event of `kind` stamped with this node's id.
    pub fn event(&self, kind: EventKind, decision: Decision) -> Event {
        Event::new(kind, &self.node, decision)
    }

    /// This node's id, as every record carries it.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether new events can be recorded now (false: fail closed).
    pub fn writable(&self) -> bool {
        self.journal.writable()
    }

    /// Announces a record on its way (see [`Recorder::expect_record`]).
    pub fn expect_record(&self) -> ExpectedRecord {
        self.journal.expect_record()
    }

    /// The metrics and operator view.
    pub fn monitor(&self) -> &Arc<Monitor> {
        &self.monitor
    }

    /// The anomaly detector (for status, resume and persistence).
    /// Where alerts go (a reload swaps its webhook).
    pub fn alerts(&self) -> &AlertSink {
        &self.alerts
    }

    pub fn detector(&self) -> &Arc<Detector> {
        &self.detector
    }

    /// Raises an anomaly alert: applies its throttle, if any, then the
    /// alert record, log line and webhook.
    pub fn raise(&self, alert: Alert) {
        if let (Some(p), Some(rate)) = (&alert.partner, alert.throttle_per_minute) {
            self.throttles.set_throttle(p, Some(rate));
        }
        let notice = AlertNotice {
            kind: alert.kind.code().to_string(),
            partner: alert.partner.clone(),
            addr: alert.addr.clone(),
            message: alert.message.clone(),
            time_ms: alert.time_ms,
            details: serde_json::to_value(&alert).unwrap_or_default(),
        };
        if self.fleet.get().is_some_and(|f| f.claim_alert(&notice)) {
            return;
        }
        self.raise_notice(notice);
    }

    /// Raises any alert (expiry, broker certificates, anomalies).
    pub fn raise_notice(&self, notice: AlertNotice) {
        let ev = self.alerts.raise(notice);
        self.monitor.observe_event(&ev, None);
    }

    /// Operator's `partner resume`: clears an anomaly episode and its throttle.
    pub fn clear_anomaly(&self, partner: &str) -> bool {
        let cleared = self.detector.clear(partner);
        self.throttles.set_throttle(partner, None);
        cleared
    }
}
