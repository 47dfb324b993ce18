//! Cluster-wide rate limits and daily quotas: one atomic Lua script per
//! request (loaded once, run by `EVALSHA`), keyed per partner and per
//! limited route, so every node draws from the same bucket and the same
//! day's count.
//!
//! The bucket is GCRA (generic cell rate algorithm), the exact equivalent
//! of the single node's token bucket: rate `requests_per_minute`, capacity
//! `burst` (default ten seconds' worth), full at start. Time is the Redis
//! server's (`TIME`), so the nodes' clocks need not agree. The quota counts
//! per UTC day. As on one node, a partner check and its route check admit
//! together or consume nothing, and the refusal with the longest
//! Retry-After is reported.

use redis::aio::ConnectionManager;

use crate::config::{LimitSpec, Partner};
use crate::guard::limits::{LimitDenied, LimitKind, LimitScope, MS_PER_DAY, default_burst};

use super::store::Keys;

/// GCRA + daily quota over up to two levels (partner, route). KEYS: per
/// level its bucket key and its quota key. ARGV[1]: the number of levels;
/// then per level: emission interval (µs, 0 = no rate limit), burst, day
/// limit (-1 = none), ms to the next UTC midnight (for the quota's
/// Retry-After and expiry). Returns {1} when admitted (and consumed), else
/// {0, level (1-based), kind (1 rate, 2 day), retry after ms}.
const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local levels = tonumber(ARGV[1])
local worst_level, worst_kind, worst_ms = 0, 0, -1
local tats = {}
for i = 1, levels do
  local o = 1 + (i - 1) * 4
  local interval = tonumber(ARGV[o + 1])
  local burst = tonumber(ARGV[o + 2])
  local day_limit = tonumber(ARGV[o + 3])
  local to_midnight = tonumber(ARGV[o + 4])
  if interval > 0 then
    local tat = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
    if tat < now then tat = now end
    local new_tat = tat + interval
    local allow_at = new_tat - burst * interval
    if allow_at > now then
      local ms = math.ceil((allow_at - now) / 1000)
      if ms > worst_ms then worst_level, worst_kind, worst_ms = i, 1, ms end
    end
    tats[i] = new_tat
  end
  if day_limit >= 0 then
    local used = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
    if used >= day_limit and to_midnight > worst_ms then
      worst_level, worst_kind, worst_ms = i, 2, to_midnight
    end
  end
end
if worst_level > 0 then
  return {0, worst_level, worst_kind, worst_ms}
end
for i = 1, levels do
  local o = 1 + (i - 1) * 4
  local interval = tonumber(ARGV[o + 1])
  local burst = tonumber(ARGV[o + 2])
  if interval > 0 then
    local ttl = math.ceil(burst * interval / 1000) + 1000
    redis.call('SET', KEYS[2 * i - 1], string.format('%.0f', tats[i]), 'PX', ttl)
  end
  if tonumber(ARGV[o + 3]) >= 0 then
    if redis.call('INCR', KEYS[2 * i]) == 1 then
      redis.call('PEXPIRE', KEYS[2 * i], tonumber(ARGV[o + 4]) + 3600000)
    end
  end
end
return {1}
"#;

/// One limited level of a request, as the script takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Level {
    pub scope: LimitScope,
    /// Key part: `p` for the partner, `r-<hash>` for a route.
    pub key: String,
    /// Microseconds between requests at the sustained rate (0: no rate limit).
    pub interval_us: u64,
    pub burst: u32,
    pub day_limit: Option<u64>,
}

impl Level {
    fn of(scope: LimitScope, key: String, spec: &LimitSpec) -> Option<Level> {
        if spec.requests_per_minute.is_none() && spec.requests_per_day.is_none() {
            return None;
        }
        let (interval_us, burst) = match spec.requests_per_minute {
            Some(rpm) => (
                60_000_000 / u64::from(rpm.max(1)),
                spec.burst.unwrap_or_else(|| default_burst(rpm)).max(1),
            ),
            None => (0, 0),
        };
        Some(Level {
            scope,
            key,
            interval_us,
            burst,
            day_limit: spec.requests_per_day,
        })
    }
}

/// The levels of a request the store limits (rate or quota set): the
/// partner's, then the route's.
pub fn levels(partner: &Partner, route_index: Option<usize>) -> Vec<Level> {
    let mut out = Vec::with_capacity(2);
    out.extend(Level::of(LimitScope::Partner, "p".into(), &partner.limits));
    if let Some(i) = route_index
        && let Some(r) = partner.routes.get(i)
        && let Some(spec) = &r.limits
    {
        // Keyed by what the route is (methods, path, upstream), not its
        // index: the same route on every node, across reloads.
        use sha2::Digest;
        let digest = sha2::Sha256::digest(r.describe().as_bytes());
        out.extend(Level::of(
            LimitScope::Route(i),
            format!("r-{}", hex::encode(&digest[..8])),
            spec,
        ));
    }
    out
}

/// Whether any level of `partner` (or its routes) has a limit a node must
/// enforce (for `on_store_failure = "deny"`).
pub fn is_limited(partner: &Partner) -> bool {
    let limited = |s: &LimitSpec| {
        s.requests_per_minute.is_some()
            || s.requests_per_day.is_some()
            || s.max_concurrent.is_some()
    };
    limited(&partner.limits)
        || partner
            .routes
            .iter()
            .any(|r| r.limits.as_ref().is_some_and(limited))
}

/// The loaded script and the key names.
pub struct ClusterLimiter {
    keys: Keys,
    script: redis::Script,
}

impl ClusterLimiter {
    pub fn new(keys: Keys) -> ClusterLimiter {
        ClusterLimiter {
            keys,
            script: redis::Script::new(SCRIPT),
        }
    }

    /// Admits (and consumes) or refuses one request of `partner` against
    /// `levels`, in one round trip.
    pub async fn check(
        &self,
        conn: &mut ConnectionManager,
        partner: &str,
        levels: &[Level],
        now_ms: i64,
    ) -> redis::RedisResult<Result<(), LimitDenied>> {
        if levels.is_empty() {
            return Ok(Ok(()));
        }
        let day = now_ms.div_euclid(MS_PER_DAY);
        let to_midnight = (day + 1) * MS_PER_DAY - now_ms;
        let mut inv = self.script.prepare_invoke();
        inv.arg(levels.len());
        for l in levels {
            inv.key(self.keys.bucket(partner, &l.key));
            inv.key(self.keys.quota(partner, &l.key, day));
            inv.arg(l.interval_us)
                .arg(l.burst)
                .arg(l.day_limit.map(|d| d as i64).unwrap_or(-1))
                .arg(to_midnight);
        }
        let reply: Vec<i64> = inv.invoke_async(conn).await?;
        Ok(verdict(&reply, levels))
    }
}

/// The script's reply as a verdict.
fn verdict(reply: &[i64], levels: &[Level]) -> Result<(), LimitDenied> {
    match reply {
        [0, level, kind, ms] => {
            let scope = usize::try_from(*level - 1)
                .ok()
                .and_then(|i| levels.get(i))
                .map(|l| l.scope)
                .unwrap_or(LimitScope::Partner);
            Err(LimitDenied {
                limit: if *kind == 2 {
                    LimitKind::RequestsPerDay
                } else {
                    LimitKind::RequestsPerMinute
                },
                retry_after_secs: (*ms).max(0).unsigned_abs().div_ceil(1000).max(1),
                scope,
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_route_arg;

    fn partner(limits: LimitSpec, route_limits: Option<LimitSpec>) -> Partner {
        let mut r = parse_route_arg("GET /v1/orders -> orders").unwrap();
        r.limits = route_limits;
        Partner {
            id: "acme".into(),
            name: "Acme".into(),
            status: Default::default(),
            limits,
            on_anomaly: Default::default(),
            renewal_window: None,
            own_ca: None,
            value_limits: Default::default(),
            signing: false,
            signing_keys: Vec::new(),
            pin: Default::default(),
            routes: vec![r],
        }
    }

    #[test]
    fn levels_follow_the_settings() {
        let rate = LimitSpec {
            requests_per_minute: Some(60),
            burst: Some(5),
            ..Default::default()
        };
        let p = partner(rate.clone(), None);
        let l = levels(&p, Some(0));
        assert_eq!(l.len(), 1);
        assert_eq!(
            (l[0].interval_us, l[0].burst, l[0].day_limit),
            (1_000_000, 5, None)
        );
        let day = LimitSpec {
            requests_per_day: Some(10),
            ..Default::default()
        };
        let p = partner(LimitSpec::default(), Some(day));
        let l = levels(&p, Some(0));
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].scope, LimitScope::Route(0));
        assert!(l[0].key.starts_with("r-") && l[0].key.len() == 18);
        assert_eq!(l[0].interval_us, 0);
        // Concurrency alone is not the store's business.
        let conc = LimitSpec {
            max_concurrent: Some(3),
            ..Default::default()
        };
        let p = partner(conc, None);
        assert!(levels(&p, Some(0)).is_empty());
        assert!(is_limited(&p));
        assert!(!is_limited(&partner(LimitSpec::default(), None)));
    }

    #[test]
    fn verdicts() {
        let p = partner(
            LimitSpec {
                requests_per_minute: Some(60),
                ..Default::default()
            },
            Some(LimitSpec {
                requests_per_day: Some(1),
                ..Default::default()
            }),
        );
        let l = levels(&p, Some(0));
        assert_eq!(verdict(&[1], &l), Ok(()));
        let d = verdict(&[0, 2, 2, 1500], &l).unwrap_err();
        assert_eq!(d.limit, LimitKind::RequestsPerDay);
        assert_eq!(d.scope, LimitScope::Route(0));
        assert_eq!(d.retry_after_secs, 2);
        let d = verdict(&[0, 1, 1, 1], &l).unwrap_err();
        assert_eq!(
            (d.limit, d.retry_after_secs),
            (LimitKind::RequestsPerMinute, 1)
        );
    }
}
