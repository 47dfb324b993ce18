//! What the mirrors of a running broker have seen: per mirrored upstream,
//! its `max_in_flight` slots, its sampling counter and its totals by
//! result; per route, the last hour's results by minute and the noise
//! learned from its baseline; and the latest mismatches (for the console).
//! Every collection here is bounded.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Routes followed at most (a route past it is counted in the upstream's
/// totals only).
const MAX_ROUTES: usize = 256;
/// Noise entries (pointers and header names) learned per route at most.
pub const MAX_NOISE: usize = 64;
/// Mismatches remembered for the console.
const MAX_RECENT: usize = 50;
/// Minutes of per-route history (the console's last hour).
const MINUTES: usize = 60;

/// The result of one mirrored request (the metric's `result` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MirrorResult {
    /// The candidate answered as the live side did (noise left out).
    Match,
    /// It answered otherwise.
    Mismatch,
    /// No comparison: the candidate failed or timed out, or the live
    /// answer could not be captured.
    Error,
    /// Not sent: no free slot (`max_in_flight`) or a body over the cap.
    Dropped,
}

impl MirrorResult {
    pub const ALL: [MirrorResult; 4] = [
        MirrorResult::Match,
        MirrorResult::Mismatch,
        MirrorResult::Error,
        MirrorResult::Dropped,
    ];

    pub fn label(self) -> &'static str {
        match self {
            MirrorResult::Match => "match",
            MirrorResult::Mismatch => "mismatch",
            MirrorResult::Error => "error",
            MirrorResult::Dropped => "dropped",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A mismatch as the console lists it (no body content).
#[derive(Debug, Clone, Serialize)]
pub struct RecentMismatch {
    pub time_ms: i64,
    pub upstream: String,
    pub candidate: String,
    pub route: String,
    pub partner: String,
    pub request_id: String,
    pub live_status: u16,
    pub candidate_status: u16,
    pub headers: Vec<String>,
    pub pointers: Vec<String>,
}

#[derive(Default)]
struct UpstreamState {
    candidate: String,
    slots: Option<(u32, Arc<Semaphore>)>,
    /// Eligible requests seen (for the percentage).
    seen: u64,
    totals: [u64; 4],
}

#[derive(Default)]
struct RouteState {
    upstream: String,
    /// (minute since the epoch, counts by result), oldest first.
    minutes: VecDeque<(i64, [u64; 4])>,
    /// Mirrored requests sent (for the baseline sample).
    mirrored: u64,
    baseline_samples: u64,
    noise_pointers: BTreeSet<String>,
    noise_headers: BTreeSet<String>,
}

#[derive(Default)]
struct State {
    upstreams: HashMap<String, UpstreamState>,
    routes: HashMap<String, RouteState>,
    recent: VecDeque<RecentMismatch>,
}

/// The mirrors' shared state (see the module doc).
#[derive(Default)]
pub struct MirrorBoard {
    state: Mutex<State>,
}

/// The noise learned for one route.
#[derive(Debug, Clone, Default)]
pub struct Noise {
    pub pointers: BTreeSet<String>,
    pub headers: BTreeSet<String>,
}

impl MirrorBoard {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this eligible request of `upstream` falls in the `percent`
    /// sampled (spread evenly: exactly `percent` of every 100 in a row).
    pub fn sampled(&self, upstream: &str, percent: u32) -> bool {
        let mut s = self.lock();
        let u = s.upstreams.entry(upstream.to_string()).or_default();
        let n = u.seen;
        u.seen += 1;
        let p = u64::from(percent.min(100));
        (n + 1) * p / 100 > n * p / 100
    }

    /// A mirror slot of `upstream` (whose cap is `max`), if one is free.
    pub fn slot(&self, upstream: &str, candidate: &str, max: u32) -> Option<OwnedSemaphorePermit> {
        let mut s = self.lock();
        let u = s.upstreams.entry(upstream.to_string()).or_default();
        u.candidate = candidate.to_string();
        let sem = match &u.slots {
            Some((m, sem)) if *m == max => sem.clone(),
            _ => {
                // A new cap (a reload): new slots; mirrors in flight keep
                // theirs until they end.
                let sem = Arc::new(Semaphore::new(max as usize));
                u.slots = Some((max, sem.clone()));
                sem
            }
        };
        drop(s);
        sem.try_acquire_owned().ok()
    }

    /// Whether this mirrored request of `route` also goes to the baseline:
    /// the first five of a route, then one in ten.
    pub fn baseline_sample(&self, route: &str, upstream: &str) -> bool {
        let mut s = self.lock();
        let Some(r) = route_state(&mut s, route, upstream) else {
            return false;
        };
        let n = r.mirrored;
        r.mirrored += 1;
        let take = n < 5 || n % 10 == 0;
        if take {
            r.baseline_samples += 1;
        }
        take
    }

    /// Counts one result of `upstream`'s mirror on `route`.
    pub fn count(&self, upstream: &str, route: &str, result: MirrorResult, now_ms: i64) {
        let mut s = self.lock();
        s.upstreams.entry(upstream.to_string()).or_default().totals[result.index()] += 1;
        let Some(r) = route_state(&mut s, route, upstream) else {
            return;
        };
        let minute = now_ms.div_euclid(60_000);
        match r.minutes.back_mut() {
            Some((m, counts)) if *m == minute => counts[result.index()] += 1,
            _ => {
                let mut counts = [0u64; 4];
                counts[result.index()] += 1;
                r.minutes.push_back((minute, counts));
            }
        }
        while r
            .minutes
            .front()
            .is_some_and(|(m, _)| *m <= minute - MINUTES as i64)
        {
            r.minutes.pop_front();
        }
    }

    /// The noise learned for `route`.
    pub fn noise(&self, route: &str) -> Noise {
        let s = self.lock();
        s.routes
            .get(route)
            .map(|r| Noise {
                pointers: r.noise_pointers.clone(),
                headers: r.noise_headers.clone(),
            })
            .unwrap_or_default()
    }

    /// Learns noise for `route`: pointer patterns and header names that
    /// differed between two answers of the baseline. Returns what was new.
    pub fn learn_noise<'a>(
        &self,
        route: &str,
        upstream: &str,
        pointers: impl IntoIterator<Item = &'a String>,
        headers: impl IntoIterator<Item = &'a String>,
    ) -> Vec<String> {
        let mut s = self.lock();
        let Some(r) = route_state(&mut s, route, upstream) else {
            return Vec::new();
        };
        let mut new = Vec::new();
        for p in pointers {
            if r.noise_pointers.len() + r.noise_headers.len() < MAX_NOISE
                && r.noise_pointers.insert(p.clone())
            {
                new.push(p.clone());
            }
        }
        for h in headers {
            if r.noise_pointers.len() + r.noise_headers.len() < MAX_NOISE
                && r.noise_headers.insert(h.clone())
            {
                new.push(format!("header {h}"));
            }
        }
        new
    }

    /// Remembers a mismatch for the console.
    pub fn note_mismatch(&self, m: RecentMismatch) {
        let mut s = self.lock();
        if s.recent.len() == MAX_RECENT {
            s.recent.pop_front();
        }
        s.recent.push_back(m);
    }

    /// The mirrors for `gatehouse status`, `/status` and the console:
    /// per mirrored upstream its candidate and totals, per route the last
    /// hour's counts, match rate and learned noise, and the latest
    /// mismatches (newest first).
    pub fn status_json(&self, now_ms: i64) -> Value {
        let s = self.lock();
        let since = now_ms.div_euclid(60_000) - MINUTES as i64;
        let mut names: Vec<&String> = s.upstreams.keys().collect();
        names.sort();
        let upstreams: Vec<Value> = names
            .into_iter()
            .map(|name| {
                let u = &s.upstreams[name];
                let mut routes: Vec<(&String, &RouteState)> = s
                    .routes
                    .iter()
                    .filter(|(_, r)| &r.upstream == name)
                    .collect();
                routes.sort_by(|a, b| a.0.cmp(b.0));
                let routes: Vec<Value> = routes
                    .into_iter()
                    .map(|(route, r)| {
                        let mut hour = [0u64; 4];
                        for (m, c) in &r.minutes {
                            if *m > since {
                                for (h, n) in hour.iter_mut().zip(c) {
                                    *h += n;
                                }
                            }
                        }
                        let compared = hour[0] + hour[1];
                        json!({
                            "route": route,
                            "last_hour": counts_json(&hour),
                            "match_rate": (compared > 0).then(|| hour[0] as f64 / compared as f64),
                            "baseline_samples": r.baseline_samples,
                            "noise": {
                                "pointers": r.noise_pointers,
                                "headers": r.noise_headers,
                            },
                        })
                    })
                    .collect();
                json!({
                    "upstream": name,
                    "candidate": u.candidate,
                    "in_flight": u.slots.as_ref().map(|(max, sem)| max.saturating_sub(sem.available_permits() as u32)).unwrap_or(0),
                    "max_in_flight": u.slots.as_ref().map(|(max, _)| *max),
                    "totals": counts_json(&u.totals),
                    "routes": routes,
                })
            })
            .collect();
        json!({
            "upstreams": upstreams,
            "recent_mismatches": s.recent.iter().rev().collect::<Vec<_>>(),
        })
    }
}

fn counts_json(c: &[u64; 4]) -> Value {
    let mut m = serde_json::Map::new();
    for r in MirrorResult::ALL {
        m.insert(r.label().into(), json!(c[r.index()]));
    }
    Value::Object(m)
}

/// The state of `route`, created if the bound allows.
fn route_state<'a>(s: &'a mut State, route: &str, upstream: &str) -> Option<&'a mut RouteState> {
    if !s.routes.contains_key(route) && s.routes.len() >= MAX_ROUTES {
        return None;
    }
    let r = s.routes.entry(route.to_string()).or_default();
    r.upstream = upstream.to_string();
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_takes_exactly_the_percentage() {
        let b = MirrorBoard::default();
        let n = (0..1000).filter(|_| b.sampled("o", 7)).count();
        assert_eq!(n, 70);
        assert_eq!((0..50).filter(|_| b.sampled("p", 100)).count(), 50);
        assert_eq!((0..50).filter(|_| b.sampled("q", 0)).count(), 0);
    }

    #[test]
    fn slots_are_bounded_and_a_new_cap_makes_new_ones() {
        let b = MirrorBoard::default();
        let a = b.slot("o", "v2", 2).expect("free");
        let _c = b.slot("o", "v2", 2).expect("free");
        assert!(b.slot("o", "v2", 2).is_none(), "all taken");
        drop(a);
        assert!(b.slot("o", "v2", 2).is_some());
        assert!(b.slot("o", "v2", 3).is_some(), "a reload's new cap");
    }

    #[test]
    fn baseline_samples_the_first_five_then_one_in_ten() {
        let b = MirrorBoard::default();
        let taken: Vec<bool> = (0..30).map(|_| b.baseline_sample("/v1", "o")).collect();
        assert_eq!(taken.iter().filter(|t| **t).count(), 5 + 2);
        assert!(taken[..5].iter().all(|t| *t));
    }

    #[test]
    fn noise_is_bounded_and_counts_keep_an_hour() {
        let b = MirrorBoard::default();
        let many: Vec<String> = (0..100).map(|i| format!("/f{i}")).collect();
        let new = b.learn_noise("/v1", "o", &many, &[]);
        assert_eq!(new.len(), MAX_NOISE);
        assert_eq!(b.noise("/v1").pointers.len(), MAX_NOISE);
        let t0 = 1_000 * 60_000;
        b.count("o", "/v1", MirrorResult::Match, t0);
        b.count("o", "/v1", MirrorResult::Mismatch, t0 + 30 * 60_000);
        b.count("o", "/v1", MirrorResult::Match, t0 + 61 * 60_000);
        let v = b.status_json(t0 + 61 * 60_000);
        let route = &v["upstreams"][0]["routes"][0];
        assert_eq!(route["last_hour"]["match"], 1, "{v}");
        assert_eq!(route["last_hour"]["mismatch"], 1, "{v}");
        assert_eq!(route["match_rate"], 0.5);
        assert_eq!(v["upstreams"][0]["totals"]["match"], 2);
    }
}
