//! The counters behind one limit level (a partner, or one of its routes):
//! token buckets for the rate, the daily quota, the concurrency count, and
//! the check that evaluates them all before consuming any.

use super::*;

/// Rate and capacity of a token bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BucketSpec {
    /// Requests per minute × 1000 (≥ 1).
    pub(super) rate_milli: u64,
    pub(super) burst: u32,
}

impl BucketSpec {
    pub(super) fn of(spec: &LimitSpec) -> Option<BucketSpec> {
        let rpm = spec.requests_per_minute?;
        Some(BucketSpec {
            rate_milli: u64::from(rpm.max(1)) * 1_000,
            burst: spec.burst.unwrap_or_else(|| default_burst(rpm)).max(1),
        })
    }

    pub(super) fn throttle(rate_milli: u64) -> BucketSpec {
        let rate_milli = rate_milli.max(1);
        // ceil(rate / 6) requests, at least 1: ten seconds' worth.
        let burst = rate_milli.div_ceil(6_000).clamp(1, u64::from(u32::MAX)) as u32;
        BucketSpec { rate_milli, burst }
    }

    pub(super) fn capacity(&self) -> u64 {
        u64::from(self.burst) * UNITS_PER_TOKEN
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Bucket {
    pub(super) units: u64,
    pub(super) last_ms: i64,
}

impl Bucket {
    pub(super) fn full(spec: BucketSpec, now_ms: i64) -> Bucket {
        Bucket {
            units: spec.capacity(),
            last_ms: now_ms,
        }
    }

    /// Units after refilling up to `now_ms` (a clock going back adds nothing).
    pub(super) fn units_at(&self, spec: BucketSpec, now_ms: i64) -> u64 {
        let elapsed = now_ms.saturating_sub(self.last_ms).max(0) as u128;
        let units = u128::from(self.units) + elapsed * u128::from(spec.rate_milli);
        units.min(u128::from(spec.capacity())) as u64
    }

    pub(super) fn refill(&mut self, spec: BucketSpec, now_ms: i64) {
        self.units = self.units_at(spec, now_ms);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// Milliseconds until one token is there; 0 when it is already.
    pub(super) fn wait_ms(&self, spec: BucketSpec) -> i64 {
        let deficit = UNITS_PER_TOKEN.saturating_sub(self.units);
        deficit.div_ceil(spec.rate_milli).min(i64::MAX as u64) as i64
    }
}

/// Requests counted on one UTC day.
#[derive(Debug, Clone, Copy)]
pub(super) struct Quota {
    pub(super) day: i64,
    pub(super) used: u64,
}

pub(super) fn utc_day(now_ms: i64) -> i64 {
    now_ms.div_euclid(MS_PER_DAY)
}

pub(super) fn secs_ceil(ms: i64) -> u64 {
    (ms.max(0) as u64).div_ceil(1_000).max(1)
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a limiter lock leaves plain counters behind;
    // they are still meaningful, so recover rather than fail every request.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Mutable counters of one level (a partner or a route). Each part records
/// the setting it was made for; a check under a different setting (after a
/// reload changed it) starts that part afresh. Unchanged settings keep theirs.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// `None` until first use: a fresh bucket is full.
    pub(super) bucket: Option<(BucketSpec, Bucket)>,
    /// `None` until first use; with the `requests_per_day` it counts against.
    pub(super) quota: Option<(u64, Quota)>,
    /// Partner level only: the throttle bucket and the spec it was made for.
    pub(super) throttle: Option<(BucketSpec, Bucket)>,
}

/// The state of one level that outlives reloads: one allocation, so a
/// check touches one cache line or two per level.
#[derive(Debug, Default)]
pub(super) struct Shared {
    pub(super) counters: Mutex<Counters>,
    pub(super) in_flight: AtomicU32,
    /// Partner level only: throttle in milli-requests per minute; 0 = none.
    pub(super) throttle_milli: AtomicU64,
}

/// One level's settings (fixed for this build) and its shared state.
#[derive(Debug)]
pub(super) struct Level {
    pub(super) spec: LimitSpec,
    pub(super) bucket: Option<BucketSpec>,
    pub(super) shared: Arc<Shared>,
}

impl Level {
    /// Settings from `spec`; state carried over from `previous` (the same
    /// partner or route in the running state). Nothing in `previous` is
    /// changed here, so building a state that is never used is harmless.
    pub(super) fn new(spec: &LimitSpec, previous: Option<&Level>) -> Level {
        Level {
            spec: spec.clone(),
            bucket: BucketSpec::of(spec),
            shared: previous.map(|p| p.shared.clone()).unwrap_or_default(),
        }
    }

    /// Reserves an in-flight slot if under `max_concurrent`.
    pub(super) fn acquire(&self, max_concurrent: Option<u32>) -> Option<Arc<Shared>> {
        let in_flight = &self.shared.in_flight;
        let ok = match max_concurrent {
            None => {
                in_flight.fetch_add(1, Ordering::AcqRel);
                true
            }
            Some(max) => in_flight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .is_ok(),
        };
        ok.then(|| self.shared.clone())
    }
}

/// The limits of one level as this node enforces them (see [`LocalShare`]).
#[derive(Debug, Clone, Copy)]
pub(super) struct Effective {
    pub(super) bucket: Option<BucketSpec>,
    pub(super) day: Option<u64>,
    pub(super) max_concurrent: Option<u32>,
}

impl Effective {
    pub(super) fn of(level: &Level, share: LocalShare) -> Effective {
        let n = share.divisor();
        let max_concurrent = level
            .spec
            .max_concurrent
            .map(|m| (u64::from(m).div_ceil(n).max(1)).min(u64::from(u32::MAX)) as u32);
        match share {
            LocalShare::All => Effective {
                bucket: level.bucket,
                day: level.spec.requests_per_day,
                max_concurrent,
            },
            LocalShare::ConcurrencyOf(_) => Effective {
                bucket: None,
                day: None,
                max_concurrent,
            },
            LocalShare::FractionOf(_) => Effective {
                bucket: level.bucket.map(|b| BucketSpec {
                    rate_milli: (b.rate_milli / n).max(1),
                    burst: (u64::from(b.burst).div_ceil(n).max(1)) as u32,
                }),
                day: level.spec.requests_per_day.map(|d| d.div_ceil(n).max(1)),
                max_concurrent,
            },
        }
    }

    /// Whether `check` needs this level's lock (anything but concurrency set).
    pub(super) fn has_counters(&self) -> bool {
        self.bucket.is_some() || self.day.is_some()
    }
}

/// Refills `c` to `now_ms` and records in `worst` any limit that refuses.
/// Consumes nothing.
pub(super) fn evaluate(
    level: &Effective,
    c: &mut Counters,
    throttle: Option<BucketSpec>,
    now_ms: i64,
    scope: LimitScope,
    worst: &mut Option<LimitDenied>,
) {
    let mut refuse = |limit: LimitKind, wait_ms: i64| {
        let secs = secs_ceil(wait_ms);
        if worst.as_ref().is_none_or(|w| secs > w.retry_after_secs) {
            *worst = Some(LimitDenied {
                limit,
                retry_after_secs: secs,
                scope,
            });
        }
    };
    match throttle {
        None => c.throttle = None,
        Some(spec) => {
            let (s, b) = c
                .throttle
                .get_or_insert_with(|| (spec, Bucket::full(spec, now_ms)));
            if *s != spec {
                *s = spec;
                *b = Bucket::full(spec, now_ms);
            }
            b.refill(spec, now_ms);
            if b.units < UNITS_PER_TOKEN {
                refuse(LimitKind::Throttled, b.wait_ms(spec));
            }
        }
    }
    if let Some(spec) = level.bucket {
        let (s, b) = c
            .bucket
            .get_or_insert_with(|| (spec, Bucket::full(spec, now_ms)));
        if *s != spec {
            *s = spec;
            *b = Bucket::full(spec, now_ms);
        }
        b.refill(spec, now_ms);
        if b.units < UNITS_PER_TOKEN {
            refuse(LimitKind::RequestsPerMinute, b.wait_ms(spec));
        }
    }
    if let Some(max) = level.day {
        let today = utc_day(now_ms);
        let fresh = Quota {
            day: today,
            used: 0,
        };
        let (limit, q) = c.quota.get_or_insert((max, fresh));
        if *limit != max || today > q.day {
            *limit = max;
            *q = Quota {
                day: today,
                used: 0,
            };
        }
        if q.used >= max {
            let next_midnight = (q.day.max(today) + 1).saturating_mul(MS_PER_DAY);
            refuse(LimitKind::RequestsPerDay, next_midnight - now_ms);
        }
    }
}

/// Takes one request out of every limit of `c` (after `evaluate` admitted it).
pub(super) fn consume(level: &Effective, c: &mut Counters) {
    if let Some((_, b)) = &mut c.throttle {
        b.units = b.units.saturating_sub(UNITS_PER_TOKEN);
    }
    if level.bucket.is_some()
        && let Some((_, b)) = &mut c.bucket
    {
        b.units = b.units.saturating_sub(UNITS_PER_TOKEN);
    }
    if level.day.is_some()
        && let Some((_, q)) = &mut c.quota
    {
        q.used = q.used.saturating_add(1);
    }
}
