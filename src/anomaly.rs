//! Traffic anomaly detection. This module owns the per-partner baselines of
//! request rate and of denials (403/429), the per-address counts of refused
//! handshakes, and the decision "this is a spike: alert (once)". It does no
//! I/O and reads no clock: every call takes `now_ms` (ms since the Unix
//! epoch, e.g. from [`crate::limits::Clock`]), so tests replay hours of
//! traffic in milliseconds. It does not throttle by itself: in throttle mode
//! an [`Alert`] carries the rate the gateway hands to
//! [`crate::limits::LimitState::set_throttle`].
//!
//! Semantics (documented contract):
//!
//! - Time is cut into UTC minute buckets. A series' baseline is an EWMA of
//!   its per-minute counts (`alpha` per minute; the first `1/alpha` minutes
//!   use the plain mean, so the baseline is unbiased early). Minutes without
//!   traffic count as zeros.
//! - Threshold = max(`k` × baseline, floor). A series alerts when the count of
//!   the *current* minute exceeds it — checked on every event, so a spike is
//!   caught within its first minute, not at the minute's end.
//! - Request-rate alerts wait for `warmup_minutes` of history (from the
//!   partner's first request, or restored by [`Detector::import`]). Denial and
//!   handshake series have no warm-up: their floor is meaningful on its own.
//! - One alert per episode: after an alert the series is in an episode; it
//!   raises nothing more until `rearm_minutes` consecutive completed minutes
//!   are at or under the threshold. The baseline is frozen during an episode
//!   (a spike does not teach itself into the baseline).
//! - Denial alerts are suppressed while the partner's rate is in an episode:
//!   those 429s are the broker's own answer to the spike.
//! - `on_anomaly = "throttle"` ([`Detector::set_on_anomaly`]): a rate alert
//!   also clamps the partner to the threshold (k × baseline, and never below
//!   the floor); the clamp stays until [`Detector::clear`]. `clear` lifts the
//!   throttle and acknowledges the episode: no new alert for it, and the
//!   baseline learns the new level until the episode ends.
//! - Memory is bounded: at most `max_partners` partners and `max_addresses`
//!   addresses (the least recently active address is forgotten first).
//! - [`Detector::export`] / [`Detector::import`] persist the partners'
//!   baselines, episodes and throttles (not the short-lived address counts).
//!   The time the broker was down is not counted as minutes without traffic.
//!
//! Locks: the state is split into shards by key hash, each behind its own
//! Mutex; there is no lock over the whole detector.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

use crate::limits::MS_PER_MINUTE;

const SHARDS: usize = 16;
/// Gaps longer than this many minutes fold as this many (the EWMA has
/// forgotten everything by then anyway).
const MAX_GAP_FOLD: i64 = 1_500;
/// Export format version.
const STATE_VERSION: u32 = 1;

/// What to do about a partner's rate spike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnAnomaly {
    /// Alert only.
    #[default]
    Alert,
    /// Alert and clamp the partner to the threshold until an operator clears it.
    Throttle,
}

/// Tuning of the detector.
#[derive(Debug, Clone, PartialEq)]
pub struct AnomalySettings {
    /// Spike factor over the baseline.
    pub k: f64,
    /// Requests per minute under which no rate alert is raised, whatever the baseline.
    pub floor_per_minute: f64,
    /// Minutes of history before rate alerts.
    pub warmup_minutes: u32,
    /// EWMA weight of each new minute (0 < alpha ≤ 1).
    pub alpha: f64,
    /// Consecutive calm minutes that end an episode.
    pub rearm_minutes: u32,
    /// Denials (403/429) per minute per partner under which no denial alert is raised.
    pub denial_floor_per_minute: f64,
    /// Refused handshakes per minute per address under which no alert is raised.
    pub handshake_floor_per_minute: f64,
    /// Bound on tracked partners (new ones beyond it are not tracked).
    pub max_partners: usize,
    /// Bound on tracked source addresses.
    pub max_addresses: usize,
    /// Action for partners not given one by [`Detector::set_on_anomaly`].
    pub default_on_anomaly: OnAnomaly,
}

impl Default for AnomalySettings {
    fn default() -> Self {
        AnomalySettings {
            k: 10.0,
            floor_per_minute: 100.0,
            warmup_minutes: 60,
            alpha: 0.05,
            rearm_minutes: 5,
            denial_floor_per_minute: 30.0,
            handshake_floor_per_minute: 30.0,
            max_partners: 100_000,
            max_addresses: 10_000,
            default_on_anomaly: OnAnomaly::Alert,
        }
    }
}

/// What spiked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    RateSpike,
    DenialSpike,
    HandshakeSpike,
}

impl AlertKind {
    pub fn code(self) -> &'static str {
        match self {
            AlertKind::RateSpike => "rate_spike",
            AlertKind::DenialSpike => "denial_spike",
            AlertKind::HandshakeSpike => "handshake_spike",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One alert: the start of one episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub partner: Option<String>,
    pub addr: Option<String>,
    /// Count so far in the current minute (it just crossed the threshold).
    pub current_per_minute: f64,
    pub baseline_per_minute: f64,
    pub threshold_per_minute: f64,
    pub time_ms: i64,
    /// Throttle mode: clamp the partner to this many requests per minute
    /// (`LimitState::set_throttle`) until `Detector::clear`.
    pub throttle_per_minute: Option<f64>,
    pub message: String,
}

/// Why a persisted state was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnomalyError {
    #[error("anomaly state is not readable: {0}")]
    Decode(String),
    #[error("anomaly state version {0} is not supported (expected {STATE_VERSION})")]
    Version(u32),
    #[error("anomaly state holds an invalid entry: {0}")]
    Invalid(String),
}

// ---------------------------------------------------------------- one series

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Episode {
    /// No episode: a crossing alerts.
    Armed,
    /// Alerted; baseline frozen.
    Spike,
    /// Cleared by an operator; baseline learns, no alert until it ends.
    Acknowledged,
}

/// Per-minute counts of one thing, with its baseline and episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Series {
    /// Current minute bucket (ms / 60 000).
    minute: i64,
    count: u64,
    baseline: f64,
    /// Completed minutes seen (warm-up).
    minutes: u64,
    episode: Episode,
    calm: u32,
    /// Set in exported state: the next minute starts afresh, without
    /// folding the time the broker was down as empty minutes.
    #[serde(default)]
    resume: bool,
}

/// What a crossing looked like.
struct Crossing {
    current: f64,
    baseline: f64,
    threshold: f64,
}

impl Series {
    fn new(minute: i64) -> Series {
        Series {
            minute,
            count: 0,
            baseline: 0.0,
            minutes: 0,
            episode: Episode::Armed,
            calm: 0,
            resume: false,
        }
    }

    fn threshold(&self, s: &AnomalySettings, floor: f64) -> f64 {
        (s.k * self.baseline).max(floor)
    }

    fn fold(&mut self, count: u64, s: &AnomalySettings) {
        let x = count as f64;
        let n = self.minutes + 1;
        let alpha = s.alpha.clamp(f64::MIN_POSITIVE, 1.0);
        if (n as f64) < 1.0 / alpha {
            self.baseline += (x - self.baseline) / n as f64;
        } else {
            self.baseline += alpha * (x - self.baseline);
        }
    }

    /// Closes one completed minute with `count` events.
    fn close(&mut self, count: u64, s: &AnomalySettings, floor: f64) {
        let calm = count as f64 <= self.threshold(s, floor);
        match self.episode {
            Episode::Armed => self.fold(count, s),
            Episode::Spike | Episode::Acknowledged => {
                if self.episode == Episode::Acknowledged {
                    self.fold(count, s);
                }
                self.calm = if calm { self.calm.saturating_add(1) } else { 0 };
                if self.calm >= s.rearm_minutes {
                    self.episode = Episode::Armed;
                    self.calm = 0;
                }
            }
        }
        self.minutes = self.minutes.saturating_add(1);
    }

    /// Moves to `minute`, closing the current one and any empty ones between.
    fn roll(&mut self, minute: i64, s: &AnomalySettings, floor: f64) {
        if minute <= self.minute {
            return; // same minute, or a clock that went back: count it here
        }
        if std::mem::take(&mut self.resume) {
            self.minute = minute;
            self.count = 0;
            return;
        }
        let count = std::mem::take(&mut self.count);
        self.close(count, s, floor);
        let gap = minute - self.minute - 1;
        for _ in 0..gap.min(MAX_GAP_FOLD) {
            self.close(0, s, floor);
        }
        if gap > MAX_GAP_FOLD {
            let rest = (gap - MAX_GAP_FOLD) as u64;
            self.minutes = self.minutes.saturating_add(rest);
        }
        self.minute = minute;
    }

    /// Counts one event at `minute`; returns the crossing that starts an episode.
    fn observe(
        &mut self,
        minute: i64,
        s: &AnomalySettings,
        floor: f64,
        warmup: u64,
    ) -> Option<Crossing> {
        self.roll(minute, s, floor);
        self.count = self.count.saturating_add(1);
        let threshold = self.threshold(s, floor);
        if self.episode == Episode::Armed && self.minutes >= warmup && self.count as f64 > threshold
        {
            self.episode = Episode::Spike;
            self.calm = 0;
            return Some(Crossing {
                current: self.count as f64,
                baseline: self.baseline,
                threshold,
            });
        }
        None
    }

    fn valid(&self) -> bool {
        self.baseline.is_finite() && self.baseline >= 0.0
    }
}

// ---------------------------------------------------------------- detector

#[derive(Debug, Clone)]
struct PartnerAnomaly {
    rate: Series,
    denials: Series,
    on_anomaly: Option<OnAnomaly>,
    throttle: Option<f64>,
}

impl PartnerAnomaly {
    fn new(minute: i64) -> PartnerAnomaly {
        PartnerAnomaly {
            rate: Series::new(minute),
            denials: Series::new(minute),
            on_anomaly: None,
            throttle: None,
        }
    }
}

/// One partner's persisted anomaly state (opaque; see [`DetectorState`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartnerAnomalyState {
    rate: Series,
    denials: Series,
    throttle: Option<f64>,
}

/// The persisted form of a [`Detector`]: what [`Detector::export`] encodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorState {
    pub version: u32,
    pub partners: BTreeMap<String, PartnerAnomalyState>,
}

/// A partner's anomaly status, for `gatehouse status`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnomalyStatus {
    pub baseline_per_minute: f64,
    pub threshold_per_minute: f64,
    /// Requests in the current minute so far.
    pub current_minute: u64,
    pub warmed_up: bool,
    /// `armed`, `spike` or `acknowledged`.
    pub episode: &'static str,
    pub throttle_per_minute: Option<f64>,
    pub on_anomaly: OnAnomaly,
}

#[derive(Debug, Clone)]
struct AddrSeries {
    series: Series,
}

/// Per-partner and per-address spike detection. `Send + Sync`.
#[derive(Debug)]
pub struct Detector {
    settings: AnomalySettings,
    hasher: RandomState,
    partners: Vec<Mutex<HashMap<String, PartnerAnomaly>>>,
    addresses: Vec<Mutex<HashMap<IpAddr, AddrSeries>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold plain counters; after a panic elsewhere they are still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn minute_of(now_ms: i64) -> i64 {
    now_ms.div_euclid(MS_PER_MINUTE)
}

impl Detector {
    pub fn new(settings: AnomalySettings) -> Detector {
        Detector {
            settings,
            hasher: RandomState::new(),
            partners: (0..SHARDS).map(|_| Mutex::default()).collect(),
            addresses: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    pub fn settings(&self) -> &AnomalySettings {
        &self.settings
    }

    fn partner_shard(&self, partner: &str) -> MutexGuard<'_, HashMap<String, PartnerAnomaly>> {
        let i = self.hasher.hash_one(partner) as usize % SHARDS;
        lock(&self.partners[i])
    }

    fn addr_shard(&self, addr: &IpAddr) -> MutexGuard<'_, HashMap<IpAddr, AddrSeries>> {
        let i = self.hasher.hash_one(addr) as usize % SHARDS;
        lock(&self.addresses[i])
    }

    fn per_shard(&self, max: usize) -> usize {
        max.div_ceil(SHARDS).max(1)
    }

    /// Sets a partner's action on a rate spike (from its partner file;
    /// call again on reload).
    pub fn set_on_anomaly(&self, partner: &str, action: OnAnomaly) {
        let minute = 0;
        let cap = self.per_shard(self.settings.max_partners);
        let mut shard = self.partner_shard(partner);
        if let Some(p) = shard.get_mut(partner) {
            p.on_anomaly = Some(action);
        } else if shard.len() < cap {
            let mut p = PartnerAnomaly::new(minute);
            p.rate.resume = true;
            p.denials.resume = true;
            p.on_anomaly = Some(action);
            shard.insert(partner.to_string(), p);
        }
    }

    /// Counts one request of `partner` (allowed or `denied` with 403/429) at
    /// `now_ms`; returns an alert when this request starts an episode.
    pub fn observe_request(&self, partner: &str, denied: bool, now_ms: i64) -> Option<Alert> {
        let s = &self.settings;
        let minute = minute_of(now_ms);
        let cap = self.per_shard(s.max_partners);
        let mut shard = self.partner_shard(partner);
        if !shard.contains_key(partner) {
            if shard.len() >= cap {
                return None;
            }
            shard.insert(partner.to_string(), PartnerAnomaly::new(minute));
        }
        let p = shard.get_mut(partner)?;

        let warmup = u64::from(s.warmup_minutes);
        if let Some(c) = p.rate.observe(minute, s, s.floor_per_minute, warmup) {
            let throttle = match p.on_anomaly.unwrap_or(s.default_on_anomaly) {
                OnAnomaly::Throttle => Some(c.threshold),
                OnAnomaly::Alert => None,
            };
            if throttle.is_some() {
                p.throttle = throttle;
            }
            // Keep the denial series' minute in step; its own alert would be
            // about the same episode.
            if denied {
                p.denials.observe(minute, s, s.denial_floor_per_minute, 0);
            }
            let message = format!(
                "partner {partner}: {} requests in the current minute, over {} × baseline {:.1}/min (threshold {:.0}/min){}",
                c.current,
                s.k,
                c.baseline,
                c.threshold,
                match throttle {
                    Some(t) => format!("; throttled to {t:.0}/min until cleared"),
                    None => String::new(),
                }
            );
            return Some(Alert {
                kind: AlertKind::RateSpike,
                partner: Some(partner.to_string()),
                addr: None,
                current_per_minute: c.current,
                baseline_per_minute: c.baseline,
                threshold_per_minute: c.threshold,
                time_ms: now_ms,
                throttle_per_minute: throttle,
                message,
            });
        }
        if !denied {
            return None;
        }
        let c = p.denials.observe(minute, s, s.denial_floor_per_minute, 0)?;
        if p.rate.episode != Episode::Armed {
            return None; // the denials are the broker's answer to that episode
        }
        Some(Alert {
            kind: AlertKind::DenialSpike,
            partner: Some(partner.to_string()),
            addr: None,
            current_per_minute: c.current,
            baseline_per_minute: c.baseline,
            threshold_per_minute: c.threshold,
            time_ms: now_ms,
            throttle_per_minute: None,
            message: format!(
                "partner {partner}: {} denied requests (403/429) in the current minute (baseline {:.1}/min, threshold {:.0}/min)",
                c.current, c.baseline, c.threshold
            ),
        })
    }

    /// Counts one refused TLS handshake from `addr` at `now_ms`; returns an
    /// alert when it starts an episode for that address.
    pub fn observe_refused_handshake(&self, addr: IpAddr, now_ms: i64) -> Option<Alert> {
        let s = &self.settings;
        let addr = addr.to_canonical();
        let minute = minute_of(now_ms);
        let cap = self.per_shard(s.max_addresses);
        let mut shard = self.addr_shard(&addr);
        if !shard.contains_key(&addr) && shard.len() >= cap {
            // Forget the least recently active address (O(shard) only when full).
            let oldest = shard
                .iter()
                .min_by_key(|(_, a)| a.series.minute)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                shard.remove(&k);
            }
        }
        let a = shard.entry(addr).or_insert_with(|| AddrSeries {
            series: Series::new(minute),
        });
        let c = a
            .series
            .observe(minute, s, s.handshake_floor_per_minute, 0)?;
        Some(Alert {
            kind: AlertKind::HandshakeSpike,
            partner: None,
            addr: Some(addr.to_string()),
            current_per_minute: c.current,
            baseline_per_minute: c.baseline,
            threshold_per_minute: c.threshold,
            time_ms: now_ms,
            throttle_per_minute: None,
            message: format!(
                "address {addr}: {} refused handshakes in the current minute (baseline {:.1}/min, threshold {:.0}/min)",
                c.current, c.baseline, c.threshold
            ),
        })
    }

    /// Operator's clear: lifts `partner`'s throttle and acknowledges its
    /// episodes (see the module doc). Returns whether anything was cleared.
    /// The gateway also calls `LimitState::set_throttle(partner, None)`.
    pub fn clear(&self, partner: &str) -> bool {
        let mut shard = self.partner_shard(partner);
        let Some(p) = shard.get_mut(partner) else {
            return false;
        };
        let mut cleared = p.throttle.take().is_some();
        for series in [&mut p.rate, &mut p.denials] {
            if series.episode == Episode::Spike {
                series.episode = Episode::Acknowledged;
                series.calm = 0;
                cleared = true;
            }
        }
        cleared
    }

    /// The throttle in force for `partner` (requests per minute).
    pub fn throttle(&self, partner: &str) -> Option<f64> {
        self.partner_shard(partner).get(partner)?.throttle
    }

    /// Every throttle in force, to re-apply to a new `LimitState` after a
    /// restart ([`Detector::import`]).
    pub fn throttles(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for shard in &self.partners {
            for (id, p) in lock(shard).iter() {
                if let Some(t) = p.throttle {
                    out.push((id.clone(), t));
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// `partner`'s baseline and episode as of `now_ms` (read-only).
    pub fn status(&self, partner: &str, now_ms: i64) -> Option<AnomalyStatus> {
        let s = &self.settings;
        let shard = self.partner_shard(partner);
        let p = shard.get(partner)?;
        let mut rate = p.rate.clone();
        rate.roll(minute_of(now_ms), s, s.floor_per_minute);
        Some(AnomalyStatus {
            baseline_per_minute: rate.baseline,
            threshold_per_minute: rate.threshold(s, s.floor_per_minute),
            current_minute: rate.count,
            warmed_up: rate.minutes >= u64::from(s.warmup_minutes),
            episode: match rate.episode {
                Episode::Armed => "armed",
                Episode::Spike => "spike",
                Episode::Acknowledged => "acknowledged",
            },
            throttle_per_minute: p.throttle,
            on_anomaly: p.on_anomaly.unwrap_or(s.default_on_anomaly),
        })
    }

    /// The partners' persisted state.
    pub fn export_state(&self) -> DetectorState {
        let mut partners = BTreeMap::new();
        for shard in &self.partners {
            for (id, p) in lock(shard).iter() {
                let mut rate = p.rate.clone();
                let mut denials = p.denials.clone();
                rate.resume = true;
                denials.resume = true;
                partners.insert(
                    id.clone(),
                    PartnerAnomalyState {
                        rate,
                        denials,
                        throttle: p.throttle,
                    },
                );
            }
        }
        DetectorState {
            version: STATE_VERSION,
            partners,
        }
    }

    /// [`Detector::export_state`] as bytes (JSON), e.g. for a sled key.
    pub fn export(&self) -> Vec<u8> {
        serde_json::to_vec(&self.export_state()).unwrap_or_default()
    }

    /// Restores partners' state from [`Detector::export`] bytes. Checks the
    /// whole blob first: on error nothing changes. Returns how many partners
    /// were restored. A partner's `on_anomaly` setting is kept.
    pub fn import(&self, bytes: &[u8]) -> Result<usize, AnomalyError> {
        let state: DetectorState =
            serde_json::from_slice(bytes).map_err(|e| AnomalyError::Decode(e.to_string()))?;
        self.import_state(state)
    }

    /// Restores partners' state from a [`DetectorState`] (see [`Detector::import`]).
    pub fn import_state(&self, state: DetectorState) -> Result<usize, AnomalyError> {
        if state.version != STATE_VERSION {
            return Err(AnomalyError::Version(state.version));
        }
        for (id, p) in &state.partners {
            if !crate::config::valid_id(id) {
                return Err(AnomalyError::Invalid(format!("partner id `{id}`")));
            }
            let throttle_ok = p.throttle.is_none_or(|t| t.is_finite() && t > 0.0);
            if !p.rate.valid() || !p.denials.valid() || !throttle_ok {
                return Err(AnomalyError::Invalid(format!("partner `{id}`: bad number")));
            }
        }
        let cap = self.per_shard(self.settings.max_partners);
        let mut restored = 0;
        for (id, p) in state.partners {
            let mut shard = self.partner_shard(&id);
            let on_anomaly = shard.get(&id).and_then(|e| e.on_anomaly);
            if !shard.contains_key(&id) && shard.len() >= cap {
                continue;
            }
            let (mut rate, mut denials) = (p.rate, p.denials);
            rate.resume = true;
            denials.resume = true;
            shard.insert(
                id,
                PartnerAnomaly {
                    rate,
                    denials,
                    on_anomaly,
                    throttle: p.throttle,
                },
            );
            restored += 1;
        }
        Ok(restored)
    }
}
