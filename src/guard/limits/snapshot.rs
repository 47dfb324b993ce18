//! What `gatehouse status` shows of a partner's limits: each level's
//! budget left, quota used and concurrency, read without consuming.

use super::*;

pub(super) fn level_snapshot(
    level: &Level,
    now_ms: i64,
    with_throttle: bool,
) -> (LevelSnapshot, Option<f64>) {
    let c = lock(&level.shared.counters);
    let tokens = |spec: BucketSpec, b: Option<&Bucket>| {
        let units = b.map_or(spec.capacity(), |b| b.units_at(spec, now_ms));
        units as f64 / UNITS_PER_TOKEN as f64
    };
    let today = utc_day(now_ms);
    let quota_used = level.spec.requests_per_day.map(|max| {
        c.quota
            .filter(|(limit, q)| *limit == max && q.day >= today)
            .map_or(0, |(_, q)| q.used)
    });
    let throttle_left = if with_throttle {
        c.throttle.as_ref().map(|(s, b)| tokens(*s, Some(b)))
    } else {
        None
    };
    let snap = LevelSnapshot {
        limits: level.spec.clone(),
        burst: level.bucket.map(|b| b.burst),
        tokens_left: level.bucket.map(|spec| {
            let b = c
                .bucket
                .as_ref()
                .filter(|(s, _)| *s == spec)
                .map(|(_, b)| b);
            tokens(spec, b)
        }),
        quota_used,
        quota_resets_at_ms: level
            .spec
            .requests_per_day
            .map(|_| (today + 1).saturating_mul(MS_PER_DAY)),
        in_flight: level.shared.in_flight.load(Ordering::Acquire),
    };
    (snap, throttle_left)
}

/// One level's limits and how close it is to them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelSnapshot {
    /// As configured (unset = unlimited).
    pub limits: LimitSpec,
    /// Effective burst (the configured one or [`default_burst`]).
    pub burst: Option<u32>,
    /// Tokens in the per-minute bucket now (fractional while refilling).
    pub tokens_left: Option<f64>,
    /// Requests counted against today's quota.
    pub quota_used: Option<u64>,
    /// Next UTC midnight, when the quota resets.
    pub quota_resets_at_ms: Option<i64>,
    pub in_flight: u32,
}

/// One route's limits (for `gatehouse status`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteLimitSnapshot {
    pub index: usize,
    /// `GET,POST /v1/orders -> orders`.
    pub route: String,
    /// Whether the route has limits of its own.
    pub configured: bool,
    #[serde(flatten)]
    pub level: LevelSnapshot,
    pub max_body_bytes: Option<u64>,
}

/// One partner's limits in force and how close it is to them (for `gatehouse status`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LimitSnapshot {
    pub partner: String,
    #[serde(flatten)]
    pub level: LevelSnapshot,
    /// The anomaly throttle, requests per minute.
    pub throttle_per_minute: Option<f64>,
    pub throttle_tokens_left: Option<f64>,
    pub routes: Vec<RouteLimitSnapshot>,
}
