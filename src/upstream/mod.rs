//! An upstream as a pool of endpoints: what the relay sends each request
//! through. The pool admits the request (`max_in_flight` and its queue),
//! picks an endpoint (least request or round robin, among those not
//! ejected, failed by health checks or draining), sends it on that
//! endpoint's connection pool, and retries by the rules in [`retry`],
//! within `per_try_timeout`, `response_timeout` and the retry budget.
//! Failures feed the outlier detector; a background upkeep task runs the
//! active health checks, re-resolves host names and closes idle
//! connections. Header hygiene is the relay's ([`crate::gateway::relay`]).

mod admission;
mod balancer;
mod body;
mod endpoint;
mod error;
mod leg;
pub mod metrics;
mod outlier;
pub mod retry;
mod upkeep;

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderMap};
use http::{Method, Request, Response, Uri, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use rustls_pki_types::ServerName;

pub use body::UpstreamBody;
pub use endpoint::Endpoint;
pub use error::{UpstreamBuildError, UpstreamError};

use body::Lease;
use endpoint::Checked;
use leg::{ConnectError, Leg};
use retry::Failure;

use crate::config::{Balance, EndpointUrl, HealthSettings, OutlierSettings, UpstreamSettings};
use crate::home::Home;
use crate::tls;

/// Error type of relayed bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body the broker sends upstream.
pub type RelayBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// Retries in flight always allowed, whatever the budget says (so that a
/// quiet upstream can retry at all).
const MIN_RETRIES_IN_FLIGHT: u32 = 3;

/// A response relayed from one endpoint.
pub struct Relayed {
    pub response: Response<UpstreamBody>,
    /// The endpoint that answered (its address).
    pub endpoint: String,
    /// Attempts it took (1: no retry).
    pub attempts: u32,
}

/// A failed upstream leg, with what the record says about it.
#[derive(Debug)]
pub struct SendFailure {
    pub error: UpstreamError,
    /// The last endpoint tried, if any.
    pub endpoint: Option<String>,
    pub attempts: u32,
}

/// Counters of one pool, for metrics.
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Retries by reason: not_sent, reset, per_try_timeout, status_5xx.
    pub retries: [AtomicU64; 4],
    /// Retries the budget did not allow.
    pub budget_exhausted: AtomicU64,
}

/// What `status`, the console and the metrics show of one endpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointView {
    pub address: String,
    pub host: String,
    /// `up`, `ejected`, `unhealthy` or `draining`.
    pub state: &'static str,
    pub healthy: bool,
    pub in_flight: u32,
    pub success: u64,
    pub failure: u64,
    pub ejections: u64,
}

/// One configured upstream (see the module doc).
pub struct Pool {
    pub name: String,
    https: bool,
    base_path: String,
    specs: Vec<EndpointUrl>,
    leg: Leg,
    leg_key: u64,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    balance: Balance,
    admission: Arc<admission::Admission>,
    retries: u32,
    per_try: Duration,
    pub response_timeout: Duration,
    connect_timeout: Duration,
    retry_budget: f64,
    health: Option<HealthSettings>,
    outlier: OutlierSettings,
    dns_refresh: Duration,
    /// Whether requests relayed here carry `X-Gatehouse-Identity`.
    pub signed_identity: bool,
    epoch: Instant,
    next: AtomicUsize,
    in_flight: Arc<AtomicU32>,
    retries_in_flight: AtomicU32,
    pub stats: PoolStats,
    upkeep_started: AtomicBool,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.name)
            .field("endpoints", &self.endpoints.load().len())
            .finish()
    }
}

/// Counts one retry in flight while it lasts.
struct RetryInFlight<'a>(&'a AtomicU32);

impl Drop for RetryInFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The request of one exchange, as often as the retry rules allow it.
enum Payload {
    /// Headers and the whole (small) body, kept to be sent again.
    Kept {
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    },
    /// Streamed: sent at most once (back here only if it never left).
    Once(Option<Request<RelayBody>>),
}

impl Payload {
    fn take(&mut self) -> Option<Request<RelayBody>> {
        match self {
            Payload::Once(r) => r.take(),
            Payload::Kept {
                method,
                uri,
                headers,
                body,
            } => {
                let mut r = Request::new(Full::new(body.clone()).map_err(|e| match e {}).boxed());
                *r.method_mut() = method.clone();
                *r.uri_mut() = uri.clone();
                *r.headers_mut() = headers.clone();
                Some(r)
            }
        }
    }

    fn restore(&mut self, req: Request<RelayBody>) {
        if let Payload::Once(slot) = self {
            *slot = Some(req);
        }
    }

    fn kept(&self) -> bool {
        matches!(self, Payload::Kept { .. })
    }
}

/// What one attempt came to.
enum Attempt {
    Answered(Response<Incoming>),
    /// Never reached the endpoint; the request is back when it was taken.
    NotSent(Option<Request<RelayBody>>, UpstreamError),
    /// Failed after (some of) the request was sent.
    Failed(UpstreamError),
}

impl Pool {
    /// Builds the pool for `[upstreams.<name>]`, loading its CA and the
    /// broker's client certificate. Endpoints (with their connections and
    /// outlier state) and the admission queue of `previous` are kept where
    /// they are unchanged, so a reload drops no in-flight request; an
    /// endpoint no longer listed drains.
    pub fn build(
        name: &str,
        settings: &UpstreamSettings,
        home: &Home,
        previous: Option<&Pool>,
    ) -> Result<Pool, UpstreamBuildError> {
        let specs = settings
            .parsed_endpoints()
            .map_err(|why| UpstreamBuildError::Endpoint {
                name: name.to_string(),
                why,
            })?;
        let first = specs
            .first()
            .ok_or_else(|| UpstreamBuildError::NoEndpoint(name.to_string()))?;
        let https = first.https;
        let base_path = first.base_path.clone();
        let (tls_config, leg_key) = if https {
            let ca = settings
                .ca
                .as_ref()
                .ok_or_else(|| UpstreamBuildError::NoCa(name.to_string()))?;
            let cert = match &settings.client_cert {
                Some(p) => home.resolve(p),
                None => home.broker_client_cert(),
            };
            let key = match &settings.client_key {
                Some(p) => home.resolve(p),
                None => home.broker_client_key(),
            };
            let ca = home.resolve(ca);
            let leg_key = leg_key(settings, &[&ca, &cert, &key]);
            let chain = tls::load_certs(&cert)?;
            let key = tls::load_key(&key)?;
            let config = tls::upstream_client_config(&ca, chain, key)?;
            let server_name = settings.server_name.clone().unwrap_or(first.host.clone());
            let server_name = ServerName::try_from(server_name.clone()).map_err(|_| {
                UpstreamBuildError::ServerName {
                    name: name.to_string(),
                    server_name: server_name.clone(),
                }
            })?;
            (Some((config, server_name)), leg_key)
        } else {
            (None, leg_key(settings, &[]))
        };
        let reuse = previous.filter(|p| p.leg_key == leg_key && p.https == https);
        let old: Vec<Arc<Endpoint>> = reuse
            .map(|p| p.endpoints.load().iter().cloned().collect())
            .unwrap_or_default();
        let mut endpoints = Vec::new();
        for spec in &specs {
            for addr in resolve_now(spec) {
                if endpoints.iter().any(|e: &Arc<Endpoint>| e.addr == addr) {
                    continue;
                }
                let kept = old
                    .iter()
                    .find(|e| e.addr == addr && e.host == spec.host && !e.draining());
                endpoints.push(match kept {
                    Some(e) => e.clone(),
                    None => Arc::new(Endpoint::new(addr, &spec.host, spec.port, https)),
                });
            }
        }
        let admission = match previous {
            Some(p) if p.admission.same_as(settings.max_in_flight, &settings.queue) => {
                p.admission.clone()
            }
            _ => Arc::new(admission::Admission::new(
                settings.max_in_flight,
                &settings.queue,
            )),
        };
        Ok(Pool {
            name: name.to_string(),
            https,
            base_path,
            specs,
            leg: Leg::new(tls_config, settings.connect_timeout),
            leg_key,
            endpoints: ArcSwap::from_pointee(endpoints),
            balance: settings.balance,
            admission,
            retries: settings.retries,
            per_try: settings.per_try(),
            response_timeout: settings.response_timeout,
            connect_timeout: settings.connect_timeout,
            retry_budget: settings.retry_budget,
            health: settings.health.clone(),
            outlier: settings.outlier.clone(),
            dns_refresh: settings.dns_refresh,
            signed_identity: settings.signed_identity,
            epoch: previous.map(|p| p.epoch).unwrap_or_else(Instant::now),
            next: AtomicUsize::new(0),
            in_flight: Arc::new(AtomicU32::new(0)),
            retries_in_flight: AtomicU32::new(0),
            stats: PoolStats::default(),
            upkeep_started: AtomicBool::new(false),
        })
    }

    /// Called once the pool has replaced `previous` (a reload): endpoints
    /// the new pool no longer has drain.
    pub fn retire(&self, previous: &Pool) {
        // Only an address the new pool no longer has drains. An endpoint
        // rebuilt for the same address (its leg changed: new certificates)
        // is replaced, not removed: requests that took the previous pool
        // just before the swap still complete on it, and its connections
        // close when the last of them lets the pool go.
        let now = self.endpoints.load();
        for e in previous.endpoints.load().iter() {
            let kept = now
                .iter()
                .any(|n| Arc::ptr_eq(n, e) || (n.addr == e.addr && n.host == e.host));
            if !kept {
                e.drain();
            }
        }
    }

    /// The upstream is gone from the configuration: every endpoint drains.
    pub fn retire_all(&self) {
        for e in self.endpoints.load().iter() {
            e.drain();
        }
    }

    /// The relayed path (origin form): the base path, the path, the query.
    pub fn uri_for(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut s = String::with_capacity(
            self.base_path.len() + path.len() + 1 + query.map_or(0, |q| q.len() + 1),
        );
        s.push_str(&self.base_path);
        s.push_str(path);
        if let Some(q) = query {
            s.push('?');
            s.push_str(q);
        }
        Ok(Uri::try_from(s)?)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The endpoints now (draining ones are no longer listed).
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// Requests in the `max_in_flight` queue now.
    pub fn queue_depth(&self) -> u32 {
        self.admission.queue_depth()
    }

    /// Requests in flight to this upstream now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Each endpoint's state, for `status`, the console and the metrics.
    pub fn view(&self) -> Vec<EndpointView> {
        let now = self.now_ms();
        self.endpoints
            .load()
            .iter()
            .map(|e| EndpointView {
                address: e.label().to_string(),
                host: e.host.clone(),
                state: if e.draining() {
                    "draining"
                } else if !e.healthy() {
                    "unhealthy"
                } else if e.is_ejected(now) {
                    "ejected"
                } else {
                    "up"
                },
                healthy: e.available(now),
                in_flight: e.in_flight(),
                success: e.stats.success.load(Ordering::Relaxed),
                failure: e.stats.failure.load(Ordering::Relaxed),
                ejections: e.stats.ejections.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Seconds until some endpoint may take traffic again (at least 1).
    fn retry_after_secs(&self, endpoints: &[Arc<Endpoint>]) -> u64 {
        let now = self.now_ms();
        let soonest = endpoints
            .iter()
            .filter(|e| e.healthy() && !e.draining() && e.is_ejected(now))
            .map(|e| e.ejected_until_ms().saturating_sub(now))
            .min();
        match soonest {
            Some(ms) => ms.div_ceil(1000).max(1),
            None => self
                .health
                .as_ref()
                .map_or(1, |h| h.interval.as_secs().max(1)),
        }
    }

    /// A failure on `ep`; ejects it after `consecutive_failures` in a row,
    /// unless that would put more than `max_ejected_percent` of the pool out.
    fn note_failure(&self, ep: &Arc<Endpoint>, endpoints: &[Arc<Endpoint>]) {
        let run = ep.record_failure();
        if run < self.outlier.consecutive_failures {
            return;
        }
        let now = self.now_ms();
        if ep.is_ejected(now) {
            return;
        }
        let ejected = endpoints.iter().filter(|e| e.is_ejected(now)).count();
        if !outlier::may_eject(endpoints.len(), ejected, self.outlier.max_ejected_percent) {
            return;
        }
        let nth = ep.ejection_count() + 1;
        let length = outlier::ejection_length(self.outlier.base_ejection, nth);
        ep.eject(now + length.as_millis() as u64);
        tracing::warn!(
            upstream = %self.name,
            endpoint = %ep.label(),
            "endpoint ejected for {} after {run} failures in a row (ejection {nth})",
            crate::timefmt::format_duration(length)
        );
    }

    fn note_success(&self, ep: &Endpoint) {
        ep.record_success(self.now_ms(), self.outlier.base_ejection.as_millis() as u64);
    }

    /// Whether one more retry fits the budget now.
    fn retry_allowed(&self) -> bool {
        let retrying = self.retries_in_flight.load(Ordering::Relaxed);
        let allowed =
            (self.retry_budget * f64::from(self.in_flight.load(Ordering::Relaxed))) as u32;
        retrying < allowed.max(MIN_RETRIES_IN_FLIGHT)
    }

    /// Sends one exchange's request (origin-form URI from [`Pool::uri_for`],
    /// headers prepared by the relay) and returns the response head.
    pub async fn send(self: &Arc<Self>, req: Request<RelayBody>) -> Result<Relayed, SendFailure> {
        self.ensure_upkeep();
        let fail = |error, endpoint, attempts| SendFailure {
            error,
            endpoint,
            attempts,
        };
        let mut permit = self.admission.admit().await.map_err(|e| fail(e, None, 0))?;
        let deadline = Instant::now() + self.response_timeout;
        let endpoints = self.endpoints.load_full();
        let repeatable = retry::repeatable(req.method(), req.headers());
        let mut payload = self
            .payload(req, repeatable, endpoints.len(), deadline)
            .await
            .map_err(|e| fail(e, None, 0))?;
        let mut tried: Vec<Arc<Endpoint>> = Vec::new();
        let mut attempts = 0u32;
        let mut last: Option<(UpstreamError, Option<String>, Failure)> = None;
        let mut _retrying: Option<RetryInFlight<'_>> = None;
        while attempts <= self.retries {
            if Instant::now() >= deadline {
                last = Some((
                    UpstreamError::Timeout,
                    last.and_then(|l| l.1),
                    Failure::PerTryTimeout,
                ));
                break;
            }
            let allow_repeat = last.as_ref().is_none_or(|l| l.2 == Failure::NotSent);
            let Some(ep) = balancer::pick(
                &endpoints,
                self.balance,
                &self.next,
                self.now_ms(),
                &tried,
                allow_repeat,
            ) else {
                if last.is_none() {
                    let error = UpstreamError::Unavailable {
                        detail: format!("no healthy endpoint among {}", endpoints.len()),
                        retry_after_secs: self.retry_after_secs(&endpoints),
                    };
                    return Err(fail(error, None, 0));
                }
                break;
            };
            if let Some((_, _, why)) = &last {
                if !self.retry_allowed() {
                    self.stats.budget_exhausted.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                self.stats.retries[retry_index(*why)].fetch_add(1, Ordering::Relaxed);
                if _retrying.is_none() {
                    self.retries_in_flight.fetch_add(1, Ordering::Relaxed);
                    _retrying = Some(RetryInFlight(&self.retries_in_flight));
                }
            }
            if !tried.iter().any(|t| Arc::ptr_eq(t, &ep)) {
                tried.push(ep.clone());
            }
            attempts += 1;
            let mut lease = Lease::new(ep.clone(), permit.take(), self.in_flight.clone());
            let outcome = self.attempt(&ep, &mut payload, &mut lease, deadline).await;
            let label = ep.label().to_string();
            match outcome {
                Attempt::Answered(resp) => {
                    let status = resp.status();
                    if status.is_server_error() {
                        self.note_failure(&ep, &endpoints);
                    } else {
                        self.note_success(&ep);
                    }
                    let why = Failure::Status(status);
                    let again = attempts <= self.retries
                        && retry::may_retry(why, repeatable, payload.kept())
                        && balancer::pick(
                            &endpoints,
                            self.balance,
                            &self.next,
                            self.now_ms(),
                            &tried,
                            false,
                        )
                        .is_some();
                    if again {
                        permit = lease.permit.take();
                        drop(resp);
                        last = Some((
                            UpstreamError::Other(format!("{} answered {status}", ep.label())),
                            Some(label),
                            why,
                        ));
                        continue;
                    }
                    let (parts, body) = resp.into_parts();
                    return Ok(Relayed {
                        response: Response::from_parts(parts, UpstreamBody::leased(body, lease)),
                        endpoint: label,
                        attempts,
                    });
                }
                Attempt::NotSent(req, error) => {
                    self.note_failure(&ep, &endpoints);
                    permit = lease.permit.take();
                    if let Some(req) = req {
                        payload.restore(req);
                    }
                    tracing::debug!(upstream = %self.name, endpoint = %ep.label(), "not sent: {error}");
                    last = Some((error, Some(label), Failure::NotSent));
                }
                Attempt::Failed(UpstreamError::BodyTooLarge) => {
                    return Err(fail(UpstreamError::BodyTooLarge, Some(label), attempts));
                }
                Attempt::Failed(error) => {
                    self.note_failure(&ep, &endpoints);
                    permit = lease.permit.take();
                    let why = if error == UpstreamError::Timeout {
                        Failure::PerTryTimeout
                    } else {
                        Failure::Reset
                    };
                    tracing::debug!(upstream = %self.name, endpoint = %ep.label(), "attempt failed: {error}");
                    let again = retry::may_retry(why, repeatable, payload.kept());
                    last = Some((error, Some(label), why));
                    if !again {
                        break;
                    }
                }
            }
        }
        let (error, endpoint, why) = last.unwrap_or((
            UpstreamError::Other("no attempt was made".into()),
            None,
            Failure::Reset,
        ));
        let error = match (why, error) {
            // Never reached any endpoint: the pool is unavailable now.
            (Failure::NotSent, UpstreamError::Tls(t)) => UpstreamError::Tls(t),
            (Failure::NotSent, e) => UpstreamError::Unavailable {
                detail: e.to_string(),
                retry_after_secs: self.retry_after_secs(&endpoints),
            },
            (_, e) => e,
        };
        Err(fail(error, endpoint, attempts))
    }

    /// Keeps a small body of a request that may be sent again (only when
    /// another endpoint could take a retry).
    async fn payload(
        &self,
        req: Request<RelayBody>,
        repeatable: bool,
        endpoints: usize,
        deadline: Instant,
    ) -> Result<Payload, UpstreamError> {
        let small = req.body().is_end_stream()
            || req
                .body()
                .size_hint()
                .exact()
                .is_some_and(|n| n <= retry::MAX_KEPT_BODY);
        if !(self.retries > 0 && endpoints > 1 && repeatable && small) {
            return Ok(Payload::Once(Some(req)));
        }
        let (parts, body) = req.into_parts();
        let body = if body.is_end_stream() {
            Bytes::new()
        } else {
            match tokio::time::timeout_at(deadline.into(), body.collect()).await {
                Ok(Ok(c)) => c.to_bytes(),
                Ok(Err(e)) if error::is_body_limit(e.as_ref()) => {
                    return Err(UpstreamError::BodyTooLarge);
                }
                Ok(Err(e)) => {
                    return Err(UpstreamError::Other(format!(
                        "the partner's request body failed: {}",
                        error::chain_text(e.as_ref())
                    )));
                }
                Err(_) => return Err(UpstreamError::Timeout),
            }
        };
        Ok(Payload::Kept {
            method: parts.method,
            uri: parts.uri,
            headers: parts.headers,
            body,
        })
    }

    /// One attempt on `ep`: a connection, then the request, within the
    /// per-try timeout.
    async fn attempt(
        &self,
        ep: &Arc<Endpoint>,
        payload: &mut Payload,
        lease: &mut Lease,
        deadline: Instant,
    ) -> Attempt {
        let left = deadline.saturating_duration_since(Instant::now());
        let conn = match tokio::time::timeout(left, ep.checkout(&self.leg, self.connect_timeout))
            .await
        {
            Ok(Ok(c)) => c,
            Ok(Err(ConnectError::Tls(t))) => return Attempt::NotSent(None, UpstreamError::Tls(t)),
            Ok(Err(ConnectError::Io(m))) => return Attempt::NotSent(None, UpstreamError::Other(m)),
            Err(_) => return Attempt::Failed(UpstreamError::Timeout),
        };
        let Some(mut req) = payload.take() else {
            return Attempt::Failed(UpstreamError::Other("request already sent".into()));
        };
        let per_try = self
            .per_try
            .min(deadline.saturating_duration_since(Instant::now()));
        let sent = match conn {
            Checked::H1(mut sender) => {
                *req.version_mut() = Version::HTTP_11;
                req.headers_mut()
                    .insert(header::HOST, ep.host_header.clone());
                let fut = sender.try_send_request(req);
                lease.sender = Some(sender);
                tokio::time::timeout(per_try, fut).await
            }
            Checked::H2(mut sender) => {
                *req.version_mut() = Version::HTTP_2;
                req.headers_mut().remove(header::HOST);
                let absolute = match req.uri().path_and_query() {
                    Some(pq) => Uri::try_from(format!("{}{}", ep.origin, pq.as_str())),
                    None => Uri::try_from(ep.origin.as_str()),
                };
                match absolute {
                    Ok(u) => *req.uri_mut() = u,
                    Err(e) => return Attempt::Failed(UpstreamError::Other(e.to_string())),
                }
                let fut = sender.try_send_request(req);
                tokio::time::timeout(per_try, fut).await
            }
        };
        match sent {
            Err(_) => {
                lease.sender = None;
                Attempt::Failed(UpstreamError::Timeout)
            }
            Ok(Ok(resp)) => Attempt::Answered(resp),
            Ok(Err(mut e)) => {
                lease.sender = None;
                let returned = e.take_message();
                let err = e.into_error();
                if error::is_body_limit(&err) {
                    return Attempt::Failed(UpstreamError::BodyTooLarge);
                }
                let text = error::chain_text(&err);
                match returned {
                    Some(req) => Attempt::NotSent(Some(req), UpstreamError::Other(text)),
                    None => Attempt::Failed(UpstreamError::Other(text)),
                }
            }
        }
    }

    /// Whether the upkeep task runs (the pool has been used).
    pub fn upkeep_running(&self) -> bool {
        self.upkeep_started.load(Ordering::Relaxed)
    }

    /// Starts the upkeep task (health checks, DNS, idle connections) the
    /// first time the pool is used inside the runtime.
    pub fn ensure_upkeep(self: &Arc<Self>) {
        if self.upkeep_started.load(Ordering::Relaxed)
            || self.upkeep_started.swap(true, Ordering::Relaxed)
        {
            return;
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(upkeep::run(Arc::downgrade(self)));
        } else {
            self.upkeep_started.store(false, Ordering::Relaxed);
        }
    }
}

/// Each upstream with its endpoints' state, sorted by name (for `status`
/// and the console).
pub fn status_json(pools: &std::collections::HashMap<String, Arc<Pool>>) -> serde_json::Value {
    let mut names: Vec<&String> = pools.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let pool = &pools[name];
            serde_json::json!({
                "name": name,
                "in_flight": pool.in_flight(),
                "queue_depth": pool.queue_depth(),
                "endpoints": pool.view(),
            })
        })
        .collect()
}

fn retry_index(f: Failure) -> usize {
    match f {
        Failure::NotSent => 0,
        Failure::Reset => 1,
        Failure::PerTryTimeout => 2,
        Failure::Status(_) => 3,
    }
}

/// Retry reasons in the order of [`PoolStats::retries`].
pub const RETRY_REASONS: [&str; 4] = ["not_sent", "reset", "per_try_timeout", "status_5xx"];

/// What the connections of a pool depend on: its TLS settings and the
/// files' sizes and times (a changed certificate means new connections).
fn leg_key(settings: &UpstreamSettings, files: &[&std::path::Path]) -> u64 {
    let mut h = DefaultHasher::new();
    settings.server_name.hash(&mut h);
    settings.connect_timeout.hash(&mut h);
    for f in files {
        f.hash(&mut h);
        if let Ok(m) = std::fs::metadata(f) {
            m.len().hash(&mut h);
            m.modified().ok().hash(&mut h);
        }
    }
    h.finish()
}

/// The addresses of an endpoint now: the address itself, or what its
/// host name resolves to (none when it does not resolve: the upkeep task
/// tries again every `dns_refresh`).
fn resolve_now(spec: &EndpointUrl) -> Vec<SocketAddr> {
    if let Ok(ip) = spec.host.parse::<IpAddr>() {
        return vec![SocketAddr::new(ip, spec.port)];
    }
    match (spec.host.as_str(), spec.port).to_socket_addrs() {
        Ok(addrs) => {
            let mut v: Vec<SocketAddr> = addrs.collect();
            v.sort();
            v.dedup();
            v
        }
        Err(e) => {
            tracing::warn!(host = %spec.host, "endpoint host does not resolve (yet): {e}");
            Vec::new()
        }
    }
}
