//! Traffic limits: per partner and, optionally, per route. This module owns
//! the limiter state (token buckets, daily quotas, in-flight counters, the
//! anomaly throttle) and the decision "admit or refuse, and for how long";
//! it does no HTTP and no I/O. The gateway calls [`LimitState::check`] after
//! policy has picked the route, answers a [`LimitDenied`] with 429,
//! `Retry-After: retry_after_secs` and [`LimitDenied::body_json`], and holds
//! the [`Admission`] until the exchange ends.
//!
//! Semantics (documented contract):
//!
//! - `requests_per_minute` is a token bucket refilled continuously at that
//!   rate. It starts full. Its capacity is `burst`; when `burst` is not set it
//!   defaults to ten seconds' worth of traffic, `ceil(requests_per_minute / 6)`
//!   and at least 1 ([`default_burst`]). Arithmetic is exact (integers), so a
//!   request retried after `retry_after_secs` finds its token.
//! - `requests_per_day` is a quota per UTC calendar day: it resets at
//!   00:00:00 UTC (Unix time divisible by 86 400 s), not 24 h after the first
//!   request. A refusal's Retry-After is the time to the next UTC midnight.
//! - `max_concurrent` caps in-flight requests; the [`Admission`] guard holds
//!   the slot and gives it back when dropped. A refusal says Retry-After: 1
//!   (no one can know when a slot frees).
//! - A route check applies the route's limits *and* the partner's: both must
//!   admit, and when either refuses nothing is consumed. When several limits
//!   refuse at once, the one with the longest Retry-After is reported (retrying
//!   earlier could not succeed).
//! - A throttle ([`LimitState::set_throttle`], set by the anomaly detector in
//!   `on_anomaly = "throttle"` mode) is an extra partner-wide bucket at the
//!   given rate, burst `ceil(rate / 6)`; it is reported as `throttled`.
//! - `max_body_bytes` is only exposed ([`LimitState::max_body_bytes`]); the
//!   gateway enforces it while reading the body.
//! - A partner the state does not know is admitted unlimited: who may call at
//!   all is the policy's decision, not this module's.
//! - Reload: [`LimitState::build`] with the previous (running) state keeps
//!   the counters of every limit whose setting did not change, per partner
//!   and per route (routes matched by methods + path + upstream, not by
//!   index), and per limit: the bucket and the quota separately. So a reload
//!   does not reset a partner's quota. A limit whose setting changed starts
//!   fresh (full bucket, nothing used today) at its first check under the
//!   new setting. In-flight counts and throttles always carry over: they are
//!   facts, not settings. `build` itself changes nothing in the previous
//!   state, so building a state that is then not used is harmless. (While
//!   the gateway swaps states, a check still running under the old setting
//!   may reset a changed limit once more: a window of microseconds.)
//!
//! - A fleet ([`LocalShare`]): with `[cluster]` the rate and quota are the
//!   fleet store's, and a node enforces here only the anomaly throttle and
//!   `max_concurrent` (both at 1/N, N = live nodes: best effort);
//!   while the store does not answer, a node enforces every limit at 1/N
//!   (rates, bursts, quotas and concurrency divided, rounded up, at least 1).
//!   A limit scaled differently is a different setting: it starts fresh.
//!
//! No global lock: the partner map is built once and never mutated (a reload
//! builds a new `LimitState` that the gateway swaps in, e.g. with `ArcSwap`),
//! so lookups read it without locking. Each partner's counters sit behind
//! that partner's own `Mutex`, each limited route's behind its own (locked
//! partner first, then route: one order, no deadlock), and in-flight counts
//! are atomics. Two requests contend only when they are from the same
//! partner. Memory is one entry per partner and per route, whatever the
//! traffic.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;

use crate::config::{LimitSpec, Partner, RouteSpec};
use crate::reason::Reason;

/// Milliseconds in a minute.
pub const MS_PER_MINUTE: i64 = 60_000;
/// Milliseconds in a day (the quota period; UTC days have no leap seconds in Unix time).
pub const MS_PER_DAY: i64 = 86_400_000;
/// An unset `burst` is this many seconds of `requests_per_minute`.
pub const DEFAULT_BURST_SECONDS: u32 = 10;

/// Bucket units per token. A rate of `r` milli-requests per minute adds `r`
/// units per millisecond, so refill and Retry-After are exact integers.
const UNITS_PER_TOKEN: u64 = 60_000 * 1_000;

/// The burst used when a limit sets `requests_per_minute` but no `burst`:
/// ten seconds' worth, at least 1.
pub fn default_burst(requests_per_minute: u32) -> u32 {
    requests_per_minute
        .div_ceil(60 / DEFAULT_BURST_SECONDS)
        .max(1)
}

// ---------------------------------------------------------------- verdicts

/// Which limit refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    RequestsPerMinute,
    RequestsPerDay,
    MaxConcurrent,
    /// The anomaly throttle ([`LimitState::set_throttle`]).
    Throttled,
}

impl LimitKind {
    /// The reason a refusal by this limit gives.
    pub fn reason(self) -> Reason {
        match self {
            LimitKind::RequestsPerMinute => Reason::RequestsPerMinute,
            LimitKind::RequestsPerDay => Reason::RequestsPerDay,
            LimitKind::MaxConcurrent => Reason::MaxConcurrent,
            LimitKind::Throttled => Reason::Throttled,
        }
    }
}

impl fmt::Display for LimitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason().code())
    }
}

/// Whose limit refused: the partner's, or the route's (index into `Partner::routes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitScope {
    Partner,
    Route(usize),
}

impl fmt::Display for LimitScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitScope::Partner => f.write_str("partner"),
            LimitScope::Route(i) => write!(f, "route {i}"),
        }
    }
}

/// A refusal: answer 429 with `Retry-After: retry_after_secs`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitDenied {
    pub limit: LimitKind,
    /// Whole seconds, at least 1, after which the same request would pass
    /// this limit (for `max_concurrent`: 1, a guess).
    pub retry_after_secs: u64,
    pub scope: LimitScope,
}

impl fmt::Display for LimitDenied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} limit of the {} reached; retry after {} s",
            self.limit, self.scope, self.retry_after_secs
        )
    }
}

impl std::error::Error for LimitDenied {}

/// An admitted request. It holds the request's concurrency slots (partner
/// and route); dropping it gives them back. Keep it until the exchange ends.
#[must_use = "dropping the Admission ends the request's concurrency slot"]
#[derive(Debug)]
pub struct Admission {
    partner: Option<Arc<Shared>>,
    route: Option<Arc<Shared>>,
}

impl Admission {
    /// An admission that holds nothing (partner unknown to the limiter).
    fn unlimited() -> Admission {
        Admission {
            partner: None,
            route: None,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        for c in [self.partner.take(), self.route.take()]
            .into_iter()
            .flatten()
        {
            c.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// How much of each limit this node enforces by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalShare {
    /// Every limit, in full (a single node).
    All,
    /// The fleet store enforces rate and quota; this node only the
    /// throttle and `max_concurrent`, each at 1/n.
    ConcurrencyOf(u32),
    /// Every limit at 1/n (a fleet node while the store is down).
    FractionOf(u32),
}

impl LocalShare {
    fn divisor(self) -> u64 {
        match self {
            LocalShare::All => 1,
            LocalShare::ConcurrencyOf(n) | LocalShare::FractionOf(n) => u64::from(n.max(1)),
        }
    }
}

mod level;
mod snapshot;

use level::*;
pub use snapshot::*;

// ---------------------------------------------------------------- state

/// Identity of a route across reloads.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RouteKey {
    methods: Vec<String>,
    path: String,
    upstream: String,
}

impl RouteKey {
    fn of(r: &RouteSpec) -> RouteKey {
        RouteKey {
            methods: r.methods.clone(),
            path: r.path.clone(),
            upstream: r.upstream.clone(),
        }
    }
}

/// What `check` reads of a route (the rest is in [`RouteInfo`], off the hot path).
#[derive(Debug)]
struct RouteEntry {
    /// The route's own limits (none configured: an unlimited level that
    /// still counts in-flight requests).
    level: Level,
    max_body_bytes: Option<u64>,
}

#[derive(Debug)]
struct RouteInfo {
    key: RouteKey,
    describe: String,
    configured: bool,
}

#[derive(Debug)]
struct PartnerLimits {
    /// Partner limits; its `Shared` also holds the throttle.
    level: Level,
    routes: Vec<RouteEntry>,
    info: Vec<RouteInfo>,
}

/// Every partner's limiter state. `Send + Sync`; share it in an `Arc` and
/// swap it on reload (see the module doc for why no lock is global).
#[derive(Debug, Default)]
pub struct LimitState {
    partners: HashMap<String, PartnerLimits>,
}

impl LimitState {
    /// Builds the state for `partners`, keeping the counters of `previous`
    /// for every limit whose setting did not change.
    pub fn build(partners: &[Partner], previous: Option<&LimitState>) -> LimitState {
        let mut map = HashMap::with_capacity(partners.len());
        for p in partners {
            let prev = previous.and_then(|s| s.partners.get(&p.id));
            let prev_routes: HashMap<&RouteKey, &RouteEntry> = prev
                .map(|e| e.info.iter().map(|i| &i.key).zip(&e.routes).collect())
                .unwrap_or_default();
            let mut routes = Vec::with_capacity(p.routes.len());
            let mut info = Vec::with_capacity(p.routes.len());
            for r in &p.routes {
                let key = RouteKey::of(r);
                let prev_level = prev_routes.get(&key).map(|e| &e.level);
                let spec = r.limits.clone().unwrap_or_default();
                routes.push(RouteEntry {
                    level: Level::new(&spec, prev_level),
                    max_body_bytes: r.max_body_bytes,
                });
                info.push(RouteInfo {
                    key,
                    describe: r.describe(),
                    configured: r.limits.is_some(),
                });
            }
            let entry = PartnerLimits {
                level: Level::new(&p.limits, prev.map(|e| &e.level)),
                routes,
                info,
            };
            map.insert(p.id.clone(), entry);
        }
        LimitState { partners: map }
    }

    /// Admits or refuses one request of `partner` on `route_index` (the index
    /// into that partner's `routes`; `None` or out of range: partner limits
    /// only). O(1): one map lookup, at most two uncontended per-partner locks.
    pub fn check(
        &self,
        partner: &str,
        route_index: Option<usize>,
        now_ms: i64,
    ) -> Result<Admission, LimitDenied> {
        self.check_share(partner, route_index, now_ms, LocalShare::All)
    }

    /// [`LimitState::check`] enforcing only `share` of the limits (a fleet
    /// node: see [`LocalShare`]).
    pub fn check_share(
        &self,
        partner: &str,
        route_index: Option<usize>,
        now_ms: i64,
        share: LocalShare,
    ) -> Result<Admission, LimitDenied> {
        let Some(p) = self.partners.get(partner) else {
            return Ok(Admission::unlimited());
        };
        let route = route_index.and_then(|i| p.routes.get(i).map(|r| (i, r)));
        let throttle = match p.level.shared.throttle_milli.load(Ordering::Acquire) {
            0 => None,
            milli => Some(BucketSpec::throttle((milli / share.divisor()).max(1))),
        };
        let pe = Effective::of(&p.level, share);
        let re = route.map(|(_, r)| Effective::of(&r.level, share));

        // Lock order: partner, then route.
        let mut pc =
            (pe.has_counters() || throttle.is_some()).then(|| lock(&p.level.shared.counters));
        let mut rc = route
            .zip(re)
            .filter(|(_, e)| e.has_counters())
            .map(|((_, r), _)| lock(&r.level.shared.counters));

        let mut worst = None;
        if let Some(c) = pc.as_deref_mut() {
            evaluate(&pe, c, throttle, now_ms, LimitScope::Partner, &mut worst);
        }
        if let (Some(c), Some((i, _)), Some(e)) = (rc.as_deref_mut(), route, &re) {
            evaluate(e, c, None, now_ms, LimitScope::Route(i), &mut worst);
        }
        if let Some(d) = worst {
            return Err(d);
        }

        let busy = |scope| LimitDenied {
            limit: LimitKind::MaxConcurrent,
            retry_after_secs: 1,
            scope,
        };
        let partner_slot = p
            .level
            .acquire(pe.max_concurrent)
            .ok_or_else(|| busy(LimitScope::Partner))?;
        let mut admission = Admission {
            partner: Some(partner_slot),
            route: None,
        };
        if let Some((i, r)) = route {
            // On refusal, dropping `admission` gives the partner slot back.
            admission.route = Some(
                r.level
                    .acquire(re.and_then(|e| e.max_concurrent))
                    .ok_or_else(|| busy(LimitScope::Route(i)))?,
            );
        }

        if let Some(c) = pc.as_deref_mut() {
            consume(&pe, c);
        }
        if let (Some(c), Some(e)) = (rc.as_deref_mut(), &re) {
            consume(e, c);
        }
        Ok(admission)
    }

    /// Clamps `partner` to `per_minute` requests per minute on top of its
    /// limits (`None` lifts the clamp). Returns false for an unknown partner.
    /// A non-positive rate clamps to the minimum (0.001 per minute).
    pub fn set_throttle(&self, partner: &str, per_minute: Option<f64>) -> bool {
        let Some(p) = self.partners.get(partner) else {
            return false;
        };
        let milli = match per_minute {
            None => 0,
            Some(r) if r.is_nan() || r == f64::INFINITY => 0,
            Some(r) => (r * 1_000.0).round().clamp(1.0, u64::MAX as f64) as u64,
        };
        p.level
            .shared
            .throttle_milli
            .store(milli, Ordering::Release);
        true
    }

    /// The throttle in force for `partner`, in requests per minute.
    pub fn throttle(&self, partner: &str) -> Option<f64> {
        match self
            .partners
            .get(partner)?
            .level
            .shared
            .throttle_milli
            .load(Ordering::Acquire)
        {
            0 => None,
            milli => Some(milli as f64 / 1_000.0),
        }
    }

    /// The configured body limit of a route (`None`: the server default applies).
    pub fn max_body_bytes(&self, partner: &str, route_index: usize) -> Option<u64> {
        self.partners
            .get(partner)?
            .routes
            .get(route_index)?
            .max_body_bytes
    }

    /// Ids of the partners this state knows, unsorted.
    pub fn partners(&self) -> impl Iterator<Item = &str> {
        self.partners.keys().map(String::as_str)
    }

    /// Limits in force for `partner` and how close it is to them, as of
    /// `now_ms` (read-only: it consumes and refills nothing).
    pub fn snapshot(&self, partner: &str, now_ms: i64) -> Option<LimitSnapshot> {
        let p = self.partners.get(partner)?;
        let throttle_per_minute = self.throttle(partner);
        let (level, throttle_tokens_left) = level_snapshot(&p.level, now_ms, true);
        let routes = p
            .routes
            .iter()
            .zip(&p.info)
            .enumerate()
            .map(|(index, (r, i))| RouteLimitSnapshot {
                index,
                route: i.describe.clone(),
                configured: i.configured,
                level: level_snapshot(&r.level, now_ms, false).0,
                max_body_bytes: r.max_body_bytes,
            })
            .collect();
        Some(LimitSnapshot {
            partner: partner.to_string(),
            level,
            throttle_per_minute,
            throttle_tokens_left: throttle_per_minute.and(throttle_tokens_left),
            routes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PartnerStatus, parse_route_arg};

    /// 2025-11-27 00:00:00 UTC (a UTC midnight).
    const DAY0: i64 = 20_419 * MS_PER_DAY;
    const T0: i64 = DAY0 + 10 * 3_600_000;

    fn limits(
        rpm: Option<u32>,
        burst: Option<u32>,
        day: Option<u64>,
        conc: Option<u32>,
    ) -> LimitSpec {
        LimitSpec {
            requests_per_minute: rpm,
            burst,
            requests_per_day: day,
            max_concurrent: conc,
        }
    }

    fn partner(id: &str, l: LimitSpec, routes: Vec<RouteSpec>) -> Partner {
        Partner {
            id: id.into(),
            name: id.into(),
            status: PartnerStatus::Active,
            limits: l,
            on_anomaly: Default::default(),
            renewal_window: None,
            own_ca: None,
            value_limits: Default::default(),
            signing: false,
            signing_keys: Vec::new(),
            pin: Default::default(),
            routes,
        }
    }

    fn route(arg: &str, l: Option<LimitSpec>) -> RouteSpec {
        let mut r = parse_route_arg(arg).unwrap();
        r.limits = l;
        r
    }

    fn one(l: LimitSpec) -> LimitState {
        LimitState::build(&[partner("acme", l, vec![])], None)
    }

    #[test]
    fn default_burst_is_ten_seconds_worth() {
        assert_eq!(default_burst(600), 100);
        assert_eq!(default_burst(60), 10);
        assert_eq!(default_burst(7), 2);
        assert_eq!(default_burst(1), 1);
        let s = one(limits(Some(600), None, None, None));
        assert_eq!(s.snapshot("acme", T0).unwrap().level.burst, Some(100));
    }

    #[test]
    fn burst_over_bucket_is_refused_with_exact_retry_after() {
        // 60/min = one token per second, burst 5.
        let s = one(limits(Some(60), Some(5), None, None));
        for _ in 0..5 {
            assert!(s.check("acme", None, T0).is_ok());
        }
        let d = s.check("acme", None, T0).unwrap_err();
        assert_eq!(
            d,
            LimitDenied {
                limit: LimitKind::RequestsPerMinute,
                retry_after_secs: 1,
                scope: LimitScope::Partner
            }
        );
        // Just before the token is back: still refused, and says 1 s.
        let d = s.check("acme", None, T0 + 999).unwrap_err();
        assert_eq!(d.retry_after_secs, 1);
        // After Retry-After: admitted, exactly one more.
        assert!(s.check("acme", None, T0 + 1_000).is_ok());
        assert!(s.check("acme", None, T0 + 1_000).is_err());

        // Slow rate: 7/min -> a token every 8 571.4 ms -> Retry-After 9 s,
        // and a retry after those 9 s passes.
        let s = one(limits(Some(7), Some(1), None, None));
        assert!(s.check("acme", None, T0).is_ok());
        let d = s.check("acme", None, T0).unwrap_err();
        assert_eq!(d.retry_after_secs, 9);
        assert!(s.check("acme", None, T0 + 8_000).is_err());
        assert!(s.check("acme", None, T0 + 9_000).is_ok());
    }

    #[test]
    fn fleet_shares_divide_the_limits() {
        // 60/min burst 6, 9 a day, 4 at once; a fleet of 3 nodes.
        let s = one(limits(Some(60), Some(6), Some(9), Some(4)));
        // The store has rate and quota: locally only concurrency, at 4/3 → 2.
        let share = LocalShare::ConcurrencyOf(3);
        let held: Vec<Admission> = (0..2)
            .map(|_| s.check_share("acme", None, T0, share).unwrap())
            .collect();
        let d = s.check_share("acme", None, T0, share).unwrap_err();
        assert_eq!(d.limit, LimitKind::MaxConcurrent);
        drop(held);
        for _ in 0..20 {
            // No rate or quota here: the store's business.
            assert!(s.check_share("acme", None, T0, share).is_ok());
        }
        // Store down: every limit at 1/3 (burst 2, 3 a day), fresh.
        let s = one(limits(Some(60), Some(6), Some(9), None));
        let down = LocalShare::FractionOf(3);
        assert!(s.check_share("acme", None, T0, down).is_ok());
        assert!(s.check_share("acme", None, T0, down).is_ok());
        let d = s.check_share("acme", None, T0, down).unwrap_err();
        assert_eq!(
            (d.limit, d.retry_after_secs),
            (LimitKind::RequestsPerMinute, 3)
        );
        assert!(s.check_share("acme", None, T0 + 3_000, down).is_ok());
        let d = s.check_share("acme", None, T0 + 60_000, down).unwrap_err();
        assert_eq!(d.limit, LimitKind::RequestsPerDay);
    }

    #[test]
    fn refusals_consume_nothing() {
        let s = one(limits(Some(60), Some(2), Some(100), None));
        assert!(s.check("acme", None, T0).is_ok());
        assert!(s.check("acme", None, T0).is_ok());
        for _ in 0..50 {
            assert!(s.check("acme", None, T0).is_err());
        }
        let snap = s.snapshot("acme", T0).unwrap();
        assert_eq!(snap.level.quota_used, Some(2));
        assert_eq!(snap.level.tokens_left, Some(0.0));
    }

    #[test]
    fn daily_quota_exhausts_and_resets_at_utc_midnight() {
        let s = one(limits(None, None, Some(3), None));
        let late = DAY0 + MS_PER_DAY - 10_500; // 23:59:49.5 UTC
        for _ in 0..3 {
            assert!(s.check("acme", None, late).is_ok());
        }
        let d = s.check("acme", None, late).unwrap_err();
        assert_eq!(d.limit, LimitKind::RequestsPerDay);
        assert_eq!(d.retry_after_secs, 11);
        assert!(s.check("acme", None, DAY0 + MS_PER_DAY - 1).is_err());
        // Midnight UTC: fresh quota, whenever the first request came.
        for _ in 0..3 {
            assert!(s.check("acme", None, DAY0 + MS_PER_DAY).is_ok());
        }
        let d = s.check("acme", None, DAY0 + MS_PER_DAY + 1).unwrap_err();
        assert_eq!(d.retry_after_secs, 86_400);
        let snap = s.snapshot("acme", DAY0 + MS_PER_DAY + 5).unwrap();
        assert_eq!(snap.level.quota_used, Some(3));
        assert_eq!(snap.level.quota_resets_at_ms, Some(DAY0 + 2 * MS_PER_DAY));
        // A snapshot on a later day shows the quota as reset.
        assert_eq!(
            s.snapshot("acme", DAY0 + 3 * MS_PER_DAY)
                .unwrap()
                .level
                .quota_used,
            Some(0)
        );
    }

    #[test]
    fn concurrency_cap_and_release_on_drop() {
        let s = one(limits(None, None, None, Some(2)));
        let a = s.check("acme", None, T0).unwrap();
        let b = s.check("acme", None, T0).unwrap();
        let d = s.check("acme", None, T0).unwrap_err();
        assert_eq!(d.limit, LimitKind::MaxConcurrent);
        assert_eq!(d.retry_after_secs, 1);
        assert_eq!(s.snapshot("acme", T0).unwrap().level.in_flight, 2);
        drop(a);
        let c = s.check("acme", None, T0).unwrap();
        assert!(s.check("acme", None, T0).is_err());
        drop((b, c));
        assert_eq!(s.snapshot("acme", T0).unwrap().level.in_flight, 0);
    }

    #[test]
    fn route_limit_tighter_than_partner() {
        let p = partner(
            "acme",
            limits(Some(600), Some(100), None, Some(10)),
            vec![
                route("GET /v1/orders -> orders", None),
                route(
                    "POST /v1/payments -> orders",
                    Some(limits(Some(60), Some(2), None, Some(1))),
                ),
            ],
        );
        let s = LimitState::build(&[p], None);
        let a = s.check("acme", Some(1), T0).unwrap();
        // Route concurrency 1: refused at the route; the partner slot taken
        // for the attempt was given back.
        let d = s.check("acme", Some(1), T0).unwrap_err();
        assert_eq!(
            (d.limit, d.scope),
            (LimitKind::MaxConcurrent, LimitScope::Route(1))
        );
        assert_eq!(s.snapshot("acme", T0).unwrap().level.in_flight, 1);
        drop(a);
        assert!(s.check("acme", Some(1), T0).is_ok());
        let d = s.check("acme", Some(1), T0).unwrap_err();
        assert_eq!(
            (d.limit, d.scope),
            (LimitKind::RequestsPerMinute, LimitScope::Route(1))
        );
        // Route refusals took nothing from the partner bucket: 100 - 2 left.
        let snap = s.snapshot("acme", T0).unwrap();
        assert_eq!(snap.level.tokens_left, Some(98.0));
        assert_eq!(snap.routes[1].level.tokens_left, Some(0.0));
        // Other routes still pass, and share the partner's bucket.
        for _ in 0..98 {
            assert!(s.check("acme", Some(0), T0).is_ok());
        }
        let d = s.check("acme", Some(0), T0).unwrap_err();
        assert_eq!(
            (d.limit, d.scope),
            (LimitKind::RequestsPerMinute, LimitScope::Partner)
        );
        // Out-of-range route index: partner limits only.
        assert_eq!(
            s.check("acme", Some(9), T0).unwrap_err().scope,
            LimitScope::Partner
        );
    }

    #[test]
    fn partner_refusal_consumes_nothing_of_the_route() {
        let p = partner(
            "acme",
            limits(None, None, Some(1), None),
            vec![route(
                "GET /v1 -> orders",
                Some(limits(None, None, Some(5), None)),
            )],
        );
        let s = LimitState::build(&[p], None);
        assert!(s.check("acme", Some(0), T0).is_ok());
        for _ in 0..10 {
            let d = s.check("acme", Some(0), T0).unwrap_err();
            assert_eq!(
                (d.limit, d.scope),
                (LimitKind::RequestsPerDay, LimitScope::Partner)
            );
        }
        assert_eq!(
            s.snapshot("acme", T0).unwrap().routes[0].level.quota_used,
            Some(1)
        );
    }

    #[test]
    fn longest_retry_after_wins() {
        let s = one(limits(Some(60), Some(1), Some(1), None));
        assert!(s.check("acme", None, T0).is_ok());
        let d = s.check("acme", None, T0).unwrap_err();
        assert_eq!(d.limit, LimitKind::RequestsPerDay);
        assert_eq!(d.retry_after_secs, 14 * 3_600);
    }

    #[test]
    fn reload_keeps_unchanged_counters_and_resets_changed_ones() {
        let quota = limits(None, None, Some(10), None);
        let r = || {
            route(
                "GET /v1/orders -> orders",
                Some(limits(None, None, Some(5), None)),
            )
        };
        let old = LimitState::build(
            &[
                partner("same", quota.clone(), vec![r()]),
                partner("changed", quota.clone(), vec![]),
                partner(
                    "rpm-changed",
                    limits(Some(60), Some(5), Some(10), None),
                    vec![],
                ),
                partner("gone", quota.clone(), vec![]),
            ],
            None,
        );
        for id in ["same", "changed", "rpm-changed", "gone"] {
            for _ in 0..4 {
                assert!(old.check(id, Some(0), T0).is_ok());
            }
        }
        let held = old.check("same", Some(0), T0).unwrap();
        old.set_throttle("same", Some(1_000.0));

        let new = LimitState::build(
            &[
                // Same limits, but a new route in front: matched by key, not index.
                partner(
                    "same",
                    quota.clone(),
                    vec![route("GET /v2 -> orders", None), r()],
                ),
                partner("changed", limits(None, None, Some(20), None), vec![]),
                partner(
                    "rpm-changed",
                    limits(Some(120), Some(5), Some(10), None),
                    vec![],
                ),
                partner("new", quota.clone(), vec![]),
            ],
            Some(&old),
        );
        let same = new.snapshot("same", T0).unwrap();
        assert_eq!(same.level.quota_used, Some(5));
        assert_eq!(same.routes[1].level.quota_used, Some(5));
        assert_eq!(same.level.in_flight, 1);
        assert_eq!(same.throttle_per_minute, Some(1_000.0));
        assert_eq!(
            new.snapshot("changed", T0).unwrap().level.quota_used,
            Some(0)
        );
        let rc = new.snapshot("rpm-changed", T0).unwrap();
        assert_eq!(rc.level.quota_used, Some(4), "quota unchanged: kept");
        assert_eq!(rc.level.tokens_left, Some(5.0), "bucket changed: fresh");
        assert!(new.snapshot("gone", T0).is_none());
        assert_eq!(new.snapshot("new", T0).unwrap().level.quota_used, Some(0));
        // Unchanged counters are shared: the old state's late requests count too.
        assert!(old.check("same", None, T0).is_ok());
        assert_eq!(new.snapshot("same", T0).unwrap().level.quota_used, Some(6));
        // A guard from before the reload releases into the new state's count.
        drop(held);
        assert_eq!(new.snapshot("same", T0).unwrap().level.in_flight, 0);

        // Building a state that is never swapped in changes nothing.
        let unused = LimitState::build(
            &[partner("same", limits(None, None, Some(99), None), vec![])],
            Some(&new),
        );
        drop(unused);
        assert_eq!(new.snapshot("same", T0).unwrap().level.quota_used, Some(6));
        assert!(new.check("same", None, T0).is_ok());
        assert_eq!(new.snapshot("same", T0).unwrap().level.quota_used, Some(7));
    }

    #[test]
    fn throttle_clamps_and_lifts() {
        let s = one(LimitSpec::default());
        for _ in 0..1_000 {
            assert!(s.check("acme", None, T0).is_ok());
        }
        assert!(s.set_throttle("acme", Some(60.0)));
        // 60/min: burst 10, then one per second.
        for _ in 0..10 {
            assert!(s.check("acme", None, T0).is_ok());
        }
        let d = s.check("acme", None, T0).unwrap_err();
        assert_eq!(
            (d.limit, d.retry_after_secs, d.scope),
            (LimitKind::Throttled, 1, LimitScope::Partner)
        );
        assert!(s.check("acme", None, T0 + 1_000).is_ok());
        assert!(s.check("acme", None, T0 + 1_000).is_err());
        s.set_throttle("acme", None);
        assert!(s.check("acme", None, T0 + 1_000).is_ok());
        assert!(!s.set_throttle("nobody", Some(1.0)));
    }

    #[test]
    fn unknown_partner_is_not_this_modules_business() {
        let s = one(limits(Some(1), None, None, None));
        assert!(s.check("stranger", Some(3), T0).is_ok());
        assert!(s.snapshot("stranger", T0).is_none());
    }

    #[test]
    fn clock_going_back_adds_no_tokens() {
        let s = one(limits(Some(60), Some(1), None, None));
        assert!(s.check("acme", None, T0).is_ok());
        assert!(s.check("acme", None, T0 - 60_000).is_err());
        assert!(s.check("acme", None, T0 + 999).is_err());
        assert!(s.check("acme", None, T0 + 1_000).is_ok());
    }

    #[test]
    fn max_body_bytes_per_route() {
        let mut r = route("POST /v1/upload -> orders", None);
        r.max_body_bytes = Some(1_024);
        let s = LimitState::build(&[partner("acme", LimitSpec::default(), vec![r])], None);
        assert_eq!(s.max_body_bytes("acme", 0), Some(1_024));
        assert_eq!(s.max_body_bytes("acme", 1), None);
    }

    /// No global lock: two threads hammering two different partners never
    /// touch the same Mutex (the map is immutable; each partner has its own
    /// counters). Here one partner's lock is held (poisoned, even) while the
    /// other partner is checked from another thread: that must not block.
    #[test]
    fn partners_do_not_share_a_lock() {
        let s = Arc::new(LimitState::build(
            &[
                partner("a", limits(Some(60), None, None, None), vec![]),
                partner("b", limits(Some(60), None, None, None), vec![]),
            ],
            None,
        ));
        let a_shared = s.partners["a"].level.shared.clone();
        let a_counters = &a_shared.counters;
        let guard = lock(a_counters);
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.check("b", None, T0).is_ok());
        assert!(t.join().unwrap());
        drop(guard);
        // Poison a's lock: checks recover instead of panicking.
        let c = a_shared.clone();
        let _ = std::thread::spawn(move || {
            let _g = c.counters.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert!(s.check("a", None, T0).is_ok());
    }
}
