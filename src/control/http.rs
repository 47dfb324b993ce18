//! The admin listener (loopback by default): `/healthz` (alive),
//! `/readyz` (config loaded, journal writable, listening), `/metrics`
//! (the monitor's Prometheus text) and `/status` (the operator view as
//! JSON, read by `gatehouse status`) and `/.well-known/jwks.json` (the
//! public keys of the upstream identity tokens). HTTP/1.1 only, at most
//! [`MAX_ADMIN_CONNECTIONS`] connections at once, each cut after
//! [`ADMIN_HEADER_TIMEOUT`] without a request head and after
//! [`ADMIN_CONNECTION_TIMEOUT`] in all. `/` and the console's JSON are the
//! operator console's (`super::console`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ca::inventory::Inventory;
pub use crate::control::view::AdminView;

/// The admin address, refused when it is not loopback unless the operator
/// said `[server] admin_public = true`.
pub fn admin_address(addr: SocketAddr, public: bool) -> Result<SocketAddr, AdminNotLoopback> {
    if addr.ip().is_loopback() {
        return Ok(addr);
    }
    if public {
        tracing::warn!(admin_addr = %addr, "the admin listener (metrics, health) is bound to a non-loopback address");
        return Ok(addr);
    }
    Err(AdminNotLoopback(addr))
}

/// The admin address is not loopback and `admin_public` is not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "--admin {0} is not a loopback address; set [server] admin_public = true to expose it on purpose"
)]
pub struct AdminNotLoopback(pub SocketAddr);

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn route(req: Request<Incoming>, view: Arc<AdminView>) -> Response<Full<Bytes>> {
    // The operator console (`/`, its assets and JSON).
    if let Some(r) = super::console::route(&req, &view).await {
        return r;
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let journal = view.events.writable();
            let listening = view.connections.listening();
            let body = serde_json::json!({"ready": journal && listening, "config_loaded": true, "journal_writable": journal, "listening": listening}).to_string();
            text(
                if view.ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                body,
            )
        }
        "/metrics" => {
            refresh_cert_expiry(&view).await;
            let monitor = view.events.monitor();
            monitor.set_journal_writable(view.events.writable());
            monitor.set_config_restart_pending(!view.live.restart_pending().is_empty());
            monitor.pools.observe(&view.live.snapshot().upstreams);
            // OpenMetrics for scrapers that ask for it (Prometheus does),
            // else the classic text format (curl, promtool).
            let accept = req.headers().get(http::header::ACCEPT);
            let (body, content_type) =
                if crate::guard::monitor::wants_openmetrics(accept.and_then(|v| v.to_str().ok())) {
                    (monitor.render(), crate::guard::monitor::CONTENT_TYPE)
                } else {
                    (
                        monitor.render_text(),
                        crate::guard::monitor::TEXT_CONTENT_TYPE,
                    )
                };
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            );
            r
        }
        "/status" => match super::console::authorize(&req, &view).await {
            Some(denied) => denied,
            None => status(&view).await,
        },
        crate::identity_token::JWKS_PATH => {
            let mut r = text(StatusCode::OK, view.identity.current().jwks_json.clone());
            let h = r.headers_mut();
            h.insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            // Short: after a rotation verifiers see the new key soon.
            h.insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("max-age=60"),
            );
            r
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Loads the certificate inventory off the async threads.
async fn load_inventory(view: &Arc<AdminView>) -> Option<Inventory> {
    let home = view.live.home.clone();
    match tokio::task::spawn_blocking(move || Inventory::load(&home)).await {
        Ok(Ok(inv)) => Some(inv),
        Ok(Err(e)) => {
            tracing::warn!("cannot read the certificate inventory: {e}");
            None
        }
        Err(_) => None,
    }
}

/// Sets the certificate expiry gauges from the inventory at scrape time
/// (seconds-until-expiry is a function of the clock). On a read error the
/// previous values stay.
async fn refresh_cert_expiry(view: &Arc<AdminView>) {
    if let Some(inv) = load_inventory(view).await {
        view.events
            .monitor()
            .set_cert_expiry(&inv, time::OffsetDateTime::now_utc());
    }
}

async fn status(view: &Arc<AdminView>) -> Response<Full<Bytes>> {
    let Some(inventory) = load_inventory(view).await else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "{\"error\":\"inventory_unreadable\"}",
        );
    };
    let snapshot = view.live.snapshot();
    let partners: Vec<_> = snapshot
        .partners
        .values()
        .map(|e| e.partner.clone())
        .collect();
    let now_ms = crate::event::now_ms();
    let mut limits = HashMap::new();
    for p in &partners {
        let mut v = snapshot
            .limits
            .snapshot(&p.id, now_ms)
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(serde_json::Value::Null);
        if let Some(a) = view.events.detector().status(&p.id, now_ms)
            && let Ok(a) = serde_json::to_value(a)
            && let Some(obj) = v.as_object_mut()
        {
            obj.insert("anomaly".into(), a);
        }
        limits.insert(p.id.clone(), v);
    }
    let mut body = crate::guard::monitor::status_json(
        view.events.monitor(),
        &partners,
        &inventory,
        &limits,
        time::OffsetDateTime::now_utc(),
        snapshot.gateway.monitor.expiry_warning_days,
    );
    if let Some(obj) = body.as_object_mut() {
        obj.insert(
            "upstreams".into(),
            crate::upstream::status_json(&snapshot.upstreams),
        );
        obj.insert("splits".into(), splits_json(&snapshot));
        obj.insert("mirrors".into(), view.live.mirrors.status_json(now_ms));
        // Settings changed in the files that only a restart puts in force.
        obj.insert(
            "restart_pending".into(),
            serde_json::json!(snapshot.restart_pending),
        );
    }
    if let Some(rows) = body["partners"].as_array_mut() {
        for row in rows {
            let id = row["id"].as_str().unwrap_or_default().to_string();
            if let Some(p) = partners.iter().find(|p| p.id == id)
                && !p.value_limits.is_empty()
            {
                row["value_today"] =
                    crate::control::view::value_today(&view.live.values, p, now_ms);
            }
        }
    }
    let mut r = text(StatusCode::OK, body.to_string());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The split upstreams: each side's weight as configured and the partners
/// pinned to it.
fn splits_json(snapshot: &crate::gateway::live::Snapshot) -> serde_json::Value {
    let mut names: Vec<&String> = snapshot.splits.keys().collect();
    names.sort();
    let splits: Vec<serde_json::Value> = names
        .into_iter()
        .filter_map(|name| {
            let settings = snapshot.gateway.upstreams.get(name)?;
            let sides: Vec<serde_json::Value> = settings
                .split
                .iter()
                .map(|(side, weight)| {
                    let mut pinned: Vec<&str> = snapshot
                        .partners
                        .values()
                        .filter(|p| p.partner.pin.get(name) == Some(side))
                        .map(|p| p.partner.id.as_str())
                        .collect();
                    pinned.sort_unstable();
                    serde_json::json!({"side": side, "weight": weight, "pinned": pinned})
                })
                .collect();
            Some(serde_json::json!({"name": name, "sides": sides}))
        })
        .collect();
    serde_json::Value::Array(splits)
}

/// Connections the admin listener serves at once; more wait in the
/// kernel's backlog until one ends.
pub const MAX_ADMIN_CONNECTIONS: usize = 64;
/// A request head must arrive within this (slow-header cut-off).
pub const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// A connection is closed after this long, whatever it does (an answer
/// takes milliseconds; scrapers reconnect).
pub const ADMIN_CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves the admin endpoints until shutdown: at most
/// [`MAX_ADMIN_CONNECTIONS`] at once, each cut after
/// [`ADMIN_HEADER_TIMEOUT`] without a full request head and after
/// [`ADMIN_CONNECTION_TIMEOUT`] in all; an accept error (out of descriptors)
/// backs off instead of spinning.
pub async fn serve(
    listener: TcpListener,
    view: Arc<AdminView>,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNECTIONS));
    // HTTP/1.1 only (Prometheus, curl, `gatehouse status`): its header
    // timer runs from the connection's start, so a connection that never
    // sends a byte is cut too.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT)
        .max_buf_size(64 * 1024);
    let builder = Arc::new(builder);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s { Ok(s) => s, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("admin listener: accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let view = view.clone();
        let builder = builder.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let view = view.clone();
                async move { Ok::<_, Infallible>(route(req, view).await) }
            });
            let conn = builder.serve_connection(TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(ADMIN_CONNECTION_TIMEOUT, conn).await;
            drop(slot);
        });
    }
}
