//! The admin listener (loopback by default): `/healthz` (alive),
//! `/readyz` (config loaded, journal writable, listening), `/metrics`
//! (the monitor's Prometheus text) and `/status` (the operator view as
//! JSON, read by `gatehouse status`) and `/.well-known/jwks.json` (the
//! public keys of the upstream identity tokens).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::ca::inventory::Inventory;
use crate::server::Shared;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r
}

async fn route(req: Request<Incoming>, shared: Arc<Shared>) -> Response<Full<Bytes>> {
    // The operator console (`/`, its assets and JSON).
    if let Some(r) = crate::console::route(&req, &shared).await {
        return r;
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            let journal = shared.recorder.writable();
            let listening = shared.listening.load(std::sync::atomic::Ordering::Relaxed);
            let body = serde_json::json!({"ready": journal && listening, "config_loaded": true, "journal_writable": journal, "listening": listening}).to_string();
            text(
                if shared.ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                body,
            )
        }
        "/metrics" => {
            refresh_cert_expiry(&shared).await;
            shared
                .monitor
                .set_journal_writable(shared.recorder.writable());
            // OpenMetrics for scrapers that ask for it (Prometheus does),
            // else the classic text format (curl, promtool).
            let accept = req.headers().get(http::header::ACCEPT);
            let (body, content_type) =
                if crate::monitor::wants_openmetrics(accept.and_then(|v| v.to_str().ok())) {
                    (shared.monitor.render(), crate::monitor::CONTENT_TYPE)
                } else {
                    (
                        shared.monitor.render_text(),
                        crate::monitor::TEXT_CONTENT_TYPE,
                    )
                };
            let mut r = text(StatusCode::OK, body);
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            );
            r
        }
        "/status" => match crate::console::authorize(&req, &shared).await {
            Some(denied) => denied,
            None => status(&shared).await,
        },
        crate::upstream_identity::JWKS_PATH => {
            let mut r = text(StatusCode::OK, shared.identity.current().jwks_json.clone());
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
async fn load_inventory(shared: &Arc<Shared>) -> Option<Inventory> {
    let home = shared.live.home.clone();
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
async fn refresh_cert_expiry(shared: &Arc<Shared>) {
    if let Some(inv) = load_inventory(shared).await {
        shared
            .monitor
            .set_cert_expiry(&inv, time::OffsetDateTime::now_utc());
    }
}

async fn status(shared: &Arc<Shared>) -> Response<Full<Bytes>> {
    let Some(inventory) = load_inventory(shared).await else {
        return text(
            StatusCode::INTERNAL_SERVER_ERROR,
            "{\"error\":\"inventory_unreadable\"}",
        );
    };
    let snapshot = shared.live.snapshot();
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
        if let Some(a) = shared.detector.status(&p.id, now_ms)
            && let Ok(a) = serde_json::to_value(a)
            && let Some(obj) = v.as_object_mut()
        {
            obj.insert("anomaly".into(), a);
        }
        limits.insert(p.id.clone(), v);
    }
    let body = crate::monitor::status_json(
        &shared.monitor,
        &partners,
        &inventory,
        &limits,
        time::OffsetDateTime::now_utc(),
        snapshot.gateway.monitor.expiry_warning_days,
    );
    let mut r = text(StatusCode::OK, body.to_string());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// Serves the admin endpoints until shutdown.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
            _ = shutdown.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(route(req, shared).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}
