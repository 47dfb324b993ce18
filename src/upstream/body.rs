//! The upstream's response body as the gateway relays it, holding its
//! lease on the pool: the endpoint's request in flight, the
//! `max_in_flight` permit and the HTTP/1.1 connection. When the body ends
//! the connection goes back to the endpoint for reuse; when it is dropped
//! early the connection is let go (hyper closes it) and the rest released.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::sync::OwnedSemaphorePermit;

use super::RelayBody;
use super::endpoint::Endpoint;
use crate::watched_body::{BodyWatcher, WatchedBody};

/// What one request holds on the pool until its response ends.
pub struct Lease {
    pub(super) endpoint: Arc<Endpoint>,
    pub(super) sender: Option<http1::SendRequest<RelayBody>>,
    pub(super) permit: Option<OwnedSemaphorePermit>,
    pub(super) pool_in_flight: Arc<AtomicU32>,
}

impl Lease {
    pub(super) fn new(
        endpoint: Arc<Endpoint>,
        permit: Option<OwnedSemaphorePermit>,
        pool_in_flight: Arc<AtomicU32>,
    ) -> Lease {
        endpoint.begin();
        pool_in_flight.fetch_add(1, Ordering::Relaxed);
        Lease {
            endpoint,
            sender: None,
            permit,
            pool_in_flight,
        }
    }

    /// Releases it; the connection goes back only after a complete body.
    fn finish(mut self, complete: bool) {
        if complete && let Some(s) = self.sender.take() {
            self.endpoint.release(s);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.end();
        self.pool_in_flight.fetch_sub(1, Ordering::Relaxed);
        drop(self.permit.take());
    }
}

impl BodyWatcher for Lease {
    fn ended(self, complete: bool) {
        self.finish(complete);
    }
}

/// A relayed response body (see the module doc).
pub type UpstreamBody = WatchedBody<Incoming, Lease>;

impl WatchedBody<Incoming, Lease> {
    pub(super) fn leased(inner: Incoming, lease: Lease) -> UpstreamBody {
        WatchedBody::new(inner, Some(lease))
    }
}
