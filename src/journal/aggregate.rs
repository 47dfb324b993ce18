//! Handshake-flood aggregation: past `handshake_refusals_per_interval`
//! refused handshakes from one client IP in one interval, further ones are
//! counted, not written, and one `HandshakeAggregate` record per (IP,
//! reason) is written when the interval ends. Memory is bounded: at most
//! [`MAX_TRACKED_ADDRS`] addresses and [`MAX_REASONS`] reasons each; the
//! rest go to one overflow bucket. Owned by the writer thread (no locks).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::event::{Decision, Event, EventKind};

/// Most client addresses tracked per interval.
pub const MAX_TRACKED_ADDRS: usize = 10_000;
/// Most distinct reasons counted per address (more are counted as `other`).
pub const MAX_REASONS: usize = 4;
/// Longest reason code kept (longer ones are cut).
const MAX_REASON_LEN: usize = 64;

#[derive(Default)]
struct Counts {
    seen: u64,
    /// (reason, suppressed count); at most MAX_REASONS + 1 ("other").
    suppressed: Vec<(String, u64)>,
}

impl Counts {
    fn suppress(&mut self, reason: &str) {
        let mut reason: String = reason.chars().take(MAX_REASON_LEN).collect();
        if !self.suppressed.iter().any(|(r, _)| *r == reason)
            && self.suppressed.len() >= MAX_REASONS
        {
            reason = "other".into();
        }
        match self.suppressed.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.suppressed.push((reason, 1)),
        }
    }
}

/// The aggregator's state for the current interval.
pub struct Aggregator {
    threshold: u64,
    interval: Duration,
    window: Option<(Instant, i64)>,
    addrs: HashMap<String, Counts>,
    overflow: Counts,
    node: String,
}

/// The client IP of an address (`ip:port` → `ip`); other strings as they are.
fn addr_key(addr: Option<&str>) -> String {
    match addr {
        None => "unknown".into(),
        Some(a) => match a.parse::<SocketAddr>() {
            Ok(sa) => sa.ip().to_string(),
            Err(_) => a.chars().take(64).collect(),
        },
    }
}

impl Aggregator {
    pub fn new(threshold: u32, interval: Duration) -> Self {
        Aggregator {
            threshold: threshold as u64,
            interval: interval.max(Duration::from_millis(1)),
            window: None,
            addrs: HashMap::new(),
            overflow: Counts::default(),
            node: String::new(),
        }
    }

    /// New threshold and interval; the interval under way keeps its
    /// counts and ends at its old length.
    pub fn retune(&mut self, threshold: u32, interval: Duration) {
        self.threshold = threshold as u64;
        self.interval = interval.max(Duration::from_millis(1));
    }

    /// Whether this refused handshake is written on its own (`true`) or
    /// only counted for the interval's aggregate (`false`).
    pub fn admit(&mut self, e: &Event, now: Instant) -> bool {
        if self.window.is_none() {
            self.window = Some((now + self.interval, e.time_ms));
        }
        let reason = e.reason.as_deref().unwrap_or("unspecified");
        let key = addr_key(e.client_addr.as_deref());
        if let Some(c) = self.addrs.get_mut(&key) {
            c.seen += 1;
            if c.seen <= self.threshold {
                return true;
            }
            c.suppress(reason);
        } else if self.addrs.len() < MAX_TRACKED_ADDRS {
            let mut c = Counts {
                seen: 1,
                ..Counts::default()
            };
            let admit = self.threshold >= 1;
            if !admit {
                c.suppress(reason);
            }
            self.addrs.insert(key, c);
            if admit {
                return true;
            }
        } else {
            self.overflow.seen += 1;
            self.overflow.suppress(reason);
        }
        if self.node.is_empty() {
            self.node = e.node.clone();
        }
        false
    }

    /// When the current interval ends (None: nothing tracked).
    pub fn deadline(&self) -> Option<Instant> {
        self.window.map(|(end, _)| end)
    }

    /// Number of addresses tracked now (bounded by [`MAX_TRACKED_ADDRS`]).
    pub fn tracked(&self) -> usize {
        self.addrs.len()
    }

    /// At or after the interval's end (or with `force`, at shutdown): the
    /// aggregate records for the interval, and a fresh interval.
    pub fn take_due(&mut self, now: Instant, force: bool) -> Vec<Event> {
        let Some((end, start_ms)) = self.window else {
            return Vec::new();
        };
        if now < end && !force {
            return Vec::new();
        }
        let now_ms = crate::event::now_ms();
        let node = std::mem::take(&mut self.node);
        let mut out = Vec::new();
        let mut addrs: Vec<_> = self.addrs.drain().collect();
        addrs.sort_by(|a, b| a.0.cmp(&b.0));
        let mk = |addr: Option<String>, reason: String, n: u64, what: String| {
            let mut e = Event::new(EventKind::HandshakeAggregate, &node, Decision::Denied);
            e.time_ms = now_ms;
            e.client_addr = addr;
            e.detail = Some(format!(
                "{n} refused handshakes from {what}, reason {reason} (not recorded one by one; interval from {} to {})",
                crate::journal::fmt_time_ms(start_ms),
                crate::journal::fmt_time_ms(now_ms)
            ));
            e.reason = Some(reason);
            e.request_bytes = 0;
            e
        };
        for (addr, c) in addrs {
            for (reason, n) in c.suppressed {
                out.push(mk(Some(addr.clone()), reason, n, addr.clone()));
            }
        }
        let overflow = std::mem::take(&mut self.overflow);
        for (reason, n) in overflow.suppressed {
            out.push(mk(
                None,
                reason,
                n,
                format!("addresses beyond the {MAX_TRACKED_ADDRS} tracked"),
            ));
        }
        self.window = None;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(addr: &str, reason: &str) -> Event {
        let mut e = Event::new(EventKind::Handshake, "n1", Decision::Denied);
        e.client_addr = Some(addr.into());
        e.reason = Some(reason.into());
        e
    }

    #[test]
    fn one_address_past_threshold_is_aggregated() {
        let now = Instant::now();
        let mut a = Aggregator::new(10, Duration::from_secs(60));
        let admitted = (0..10_000)
            .filter(|i| {
                a.admit(
                    &refused(
                        &format!("198.51.100.9:{}", 1000 + i % 50000),
                        crate::reason::Reason::UnknownCa.code(),
                    ),
                    now,
                )
            })
            .count();
        assert_eq!(admitted, 10);
        assert!(a.take_due(now, false).is_empty(), "interval not over yet");
        let aggs = a.take_due(now + Duration::from_secs(61), false);
        assert_eq!(aggs.len(), 1);
        let d = aggs[0].detail.as_deref().unwrap();
        assert!(
            d.starts_with("9990 refused handshakes from 198.51.100.9, reason unknown_ca"),
            "{d}"
        );
        assert_eq!(aggs[0].client_addr.as_deref(), Some("198.51.100.9"));
        // A new interval starts fresh.
        assert!(a.admit(
            &refused("198.51.100.9:1", crate::reason::Reason::UnknownCa.code()),
            now
        ));
    }

    #[test]
    fn memory_is_bounded_with_an_overflow_bucket() {
        let now = Instant::now();
        let mut a = Aggregator::new(0, Duration::from_secs(60));
        for i in 0..(MAX_TRACKED_ADDRS as u32 + 5000) {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            assert!(!a.admit(&refused(&format!("{ip}:443"), "bad_cert"), now));
        }
        assert_eq!(a.tracked(), MAX_TRACKED_ADDRS);
        let aggs = a.take_due(now, true);
        assert_eq!(aggs.len(), MAX_TRACKED_ADDRS + 1);
        let last = aggs.last().unwrap();
        assert!(last.client_addr.is_none());
        assert!(
            last.detail
                .as_deref()
                .unwrap()
                .starts_with("5000 refused handshakes from addresses beyond")
        );
    }

    #[test]
    fn reasons_per_address_are_capped() {
        let now = Instant::now();
        let mut a = Aggregator::new(0, Duration::from_secs(60));
        for i in 0..20 {
            a.admit(&refused("192.0.2.1:5", &format!("r{i}")), now);
        }
        let aggs = a.take_due(now, true);
        assert_eq!(aggs.len(), MAX_REASONS + 1);
        assert_eq!(aggs.last().unwrap().reason.as_deref(), Some("other"));
    }
}
