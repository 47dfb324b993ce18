//! Running as a fleet: N brokers behind a load balancer sharing one set of
//! partners, limits, quotas, revocations and anomaly baselines through
//! Redis (`[cluster]` in `gatehouse.toml`). A home without `[cluster]`
//! never builds a [`Fleet`] and never touches Redis.
//!
//! What lives where: `store` (connecting, key names), `limiter` (the
//! cluster-wide token bucket and daily quota, one Lua script per request),
//! `announce` (invalidations published by the CLI and renewals, and the
//! fence a node keeps while its files lag), `node` (heartbeat, live-node
//! count, fleet-wide per-minute counts that feed the anomaly detector, one
//! alert per fleet), `status` (`gatehouse status --fleet`).
//!
//! Store failure: a request that finds the store down (or slower than
//! `store_timeout`) is judged locally (`on_store_failure = "local"`: every
//! limit at 1/N, N = live nodes last seen) or refused with 503 when the
//! partner has limits (`"deny"`); the node raises one alert per outage and
//! probes the store every 250 ms; once it answers, cluster limits resume.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, watch};

use crate::config::{ClusterSettings, OnStoreFailure};
use crate::control::watch::ReloadTrigger;
use crate::gateway::live::{Live, Snapshot};
use crate::gateway::membership::{GiveBack, LimitFuture, ValueFuture};
use crate::gateway::{Membership, Refusal};
use crate::guard::EventSink;
use crate::guard::alerts::AlertNotice;
use crate::guard::limits::{Admission, LocalShare};
use crate::home::Home;
use crate::identity::PartnerIdentity;
use crate::reason::Reason;
use crate::risk::signature::nonce::NonceCheck;
use crate::risk::{Amount, CallValue};
pub use store::StoreError;

pub mod announce;
pub mod limiter;
pub mod node;
pub mod status;
pub mod store;
pub mod value;

use announce::{Announcement, Fence};
use store::Keys;

impl Membership for Fleet {
    fn admit(&self, id: &PartnerIdentity) -> Result<(), Refusal> {
        Fleet::admit(self, id)
    }

    fn limit<'a>(
        &'a self,
        snapshot: &'a Snapshot,
        partner: &'a str,
        route_index: usize,
        now_ms: i64,
    ) -> LimitFuture<'a> {
        Box::pin(Fleet::limit(self, snapshot, partner, route_index, now_ms))
    }

    fn reserve_value<'a>(
        &'a self,
        partner: &'a str,
        value: &'a CallValue,
        per_day: Option<Amount>,
        now_ms: i64,
    ) -> ValueFuture<'a> {
        Box::pin(Fleet::reserve_value(self, partner, value, per_day, now_ms))
    }

    fn value_total<'a>(
        &'a self,
        partner: &'a str,
        currency: &'a str,
        now_ms: i64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Amount>> + Send + 'a>> {
        Box::pin(async move {
            let mut conn = self.connection()?;
            let key = self
                .keys
                .value(partner, currency, crate::risk::ledger::day_of(now_ms));
            tokio::time::timeout(self.store_timeout(), value::total(&mut conn, &key))
                .await
                .ok()?
                .ok()
        })
    }

    fn first_use_of_nonce<'a>(
        &'a self,
        partner: &'a str,
        nonce: &'a str,
        now_secs: i64,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<NonceCheck, Refusal>> + Send + 'a>>
    {
        Box::pin(Fleet::first_use_of_nonce(self, partner, nonce, now_secs))
    }

    fn partner_changed(self: Arc<Self>, partner: &str) {
        self.announce(announce::Change::partner(
            announce::ChangeKind::PartnerChanged,
            partner,
        ));
    }
}

/// Alert kinds the fleet raises.
pub mod alert {
    pub const STORE_UNAVAILABLE: &str = "cluster_store_unavailable";
    pub const STORE_RECOVERED: &str = "cluster_store_recovered";
}

/// One node's membership in the fleet (see the module doc).
pub struct Fleet {
    settings: ClusterSettings,
    node: String,
    keys: Keys,
    client: redis::Client,
    conn: ArcSwapOption<ConnectionManager>,
    store_up: AtomicBool,
    /// Live nodes at the last heartbeat (at least 1: this one).
    live_nodes: AtomicU32,
    limiter: limiter::ClusterLimiter,
    values: value::ValueTotals,
    fence: Fence,
    /// The highest generation announced, and the one this node has applied.
    heard_generation: AtomicU64,
    applied_generation: AtomicU64,
    live: Arc<Live>,
    events: Arc<EventSink>,
    reload: Arc<ReloadTrigger>,
    counts: Arc<node::Counts>,
    started_ms: i64,
    pub(crate) listen: std::sync::Mutex<Option<(std::net::SocketAddr, std::net::SocketAddr)>>,
}

impl Fleet {
    /// Joins the fleet: builds the client (a bad CA or password file is an
    /// error), hooks the event sink, and starts the heartbeat, the
    /// invalidation listener and the alert gate. A store that does not
    /// answer yet is not an error: the node starts in fallback and joins
    /// when it answers.
    pub async fn start(
        home: &Home,
        settings: &ClusterSettings,
        node_id: &str,
        live: Arc<Live>,
        events: Arc<EventSink>,
        reload: Arc<ReloadTrigger>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Arc<Fleet>, StoreError> {
        let client = store::client(home, settings)?;
        let keys = Keys::new(&settings.key_prefix);
        let conn = match tokio::time::timeout(
            settings.store_timeout * 4,
            store::manager(&client, settings.store_timeout),
        )
        .await
        {
            Ok(Ok(c)) => Some(Arc::new(c)),
            Ok(Err(e)) => {
                tracing::error!(
                    "the fleet store does not answer ({e}); serving on local limits until it does"
                );
                None
            }
            Err(_) => {
                tracing::error!(
                    "the fleet store does not answer in time; serving on local limits until it does"
                );
                None
            }
        };
        let up = conn.is_some();
        let (alert_tx, alert_rx) = mpsc::channel(256);
        let counts = Arc::new(node::Counts::default());
        let fleet = Arc::new(Fleet {
            settings: settings.clone(),
            node: node_id.to_string(),
            limiter: limiter::ClusterLimiter::new(keys.clone()),
            values: value::ValueTotals::default(),
            keys,
            client,
            conn: ArcSwapOption::new(conn),
            store_up: AtomicBool::new(up),
            live_nodes: AtomicU32::new(1),
            fence: Fence::default(),
            heard_generation: AtomicU64::new(0),
            applied_generation: AtomicU64::new(0),
            live,
            events: events.clone(),
            reload,
            counts: counts.clone(),
            started_ms: crate::event::now_ms(),
            listen: std::sync::Mutex::new(None),
        });
        events.set_fleet_hooks(Arc::new(node::Hooks::new(counts, alert_tx)));
        if !up {
            fleet.raise_outage("the store did not answer at start-up");
        }
        tokio::spawn(node::heartbeat(fleet.clone(), shutdown.clone()));
        tokio::spawn(node::alert_gate(fleet.clone(), alert_rx, shutdown.clone()));
        tokio::spawn(listen_invalidations(fleet.clone(), shutdown.clone()));
        tokio::spawn(settle(fleet.clone(), shutdown));
        tracing::info!(
            node = %node_id,
            store = %crate::config::cluster::redact(&settings.redis_url),
            on_store_failure = %settings.on_store_failure,
            "fleet member"
        );
        Ok(fleet)
    }

    /// Remembers the node's listeners for the fleet view.
    pub fn set_listeners(&self, listen: std::net::SocketAddr, admin: std::net::SocketAddr) {
        *self.listen.lock().unwrap_or_else(|p| p.into_inner()) = Some((listen, admin));
    }

    /// `[cluster] on_store_failure` as the live configuration has it
    /// (a reload applies it to the next request).
    pub fn on_store_failure(&self) -> OnStoreFailure {
        self.live
            .snapshot()
            .gateway
            .cluster
            .as_ref()
            .map_or(self.settings.on_store_failure, |c| c.on_store_failure)
    }

    /// `[cluster] store_timeout` as the live configuration has it.
    pub fn store_timeout(&self) -> std::time::Duration {
        self.live
            .snapshot()
            .gateway
            .cluster
            .as_ref()
            .map_or(self.settings.store_timeout, |c| c.store_timeout)
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Whether the store answered last time it was asked.
    pub fn store_up(&self) -> bool {
        self.store_up.load(Ordering::Acquire)
    }

    /// Live nodes at the last heartbeat (at least 1).
    pub fn live_nodes(&self) -> u32 {
        self.live_nodes.load(Ordering::Relaxed).max(1)
    }

    /// The admission check's fleet part: refuses (503, closing) a partner
    /// or certificate whose announced revocation or suspension this node's
    /// files do not show yet.
    pub fn admit(&self, id: &PartnerIdentity) -> Result<(), Refusal> {
        if self.fence.holds(id) {
            return Err(Refusal::new(Reason::FleetSyncPending)
                .detail("an announced revocation or suspension is not in this node's files yet"));
        }
        Ok(())
    }

    /// The limit phase in a fleet (see the module doc). One store round
    /// trip at most, and none for a partner without rate or quota.
    pub async fn limit(
        &self,
        snapshot: &Snapshot,
        partner: &str,
        route_index: usize,
        now_ms: i64,
    ) -> Result<Admission, Refusal> {
        let n = self.live_nodes();
        let Some(entry) = snapshot.partners.get(partner) else {
            return Ok(snapshot.limits.check(partner, Some(route_index), now_ms)?);
        };
        if self.store_up() {
            let admission = snapshot.limits.check_share(
                partner,
                Some(route_index),
                now_ms,
                LocalShare::ConcurrencyOf(n),
            )?;
            let levels = limiter::levels(&entry.partner, Some(route_index));
            if levels.is_empty() {
                return Ok(admission);
            }
            match self.store_check(partner, &levels, now_ms).await {
                Ok(Ok(())) => return Ok(admission),
                Ok(Err(denied)) => return Err(denied.into()),
                Err(e) => {
                    drop(admission);
                    self.store_failed(&e.to_string());
                }
            }
        }
        match self.on_store_failure() {
            OnStoreFailure::Deny if limiter::is_limited(&entry.partner) => {
                Err(Refusal::new(Reason::LimitStoreUnavailable)
                    .detail("the fleet's limit store does not answer; on_store_failure = \"deny\""))
            }
            OnStoreFailure::Deny => Ok(snapshot.limits.check_share(
                partner,
                Some(route_index),
                now_ms,
                LocalShare::ConcurrencyOf(n),
            )?),
            OnStoreFailure::Local => Ok(snapshot.limits.check_share(
                partner,
                Some(route_index),
                now_ms,
                LocalShare::FractionOf(n),
            )?),
        }
    }

    /// Reserves a call's value in the store's day total (see
    /// [`Membership::reserve_value`]); with the store down, as
    /// `on_store_failure` says: this node's totals, or 503.
    async fn reserve_value(
        &self,
        partner: &str,
        value: &CallValue,
        per_day: Option<Amount>,
        now_ms: i64,
    ) -> Result<GiveBack, Refusal> {
        use crate::risk::ledger::day_of;
        let key = self.keys.value(partner, &value.currency, day_of(now_ms));
        if self.store_up()
            && let Some(mut conn) = self.connection()
        {
            let to_midnight = (day_of(now_ms) + 1) * crate::guard::limits::MS_PER_DAY - now_ms;
            let reserved = tokio::time::timeout(
                self.store_timeout(),
                self.values
                    .reserve(&mut conn, &key, value.amount, per_day, to_midnight),
            )
            .await;
            match reserved {
                Ok(Ok(value::Reserved::Yes(total))) => {
                    let day = day_of(now_ms);
                    let seen = self.live.values.clone();
                    seen.observe(partner, &value.currency, total, day);
                    let (amount, partner, currency) =
                        (value.amount, partner.to_string(), value.currency.clone());
                    return Ok(Box::new(move || {
                        tokio::spawn(async move {
                            match value::give_back(&mut conn, &key, amount).await {
                                Ok(left) => seen.observe(&partner, &currency, left, day),
                                Err(e) => tracing::warn!(
                                    key = %key,
                                    "could not give a value back to the fleet's total (it stays counted): {e}"
                                ),
                            }
                        });
                    }));
                }
                Ok(Ok(value::Reserved::Over(total))) => {
                    self.live
                        .values
                        .observe(partner, &value.currency, total, day_of(now_ms));
                    return Err(crate::gateway::value::daily_over(
                        value, per_day, total, now_ms,
                    ));
                }
                Ok(Err(e)) => self.store_failed(&e.to_string()),
                Err(_) => self.store_failed("value reservation: no answer in time"),
            }
        }
        match self.settings.on_store_failure {
            OnStoreFailure::Deny => Err(Refusal::new(Reason::LimitStoreUnavailable)
                .detail("the fleet's store does not answer; on_store_failure = \"deny\"")),
            OnStoreFailure::Local => crate::gateway::value::reserve_locally(
                &self.live.values,
                partner,
                value,
                per_day,
                now_ms,
            ),
        }
    }

    /// `SET NX EX` of the nonce's key: the first node to set it accepts.
    async fn first_use_of_nonce(
        &self,
        partner: &str,
        nonce: &str,
        now_secs: i64,
    ) -> Result<NonceCheck, Refusal> {
        use crate::risk::signature::nonce::NONCE_WINDOW_SECS;
        use sha2::Digest;
        let hash = hex::encode(sha2::Sha256::digest(nonce.as_bytes()));
        let key = self.keys.nonce(partner, &hash);
        if self.store_up()
            && let Some(mut conn) = self.connection()
        {
            let mut cmd = redis::cmd("SET");
            cmd.arg(&key)
                .arg(1)
                .arg("NX")
                .arg("EX")
                .arg(NONCE_WINDOW_SECS);
            let set = cmd.query_async::<Option<String>>(&mut conn);
            match tokio::time::timeout(self.store_timeout(), set).await {
                Ok(Ok(Some(_))) => return Ok(NonceCheck::Fresh),
                Ok(Ok(None)) => return Ok(NonceCheck::Replayed),
                Ok(Err(e)) => self.store_failed(&e.to_string()),
                Err(_) => self.store_failed("nonce check: no answer in time"),
            }
        }
        match self.settings.on_store_failure {
            OnStoreFailure::Deny => Err(Refusal::new(Reason::LimitStoreUnavailable)
                .detail("the fleet's store does not answer; on_store_failure = \"deny\"")),
            OnStoreFailure::Local => Ok(self.live.nonces.check(partner, nonce, now_secs)),
        }
    }

    async fn store_check(
        &self,
        partner: &str,
        levels: &[limiter::Level],
        now_ms: i64,
    ) -> Result<Result<(), crate::guard::limits::LimitDenied>, StoreError> {
        let Some(conn) = self.conn.load_full() else {
            return Err(StoreError::NotConnected);
        };
        let mut conn = (*conn).clone();
        match tokio::time::timeout(
            self.store_timeout(),
            self.limiter.check(&mut conn, partner, levels, now_ms),
        )
        .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(StoreError::NoAnswer {
                what: "limit check",
                within: self.store_timeout(),
            }),
        }
    }

    /// A connection to the store, if there is one.
    pub(crate) fn connection(&self) -> Option<ConnectionManager> {
        self.conn.load_full().map(|c| (*c).clone())
    }

    /// The store failed a call: fall back, and alert once per outage.
    pub(crate) fn store_failed(&self, why: &str) {
        if self.store_up.swap(false, Ordering::AcqRel) {
            self.raise_outage(why);
        }
    }

    fn raise_outage(&self, why: &str) {
        let mode = match self.on_store_failure() {
            OnStoreFailure::Local => format!(
                "limits are enforced per node at 1/{} of each rate",
                self.live_nodes()
            ),
            OnStoreFailure::Deny => "partners with limits are refused (503)".to_string(),
        };
        tracing::error!("the fleet store does not answer ({why}): {mode} until it does");
        self.events.raise_notice(AlertNotice {
            kind: alert::STORE_UNAVAILABLE.into(),
            partner: None,
            addr: None,
            message: format!("the fleet's Redis store does not answer ({why}); {mode}"),
            time_ms: crate::event::now_ms(),
            details: serde_json::json!({
                "node": self.node,
                "on_store_failure": self.on_store_failure().to_string(),
                "live_nodes": self.live_nodes(),
            }),
        });
    }

    /// The store answered again: cluster limits resume.
    pub(crate) fn store_answered(&self) {
        if !self.store_up.swap(true, Ordering::AcqRel) {
            tracing::info!("the fleet store answers again: cluster-wide limits resume");
            self.events.raise_notice(AlertNotice {
                kind: alert::STORE_RECOVERED.into(),
                partner: None,
                addr: None,
                message: "the fleet's Redis store answers again; cluster-wide limits resume".into(),
                time_ms: crate::event::now_ms(),
                details: serde_json::json!({ "node": self.node }),
            });
            // Changes announced during the outage were not heard: look now.
            self.reload.poke(false);
        }
    }

    /// Takes in an announcement heard on the channel.
    fn heard(&self, a: &Announcement) {
        self.fence.add(a);
        self.heard_generation
            .fetch_max(a.generation, Ordering::AcqRel);
        self.reload.poke(false);
    }

    /// Publishes a change made inside this broker (a self-service renewal).
    pub fn announce(self: &Arc<Self>, change: announce::Change) {
        let fleet = self.clone();
        tokio::spawn(async move {
            let Some(mut conn) = fleet.connection() else {
                return;
            };
            if let Err(e) =
                announce::publish_async(&mut conn, &fleet.keys, change, &fleet.node).await
            {
                tracing::warn!(
                    "the fleet was not told of a renewal ({e}); nodes find it at their poll"
                );
            }
        });
    }

    fn heartbeat_value(&self) -> serde_json::Value {
        let listen = *self.listen.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({
            "node": self.node,
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "started_ms": self.started_ms,
            "time_ms": crate::event::now_ms(),
            "generation": self.applied_generation.load(Ordering::Acquire),
            "fence_pending": self.fence.pending(),
            "listen": listen.map(|l| l.0.to_string()),
            "admin": listen.map(|l| l.1.to_string()),
            "partners": self.live.snapshot().partners.len(),
            "restart_pending": self.live.restart_pending(),
        })
    }
}

/// Listens for invalidations on the store's pub/sub channel (its own
/// connection), reconnecting after a failure; every (re)subscription also
/// looks at the files, since announcements made meanwhile were missed.
async fn listen_invalidations(fleet: Arc<Fleet>, mut shutdown: watch::Receiver<bool>) {
    use futures_util::StreamExt;
    loop {
        let sub = async {
            let mut pubsub = fleet.client.get_async_pubsub().await?;
            pubsub.subscribe(fleet.keys.channel()).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(fleet.store_timeout() * 4, sub).await {
            Ok(Ok(pubsub)) => {
                tracing::debug!("listening for fleet invalidations");
                fleet.reload.poke(false);
                let mut stream = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        msg = stream.next() => match msg {
                            Some(msg) => {
                                let payload: String = msg.get_payload().unwrap_or_default();
                                match serde_json::from_str::<Announcement>(&payload) {
                                    Ok(a) => {
                                        tracing::info!(generation = a.generation, origin = %a.origin, change = ?a.change.kind, partner = ?a.change.partner, "fleet change announced");
                                        fleet.heard(&a);
                                    }
                                    Err(e) => tracing::warn!("unreadable fleet announcement ignored: {e}"),
                                }
                            }
                            None => break,
                        },
                        _ = shutdown.changed() => return,
                    }
                }
                tracing::warn!("the fleet invalidation channel closed; reconnecting");
            }
            Ok(Err(e)) => tracing::debug!("fleet invalidation channel: {e}"),
            Err(_) => tracing::debug!("fleet invalidation channel: no answer"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Until the files show every announced change: looks again every 100 ms
/// (re-reading every file each second, for shared storage whose stamps
/// lag), and keeps the fence up meanwhile.
async fn settle(fleet: Arc<Fleet>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waiting_since: Option<(std::time::Instant, u64)> = None;
    let mut last_poke = std::time::Instant::now();
    let mut last_force = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let heard = fleet.heard_generation.load(Ordering::Acquire);
        let applied = fleet.applied_generation.load(Ordering::Acquire);
        let left = fleet.fence.settle(&fleet.live.snapshot());
        if heard <= applied && left == 0 {
            waiting_since = None;
            continue;
        }
        let (since, looks_then) =
            *waiting_since.get_or_insert((std::time::Instant::now(), fleet.reload.looks()));
        if left == 0 && fleet.reload.looks() > looks_then {
            fleet.applied_generation.fetch_max(heard, Ordering::AcqRel);
            tracing::info!(
                generation = heard,
                after_ms = since.elapsed().as_millis() as u64,
                "fleet change applied"
            );
            waiting_since = None;
            continue;
        }
        if last_poke.elapsed() >= std::time::Duration::from_millis(100) {
            let force = last_force.elapsed() >= std::time::Duration::from_secs(1);
            if force {
                last_force = std::time::Instant::now();
                if since.elapsed() >= std::time::Duration::from_secs(2) {
                    tracing::warn!(
                        pending = left,
                        "this node's files do not show an announced change yet; the affected partners stay refused"
                    );
                }
            }
            fleet.reload.poke(force);
            last_poke = std::time::Instant::now();
        }
    }
}
