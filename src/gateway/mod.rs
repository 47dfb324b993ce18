//! The partner-facing gateway: each connection's life (`conn`: accept,
//! handshake, identity, idle and drain); each request's way in (`door`: its
//! record, admission, then a door): a partner's API call through the phases
//! of `request` (frame → target → authorize → limit → build → relay), or a
//! certificate request through `certificates` (renewal, decided by
//! `renewal`, which reads `seen`: the certificates that completed a
//! handshake; EST enrolment, `est`). A connection without a client
//! certificate gets `est::anonymous` alone (enrolment, else 403). Every refusal travels as the one `Refusal` (`refusal` holds
//! the conversions of the layers' errors); `respond` is the one place that
//! turns an outcome into the partner's response and its record; `live` is
//! the configuration the phases read; `relay` the upstream leg; `exchange`
//! the record-keeping response body; `mirror` the copies of live requests
//! sent to a candidate upstream and compared, off the partner's path.
//!
//! The gateway receives what it uses as a [`Gateway`]: the live state, the
//! event sink, the upstream identity signer and the renewal state. It knows
//! nothing of the admin listener, the watcher or the journal's internals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use crate::guard::EventSink;
use crate::identity_token::LiveIdentity;

pub mod certificates;
pub mod conn;
pub mod door;
pub mod est;
pub mod exchange;
pub mod handshake_gate;
pub mod header_guard;
pub mod live;
pub mod membership;
pub mod mirror;
pub mod refusal;
pub mod relay;
pub mod renewal;
pub mod request;
pub mod respond;
pub mod seen;
pub mod session;
pub mod signed;
pub mod split;
pub mod value;
pub mod write_guard;

pub use conn::{accept_loop, http_builder};
pub use membership::Membership;
pub use refusal::Refusal;

/// What the gateway's connections and requests use.
pub struct Gateway {
    /// The validated configuration, routes, certificates and upstreams.
    pub live: Arc<live::Live>,
    /// Where every event goes (monitor, anomaly detector, journal).
    pub events: Arc<EventSink>,
    /// The key that signs `X-Gatehouse-Identity` for upstreams.
    pub identity: Arc<LiveIdentity>,
    /// Self-service renewal state (rate, one at a time).
    pub renewals: renewal::Renewals,
    /// Enrolment state (attempts per address, one redemption at a time).
    pub enrolments: est::Enrolments,
    /// Certificates that completed a handshake (for renewal).
    pub seen: Arc<seen::Seen>,
    /// Connections being served, and whether the listener still accepts.
    pub connections: Arc<Connections>,
    /// The fleet this node belongs to (`[cluster]`); `None`: a single node.
    pub fleet: Option<Arc<dyn Membership>>,
    /// TLS handshakes in progress per client address (the cap is the live
    /// `[server] max_pending_handshakes_per_addr`).
    pub handshakes: Arc<handshake_gate::HandshakeGate>,
    /// The clock origin of the connections' idle timers.
    epoch: Instant,
}

impl Gateway {
    pub fn new(
        live: Arc<live::Live>,
        events: Arc<EventSink>,
        identity: Arc<LiveIdentity>,
    ) -> Gateway {
        let max_pending = live
            .snapshot()
            .gateway
            .server
            .max_pending_handshakes_per_addr;
        Gateway {
            handshakes: handshake_gate::HandshakeGate::new(max_pending),
            live,
            events,
            identity,
            renewals: Default::default(),
            enrolments: Default::default(),
            seen: Arc::default(),
            connections: Arc::default(),
            fleet: None,
            epoch: Instant::now(),
        }
    }

    /// The same gateway as a member of `fleet`.
    pub fn with_fleet(mut self, fleet: Option<Arc<dyn Membership>>) -> Gateway {
        self.fleet = fleet;
        self
    }
}

/// The listener's state: connections open, and whether it still accepts.
#[derive(Default)]
pub struct Connections {
    listening: AtomicBool,
    active: AtomicUsize,
}

impl Connections {
    /// The listener accepts (true) or drains (false).
    pub fn set_listening(&self, on: bool) {
        self.listening.store(on, Ordering::Relaxed);
    }

    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Connections being served now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}
