//! The pool's background upkeep, one task per pool that ends when the pool
//! is gone: active health checks over the same leg as traffic, DNS
//! re-resolution of host-name endpoints (new addresses join, vanished ones
//! drain), and closing idle connections past their time.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use http::{Request, Version, header};
use http_body_util::{BodyExt, Empty};

use super::RelayBody;
use super::endpoint::{Checked, Endpoint};
use super::{Pool, resolve_now};

/// The upkeep's tick when neither health checks nor DNS ask for a shorter one.
const TICK: Duration = Duration::from_secs(5);

pub(super) async fn run(pool: Weak<Pool>) {
    let (tick, health_every, dns_every) = match pool.upgrade() {
        Some(p) => {
            let health = p.health.as_ref().map(|h| h.interval);
            let tick = [Some(TICK), health, Some(p.dns_refresh)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(TICK);
            (tick, health, p.dns_refresh)
        }
        None => return,
    };
    let mut next_health = Instant::now();
    let mut next_dns = Instant::now() + dns_every;
    loop {
        {
            let Some(p) = pool.upgrade() else { return };
            let now = Instant::now();
            if let Some(every) = health_every
                && now >= next_health
            {
                next_health = now + every;
                health_round(&p).await;
            }
            if now >= next_dns {
                next_dns = now + dns_every;
                refresh_dns(&p).await;
            }
            for e in p.endpoints.load().iter() {
                e.prune_idle();
            }
        }
        tokio::time::sleep(tick).await;
    }
}

/// One health check of every endpoint, all at once.
async fn health_round(p: &Arc<Pool>) {
    let Some(h) = p.health.clone() else { return };
    let endpoints = p.endpoints.load_full();
    let checks = endpoints.iter().map(|e| {
        let h = h.clone();
        async move {
            let passed = check(p, e, &h.path, h.timeout).await;
            if let Some(now_healthy) = e.health_result(passed, h.healthy, h.unhealthy) {
                if now_healthy {
                    tracing::info!(upstream = %p.name, endpoint = %e.label(), "endpoint healthy again");
                } else {
                    tracing::warn!(upstream = %p.name, endpoint = %e.label(), "endpoint failed {} health checks in a row: out", h.unhealthy);
                }
            }
        }
    });
    futures_util::future::join_all(checks).await;
}

/// `GET <base><path>` within `timeout`; a 2xx or 3xx answer passes.
async fn check(p: &Pool, e: &Arc<Endpoint>, path: &str, timeout: Duration) -> bool {
    let attempt = async {
        let conn = e.checkout(&p.leg, timeout).await.ok()?;
        let target = format!("{}{}", p.base_path, path);
        let body: RelayBody = Empty::new().map_err(|e| match e {}).boxed();
        let mut req = Request::new(body);
        match conn {
            Checked::H1(mut s) => {
                *req.uri_mut() = target.parse().ok()?;
                *req.version_mut() = Version::HTTP_11;
                req.headers_mut()
                    .insert(header::HOST, e.host_header.clone());
                let resp = s.send_request(req).await.ok()?;
                let ok = resp.status().as_u16() < 400;
                resp.into_body().collect().await.ok()?;
                e.release(s);
                Some(ok)
            }
            Checked::H2(mut s) => {
                *req.uri_mut() = format!("{}{}", e.origin, target).parse().ok()?;
                *req.version_mut() = Version::HTTP_2;
                let resp = s.send_request(req).await.ok()?;
                let ok = resp.status().as_u16() < 400;
                resp.into_body().collect().await.ok()?;
                Some(ok)
            }
        }
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

/// Resolves host names again: new addresses become endpoints, vanished
/// ones drain (their requests in flight finish).
async fn refresh_dns(p: &Arc<Pool>) {
    if p.specs
        .iter()
        .all(|s| s.host.parse::<std::net::IpAddr>().is_ok())
    {
        return;
    }
    let specs = p.specs.clone();
    let Ok(resolved) = tokio::task::spawn_blocking(move || {
        specs
            .iter()
            .map(|s| (s.clone(), resolve_now(s)))
            .collect::<Vec<_>>()
    })
    .await
    else {
        return;
    };
    let current = p.endpoints.load_full();
    let mut next: Vec<Arc<Endpoint>> = Vec::new();
    for (spec, addrs) in resolved {
        // A name that fails to resolve keeps its last addresses.
        let addrs = if addrs.is_empty() {
            current
                .iter()
                .filter(|e| e.host == spec.host && e.addr.port() == spec.port)
                .map(|e| e.addr)
                .collect()
        } else {
            addrs
        };
        for addr in addrs {
            if next.iter().any(|e| e.addr == addr) {
                continue;
            }
            let kept = current
                .iter()
                .find(|e| e.addr == addr && e.host == spec.host);
            next.push(match kept {
                Some(e) => e.clone(),
                None => {
                    tracing::info!(upstream = %p.name, host = %spec.host, address = %addr, "new endpoint address");
                    Arc::new(Endpoint::new(addr, &spec.host, spec.port, p.https))
                }
            });
        }
    }
    let changed = next.len() != current.len()
        || next
            .iter()
            .any(|n| !current.iter().any(|c| Arc::ptr_eq(c, n)));
    if !changed {
        return;
    }
    for gone in current
        .iter()
        .filter(|c| !next.iter().any(|n| Arc::ptr_eq(c, n)))
    {
        tracing::info!(upstream = %p.name, endpoint = %gone.label(), "endpoint address gone: draining");
        gone.drain();
    }
    p.endpoints.store(Arc::new(next));
}
