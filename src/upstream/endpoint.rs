//! One endpoint of a pool: an address, its small connection pool (idle
//! HTTP/1.1 connections kept for reuse, one shared h2 connection), its
//! requests in flight, and the state that decides whether it gets traffic:
//! ejected by the outlier detector until some time, failed by health
//! checks, or draining (removed by DNS or reload: in-flight requests
//! finish, no new one comes).

use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::HeaderValue;
use hyper::client::conn::{http1, http2};

use super::RelayBody;
use super::leg::{Conn, ConnectError, Leg};

/// How long an idle connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Idle HTTP/1.1 connections kept per endpoint at most.
const MAX_IDLE: usize = 256;

/// A connection checked out for one request.
pub enum Checked {
    H1(http1::SendRequest<RelayBody>),
    H2(http2::SendRequest<RelayBody>),
}

/// Counters an endpoint keeps for metrics and `status`.
#[derive(Debug, Default)]
pub struct EndpointStats {
    pub success: AtomicU64,
    pub failure: AtomicU64,
    pub ejections: AtomicU64,
}

/// One endpoint (see the module doc).
pub struct Endpoint {
    /// The address connections go to.
    pub addr: SocketAddr,
    /// `addr` as text (metrics, records, `status`).
    label: String,
    /// The host as configured (a name or an address).
    pub host: String,
    /// `scheme://authority` for absolute-form (h2) requests.
    pub origin: String,
    /// The `Host` header for HTTP/1.1 requests.
    pub host_header: HeaderValue,
    idle: Mutex<Vec<(http1::SendRequest<RelayBody>, Instant)>>,
    h2: Mutex<Option<http2::SendRequest<RelayBody>>>,
    in_flight: AtomicU32,
    /// Milliseconds since the pool's epoch until which it is ejected; 0: not.
    ejected_until_ms: AtomicU64,
    /// Ejections so far (each doubles the next one's length).
    ejections: AtomicU32,
    consecutive_failures: AtomicU32,
    healthy: AtomicBool,
    health_passes: AtomicU32,
    health_failures: AtomicU32,
    draining: AtomicBool,
    pub stats: EndpointStats,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addr", &self.addr)
            .field("host", &self.host)
            .finish()
    }
}

impl Endpoint {
    /// An endpoint at `addr`, reached as `host:port` over http or https.
    pub fn new(addr: SocketAddr, host: &str, port: u16, https: bool) -> Endpoint {
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        let default_port = if https { 443 } else { 80 };
        let authority = if port == default_port {
            bracketed
        } else {
            format!("{bracketed}:{port}")
        };
        let scheme = if https { "https" } else { "http" };
        Endpoint {
            addr,
            label: addr.to_string(),
            host: host.to_string(),
            origin: format!("{scheme}://{authority}"),
            host_header: HeaderValue::from_str(&authority)
                .unwrap_or_else(|_| HeaderValue::from_static("localhost")),
            idle: Mutex::new(Vec::new()),
            h2: Mutex::new(None),
            in_flight: AtomicU32::new(0),
            ejected_until_ms: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            consecutive_failures: AtomicU32::new(0),
            healthy: AtomicBool::new(true),
            health_passes: AtomicU32::new(0),
            health_failures: AtomicU32::new(0),
            draining: AtomicBool::new(false),
            stats: EndpointStats::default(),
        }
    }

    /// The label in metrics, records and `status`: the address.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Requests in flight here now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub(super) fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn end(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Whether it may get a new request at `now_ms` (pool epoch).
    pub fn available(&self, now_ms: u64) -> bool {
        self.healthy.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
            && !self.is_ejected(now_ms)
    }

    /// Whether the outlier detector has it out at `now_ms`.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Until when (pool epoch ms) it is ejected; 0: not ejected.
    pub fn ejected_until_ms(&self) -> u64 {
        self.ejected_until_ms.load(Ordering::Relaxed)
    }

    /// Whether active health checks have it in.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// No new requests; idle connections closed; in-flight ones finish.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
        if let Ok(mut h2) = self.h2.lock() {
            *h2 = None;
        }
    }

    /// A success: the run of failures ends; after a quiet spell since its
    /// last ejection, the doubling starts over.
    pub(super) fn record_success(&self, now_ms: u64, base_ejection_ms: u64) {
        self.stats.success.fetch_add(1, Ordering::Relaxed);
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            let until = self.ejected_until_ms.load(Ordering::Relaxed);
            if now_ms > until.saturating_add(base_ejection_ms) {
                self.ejections.store(0, Ordering::Relaxed);
            }
        }
    }

    /// A failure; returns the length of the run of failures so far.
    pub(super) fn record_failure(&self) -> u32 {
        self.stats.failure.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ejects it until `until_ms`; returns how many times it has been
    /// ejected, this one included.
    pub(super) fn eject(&self, until_ms: u64) -> u32 {
        self.ejected_until_ms.store(until_ms, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.stats.ejections.fetch_add(1, Ordering::Relaxed);
        // Connections to a failing endpoint are not worth keeping.
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
        if let Ok(mut h2) = self.h2.lock() {
            *h2 = None;
        }
        self.ejections.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Ejections so far (the next one's doubling).
    pub(super) fn ejection_count(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// One health check's result; returns the new health when it changed.
    pub(super) fn health_result(
        &self,
        passed: bool,
        healthy_after: u32,
        unhealthy_after: u32,
    ) -> Option<bool> {
        if passed {
            self.health_failures.store(0, Ordering::Relaxed);
            let n = self.health_passes.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.healthy.load(Ordering::Relaxed) && n >= healthy_after {
                self.healthy.store(true, Ordering::Relaxed);
                // Back by health checks: the outlier detector's ejection ends too.
                self.ejected_until_ms.store(0, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            self.health_passes.store(0, Ordering::Relaxed);
            let n = self.health_failures.fetch_add(1, Ordering::Relaxed) + 1;
            if self.healthy.load(Ordering::Relaxed) && n >= unhealthy_after {
                self.healthy.store(false, Ordering::Relaxed);
                if let Ok(mut idle) = self.idle.lock() {
                    idle.clear();
                }
                return Some(false);
            }
        }
        None
    }

    /// A connection for one request: an idle one that is still good, the
    /// shared h2 one, or a new one.
    pub async fn checkout(
        &self,
        leg: &Leg,
        ready_within: Duration,
    ) -> Result<Checked, ConnectError> {
        loop {
            let popped = self.idle.lock().ok().and_then(|mut idle| idle.pop());
            let Some((mut sender, since)) = popped else {
                break;
            };
            if since.elapsed() > IDLE_TIMEOUT || sender.is_closed() {
                continue;
            }
            if sender.is_ready() {
                return Ok(Checked::H1(sender));
            }
            // Just released: the connection finishes reading the last
            // response before it takes the next request.
            if let Ok(Ok(())) = tokio::time::timeout(ready_within, sender.ready()).await {
                return Ok(Checked::H1(sender));
            }
        }
        let shared = self.h2.lock().ok().and_then(|h2| h2.clone());
        if let Some(sender) = shared {
            if !sender.is_closed() {
                return Ok(Checked::H2(sender));
            }
            if let Ok(mut h2) = self.h2.lock() {
                *h2 = None;
            }
        }
        match leg.connect(self.addr).await? {
            Conn::H1(sender) => Ok(Checked::H1(sender)),
            Conn::H2(sender) => {
                if !self.draining()
                    && let Ok(mut h2) = self.h2.lock()
                {
                    *h2 = Some(sender.clone());
                }
                Ok(Checked::H2(sender))
            }
        }
    }

    /// Puts an HTTP/1.1 connection back for reuse (a draining endpoint
    /// keeps none).
    pub fn release(&self, sender: http1::SendRequest<RelayBody>) {
        if sender.is_closed() || self.draining() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < MAX_IDLE
        {
            idle.push((sender, Instant::now()));
        }
    }

    /// Closes idle connections past their time.
    pub fn prune_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|(s, since)| !s.is_closed() && since.elapsed() <= IDLE_TIMEOUT);
        }
    }
}
