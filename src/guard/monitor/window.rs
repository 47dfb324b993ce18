//! One partner's last hour of traffic: a ring of 60 per-minute buckets, each
//! with request and denial counts and a small fixed latency histogram. The
//! memory per partner is fixed; a bucket is reused when its minute comes
//! round again, so old minutes drop out without a sweeper.

use serde::Serialize;

/// Minutes kept.
pub const WINDOW_MINUTES: usize = 60;

/// Upper bounds (µs) of the latency buckets; the last bucket is open-ended.
const LATENCY_BOUNDS_US: [u64; 15] = [
    1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000,
    5_000_000, 10_000_000, 30_000_000, 60_000_000,
];
const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_US.len() + 1;

/// A partner's traffic over the last hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PartnerWindow {
    pub requests: u64,
    pub denials: u64,
    /// Median latency in milliseconds (upper bound of its bucket); `None` without requests.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in milliseconds (upper bound of its bucket).
    pub p99_ms: Option<f64>,
}

/// One minute of a partner's traffic (the console's charts).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MinutePoint {
    /// Start of the minute, ms since the epoch.
    pub minute_ms: i64,
    pub requests: u64,
    pub denials: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default)]
struct MinuteBucket {
    /// Minutes since the epoch this bucket holds; `None` = never used.
    minute: Option<i64>,
    requests: u64,
    denials: u64,
    latency: [u64; LATENCY_BUCKETS],
}

/// The ring of per-minute buckets.
#[derive(Debug, Clone)]
pub struct WindowRing {
    buckets: [MinuteBucket; WINDOW_MINUTES],
}

impl Default for WindowRing {
    fn default() -> Self {
        WindowRing {
            buckets: [MinuteBucket::default(); WINDOW_MINUTES],
        }
    }
}

fn minute_of(ms: i64) -> i64 {
    ms.div_euclid(60_000)
}

impl WindowRing {
    /// Counts one exchange at `time_ms` (ms since the epoch).
    pub fn record(&mut self, time_ms: i64, denied: bool, duration_us: u64) {
        let minute = minute_of(time_ms);
        let slot = &mut self.buckets[minute.rem_euclid(WINDOW_MINUTES as i64) as usize];
        match slot.minute {
            Some(m) if m == minute => {}
            // An older minute's bucket: reuse it. (A late event for a minute
            // already overwritten by a newer one is dropped.)
            Some(m) if m > minute => return,
            _ => {
                *slot = MinuteBucket {
                    minute: Some(minute),
                    ..MinuteBucket::default()
                };
            }
        }
        slot.requests += 1;
        if denied {
            slot.denials += 1;
        }
        let i = LATENCY_BOUNDS_US
            .iter()
            .position(|b| duration_us <= *b)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        slot.latency[i] += 1;
    }

    /// The totals over the `WINDOW_MINUTES` minutes up to and including `now_ms`'s minute.
    pub fn summary(&self, now_ms: i64) -> PartnerWindow {
        let now = minute_of(now_ms);
        let mut w = PartnerWindow::default();
        let mut latency = [0u64; LATENCY_BUCKETS];
        for b in &self.buckets {
            let Some(m) = b.minute else { continue };
            if m > now || now - m >= WINDOW_MINUTES as i64 {
                continue;
            }
            w.requests += b.requests;
            w.denials += b.denials;
            for (acc, n) in latency.iter_mut().zip(b.latency.iter()) {
                *acc += n;
            }
        }
        w.p50_ms = quantile_ms(&latency, w.requests, 0.50);
        w.p99_ms = quantile_ms(&latency, w.requests, 0.99);
        w
    }

    /// The `WINDOW_MINUTES` minutes up to and including `now_ms`'s minute,
    /// oldest first, one point each (zero for a quiet minute).
    pub fn series(&self, now_ms: i64) -> Vec<MinutePoint> {
        let now = minute_of(now_ms);
        (0..WINDOW_MINUTES as i64)
            .rev()
            .map(|ago| {
                let minute = now - ago;
                let slot = &self.buckets[minute.rem_euclid(WINDOW_MINUTES as i64) as usize];
                let mut p = MinutePoint {
                    minute_ms: minute * 60_000,
                    ..MinutePoint::default()
                };
                if slot.minute == Some(minute) {
                    p.requests = slot.requests;
                    p.denials = slot.denials;
                    p.p50_ms = quantile_ms(&slot.latency, slot.requests, 0.50);
                    p.p99_ms = quantile_ms(&slot.latency, slot.requests, 0.99);
                }
                p
            })
            .collect()
    }
}

/// The upper bound (ms) of the bucket holding the `q` quantile. The open
/// last bucket reports the largest finite bound.
fn quantile_ms(latency: &[u64; LATENCY_BUCKETS], total: u64, q: f64) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (i, n) in latency.iter().enumerate() {
        seen += n;
        if seen >= rank {
            let bound = LATENCY_BOUNDS_US
                .get(i)
                .or(LATENCY_BOUNDS_US.last())
                .copied()
                .unwrap_or(0);
            return Some(bound as f64 / 1000.0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    #[test]
    fn the_series_has_one_point_per_minute_oldest_first() {
        let mut r = WindowRing::default();
        let t0 = 1_700_000_000_000 - 1_700_000_000_000 % MIN;
        r.record(t0, true, 3_000);
        r.record(t0 + 2 * MIN, false, 40_000);
        r.record(t0 + 2 * MIN, false, 40_000);
        let s = r.series(t0 + 2 * MIN + 5);
        assert_eq!(s.len(), WINDOW_MINUTES);
        let last = s[WINDOW_MINUTES - 1];
        assert_eq!(
            (last.minute_ms, last.requests, last.denials),
            (t0 + 2 * MIN, 2, 0)
        );
        assert_eq!(last.p99_ms, Some(50.0));
        assert_eq!(s[WINDOW_MINUTES - 2].requests, 0);
        assert_eq!(
            (
                s[WINDOW_MINUTES - 3].requests,
                s[WINDOW_MINUTES - 3].denials
            ),
            (1, 1)
        );
        // An hour later, all of it has dropped out.
        assert!(r.series(t0 + 62 * MIN).iter().all(|p| p.requests == 0));
    }

    #[test]
    fn counts_within_the_hour_and_drops_old_minutes() {
        let mut r = WindowRing::default();
        let t0 = 1_700_000_000_000;
        r.record(t0, false, 3_000);
        r.record(t0 + MIN, true, 3_000);
        r.record(t0 + 30 * MIN, false, 3_000);
        let w = r.summary(t0 + 30 * MIN);
        assert_eq!((w.requests, w.denials), (3, 1));
        // 60 minutes after t0's minute, t0 is out; t0+1min still in.
        let w = r.summary(t0 + 60 * MIN);
        assert_eq!((w.requests, w.denials), (2, 1));
        let w = r.summary(t0 + 61 * MIN);
        assert_eq!((w.requests, w.denials), (1, 0));
        // A new event in a reused slot replaces the old minute's counts.
        r.record(t0 + 90 * MIN, false, 1_000);
        let w = r.summary(t0 + 90 * MIN);
        assert_eq!((w.requests, w.denials), (1, 0));
        assert_eq!(r.summary(t0 + 200 * MIN), PartnerWindow::default());
    }

    #[test]
    fn quantiles_come_from_the_fixed_buckets() {
        let mut r = WindowRing::default();
        let t = 1_700_000_000_000;
        for _ in 0..98 {
            r.record(t, false, 4_000); // ≤ 5 ms
        }
        r.record(t, false, 150_000); // ≤ 200 ms
        r.record(t, false, 900_000_000); // beyond the last bound
        let w = r.summary(t);
        assert_eq!(w.p50_ms, Some(5.0));
        assert_eq!(w.p99_ms, Some(200.0));
        assert_eq!(WindowRing::default().summary(t).p50_ms, None);
    }

    #[test]
    fn a_late_event_for_an_overwritten_minute_is_dropped() {
        let mut r = WindowRing::default();
        let t = 1_700_000_000_000;
        r.record(t + 60 * MIN, false, 1);
        r.record(t, false, 1);
        assert_eq!(r.summary(t + 60 * MIN).requests, 1);
    }
}
