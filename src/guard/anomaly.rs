//! Traffic anomaly detection. This module owns the per-partner baselines of
//! request rate and of denials (403/429), the per-address counts of refused
//! handshakes, and the decision "this is a spike: alert (once)". It does no
//! I/O and reads no clock: every call takes `now_ms` (ms since the Unix
//! epoch, e.g. `crate::event::now_ms()`), so tests replay hours of
//! traffic in milliseconds. It does not throttle by itself: in throttle mode
//! an [`Alert`] carries the rate the gateway hands to
//! [`crate::guard::limits::LimitState::set_throttle`].
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
//!   those 429s are the broker's own answer to the spike. (If the denial
//!   floor is crossed first, within the spike's first minute, both a denial
//!   and a rate alert are raised: at most one per kind per episode.)
//! - Export drops the minute in progress; import resumes at the next minute.
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
//!
//! Wiring (for the gateway): after each exchange call
//! `observe_request(partner, status is 403 or 429, now)`; on a refused
//! handshake `observe_refused_handshake(addr, now)`; journal each [`Alert`]
//! as an `EventKind::Alert` event, and when `alert.throttle_per_minute` is
//! set pass it to `LimitState::set_throttle`. `clear` is the operator's
//! command; follow it with `set_throttle(partner, None)`. Store `export()`
//! now and then and at shutdown; at start `import` it and re-apply
//! `throttles()` to the new `LimitState` (throttles survive limit reloads
//! by themselves).

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::{Deserialize, Serialize};

pub use crate::config::OnAnomaly;
use crate::guard::limits::MS_PER_MINUTE;

const SHARDS: usize = 16;
/// Gaps longer than this many minutes fold as this many (the EWMA has
/// forgotten everything by then anyway).
const MAX_GAP_FOLD: i64 = 1_500;
/// Export format version.
const STATE_VERSION: u32 = 1;

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
        if std::mem::take(&mut self.resume) {
            // Restored state: start at `minute`, wherever the stored one was.
            if minute != self.minute {
                self.minute = minute;
                self.count = 0;
            }
            return;
        }
        if minute <= self.minute {
            return; // same minute, or a clock that went back: count it here
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
    /// Swapped whole by a reload (`[monitor]` thresholds).
    settings: arc_swap::ArcSwap<AnomalySettings>,
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
            settings: arc_swap::ArcSwap::from_pointee(settings),
            hasher: RandomState::new(),
            partners: (0..SHARDS).map(|_| Mutex::default()).collect(),
            addresses: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }

    pub fn settings(&self) -> Arc<AnomalySettings> {
        self.settings.load_full()
    }

    /// Puts the `[monitor]` thresholds of a reloaded configuration in
    /// force; the next minute's judgement uses them.
    pub fn retune(&self, factor: f64, floor_per_minute: f64, warmup_minutes: u32) {
        let mut s = AnomalySettings::clone(&self.settings.load());
        s.k = factor;
        s.floor_per_minute = floor_per_minute;
        s.warmup_minutes = warmup_minutes;
        self.settings.store(Arc::new(s));
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
        let cap = self.per_shard(self.settings.load().max_partners);
        let mut shard = self.partner_shard(partner);
        if let Some(p) = shard.get_mut(partner) {
            p.on_anomaly = Some(action);
        } else if shard.len() < cap {
            // No traffic seen yet: the first request starts its first minute.
            let mut p = PartnerAnomaly::new(0);
            p.rate.resume = true;
            p.denials.resume = true;
            p.on_anomaly = Some(action);
            shard.insert(partner.to_string(), p);
        }
    }

    /// Counts one request of `partner` (allowed or `denied` with 403/429) at
    /// `now_ms`; returns an alert when this request starts an episode.
    pub fn observe_request(&self, partner: &str, denied: bool, now_ms: i64) -> Option<Alert> {
        let s = &*self.settings.load_full();
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
        let s = &*self.settings.load_full();
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
        let s = &*self.settings.load_full();
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
        let cap = self.per_shard(self.settings.load().max_partners);
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

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const T0: i64 = 1_764_201_600_000; // a UTC midnight
    const H: i64 = 60; // minutes per hour

    /// Replays `minutes` minutes from minute `from` (relative to T0), with
    /// `per_minute(m)` requests evenly spread in minute m; returns the alerts.
    fn replay(
        d: &Detector,
        partner: &str,
        from: i64,
        minutes: i64,
        denied: bool,
        mut per_minute: impl FnMut(i64) -> u64,
    ) -> Vec<Alert> {
        let mut alerts = Vec::new();
        for m in from..from + minutes {
            let n = per_minute(m);
            for i in 0..n {
                let t = T0 + m * MS_PER_MINUTE + (i as i64 * MS_PER_MINUTE) / n as i64;
                alerts.extend(d.observe_request(partner, denied, t));
            }
        }
        alerts
    }

    /// 100 requests/hour: one every 36 s, as per-minute counts 1 or 2.
    fn hundred_per_hour(m: i64) -> u64 {
        let at = |m: i64| (m * 100) / 60;
        (at(m + 1) - at(m)) as u64
    }

    /// 10,000 requests/hour: 166 or 167 per minute.
    fn ten_thousand_per_hour(m: i64) -> u64 {
        let at = |m: i64| (m * 10_000) / 60;
        (at(m + 1) - at(m)) as u64
    }

    #[test]
    fn spike_from_100_to_10000_per_hour_raises_exactly_one_alert() {
        let d = Detector::new(AnomalySettings::default());
        assert!(replay(&d, "acme", 0, 3 * H, false, hundred_per_hour).is_empty());
        let baseline = d.status("acme", T0 + 3 * H * MS_PER_MINUTE).unwrap();
        assert!(
            (baseline.baseline_per_minute - 100.0 / 60.0).abs() < 0.2,
            "{baseline:?}"
        );
        assert!(baseline.warmed_up);

        let alerts = replay(&d, "acme", 3 * H, H, false, ten_thousand_per_hour);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        let a = &alerts[0];
        assert_eq!(a.kind, AlertKind::RateSpike);
        assert_eq!(a.partner.as_deref(), Some("acme"));
        assert_eq!(a.threshold_per_minute, 100.0); // the floor: 10 × 1.7 is lower
        assert_eq!(a.current_per_minute, 101.0);
        assert!((a.baseline_per_minute - 100.0 / 60.0).abs() < 0.2);
        // Caught within the spike's first minute, not at its end.
        assert!(a.time_ms < T0 + (3 * H + 1) * MS_PER_MINUTE, "{a:?}");
        assert_eq!(a.throttle_per_minute, None);
        assert!(a.message.contains("acme"), "{}", a.message);
        // The baseline did not learn the spike.
        let during = d.status("acme", T0 + 4 * H * MS_PER_MINUTE - 1).unwrap();
        assert_eq!(during.episode, "spike");
        assert!((during.baseline_per_minute - 100.0 / 60.0).abs() < 0.2);

        // Back to normal: no alert; the episode ends; a new spike alerts again.
        assert!(replay(&d, "acme", 4 * H, 2 * H, false, hundred_per_hour).is_empty());
        assert_eq!(
            d.status("acme", T0 + 6 * H * MS_PER_MINUTE)
                .unwrap()
                .episode,
            "armed"
        );
        let again = replay(&d, "acme", 6 * H, 30, false, ten_thousand_per_hour);
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn steady_noisy_partners_raise_nothing_over_a_day() {
        let d = Detector::new(AnomalySettings::default());
        let mut rng = StdRng::seed_from_u64(7);
        // ~3,000/hour with ±50 % noise per minute, and the odd silent minute.
        let quiet = replay(&d, "quiet", 0, 24 * H, false, |_| {
            if rng.gen_bool(0.02) {
                0
            } else {
                rng.gen_range(25..=75)
            }
        });
        assert!(quiet.is_empty(), "{quiet:?}");
        // A busy partner: ~500/min ± 40 %, with a 2× lunchtime hour.
        let mut rng = StdRng::seed_from_u64(8);
        let busy = replay(&d, "busy", 0, 24 * H, false, |m| {
            let base = if (12 * H..13 * H).contains(&m) {
                1_000
            } else {
                500
            };
            rng.gen_range(base * 6 / 10..=base * 14 / 10)
        });
        assert!(busy.is_empty(), "{busy:?}");
        let s = d.status("busy", T0 + 24 * H * MS_PER_MINUTE).unwrap();
        assert!((400.0..700.0).contains(&s.baseline_per_minute), "{s:?}");
    }

    #[test]
    fn warmup_suppresses_alerts() {
        let d = Detector::new(AnomalySettings::default());
        // A brand-new partner bursts at once: no history, no verdict.
        let early = replay(&d, "new", 0, 30, false, |_| 500);
        assert!(early.is_empty(), "{early:?}");
        assert!(!d.status("new", T0 + 30 * MS_PER_MINUTE).unwrap().warmed_up);

        let d = Detector::new(AnomalySettings::default());
        assert!(replay(&d, "acme", 0, 59, false, hundred_per_hour).is_empty());
        assert!(
            replay(&d, "acme", 59, 1, false, |_| 300).is_empty(),
            "minute 59: still warming up"
        );
        // From minute 60 on, warmed up: the spike (still going) alerts once.
        assert_eq!(replay(&d, "acme", 60, 10, false, |_| 300).len(), 1);
    }

    #[test]
    fn retuned_thresholds_apply_to_the_next_minutes() {
        // 300/min after a 100/hour baseline is over the default floor (100)...
        let d = Detector::new(AnomalySettings::default());
        assert!(replay(&d, "acme", 0, 2 * H, false, hundred_per_hour).is_empty());
        // ...but a reload raises the floor to 1000/min: no alert.
        d.retune(10.0, 1000.0, 60);
        assert_eq!(d.settings().floor_per_minute, 1000.0);
        assert!(replay(&d, "acme", 2 * H, 1, false, |_| 300).is_empty());
        // Lowered again to 50/min: the spike still going now alerts.
        d.retune(10.0, 50.0, 60);
        assert_eq!(replay(&d, "acme", 2 * H + 1, 10, false, |_| 300).len(), 1);
    }

    #[test]
    fn denial_spike_alerts_once() {
        let d = Detector::new(AnomalySettings::default());
        assert!(replay(&d, "acme", 0, 2 * H, false, |_| 20).is_empty());
        // A few denials now and then: under the floor.
        assert!(replay(&d, "acme", 2 * H, 30, true, |_| 5).is_empty());
        // 60 denials a minute for 20 minutes: one alert.
        let alerts = replay(&d, "acme", 2 * H + 30, 20, true, |_| 60);
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].kind, AlertKind::DenialSpike);
        // The 5/min of denials set a baseline: threshold k × baseline > floor.
        let a = &alerts[0];
        assert!(a.threshold_per_minute > 30.0, "{a:?}");
        assert_eq!(a.current_per_minute, a.threshold_per_minute.floor() + 1.0);
    }

    #[test]
    fn denials_of_a_rate_spike_alert_once_per_kind() {
        let d = Detector::new(AnomalySettings::default());
        assert!(replay(&d, "acme", 0, 2 * H, false, |_| 10).is_empty());
        // A spike the limiter refuses: the denial floor (30) is crossed before
        // the rate threshold (100), so both kinds alert, each once.
        let alerts = replay(&d, "acme", 2 * H, 10, true, |_| 400);
        let kinds: Vec<_> = alerts.iter().map(|a| a.kind).collect();
        assert_eq!(kinds, vec![AlertKind::DenialSpike, AlertKind::RateSpike]);
        // Once the rate is in an episode, the denials it causes stay quiet:
        // a new denial episode starting now would not alert.
        let d = Detector::new(AnomalySettings::default());
        assert!(replay(&d, "acme", 0, 2 * H, false, |_| 10).is_empty());
        let mut alerts = replay(&d, "acme", 2 * H, 1, false, |_| 400);
        alerts.extend(replay(&d, "acme", 2 * H + 1, 10, true, |_| 400));
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].kind, AlertKind::RateSpike);
    }

    #[test]
    fn handshake_spike_per_address_and_bounded_map() {
        let d = Detector::new(AnomalySettings {
            max_addresses: 64,
            ..AnomalySettings::default()
        });
        let bad: IpAddr = "203.0.113.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        let ok: IpAddr = "198.51.100.1".parse().unwrap();
        let mut alerts = Vec::new();
        for m in 0..20 {
            for i in 0..50 {
                let t = T0 + m * MS_PER_MINUTE + i * 1_000;
                // Half of them come in as IPv4-mapped IPv6: the same address.
                let a = if i % 2 == 0 { bad } else { mapped };
                alerts.extend(d.observe_refused_handshake(a, t));
                if i < 5 {
                    alerts.extend(d.observe_refused_handshake(ok, t));
                }
            }
        }
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].kind, AlertKind::HandshakeSpike);
        assert_eq!(alerts[0].addr.as_deref(), Some("203.0.113.7"));
        assert_eq!(alerts[0].current_per_minute, 31.0);

        // Many addresses: memory stays bounded.
        for i in 0..5_000u32 {
            let a = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            d.observe_refused_handshake(a, T0 + 30 * MS_PER_MINUTE + i64::from(i));
        }
        let tracked: usize = d.addresses.iter().map(|s| lock(s).len()).sum();
        assert!(tracked <= 64 + SHARDS, "{tracked}");
    }

    #[test]
    fn throttle_mode_clamps_and_clear_lifts_it() {
        use crate::config::{LimitSpec, Partner, PartnerStatus};
        use crate::guard::limits::{LimitKind, LimitState};

        let d = Detector::new(AnomalySettings::default());
        d.set_on_anomaly("acme", OnAnomaly::Throttle);
        let limits = LimitState::build(
            &[Partner {
                id: "acme".into(),
                name: "Acme".into(),
                status: PartnerStatus::Active,
                limits: LimitSpec::default(),
                on_anomaly: OnAnomaly::Throttle,
                renewal_window: None,
                own_ca: None,
                value_limits: Default::default(),
                signing: false,
                signing_keys: Vec::new(),
                pin: Default::default(),
                routes: vec![],
            }],
            None,
        );
        assert!(replay(&d, "acme", 0, 2 * H, false, |_| 30).is_empty());
        let alerts = replay(&d, "acme", 2 * H, 1, false, |_| 400);
        assert_eq!(alerts.len(), 1);
        let clamp = alerts[0].throttle_per_minute;
        // Baseline 30/min: k × baseline = 300/min (over the floor of 100).
        assert!(clamp.is_some_and(|t| (t - 300.0).abs() < 1.0), "{clamp:?}");
        assert!(alerts[0].message.contains("throttled"));
        assert_eq!(d.throttle("acme"), clamp);
        assert_eq!(
            d.throttles(),
            vec![("acme".to_string(), clamp.unwrap_or(0.0))]
        );

        // The gateway applies it: the partner is held to ~300/min.
        limits.set_throttle("acme", clamp);
        let t = T0 + (2 * H + 5) * MS_PER_MINUTE;
        let admitted = (0..1_000)
            .filter(|_| limits.check("acme", None, t).is_ok())
            .count();
        assert_eq!(admitted, 50, "burst: ten seconds of 300/min");
        let denied = limits.check("acme", None, t).unwrap_err();
        assert_eq!(denied.limit, LimitKind::Throttled);

        // The spike continues: still one alert; the throttle stays after it ends.
        assert!(replay(&d, "acme", 2 * H + 1, 30, true, |_| 400).is_empty());
        assert!(replay(&d, "acme", 2 * H + 31, 30, false, |_| 30).is_empty());
        assert_eq!(d.throttle("acme"), clamp, "only an operator lifts it");

        // Operator clears: throttle gone in both places.
        assert!(d.clear("acme"));
        limits.set_throttle("acme", d.throttle("acme"));
        assert_eq!(d.throttle("acme"), None);
        assert!(d.throttles().is_empty());
        assert!(limits.check("acme", None, t).is_ok());
        assert!(!d.clear("acme"), "nothing left to clear");
        assert!(!d.clear("nobody"));
    }

    #[test]
    fn clear_acknowledges_a_running_episode() {
        let d = Detector::new(AnomalySettings::default());
        assert!(replay(&d, "acme", 0, 2 * H, false, |_| 30).is_empty());
        assert_eq!(replay(&d, "acme", 2 * H, 1, false, |_| 400).len(), 1);
        assert!(d.clear("acme"));
        // Same level goes on: acknowledged, no new alert; the baseline learns it.
        assert!(replay(&d, "acme", 2 * H + 1, 3 * H, false, |_| 400).is_empty());
        let s = d.status("acme", T0 + 5 * H * MS_PER_MINUTE).unwrap();
        assert_eq!(s.episode, "armed");
        assert!(s.baseline_per_minute > 300.0, "{s:?}");
    }

    #[test]
    fn export_import_keeps_the_baseline() {
        let d = Detector::new(AnomalySettings::default());
        d.set_on_anomaly("acme", OnAnomaly::Throttle);
        assert!(replay(&d, "acme", 0, 3 * H, false, hundred_per_hour).is_empty());
        assert!(replay(&d, "other", 0, 3 * H, false, |_| 40).is_empty());
        let at = T0 + 3 * H * MS_PER_MINUTE;
        // The minute in progress at export is not restored: compare the
        // baseline of completed minutes.
        let before = d.status("acme", at - 1).unwrap();
        let bytes = d.export();

        // Restart two hours later: a fresh detector, restored.
        let e = Detector::new(AnomalySettings::default());
        e.set_on_anomaly("acme", OnAnomaly::Throttle);
        assert_eq!(e.import(&bytes), Ok(2));
        let after = e.status("acme", at).unwrap();
        assert_eq!(after.baseline_per_minute, before.baseline_per_minute);
        assert!(after.warmed_up, "no second warm-up after a restart");
        assert_eq!(after.on_anomaly, OnAnomaly::Throttle);
        // The downtime did not decay the baseline: a normal minute right
        // after it is not a spike, and a real spike alerts at once.
        let back = 5 * H;
        assert!(replay(&e, "other", back, 10, false, |_| 40).is_empty());
        let alerts = replay(&e, "acme", back, 5, false, ten_thousand_per_hour);
        assert_eq!(alerts.len(), 1);
        assert!(alerts[0].throttle_per_minute.is_some());

        // Throttle and episode survive a second round trip.
        let f = Detector::new(AnomalySettings::default());
        assert_eq!(f.import(&e.export()), Ok(2));
        assert_eq!(f.throttle("acme"), alerts[0].throttle_per_minute);
        assert_eq!(f.status("acme", at).unwrap().episode, "spike");

        // Garbage and bad numbers are refused, and change nothing.
        assert!(matches!(
            f.import(b"{not json"),
            Err(AnomalyError::Decode(_))
        ));
        let mut bad = d.export_state();
        bad.version = 99;
        assert_eq!(f.import_state(bad), Err(AnomalyError::Version(99)));
        let text = String::from_utf8(d.export()).unwrap().replacen(
            "\"throttle\":null",
            "\"throttle\":-1.0",
            1,
        );
        assert!(matches!(
            f.import(text.as_bytes()),
            Err(AnomalyError::Invalid(_))
        ));
        assert_eq!(f.throttle("acme"), alerts[0].throttle_per_minute);
    }

    #[test]
    fn detector_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Detector>();
        check::<crate::guard::limits::LimitState>();
    }
}
