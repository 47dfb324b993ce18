//! The composition root: `gatehouse serve`. Binds the partner listener and
//! the admin listener, accepts connections (bounded), runs the TLS handshake
//! (recording refusals), identifies the partner, serves HTTP/1.1 and HTTP/2
//! with hyper, and runs every request along the data path: live admission
//! check → target check → authorization → body limit → relay → record. It
//! is the only module that knows all the others.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use crate::alerts::{AlertNotice, AlertSink};
use crate::anomaly::{AnomalySettings, Detector};
use crate::event::{Decision, Event, EventKind, ExpectedRecord, RecordAck, Recorder};
use crate::exchange::{PendingRecord, RecordedBody};
use crate::home::Home;
use crate::identity::{PartnerIdentity, identify};
use crate::journal::Journal;
use crate::journal::admin::{AdminHooks, serve_admin_socket};
use crate::live::Live;
use crate::monitor::Monitor;
use crate::policy::check_target;
use crate::relay::{Annotations, BoxError, strip_hop_by_hop, upstream_request_headers};
use crate::tls::classify_handshake_error;
use crate::upstream_identity::{LiveIdentity, TokenSubject};

/// The body of every response the broker sends to partners.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// Key of the anomaly baselines in the journal database's state tree.
const ANOMALY_STATE_KEY: &str = "anomaly-baselines";

/// Longest path kept in a record (the journal's growth per record is bounded).
const MAX_RECORDED_PATH: usize = 2048;
/// Relayed responses with a Content-Length up to this are read whole,
/// recorded, then sent head and body together (one write; the size of one
/// TLS record) instead of streamed with the last frame held back for the
/// record. Small enough that holding it per in-flight exchange stays within
/// what the upstream connection's read buffer holds anyway.
const WHOLE_BODY_MAX: u64 = 16 * 1024;

/// Command-line overrides of `gatehouse serve`.
#[derive(Debug, Default, Clone)]
pub struct ServeOptions {
    pub listen: Option<SocketAddr>,
    pub admin: Option<SocketAddr>,
}

/// State shared by every connection.
pub struct Shared {
    pub live: Live,
    pub recorder: Arc<dyn Recorder>,
    pub detector: Detector,
    pub alerts: AlertSink,
    pub node: String,
    pub listening: AtomicBool,
    pub active_connections: AtomicUsize,
    /// Metrics and the operator view, fed by the events below.
    pub monitor: Arc<Monitor>,
    /// Self-service renewal state (rate, one at a time).
    pub renewals: crate::renewal::Renewals,
    /// The key that signs `X-Gatehouse-Identity` for upstreams.
    pub identity: LiveIdentity,
    epoch: Instant,
}

impl Shared {
    /// After every exchange: feed the anomaly detector; raise and act on alerts.
    fn after_exchange(&self, ev: &Event) {
        let Some(partner) = ev.partner.as_deref() else {
            return;
        };
        let denied = matches!(ev.status, Some(403) | Some(429));
        if let Some(alert) = self.detector.observe_request(partner, denied, ev.time_ms) {
            self.raise(alert);
        }
    }

    fn raise(&self, alert: crate::anomaly::Alert) {
        if let (Some(p), Some(rate)) = (&alert.partner, alert.throttle_per_minute) {
            self.live.snapshot().limits.set_throttle(p, Some(rate));
        }
        let ev = self.alerts.raise(AlertNotice {
            kind: alert.kind.code().to_string(),
            partner: alert.partner.clone(),
            addr: alert.addr.clone(),
            message: alert.message.clone(),
            time_ms: alert.time_ms,
            details: serde_json::to_value(&alert).unwrap_or_default(),
        });
        self.monitor.observe_event(&ev, None);
    }

    /// Partner certificates near expiry with no successor.
    fn expiry_warnings(&self) -> Vec<crate::monitor::ExpiryWarning> {
        let days = self.live.snapshot().gateway.monitor.expiry_warning_days;
        match crate::ca::inventory::Inventory::load(&self.live.home) {
            Ok(inv) => crate::monitor::expiring(&inv, time::OffsetDateTime::now_utc(), days),
            Err(e) => {
                tracing::warn!("expiry check: cannot read the inventory: {e}");
                Vec::new()
            }
        }
    }

    /// The broker's own certificates (server, upstream client) that end
    /// within `[monitor] expiry_warning_days`: (which, serial, alert).
    fn broker_cert_warnings(&self) -> Vec<(String, AlertNotice)> {
        let days = self.live.snapshot().gateway.monitor.expiry_warning_days;
        let home = &self.live.home;
        let now = time::OffsetDateTime::now_utc();
        let horizon = now + time::Duration::days(i64::from(days));
        let mut out = Vec::new();
        for (which, path) in [
            ("server", home.server_cert()),
            ("broker-client", home.broker_client_cert()),
        ] {
            let (serial, not_after) = match crate::ca::lifecycle::read_cert_summary(&path) {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("expiry check of the broker's {which} certificate: {e}");
                    continue;
                }
            };
            if not_after > horizon {
                continue;
            }
            let left = not_after - now;
            let message = format!(
                "the broker's {which} certificate {serial} ({}) expires {} ({} days): run `gatehouse cert server-renew`",
                path.display(),
                crate::timefmt::rfc3339(not_after),
                left.whole_days()
            );
            out.push((
                serial.clone(),
                AlertNotice {
                    kind: "broker_cert_expiry".into(),
                    partner: None,
                    addr: None,
                    message,
                    time_ms: crate::event::now_ms(),
                    details: serde_json::json!({
                        "certificate": which,
                        "serial": serial,
                        "not_after": crate::timefmt::rfc3339(not_after),
                        "days_left": left.whole_days(),
                        "seconds_left": left.whole_seconds(),
                    }),
                },
            ));
        }
        out
    }

    fn raise_notice(&self, notice: AlertNotice) {
        let ev = self.alerts.raise(notice);
        self.monitor.observe_event(&ev, None);
    }

    fn raise_expiry(&self, w: &crate::monitor::ExpiryWarning) {
        let ev = self.alerts.raise(AlertNotice {
            kind: "cert_expiry".into(),
            partner: Some(w.partner.clone()),
            addr: None,
            message: format!(
                "certificate {} of partner {} expires {} ({} days) and has no successor: run `gatehouse cert renew {}`",
                w.serial, w.partner, w.not_after, w.days_left, w.partner
            ),
            time_ms: crate::event::now_ms(),
            details: serde_json::to_value(w).unwrap_or_default(),
        });
        self.monitor.observe_event(&ev, None);
    }

    /// Operator's `partner resume`: clears an anomaly throttle.
    pub fn clear_anomaly(&self, partner: &str) -> bool {
        let cleared = self.detector.clear(partner);
        self.live.snapshot().limits.set_throttle(partner, None);
        cleared
    }

    /// Applies each partner's `on_anomaly` to the detector.
    fn apply_anomaly_modes(&self) {
        for (id, entry) in &self.live.snapshot().partners {
            self.detector.set_on_anomaly(id, entry.partner.on_anomaly);
        }
    }

    fn save_anomaly_state(&self, journal: &Journal) {
        if let Err(e) = journal
            .store()
            .put_state(ANOMALY_STATE_KEY, &self.detector.export())
        {
            tracing::warn!("cannot save the anomaly baselines: {e}");
        }
    }

    fn now_ms(&self) -> i64 {
        self.epoch.elapsed().as_millis() as i64
    }
    /// Whether the broker can take traffic (config loaded, journal writable, listening).
    pub fn ready(&self) -> bool {
        self.listening.load(Ordering::Relaxed) && self.recorder.writable()
    }
}

/// Per-connection state.
struct ConnCtx {
    identity: PartnerIdentity,
    peer: SocketAddr,
    peer_ip: String,
    tls_version: &'static str,
    /// Set when the connection must close after the current response.
    closing: AtomicBool,
    close: Notify,
    in_flight: AtomicUsize,
    last_activity_ms: AtomicI64,
}

impl ConnCtx {
    fn request_close(&self) {
        if !self.closing.swap(true, Ordering::AcqRel) {
            self.close.notify_one();
        }
    }
}

/// Runs the broker until SIGTERM/SIGINT, then drains and returns.
pub async fn serve(home: Home, opts: ServeOptions, journal: Journal) -> Result<(), String> {
    let recorder: Arc<dyn Recorder> = Arc::new(journal.clone());
    let journal_for_state = journal.clone();
    let live = Live::load(home.clone())?;
    let gateway = live.snapshot().gateway.clone();
    let listen = opts.listen.unwrap_or(gateway.server.listen);
    let admin_addr = opts.admin.unwrap_or(gateway.server.admin);
    if !admin_addr.ip().is_loopback() {
        if gateway.server.admin_public {
            tracing::warn!(%admin_addr, "the admin listener (metrics, health) is bound to a non-loopback address");
        } else {
            return Err(format!(
                "--admin {admin_addr} is not a loopback address; set [server] admin_public = true to expose it on purpose"
            ));
        }
    }
    if let Err(e) = live.refresh_crl_if_due() {
        tracing::warn!("could not re-sign the CRL: {e}");
    }
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let admin_listener = TcpListener::bind(admin_addr)
        .await
        .map_err(|e| format!("cannot bind the admin listener on {admin_addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let admin_bound = admin_listener.local_addr().map_err(|e| e.to_string())?;

    let detector = Detector::new(AnomalySettings {
        k: gateway.monitor.anomaly_factor,
        floor_per_minute: gateway.monitor.anomaly_floor_per_minute,
        warmup_minutes: gateway.monitor.anomaly_warmup_minutes,
        ..AnomalySettings::default()
    });
    match journal.store().get_state(ANOMALY_STATE_KEY) {
        Ok(Some(bytes)) => match detector.import(&bytes) {
            Ok(n) => tracing::info!(partners = n, "anomaly baselines restored"),
            Err(e) => tracing::warn!("anomaly baselines not restored: {e}"),
        },
        Ok(None) => {}
        Err(e) => tracing::warn!("cannot read the anomaly baselines: {e}"),
    }
    for (partner, rate) in detector.throttles() {
        live.snapshot().limits.set_throttle(&partner, Some(rate));
    }
    let alerts = AlertSink::new(
        recorder.clone(),
        &gateway.server.node_id,
        &gateway.monitor,
        &home,
    )?;
    let identity = LiveIdentity::load(&home, &gateway.server.node_id)
        .map_err(|e| format!("upstream identity key: {e}"))?;
    let shared = Arc::new(Shared {
        identity,
        live,
        detector,
        alerts,
        recorder,
        node: gateway.server.node_id.clone(),
        listening: AtomicBool::new(true),
        active_connections: AtomicUsize::new(0),
        monitor: Arc::new(Monitor::new()),
        renewals: Default::default(),
        epoch: Instant::now(),
    });
    shared.apply_anomaly_modes();
    {
        // Journal append latency, batch size and failures, per group commit.
        let monitor = shared.monitor.clone();
        journal_for_state.set_batch_observer(Arc::new(move |records, seconds, failed| {
            monitor.journal_batch(records, seconds, failed)
        }));
    }
    let (shutdown_tx, shutdown_rx) = watch::channel(false);

    // Admin listener.
    let admin_task = tokio::spawn(crate::admin::serve(
        admin_listener,
        shared.clone(),
        shutdown_rx.clone(),
    ));
    // The journal's admin socket (`gatehouse log` while serving), mode 0600.
    let socket_task = {
        let mut rx = shutdown_rx.clone();
        let path = home.admin_socket();
        let hooks = {
            let shared = shared.clone();
            AdminHooks {
                clear_anomaly: Some(Arc::new(move |p: &str| shared.clear_anomaly(p))),
            }
        };
        tokio::spawn(async move {
            let stop = async move {
                let _ = rx.changed().await;
            };
            if let Err(e) = serve_admin_socket(path, journal, hooks, stop).await {
                tracing::error!("journal admin socket: {e}");
            }
        })
    };
    // Reload watcher (files + SIGHUP) and CRL re-signing.
    let stop_signals = StopSignals::register()?;
    let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    let watcher = tokio::spawn(watch_files(shared.clone(), hup, shutdown_rx.clone()));
    // Anomaly baselines persist every minute (and at shutdown).
    let saver = {
        let (shared, journal, mut rx) = (
            shared.clone(),
            journal_for_state.clone(),
            shutdown_rx.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        let (s, j) = (shared.clone(), journal.clone());
                        let _ = tokio::task::spawn_blocking(move || s.save_anomaly_state(&j)).await;
                    }
                    _ = rx.changed() => return,
                }
            }
        })
    };

    // Announce on stdout (tests and scripts read these lines).
    println!("gatehouse listening on {bound}");
    println!("gatehouse admin on {admin_bound}");
    tracing::info!(%bound, %admin_bound, partners = shared.live.snapshot().partners.len(), "gatehouse serving");
    crate::sd_notify::ready(&format!("serving on {bound}, admin on {admin_bound}"));
    crate::sd_notify::spawn_watchdog(shutdown_rx.clone());

    let max_conns = gateway.server.max_connections;
    let permits = Arc::new(Semaphore::new(max_conns));
    let builder = Arc::new(http_builder(&gateway.server));
    let accept = accept_loop(
        listener,
        shared.clone(),
        builder,
        permits.clone(),
        shutdown_rx.clone(),
    );
    let mut accept = Box::pin(accept);

    let signal = stop_signals.wait();
    tokio::select! {
        () = &mut accept => {},
        () = signal => {},
    }
    // Dropping the accept loop closes the listener and frees the slot it
    // was holding for the next connection.
    drop(accept);
    tracing::info!("stopping: no new connections; draining in-flight requests");
    crate::sd_notify::stopping();
    shared.listening.store(false, Ordering::Relaxed);
    let _ = shutdown_tx.send(true);
    let drain = shared.live.snapshot().gateway.server.drain_timeout;
    let all = u32::try_from(max_conns).unwrap_or(u32::MAX);
    if tokio::time::timeout(drain, permits.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = shared.active_connections.load(Ordering::Relaxed),
            "drain time over; closing the remaining connections"
        );
    }
    watcher.abort();
    saver.abort();
    shared.save_anomaly_state(&journal_for_state);
    let _ = admin_task.await;
    let _ = socket_task.await;
    Ok(())
}

/// The stop signals (SIGTERM, SIGINT), registered before the broker says it
/// is listening: a signal that arrives early must not take the default
/// action (killing the process without a drain).
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn register() -> Result<StopSignals, String> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            term: signal(SignalKind::terminate())
                .map_err(|e| format!("cannot handle SIGTERM: {e}"))?,
            int: signal(SignalKind::interrupt())
                .map_err(|e| format!("cannot handle SIGINT: {e}"))?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}

fn http_builder(s: &crate::config::ServerSettings) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(s.header_timeout)
        .max_buf_size(s.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(s.h2_max_concurrent_streams)
        .max_header_list_size(u32::try_from(s.max_header_bytes).unwrap_or(u32::MAX))
        .max_pending_accept_reset_streams(Some(50))
        .max_local_error_reset_streams(Some(128))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    b
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // Wait for a free connection slot first: past the limit new
        // connections wait in the kernel's backlog, memory stays bounded.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let shared = shared.clone();
        let builder = builder.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            shared.active_connections.fetch_add(1, Ordering::Relaxed);
            shared.monitor.connection_opened();
            handle_connection(tcp, peer, shared.clone(), builder, shutdown).await;
            shared.monitor.connection_closed();
            shared.active_connections.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

fn handshake_event(shared: &Shared, peer: SocketAddr, reason: &str) -> Event {
    let mut ev = Event::new(EventKind::Handshake, &shared.node, Decision::Denied);
    ev.client_addr = Some(peer.to_string());
    ev.reason = Some(reason.to_string());
    ev
}

async fn handle_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let snapshot = shared.live.snapshot();
    let server = &snapshot.gateway.server;
    let acceptor = TlsAcceptor::from(shared.live.tls_config());
    let started = Instant::now();
    // A handshake in progress ends in a refusal record or, soon after, a
    // request's record: tell the journal's group commit it is coming.
    let expected = shared.recorder.expect_record();
    let tls = match tokio::time::timeout(server.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let failure = classify_handshake_error(&e);
            let mut ev = handshake_event(&shared, peer, failure.reason);
            ev.cert_fingerprint = failure.fingerprint;
            ev.detail = Some(match failure.subject {
                Some(s) => format!("subject: {s}; {}", failure.message),
                None => failure.message,
            });
            ev.duration_us = started.elapsed().as_micros() as u64;
            if let Some(alert) = shared
                .detector
                .observe_refused_handshake(peer.ip(), ev.time_ms)
            {
                shared.raise(alert);
            }
            tracing::debug!(%peer, reason = ev.reason.as_deref().unwrap_or(""), "refused handshake");
            shared.monitor.observe_event(&ev, None);
            drop(shared.recorder.record(ev));
            return;
        }
        Err(_) => {
            let mut ev = handshake_event(&shared, peer, "handshake_timeout");
            ev.duration_us = started.elapsed().as_micros() as u64;
            shared.monitor.observe_event(&ev, None);
            drop(shared.recorder.record(ev));
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    let handshake_kind = match conn.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => "resumed",
        Some(rustls::HandshakeKind::FullWithHelloRetryRequest) => "hello_retry",
        _ => "full",
    };
    let tls_version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let identity = match conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|leaf| identify(leaf.as_ref(), &snapshot.gateway.trust_domain))
    {
        Some(Ok(id)) => id,
        Some(Err(e)) => {
            let ev = handshake_event(&shared, peer, e.code());
            shared.monitor.observe_event(&ev, None);
            drop(shared.recorder.record(ev));
            return;
        }
        None => {
            let ev = handshake_event(&shared, peer, "no_certificate");
            shared.monitor.observe_event(&ev, None);
            drop(shared.recorder.record(ev));
            return;
        }
    };
    shared.monitor.handshake_ok(handshake_kind);
    drop(expected);
    let idle_timeout = server.idle_timeout;
    drop(snapshot);
    let ctx = Arc::new(ConnCtx {
        identity,
        peer,
        peer_ip: peer.ip().to_string(),
        tls_version,
        closing: AtomicBool::new(false),
        close: Notify::new(),
        in_flight: AtomicUsize::new(0),
        last_activity_ms: AtomicI64::new(shared.now_ms()),
    });
    let svc_ctx = ctx.clone();
    let svc_shared = shared.clone();
    let service = service_fn(move |req: Request<Incoming>| {
        let ctx = svc_ctx.clone();
        let shared = svc_shared.clone();
        async move { Ok::<_, Infallible>(handle_request(req, ctx, shared).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let mut shutting_down = false;
    loop {
        let idle_left = if ctx.in_flight.load(Ordering::Relaxed) > 0 {
            // Busy: look again a full idle period later (never a zero-length
            // sleep, which would spin while a long request is in flight).
            idle_timeout
        } else {
            let last = ctx.last_activity_ms.load(Ordering::Relaxed);
            let deadline = last + idle_timeout.as_millis() as i64;
            Duration::from_millis((deadline - shared.now_ms()).max(1) as u64)
        };
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                break;
            }
            _ = ctx.close.notified(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = shutdown.changed(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(idle_left), if !shutting_down => {
                let idle_for = shared.now_ms() - ctx.last_activity_ms.load(Ordering::Relaxed);
                if ctx.in_flight.load(Ordering::Relaxed) == 0 && idle_for >= idle_timeout.as_millis() as i64 {
                    shutting_down = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A response the broker makes itself (not relayed), tagged with the request id.
fn local_response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
    request_id: &str,
) -> Response<ResponseBody> {
    let mut resp = Response::new(
        Full::new(body.into())
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("x-request-id", v);
    }
    resp
}

/// Answers `resp` once its record is written (strict: flushed). If the
/// journal failed, the partner gets 503 instead: nothing leaves unrecorded.
async fn once_recorded(
    ack: RecordAck,
    resp: Response<ResponseBody>,
    request_id: &str,
    close: bool,
) -> Response<ResponseBody> {
    match ack.await {
        Ok(()) => resp,
        Err(_) => json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "journal_unavailable",
            request_id,
            close,
        ),
    }
}

/// A JSON error response: `{"error": code, "request_id": id}`.
fn json_error(
    status: StatusCode,
    code: &str,
    request_id: &str,
    close: bool,
) -> Response<ResponseBody> {
    let body = serde_json::json!({"error": code, "request_id": request_id}).to_string();
    let mut resp = local_response(status, "application/json", body, request_id);
    if close {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// Wall-clock milliseconds since the Unix epoch (limits and anomaly windows).
fn shared_epoch_ms() -> i64 {
    crate::event::now_ms()
}

/// A fresh request id: 128 random bits, hex.
fn new_request_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

fn truncated(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Decrements the connection's in-flight count when the exchange ends.
struct InFlight(Arc<ConnCtx>, Arc<Shared>);
impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0
            .last_activity_ms
            .store(self.1.now_ms(), Ordering::Relaxed);
    }
}

/// Releases a record's announcement when dropped (see `handle_request`).
struct ReleaseOnDrop(Arc<ExpectedRecord>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

async fn handle_request(
    req: Request<Incoming>,
    ctx: Arc<ConnCtx>,
    shared: Arc<Shared>,
) -> Response<ResponseBody> {
    let started = Instant::now();
    ctx.in_flight.fetch_add(1, Ordering::Relaxed);
    ctx.last_activity_ms
        .store(shared.now_ms(), Ordering::Relaxed);
    let in_flight = InFlight(ctx.clone(), shared.clone());
    // Announced to the journal until the record is handed over, or until
    // this function returns: a streamed response's record comes at the end
    // of its body, which may be long after.
    let expected = Arc::new(shared.recorder.expect_record());
    let _expected_until_return = ReleaseOnDrop(expected.clone());
    let request_id = new_request_id();
    let mut ev = Event::new(EventKind::Exchange, &shared.node, Decision::Denied);
    ev.partner = Some(ctx.identity.partner.to_string());
    ev.cert_serial = Some(ctx.identity.serial.to_string());
    ev.cert_fingerprint = Some(ctx.identity.fingerprint.to_string());
    ev.client_addr = Some(ctx.peer.to_string());
    ev.tls_version = Some(ctx.tls_version.to_string());
    ev.method = Some(req.method().as_str().to_string());
    ev.request_id = Some(request_id.clone());
    let raw_target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    ev.path = Some(truncated(
        raw_target.split('?').next().unwrap_or(""),
        MAX_RECORDED_PATH,
    ));

    // The granted route's risk, once authorization has granted one.
    let route_risk: std::sync::OnceLock<crate::config::Risk> = std::sync::OnceLock::new();
    let pending = |ev: Event| PendingRecord {
        event: ev,
        started,
        recorder: shared.recorder.clone(),
        on_finish: {
            let shared = shared.clone();
            Some(Box::new(move |ev: &Event| shared.after_exchange(ev)))
        },
        monitor: Some(shared.monitor.clone()),
        risk: route_risk.get().copied(),
        expected: Some(expected.clone()),
    };
    // A denial: record first (strict: flushed), then answer.
    let deny = |mut ev: Event, status: StatusCode, code: &str, close: bool| {
        ev.status = Some(status.as_u16());
        ev.reason = Some(code.to_string());
        let ack = pending(ev).submit();
        let resp = json_error(status, code, &request_id, close);
        let rid = request_id.clone();
        async move { once_recorded(ack, resp, &rid, close).await }
    };

    // Fail closed: never relay a call that cannot be recorded.
    if !shared.recorder.writable() {
        return deny(
            ev,
            StatusCode::SERVICE_UNAVAILABLE,
            "journal_unavailable",
            false,
        )
        .await;
    }

    // The per-request check: partner active, certificate still good.
    let snapshot = shared.live.snapshot();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let entry = match snapshot.admit(&ctx.identity, now) {
        Ok(e) => e,
        Err(reason) => {
            ctx.request_close();
            return deny(ev, StatusCode::FORBIDDEN, reason, true).await;
        }
    };

    // Self-service renewal: a broker endpoint, not a route (admitted above,
    // so suspended, revoked, expired and superseded certificates never get here).
    if req.method() == Method::POST && req.uri().path() == crate::renewal::RENEW_PATH {
        drop(snapshot);
        ev.route = Some(crate::renewal::RENEW_PATH.to_string());
        return match crate::renewal::handle(req, &ctx.identity, &shared).await {
            Ok(done) => {
                ev.decision = Decision::Allowed;
                ev.status = Some(200);
                ev.response_bytes = done.chain_pem.len() as u64;
                ev.detail = Some(format!("renewed; new serial {}", done.new_serial));
                let resp = local_response(
                    StatusCode::OK,
                    "application/x-pem-file",
                    done.chain_pem,
                    &request_id,
                );
                once_recorded(pending(ev).submit(), resp, &request_id, false).await
            }
            Err(refusal) => {
                ev.detail = Some(truncated(&refusal.detail, 1024));
                let close = refusal.status == StatusCode::PAYLOAD_TOO_LARGE;
                if close {
                    ctx.request_close();
                }
                let mut resp = deny(ev, refusal.status, refusal.code, close).await;
                if resp.status() == refusal.status {
                    let mut body =
                        serde_json::json!({"error": refusal.code, "request_id": request_id});
                    for (k, v) in refusal.extra {
                        body[k] = v;
                    }
                    *resp.body_mut() = Full::new(Bytes::from(body.to_string()))
                        .map_err(|e| match e {})
                        .boxed_unsync();
                    if let Some(secs) = refusal.retry_after_secs
                        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
                    {
                        resp.headers_mut().insert(header::RETRY_AFTER, v);
                    }
                }
                resp
            }
        };
    }

    // Smuggling shapes: both framings, or conflicting lengths.
    let headers = req.headers();
    let has_te = headers.contains_key(header::TRANSFER_ENCODING);
    let lengths: Vec<&HeaderValue> = headers.get_all(header::CONTENT_LENGTH).iter().collect();
    let conflicting_lengths = lengths.windows(2).any(|w| w[0] != w[1]);
    if (has_te && !lengths.is_empty()) || conflicting_lengths {
        ctx.request_close();
        return deny(ev, StatusCode::BAD_REQUEST, "ambiguous_framing", true).await;
    }

    // The target: origin-form (HTTP/1.1) and free of traversal tricks.
    if req.version() != Version::HTTP_2
        && (req.uri().scheme().is_some() || req.uri().authority().is_some())
    {
        return deny(ev, StatusCode::BAD_REQUEST, "bad_target", false).await;
    }
    let target = match check_target(raw_target) {
        Ok(t) => t,
        Err(e) => return deny(ev, StatusCode::BAD_REQUEST, e.code(), false).await,
    };

    // Authorization: deny by default.
    let permit = match entry.routes.authorize(req.method().as_str(), target.path) {
        Ok(p) => p,
        Err(_) => return deny(ev, StatusCode::FORBIDDEN, "route_not_granted", false).await,
    };
    ev.route = Some(permit.route.path.clone());
    let _ = route_risk.set(permit.route.risk);
    ev.upstream = Some(permit.upstream.to_string());
    let Some(upstream) = snapshot.upstreams.get(permit.upstream).cloned() else {
        return deny(ev, StatusCode::BAD_GATEWAY, "upstream_unknown", false).await;
    };

    // Rate, quota and concurrency limits (partner and route).
    let admission = match snapshot.limits.check(
        &ctx.identity.partner,
        Some(permit.route_index),
        shared_epoch_ms(),
    ) {
        Ok(a) => a,
        Err(denied) => {
            ev.status = Some(429);
            ev.reason = Some(denied.limit.code().to_string());
            let mut body = denied.body_json();
            body["request_id"] = serde_json::Value::String(request_id.clone());
            let mut resp = json_error(
                StatusCode::TOO_MANY_REQUESTS,
                denied.limit.code(),
                &request_id,
                false,
            );
            *resp.body_mut() = Full::new(Bytes::from(body.to_string()))
                .map_err(|e| match e {})
                .boxed_unsync();
            if let Ok(v) = HeaderValue::from_str(&denied.retry_after_secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return once_recorded(pending(ev).submit(), resp, &request_id, false).await;
        }
    };

    // Body limit.
    let max_body = permit
        .route
        .max_body_bytes
        .unwrap_or(snapshot.gateway.server.max_body_bytes);
    let declared = lengths
        .first()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        ctx.request_close();
        return deny(ev, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", true).await;
    }
    ev.request_bytes = declared.unwrap_or(0);

    // Build the upstream request.
    let uri = match upstream.uri_for(&permit.upstream_path, target.query) {
        Ok(u) => u,
        Err(_) => return deny(ev, StatusCode::BAD_REQUEST, "bad_target", false).await,
    };
    // The signed identity for the upstream (fail closed: no token, no relay).
    let token = if upstream.signed_identity {
        match shared.identity.sign(&TokenSubject {
            partner: &ctx.identity.partner,
            serial: &ctx.identity.serial,
            route: &permit.route.path,
            request_id: &request_id,
            upstream: &upstream.name,
        }) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(request_id = %request_id, "{e}");
                return deny(
                    ev,
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "identity_signing_failed",
                    false,
                )
                .await;
            }
        }
    } else {
        None
    };
    let is_head = req.method() == Method::HEAD;
    let (mut parts, body) = req.into_parts();
    upstream_request_headers(
        &mut parts.headers,
        &Annotations {
            partner: &ctx.identity.partner,
            serial: &ctx.identity.serial,
            fingerprint: &ctx.identity.fingerprint,
            uri: &ctx.identity.uri,
            request_id: &request_id,
            client_ip: &ctx.peer_ip,
            identity: token.as_deref(),
        },
    );
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let body: crate::relay::RelayBody = if body.is_end_stream() {
        Empty::new().map_err(|e| match e {}).boxed()
    } else {
        Limited::new(body, max_body as usize).boxed()
    };
    let upstream_req = Request::from_parts(parts, body);
    drop(snapshot);

    let upstream_started = Instant::now();
    let sent = upstream.send(upstream_req).await;
    shared.monitor.upstream(
        &upstream.name,
        upstream_started.elapsed().as_secs_f64(),
        sent.as_ref().err().map(|e| e.code()),
    );
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(upstream = %upstream.name, request_id = %request_id, "upstream failed: {e:?}");
            let close = matches!(e, crate::relay::UpstreamError::BodyTooLarge);
            if close {
                ctx.request_close();
            }
            return deny(ev, e.status(), e.code(), close).await;
        }
    };

    // Relay the response, recorded before its end reaches the partner.
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        parts.headers.insert("x-request-id", v);
    }
    if ctx.closing.load(Ordering::Relaxed) {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    ev.decision = Decision::Allowed;
    ev.status = Some(parts.status.as_u16());
    let content_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut record = pending(ev);
    let after = record.on_finish.take();
    record.on_finish = Some(Box::new(move |ev: &Event| {
        drop(admission);
        drop(in_flight);
        if let Some(f) = after {
            f(ev);
        }
    }));
    if is_head || body.is_end_stream() || content_length == Some(0) {
        // Nothing to hold back: record before the head leaves.
        drop(body);
        let resp = Response::from_parts(parts, Empty::new().map_err(|e| match e {}).boxed_unsync());
        return once_recorded(record.submit(), resp, &request_id, false).await;
    }
    if let Some(n) = content_length.filter(|n| *n <= WHOLE_BODY_MAX) {
        return whole_response(parts, body, n, record, &upstream, &request_id).await;
    }
    Response::from_parts(
        parts,
        RecordedBody::new(body, content_length, record).boxed_unsync(),
    )
}

/// A small relayed response (Content-Length `n` <= `WHOLE_BODY_MAX`): read
/// the body whole, record the exchange, then answer. The partner sees
/// nothing before the record is written, gets the head and body in one
/// write, and gets a clean 502/504 (not a cut-off body) when the upstream
/// fails mid-body, or 503 when the journal cannot take the record.
async fn whole_response(
    parts: http::response::Parts,
    body: Incoming,
    n: u64,
    mut record: PendingRecord,
    upstream: &crate::relay::Upstream,
    request_id: &str,
) -> Response<ResponseBody> {
    let (status, code) = match tokio::time::timeout(upstream.response_timeout, body.collect()).await
    {
        Ok(Ok(collected)) => {
            let bytes = collected.to_bytes();
            if bytes.len() as u64 == n {
                record.event.response_bytes = n;
                let resp = Response::from_parts(
                    parts,
                    Full::new(bytes).map_err(|e| match e {}).boxed_unsync(),
                );
                return once_recorded(record.submit(), resp, request_id, false).await;
            }
            tracing::warn!(upstream = %upstream.name, request_id, "upstream body shorter than its Content-Length");
            (StatusCode::BAD_GATEWAY, "upstream_body_error")
        }
        Ok(Err(e)) => {
            tracing::warn!(upstream = %upstream.name, request_id, "upstream body failed: {e}");
            (StatusCode::BAD_GATEWAY, "upstream_body_error")
        }
        Err(_) => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
    };
    record.event.decision = Decision::Denied;
    record.event.status = Some(status.as_u16());
    record.event.reason = Some(code.to_string());
    let resp = json_error(status, code, request_id, false);
    once_recorded(record.submit(), resp, request_id, false).await
}

/// How often the watcher looks at every file even without a notification.
const SAFETY_POLL: Duration = Duration::from_secs(10);

/// Watches the home's configuration folders (not `data/`) and raises
/// `changed` on any change in them.
fn file_notifier(
    live: &Live,
    changed: Arc<AtomicBool>,
) -> Result<notify::RecommendedWatcher, String> {
    use notify::{EventKind as FsEvent, RecursiveMode, Watcher};
    // Only configuration material counts (not logs that may sit in the home).
    let relevant = |p: &std::path::Path| {
        !matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("log" | "out" | "sock" | "tmp")
        )
    };
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if matches!(ev.kind, FsEvent::Access(_)) => {}
            Ok(ev) if !ev.paths.is_empty() && !ev.paths.iter().any(|p| relevant(p)) => {}
            _ => changed.store(true, Ordering::Release),
        })
        .map_err(|e| e.to_string())?;
    for dir in live.watched_dirs() {
        if dir.is_dir() {
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    Ok(watcher)
}

/// Picks up file changes (notifications, with a slow safety poll) and
/// SIGHUP, and re-signs the CRL when due.
async fn watch_files(
    shared: Arc<Shared>,
    mut hup: tokio::signal::unix::Signal,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(crate::live::WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // File-change notifications (inotify) say when to look; a full look at
    // every file's stamp then happens only on a change, on SIGHUP, and every
    // SAFETY_POLL for file systems that do not notify. Without
    // notifications, every tick looks.
    let changed = Arc::new(AtomicBool::new(true));
    let _notifier = match file_notifier(&shared.live, changed.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "file-change notifications unavailable ({e}); polling every {:?}",
                crate::live::WATCH_INTERVAL
            );
            None
        }
    };
    let mut last_full_look = Instant::now();
    let mut crl_tick = tokio::time::interval(Duration::from_secs(600));
    crl_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<String> = None;
    // Certificates already warned about (one alert per certificate per run).
    let mut warned = std::collections::HashSet::new();
    loop {
        let force = tokio::select! {
            _ = tick.tick() => false,
            Some(_) = hup.recv() => true,
            _ = crl_tick.tick() => {
                let s = shared.clone();
                match tokio::task::spawn_blocking(move || s.live.refresh_crl_if_due()).await {
                    Ok(Ok(true)) => tracing::info!("CRL re-signed before its next-update"),
                    Ok(Err(e)) => tracing::error!("could not re-sign the CRL: {e}"),
                    _ => {}
                }
                let s = shared.clone();
                if let Ok(warnings) = tokio::task::spawn_blocking(move || s.expiry_warnings()).await {
                    for w in warnings {
                        if warned.insert(w.serial.clone()) {
                            shared.raise_expiry(&w);
                        }
                    }
                }
                let s = shared.clone();
                if let Ok(warnings) = tokio::task::spawn_blocking(move || s.broker_cert_warnings()).await {
                    for (serial, notice) in warnings {
                        if warned.insert(serial) {
                            shared.raise_notice(notice);
                        }
                    }
                }
                false
            }
            _ = shutdown.changed() => return,
        };
        if force {
            crate::sd_notify::reloading();
        }
        let look = force
            || _notifier.is_none()
            || changed.swap(false, Ordering::AcqRel)
            || shared.live.tls_retry_pending()
            || last_full_look.elapsed() >= SAFETY_POLL;
        if !look {
            continue;
        }
        last_full_look = Instant::now();
        let s = shared.clone();
        match tokio::task::spawn_blocking(move || s.identity.refresh()).await {
            Ok(Ok(true)) => tracing::info!(
                kid = shared.identity.current().signer.kid(),
                "upstream identity key reloaded"
            ),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::error!(
                "upstream identity key not reloaded; the running key stays in force: {e}"
            ),
            Err(e) => tracing::error!("identity reload task failed: {e}"),
        }
        let s = shared.clone();
        let result = tokio::task::spawn_blocking(move || s.live.reload(force)).await;
        match result {
            Ok(Ok(outcome)) if outcome.changed => {
                last_error = None;
                shared.apply_anomaly_modes();
                tracing::info!(
                    partners = outcome.partners,
                    tls_rebuilt = outcome.tls_rebuilt,
                    "configuration reloaded"
                );
                let mut ev = Event::new(EventKind::Admin, &shared.node, Decision::Allowed);
                ev.reason = Some("config_reloaded".into());
                ev.detail = Some(format!(
                    "partners: {}; tls rebuilt: {}",
                    outcome.partners, outcome.tls_rebuilt
                ));
                shared.monitor.observe_event(&ev, None);
                drop(shared.recorder.record(ev));
                for change in &outcome.changes {
                    let mut ev = Event::new(EventKind::Admin, &shared.node, Decision::Allowed);
                    ev.reason = Some(change.kind.to_string());
                    ev.partner = Some(change.partner.clone());
                    ev.cert_serial = change.serial.clone();
                    drop(shared.recorder.record(ev));
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e == crate::live::REFUSED_AGAIN => {}
            Ok(Err(e)) => {
                if last_error.as_deref() != Some(e.as_str()) {
                    tracing::error!(
                        "configuration change refused; the running configuration stays in force:\n{e}"
                    );
                    let mut ev = Event::new(EventKind::Admin, &shared.node, Decision::Denied);
                    ev.reason = Some("config_reload_refused".into());
                    ev.detail = Some(truncated(&e, 4096));
                    shared.monitor.observe_event(&ev, None);
                    drop(shared.recorder.record(ev));
                    last_error = Some(e);
                }
            }
            Err(e) => tracing::error!("reload task failed: {e}"),
        }
        if force {
            crate::sd_notify::reloaded("serving (reload done)");
        }
    }
}
