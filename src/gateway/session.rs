//! A verified partner connection as its requests see it: the partner's
//! identity, the peer, the TLS version, and the connection's state (close
//! requested, requests in flight, last activity for the idle timer).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::Notify;

use crate::identity::PartnerIdentity;

/// One verified partner connection, shared by its requests.
pub struct ConnCtx {
    pub identity: PartnerIdentity,
    pub peer: SocketAddr,
    pub peer_ip: String,
    pub tls_version: &'static str,
    /// Set when the connection must close after the current response.
    closing: AtomicBool,
    close: Notify,
    in_flight: AtomicUsize,
    last_activity_ms: AtomicI64,
    /// The gateway's clock origin (idle timers count from it).
    epoch: Instant,
}

impl ConnCtx {
    pub fn new(
        identity: PartnerIdentity,
        peer: SocketAddr,
        tls_version: &'static str,
        epoch: Instant,
    ) -> ConnCtx {
        ConnCtx {
            identity,
            peer,
            peer_ip: peer.ip().to_string(),
            tls_version,
            closing: AtomicBool::new(false),
            close: Notify::new(),
            in_flight: AtomicUsize::new(0),
            last_activity_ms: AtomicI64::new(epoch.elapsed().as_millis() as i64),
            epoch,
        }
    }

    /// Resolves when a refusal asked the connection to close.
    pub async fn close_requested(&self) {
        self.close.notified().await
    }

    /// Whether a request is in flight.
    pub fn busy(&self) -> bool {
        self.in_flight.load(Ordering::Relaxed) > 0
    }

    /// When the last request began or ended (gateway milliseconds).
    pub fn last_activity_ms(&self) -> i64 {
        self.last_activity_ms.load(Ordering::Relaxed)
    }

    /// Asks the connection to close after the response in progress.
    pub fn request_close(&self) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            self.close.notify_one();
        }
    }

    /// Whether the connection closes after the current response.
    pub fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the returned guard drops.
    pub fn begin_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.last_activity_ms
            .store(self.now_ms(), Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Milliseconds on the gateway's clock.
    pub fn now_ms(&self) -> i64 {
        self.epoch.elapsed().as_millis() as i64
    }
}

/// Decrements the connection's in-flight count when the exchange ends.
pub struct InFlight(Arc<ConnCtx>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0
            .last_activity_ms
            .store(self.0.now_ms(), Ordering::Relaxed);
    }
}
