//! The monitor: what the broker tells operators about itself while it runs.
//! It owns the Prometheus metrics (served as text at the admin listener's
//! `/metrics`), the short per-partner traffic windows behind
//! `gatehouse status`, the list of recent alerts, and the certificate
//! expiry view. It is fed by the same `Event`s the journal records, plus a
//! few direct calls (handshakes, connections, upstream and journal timings);
//! it never decides anything on the request path and never does I/O.
//!
//! Label sets are bounded by construction: partners come from verified
//! certificates and config, routes are the configured path of the granted
//! route (or `none`), methods outside a fixed list become `OTHER`, status is
//! reduced to its class, and reasons are the broker's fixed codes (anything
//! that does not look like one becomes `other`). No raw path, client address
//! or request id ever becomes a label.

mod expiry;
mod exposition;
mod presented;
mod status;
mod window;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Serialize;
use time::OffsetDateTime;

use crate::ca::inventory::Inventory;
use crate::config::Risk;
use crate::event::{Decision, Event, EventKind};
use crate::reason::Reason;

pub use expiry::{ExpiryWarning, expiring};
pub use exposition::{TEXT_CONTENT_TYPE, wants_openmetrics};
pub use presented::PresentedCerts;
pub use status::status_json;
pub use window::{MinutePoint, PartnerWindow};

use window::WindowRing;

/// Content type of [`Monitor::render`] (OpenMetrics text, which Prometheus reads).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How many recent alerts the monitor keeps for `gatehouse status`.
pub const MAX_RECENT_ALERTS: usize = 256;

/// How long an alert counts as open in `gatehouse status`.
pub const ALERT_OPEN_MS: i64 = 60 * 60 * 1000;

/// Methods kept as they are in the `method` label; any other becomes `OTHER`.
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
];

/// Longest reason code kept as a label value.
const MAX_CODE_LEN: usize = 64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    partner: String,
    route: String,
    method: String,
    status_class: String,
    decision: String,
    risk: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DurationLabels {
    partner: String,
    route: String,
    risk: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DenialLabels {
    partner: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamResponseLabels {
    upstream: String,
    status_class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ValueLabels {
    partner: String,
    currency: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    upstream: String,
    error: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    upstream: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    outcome: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabels {
    partner: String,
    limit: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CertLabels {
    partner: String,
    serial: String,
}

/// An alert the monitor saw recently (for `gatehouse status`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecentAlert {
    pub time_ms: i64,
    pub kind: String,
    pub partner: Option<String>,
    pub detail: Option<String>,
}

/// The broker's metrics and short-term views. `Send + Sync`; share it in an `Arc`.
pub struct Monitor {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<DurationLabels, Histogram>,
    denials: Family<DenialLabels, Counter>,
    upstream_duration: Family<UpstreamLabels, Histogram>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    value: Family<ValueLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    upstream_responses: Family<UpstreamResponseLabels, Counter>,
    mirrors: Family<MirrorLabels, Counter>,
    handshakes: Family<HandshakeLabels, Counter>,
    active_connections: Gauge,
    journal_append: Histogram,
    journal_batch: Histogram,
    journal_failures: Counter,
    rate_limit_denials: Family<LimitLabels, Counter>,
    alerts: Family<AlertLabels, Counter>,
    alerts_open: Family<AlertLabels, Gauge>,
    /// The kinds `alerts_open` has a series for (set to 0 when none is open).
    alert_kinds: Mutex<HashSet<String>>,
    journal_writable: Gauge,
    config_restart_pending: Gauge,
    cert_expiry: Family<CertLabels, Gauge>,
    /// The series `cert_expiry` holds now (to remove stale ones).
    cert_series: Mutex<HashSet<CertLabels>>,
    /// Certificates from partners' own CAs seen at handshakes.
    presented: PresentedCerts,
    reloads: Counter,
    reload_failures: Counter,
    /// Per-partner windows; the outer lock is taken for reading on the
    /// request path (written once per new partner).
    windows: RwLock<HashMap<String, Arc<Mutex<WindowRing>>>>,
    recent_alerts: Mutex<VecDeque<RecentAlert>>,
    /// The upstream pools' families (updated at scrape time).
    pub pools: crate::upstream::metrics::PoolMetrics,
}

fn request_buckets() -> impl Iterator<Item = f64> {
    // 1 ms .. ~33 s.
    exponential_buckets(0.001, 2.0, 16)
}

impl Default for Monitor {
    fn default() -> Self {
        Monitor::new()
    }
}

impl Monitor {
    pub fn new() -> Monitor {
        let mut monitor = Monitor {
            registry: Registry::default(),
            requests: Family::default(),
            request_duration: Family::new_with_constructor(|| Histogram::new(request_buckets())),
            denials: Family::default(),
            upstream_duration: Family::new_with_constructor(|| Histogram::new(request_buckets())),
            upstream_errors: Family::default(),
            value: Family::default(),
            upstream_responses: Family::default(),
            mirrors: Family::default(),
            handshakes: Family::default(),
            active_connections: Gauge::default(),
            journal_append: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            journal_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            journal_failures: Counter::default(),
            rate_limit_denials: Family::default(),
            alerts: Family::default(),
            alerts_open: Family::default(),
            alert_kinds: Mutex::new(HashSet::new()),
            journal_writable: Gauge::default(),
            config_restart_pending: Gauge::default(),
            cert_expiry: Family::default(),
            cert_series: Mutex::new(HashSet::new()),
            presented: PresentedCerts::default(),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
            windows: RwLock::new(HashMap::new()),
            recent_alerts: Mutex::new(VecDeque::new()),
            pools: Default::default(),
        };
        monitor.registry = monitor.registry();
        // The journal opened before the broker started serving.
        monitor.journal_writable.set(1);
        monitor
    }

    /// The registry the metrics are exposed from. Each family is a cheap
    /// handle (an `Arc`) shared between the field and the registry.
    fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("gatehouse");
        let m = self;
        registry.register(
            "requests",
            "Partner requests by partner, granted route (or none), method, status class, decision and route risk",
            m.requests.clone(),
    );
        registry.register(
            "request_duration_seconds",
            "Time from request head to recorded end of the exchange, by partner, route and risk",
            m.request_duration.clone(),
        );
        registry.register(
            "request_denials",
            "Denied partner requests by partner and reason code",
            m.denials.clone(),
        );
        registry.register(
            "upstream_duration_seconds",
            "Time until the upstream's response head, by upstream",
            m.upstream_duration.clone(),
        );
        registry.register(
            "value",
            "Value relayed with a 2xx answer on routes with a value, by partner and currency (in currency units; the journal keeps the exact amounts)",
            m.value.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed upstream calls by upstream and error code",
            m.upstream_errors.clone(),
        );
        registry.register(
            "upstream_responses",
            "Responses relayed from an upstream, by upstream and status class",
            m.upstream_responses.clone(),
        );
        registry.register(
            "mirror",
            "Mirrored requests by mirrored upstream and result: match, mismatch (the candidate answered otherwise), error (no answer to compare), dropped (not sent: no free slot or a body over the cap)",
            m.mirrors.clone(),
        );
        registry.register(
            "tls_handshakes",
            "Partner TLS handshakes by outcome (ok, refused) and refusal reason",
            m.handshakes.clone(),
        );
        registry.register(
            "active_connections",
            "Partner connections open now",
            m.active_connections.clone(),
        );
        registry.register(
            "journal_append_seconds",
            "Time to append (and, with strict durability, flush) one journal batch",
            m.journal_append.clone(),
        );
        registry.register(
            "journal_batch_records",
            "Records per journal batch",
            m.journal_batch.clone(),
        );
        registry.register(
            "journal_append_failures",
            "Journal batches that could not be written",
            m.journal_failures.clone(),
        );
        registry.register(
            "rate_limit_denials",
            "Requests refused by a traffic limit, by partner and limit kind",
            m.rate_limit_denials.clone(),
        );
        registry.register("alerts", "Alerts raised, by kind", m.alerts.clone());
        registry.register(
            "alerts_open",
            "Alerts raised within the last hour (open in `gatehouse status`), by kind",
            m.alerts_open.clone(),
        );
        registry.register(
            "journal_writable",
            "1 while the journal accepts writes; 0 while it fails closed (partner requests get 503)",
            m.journal_writable.clone(),
    );
        registry.register(
            "config_restart_pending",
            "1 while a setting changed in the files waits for a restart to take effect (gatehouse status lists them); 0 when every setting read is in force",
            m.config_restart_pending.clone(),
        );
        registry.register(
            "certificate_expiry_seconds",
            "Seconds until a usable partner certificate expires, by partner and serial",
            m.cert_expiry.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads applied",
            m.reloads.clone(),
        );
        registry.register(
            "config_reload_failures",
            "Configuration changes refused (the running configuration stayed in force)",
            m.reload_failures.clone(),
        );
        m.pools.register(&mut registry);
        registry
    }

    /// Counts one event: exchanges (requests, duration, denials, rate-limit
    /// denials, the partner's window), refused handshakes, config reloads
    /// and alerts. `risk` is the granted route's risk, if a route was granted.
    pub fn observe_event(&self, ev: &Event, risk: Option<Risk>) {
        match ev.kind {
            EventKind::Exchange => self.observe_exchange(ev, risk),
            EventKind::Handshake => {
                self.handshakes
                    .get_or_create(&HandshakeLabels {
                        outcome: "refused".into(),
                        reason: code_label(ev.reason.as_deref()),
                    })
                    .inc();
            }
            // The individual refusals it sums up were counted already.
            EventKind::HandshakeAggregate => {}
            EventKind::Alert => {
                let kind = code_label(ev.reason.as_deref());
                self.alerts
                    .get_or_create(&AlertLabels { kind: kind.clone() })
                    .inc();
                if let Ok(mut kinds) = self.alert_kinds.lock() {
                    kinds.insert(kind.clone());
                }
                if let Ok(mut q) = self.recent_alerts.lock() {
                    if q.len() >= MAX_RECENT_ALERTS {
                        q.pop_front();
                    }
                    q.push_back(RecentAlert {
                        time_ms: ev.time_ms,
                        kind,
                        partner: ev.partner.as_deref().map(partner_label),
                        detail: ev.detail.as_deref().map(|d| truncate(d, 512)),
                    });
                }
            }
            EventKind::Admin => match ev.reason.as_deref() {
                Some("config_reloaded") => {
                    self.reloads.inc();
                }
                Some("config_reload_refused") => {
                    self.reload_failures.inc();
                }
                _ => {}
            },
            // Counted where the mirror decides (`Monitor::mirror`).
            EventKind::MirrorDiff => {}
        }
    }

    fn observe_exchange(&self, ev: &Event, risk: Option<Risk>) {
        let partner = ev
            .partner
            .as_deref()
            .map(partner_label)
            .unwrap_or_else(|| "none".into());
        let route = ev.route.clone().unwrap_or_else(|| "none".into());
        let risk = match risk {
            Some(Risk::High) => "high",
            _ => "normal",
        };
        let denied = ev.decision == Decision::Denied;
        self.requests
            .get_or_create(&RequestLabels {
                partner: partner.clone(),
                route: route.clone(),
                method: method_label(ev.method.as_deref()).into(),
                status_class: status_class(ev.status).into(),
                decision: if denied { "denied" } else { "allowed" }.into(),
                risk: risk.into(),
            })
            .inc();
        let seconds = ev.duration_us as f64 / 1e6;
        self.request_duration
            .get_or_create(&DurationLabels {
                partner: partner.clone(),
                route,
                risk: risk.into(),
            })
            .observe(seconds);
        if !denied && let (Some(upstream), Some(status)) = (ev.upstream.as_deref(), ev.status) {
            self.upstream_responses
                .get_or_create(&UpstreamResponseLabels {
                    upstream: code_label(Some(upstream)),
                    status_class: status_class(Some(status)).into(),
                })
                .inc();
        }
        if denied {
            let reason = code_label(ev.reason.as_deref());
            if is_limit_reason(&reason) {
                self.rate_limit_denials
                    .get_or_create(&LimitLabels {
                        partner: partner.clone(),
                        limit: reason.clone(),
                    })
                    .inc();
            }
            self.denials
                .get_or_create(&DenialLabels {
                    partner: partner.clone(),
                    reason,
                })
                .inc();
        }
        self.window_for(&partner)
            .lock()
            .map(|mut w| w.record(ev.time_ms, denied, ev.duration_us))
            .unwrap_or(());
    }

    fn window_for(&self, partner: &str) -> Arc<Mutex<WindowRing>> {
        if let Ok(map) = self.windows.read()
            && let Some(w) = map.get(partner)
        {
            return w.clone();
        }
        match self.windows.write() {
            Ok(mut map) => map
                .entry(partner.to_string())
                .or_insert_with(|| Arc::new(Mutex::new(WindowRing::default())))
                .clone(),
            // A poisoned map: count into a throwaway window rather than panic.
            Err(_) => Arc::new(Mutex::new(WindowRing::default())),
        }
    }

    /// Counts one successful partner handshake (identity established) of
    /// a kind: `full` (the certificate chain was verified), `hello_retry`
    /// (full, after asking the client for another key share) or `resumed`.
    pub fn handshake_ok(&self, kind: &'static str) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                outcome: "ok".into(),
                reason: kind.into(),
            })
            .inc();
    }

    pub fn connection_opened(&self) {
        self.active_connections.inc();
    }

    pub fn connection_closed(&self) {
        self.active_connections.dec();
    }

    /// One upstream call: its time to the response head, and its error code if it failed.
    pub fn upstream(&self, upstream: &str, seconds: f64, error: Option<&str>) {
        let upstream = code_label(Some(upstream));
        self.upstream_duration
            .get_or_create(&UpstreamLabels {
                upstream: upstream.clone(),
            })
            .observe(seconds);
        if let Some(e) = error {
            self.upstream_errors
                .get_or_create(&UpstreamErrorLabels {
                    upstream,
                    error: code_label(Some(e)),
                })
                .inc();
        }
    }

    /// One mirrored request's result (`match`, `mismatch`, `error`,
    /// `dropped`) for the mirrored `upstream`.
    pub fn mirror(&self, upstream: &str, result: &'static str) {
        self.mirrors
            .get_or_create(&MirrorLabels {
                upstream: code_label(Some(upstream)),
                result: result.to_string(),
            })
            .inc();
    }

    /// A call's value, kept in the day's total (the upstream answered 2xx).
    pub fn value(&self, partner: &str, currency: &str, amount: crate::risk::Amount) {
        self.value
            .get_or_create(&ValueLabels {
                partner: partner.to_string(),
                currency: currency.to_string(),
            })
            .inc_by(amount.units() as f64 / crate::risk::amount::SCALE as f64);
    }

    /// One journal batch: how many records, how long the append took, whether it failed.
    pub fn journal_batch(&self, records: usize, seconds: f64, failed: bool) {
        self.journal_append.observe(seconds);
        self.journal_batch.observe(records as f64);
        if failed {
            self.journal_failures.inc();
        }
        self.journal_writable.set(i64::from(!failed));
    }

    /// Whether the journal accepts writes now (set at scrape time from the
    /// journal's own health, which also knows about recovery).
    pub fn set_journal_writable(&self, writable: bool) {
        self.journal_writable.set(i64::from(writable));
    }

    /// Whether changed settings wait for a restart (set at scrape time
    /// from the live configuration).
    pub fn set_config_restart_pending(&self, pending: bool) {
        self.config_restart_pending.set(i64::from(pending));
    }

    /// Certificates from partners' own CAs seen at handshakes (their
    /// expiry, which the inventory cannot know).
    pub fn presented(&self) -> &PresentedCerts {
        &self.presented
    }

    /// Replaces the certificate expiry gauges with the inventory's usable
    /// certificates at `now` and the valid ones partners' own CAs issued
    /// (as presented); series of certificates no longer usable go away.
    pub fn set_cert_expiry(&self, inventory: &Inventory, now: OffsetDateTime) {
        let mut fresh = HashSet::new();
        for (partner, serial, not_after_unix, _) in self.presented.valid(now) {
            let labels = CertLabels {
                partner: partner_label(&partner),
                serial: code_label(Some(&serial)),
            };
            self.cert_expiry
                .get_or_create(&labels)
                .set(not_after_unix - now.unix_timestamp());
            fresh.insert(labels);
        }
        for c in inventory.certs.values() {
            if !c.state(now).usable() {
                continue;
            }
            let labels = CertLabels {
                partner: partner_label(&c.partner),
                serial: code_label(Some(&c.serial)),
            };
            self.cert_expiry
                .get_or_create(&labels)
                .set((c.not_after - now).whole_seconds());
            fresh.insert(labels);
        }
        let Ok(mut current) = self.cert_series.lock() else {
            return;
        };
        for stale in current.difference(&fresh) {
            self.cert_expiry.remove(stale);
        }
        *current = fresh;
    }

    /// The metrics in the OpenMetrics text format (see [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        self.refresh_open_alerts(crate::event::now_ms());
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            // Writing to a String cannot fail; keep the output well-formed anyway.
            return "# EOF\n".into();
        }
        out
    }

    /// The metrics in the classic Prometheus text format 0.0.4 (see
    /// [`TEXT_CONTENT_TYPE`]), for scrapers that do not ask for OpenMetrics.
    pub fn render_text(&self) -> String {
        exposition::to_text_format(&self.render())
    }

    /// Sets `alerts_open` from the recent alerts: every kind seen keeps its
    /// series (at 0 once its alerts are over an hour old).
    fn refresh_open_alerts(&self, now_ms: i64) {
        let (Ok(q), Ok(mut kinds)) = (self.recent_alerts.lock(), self.alert_kinds.lock()) else {
            return;
        };
        let mut open: HashMap<&str, i64> = HashMap::new();
        for a in q.iter().filter(|a| now_ms - a.time_ms < ALERT_OPEN_MS) {
            *open.entry(a.kind.as_str()).or_insert(0) += 1;
        }
        kinds.extend(open.keys().map(|k| k.to_string()));
        for kind in kinds.iter() {
            self.alerts_open
                .get_or_create(&AlertLabels { kind: kind.clone() })
                .set(open.get(kind.as_str()).copied().unwrap_or(0));
        }
    }

    /// A partner's traffic over the hour before `now_ms`.
    pub fn recent(&self, partner: &str, now_ms: i64) -> PartnerWindow {
        let ring = self
            .windows
            .read()
            .ok()
            .and_then(|m| m.get(partner).cloned());
        match ring {
            Some(r) => r.lock().map(|w| w.summary(now_ms)).unwrap_or_default(),
            None => PartnerWindow::default(),
        }
    }

    /// A partner's traffic per minute over the hour before `now_ms`, oldest first.
    pub fn recent_series(&self, partner: &str, now_ms: i64) -> Vec<MinutePoint> {
        let ring = self
            .windows
            .read()
            .ok()
            .and_then(|m| m.get(partner).cloned());
        match ring.and_then(|r| r.lock().ok().map(|w| w.series(now_ms))) {
            Some(s) => s,
            None => WindowRing::default().series(now_ms),
        }
    }

    /// Alerts raised within the hour before `now_ms`, oldest first.
    pub fn open_alerts(&self, now_ms: i64) -> Vec<RecentAlert> {
        self.recent_alerts
            .lock()
            .map(|q| {
                q.iter()
                    .filter(|a| now_ms - a.time_ms < ALERT_OPEN_MS)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn is_limit_reason(reason: &str) -> bool {
    Reason::from_code(reason).is_some_and(Reason::is_rate_limit)
}

/// The method if it is a standard one, else `OTHER`.
fn method_label(m: Option<&str>) -> &'static str {
    match m {
        Some(m) => METHODS
            .iter()
            .find(|k| **k == m)
            .copied()
            .unwrap_or("OTHER"),
        None => "none",
    }
}

fn status_class(s: Option<u16>) -> &'static str {
    match s {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "none",
    }
}

/// A fixed code as a label: `[A-Za-z0-9_.:-]`, at most 64 bytes, else `other`.
fn code_label(code: Option<&str>) -> String {
    match code {
        None => "none".into(),
        Some(c)
            if !c.is_empty()
                && c.len() <= MAX_CODE_LEN
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b)) =>
        {
            c.to_string()
        }
        Some(_) => "other".into(),
    }
}

/// A partner id as a label (ids are validated; anything else is `invalid`).
fn partner_label(p: &str) -> String {
    if crate::config::valid_id(p) {
        p.to_string()
    } else {
        "invalid".into()
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests;
