//! Choosing an endpoint: `least_request` (power of two choices over the
//! endpoints' requests in flight, as Envoy does) or `round_robin`, among
//! the endpoints that may take traffic, preferring those this request has
//! not tried yet.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use super::endpoint::Endpoint;
use crate::config::Balance;

/// Picks an endpoint; `None` when no endpoint may take traffic.
/// `avoid` are endpoints this request already tried: they are chosen only
/// when `allow_repeat` and no other is available.
pub fn pick(
    endpoints: &[Arc<Endpoint>],
    balance: Balance,
    next: &AtomicUsize,
    now_ms: u64,
    avoid: &[Arc<Endpoint>],
    allow_repeat: bool,
) -> Option<Arc<Endpoint>> {
    // The common case: one endpoint, first attempt.
    if endpoints.len() == 1 {
        let only = &endpoints[0];
        let tried = avoid.iter().any(|a| Arc::ptr_eq(a, only));
        return (only.available(now_ms) && (allow_repeat || !tried)).then(|| only.clone());
    }
    let fresh: Vec<&Arc<Endpoint>> = endpoints
        .iter()
        .filter(|e| e.available(now_ms) && !avoid.iter().any(|a| Arc::ptr_eq(a, e)))
        .collect();
    let candidates = if fresh.is_empty() && allow_repeat {
        endpoints.iter().filter(|e| e.available(now_ms)).collect()
    } else {
        fresh
    };
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0].clone()),
        n => Some(
            match balance {
                Balance::RoundRobin => candidates[next.fetch_add(1, Ordering::Relaxed) % n],
                Balance::LeastRequest => {
                    let mut rng = rand::thread_rng();
                    let a = rng.gen_range(0..n);
                    let mut b = rng.gen_range(0..n - 1);
                    if b >= a {
                        b += 1;
                    }
                    let (ea, eb) = (candidates[a], candidates[b]);
                    if eb.in_flight() < ea.in_flight() {
                        eb
                    } else {
                        ea
                    }
                }
            }
            .clone(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u16) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                Arc::new(Endpoint::new(
                    std::net::SocketAddr::from(([127, 0, 0, 1], 1000 + i)),
                    "127.0.0.1",
                    1000 + i,
                    false,
                ))
            })
            .collect()
    }

    #[test]
    fn round_robin_takes_each_in_turn() {
        let p = pool(3);
        let next = AtomicUsize::new(0);
        let picked: Vec<u16> = (0..6)
            .map(|_| {
                pick(&p, Balance::RoundRobin, &next, 0, &[], false)
                    .map(|e| e.addr.port())
                    .unwrap_or(0)
            })
            .collect();
        assert_eq!(picked, vec![1000, 1001, 1002, 1000, 1001, 1002]);
    }

    #[test]
    fn least_request_never_picks_the_busiest_of_two() {
        let p = pool(2);
        for _ in 0..5 {
            p[0].begin();
        }
        let next = AtomicUsize::new(0);
        for _ in 0..50 {
            let e = pick(&p, Balance::LeastRequest, &next, 0, &[], false);
            assert_eq!(e.map(|e| e.addr.port()), Some(1001));
        }
    }

    #[test]
    fn tried_ejected_and_draining_endpoints_are_avoided() {
        let p = pool(3);
        let next = AtomicUsize::new(0);
        p[0].eject(10_000);
        p[1].drain();
        let e = pick(&p, Balance::LeastRequest, &next, 5, &[], false);
        assert_eq!(e.map(|e| e.addr.port()), Some(1002));
        let tried = vec![p[2].clone()];
        assert!(pick(&p, Balance::LeastRequest, &next, 5, &tried, false).is_none());
        let again = pick(&p, Balance::LeastRequest, &next, 5, &tried, true);
        assert_eq!(again.map(|e| e.addr.port()), Some(1002));
        // The ejection ends by itself.
        let later = pick(&p, Balance::RoundRobin, &next, 10_001, &tried, false);
        assert_eq!(later.map(|e| e.addr.port()), Some(1000));
    }
}
