//! One partner connection's life: accepted within the connection limit, the
//! TLS handshake (bounded in time; a refusal becomes a TLS-level `Refusal`
//! and a record), the partner identified from the verified certificate,
//! then HTTP/1.1 or HTTP/2 served by hyper, each request handed to
//! `door::handle`, until the partner leaves, the connection idles out,
//! a refusal asks it to close, or the broker drains.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::config::ServerSettings;
use crate::event::{Decision, EventKind};
use crate::gateway::refusal::Refusal;
use crate::gateway::session::ConnCtx;
use crate::gateway::{Gateway, door, est};
use crate::identity::{PartnerIdentity, identify, identify_own};
use crate::reason::Reason;
use crate::tls::classify_handshake_error;
use crate::tls::partner_ca;

/// hyper's server settings from `[server]`.
pub fn http_builder(s: &ServerSettings) -> auto::Builder<TokioExecutor> {
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

/// Accepts partner connections until shutdown, each served with the
/// HTTP settings in force when it was accepted, within a slot of
/// `permits` (past the limit, new connections wait in the kernel's backlog:
/// memory stays bounded).
pub async fn accept_loop(
    listener: TcpListener,
    gw: Arc<Gateway>,
    permits: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
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
        let gw = gw.clone();
        // hyper's settings as the live configuration has them now.
        let builder = gw.live.http_builder();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            gw.connections.active.fetch_add(1, Ordering::Relaxed);
            gw.events.monitor().connection_opened();
            handle_connection(tcp, peer, gw.clone(), builder, shutdown).await;
            gw.events.monitor().connection_closed();
            gw.connections.active.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// A finished handshake: the stream and what the connection needs of it.
struct Handshaken {
    tls: TlsStream<TcpStream>,
    /// `None`: the client presented no certificate (enrolment only).
    identity: Option<PartnerIdentity>,
    tls_version: &'static str,
    kind: &'static str,
}

/// The TLS handshake and the partner's identity, or a TLS-level refusal.
async fn handshake(gw: &Gateway, tcp: TcpStream, peer: SocketAddr) -> Result<Handshaken, Refusal> {
    // One address may not hold every slot with unfinished handshakes.
    let snapshot = gw.live.snapshot();
    let cap = snapshot.gateway.server.max_pending_handshakes_per_addr;
    let Some(pending) = gw.handshakes.try_enter_within(peer.ip(), cap) else {
        return Err(Refusal::tls(Reason::TooManyPendingHandshakes));
    };
    let acceptor = TlsAcceptor::from(gw.live.tls_config());
    let timeout = snapshot.gateway.server.handshake_timeout;
    let accepted = tokio::time::timeout(timeout, acceptor.accept(tcp)).await;
    drop(pending);
    let tls = match accepted {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => return Err(classify_handshake_error(&e)),
        Err(_) => return Err(Refusal::tls(Reason::HandshakeTimeout)),
    };
    let (_, conn) = tls.get_ref();
    let kind = match conn.handshake_kind() {
        Some(rustls::HandshakeKind::Resumed) => "resumed",
        Some(rustls::HandshakeKind::FullWithHelloRetryRequest) => "hello_retry",
        _ => "full",
    };
    let tls_version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let identity = match conn.peer_certificates().and_then(|c| c.first()) {
        Some(leaf) => {
            let td = &snapshot.gateway.trust_domain;
            // The verifier took a certificate naming a partner with its own
            // CA only through that CA; the same name picks the same partner.
            let found = match partner_ca::find(&snapshot.partner_cas, leaf.as_ref(), td) {
                Some(ca) => {
                    identify_own(leaf.as_ref(), &ca.partner, &ca.name.describe(), &ca.issuer)
                }
                None => identify(leaf.as_ref(), td),
            };
            Some(found.map_err(|e| Refusal::tls(e.reason()))?)
        }
        None => None,
    };
    Ok(Handshaken {
        tls,
        identity,
        tls_version,
        kind,
    })
}

/// Serves one partner connection to its end.
async fn handle_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    gw: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let started = Instant::now();
    // A handshake in progress ends in a refusal record or, soon after, a
    // request's record: tell the journal's group commit it is coming.
    let expected = gw.events.expect_record();
    let done = match handshake(&gw, tcp, peer).await {
        Ok(done) => done,
        Err(refusal) => {
            let mut ev = gw.events.event(EventKind::Handshake, Decision::Denied);
            ev.client_addr = Some(peer.to_string());
            refusal.mark(&mut ev);
            ev.duration_us = started.elapsed().as_micros() as u64;
            tracing::debug!(%peer, reason = refusal.code(), "refused handshake");
            drop(gw.events.record(ev, None));
            return;
        }
    };
    gw.events.monitor().handshake_ok(done.kind);
    drop(expected);
    let Some(identity) = done.identity else {
        serve_anonymous(done.tls, peer, done.tls_version, gw, builder, shutdown).await;
        return;
    };
    // Renewal may replace a successor only while it was never used.
    gw.seen.handshake(&gw.live.home, &identity.serial);
    // A certificate from the partner's own CA: its expiry is watched too.
    gw.events.monitor().presented().note(&identity);
    let (idle_timeout, write_timeout) = {
        let s = gw.live.snapshot();
        (
            s.gateway.server.idle_timeout,
            s.gateway.server.write_timeout,
        )
    };
    let ctx = Arc::new(ConnCtx::new(identity, peer, done.tls_version, gw.epoch));
    let service = {
        let (ctx, gw) = (ctx.clone(), gw.clone());
        service_fn(move |req: Request<Incoming>| {
            let (ctx, gw) = (ctx.clone(), gw.clone());
            async move { Ok::<_, Infallible>(door::handle(req, ctx, gw).await) }
        })
    };
    let conn = builder.serve_connection(TokioIo::new(done.tls), service);
    tokio::pin!(conn);
    let mut shutting_down = false;
    // Once the broker decided to close (idle, or after a refusal), the
    // partner gets `write_timeout` to take what is left, then the
    // connection is dropped whatever it is doing.
    let mut hard_close: Option<tokio::time::Instant> = None;
    loop {
        let idle_left = if ctx.busy() {
            // Busy: look again a full idle period later (never a zero-length
            // sleep, which would spin while a long request is in flight).
            idle_timeout
        } else {
            let last = ctx.last_activity_ms();
            let deadline = last + idle_timeout.as_millis() as i64;
            Duration::from_millis((deadline - ctx.now_ms()).max(1) as u64)
        };
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, "connection ended: {e}");
                }
                break;
            }
            _ = ctx.close_requested(), if !shutting_down => {
                shutting_down = true;
                hard_close = Some(tokio::time::Instant::now() + write_timeout);
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep_until(hard_close.unwrap_or_else(tokio::time::Instant::now)), if hard_close.is_some() => {
                tracing::debug!(%peer, "the partner did not take the rest of the answer within write_timeout: closed");
                break;
            }
            _ = shutdown.changed(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(idle_left), if !shutting_down => {
                let idle_for = ctx.now_ms() - ctx.last_activity_ms();
                if !ctx.busy() && idle_for >= idle_timeout.as_millis() as i64 {
                    shutting_down = true;
                    hard_close = Some(tokio::time::Instant::now() + write_timeout);
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Serves a connection whose client presented no certificate: every request
/// goes to `est::anonymous` (enrolment paths, else 403), never to the
/// request phases; the connection lives at most
/// `est::ANONYMOUS_CONNECTION_LIFETIME`.
async fn serve_anonymous(
    tls: TlsStream<TcpStream>,
    peer: SocketAddr,
    tls_version: &'static str,
    gw: Arc<Gateway>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let service = service_fn(move |req: Request<Incoming>| {
        let gw = gw.clone();
        async move { Ok::<_, Infallible>(est::anonymous(req, peer, tls_version, gw).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let end = tokio::time::sleep(est::ANONYMOUS_CONNECTION_LIFETIME);
    tokio::pin!(end);
    let mut shutting_down = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(%peer, "connection without certificate ended: {e}");
                }
                return;
            }
            _ = shutdown.changed(), if !shutting_down => {
                shutting_down = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = &mut end => {
                tracing::debug!(%peer, "connection without certificate closed after its lifetime");
                return;
            }
        }
    }
}
