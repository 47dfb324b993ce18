//! The operator console: a read-only web page on the admin listener (`GET /`)
//! and the JSON it polls. It shows partners (status, routes, limits,
//! certificate expiry), each partner's last hour as charts, open alerts, and
//! the journal with `log query`'s filters and a record's chain position.
//!
//! It owns the page's assets (embedded in the binary: no CDN, no build
//! step), its JSON endpoints (`/api/overview`, `/api/journal`,
//! `/api/journal/record`), the bearer-token check that guards them (and
//! `/status`) when the admin listener is public, and the security headers
//! of everything it serves. It reads the monitor and the live configuration,
//! and the journal through the broker's own admin socket, as `gatehouse log`
//! does; it changes nothing.

mod api;
mod auth;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;

use crate::control::view::AdminView;

pub use auth::authorize;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The page loads only its own script and stylesheet and talks only to
/// this listener; nothing may frame it.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Answers the console's paths; `None` for any other path (the admin
/// router goes on).
pub async fn route<B>(req: &Request<B>, shared: &Arc<AdminView>) -> Option<Response<Full<Bytes>>> {
    let path = req.uri().path();
    let resp = match path {
        // The page and its assets hold no data: they load without the
        // token and ask for it when the JSON below answers 401.
        "/" | "/index.html" => asset(INDEX_HTML, "text/html; charset=utf-8"),
        "/console/app.js" => asset(APP_JS, "text/javascript; charset=utf-8"),
        "/console/app.css" => asset(APP_CSS, "text/css; charset=utf-8"),
        "/api/overview" | "/api/journal" | "/api/journal/record" => {
            if let Some(denied) = authorize(req, shared).await {
                return Some(denied);
            }
            let query = req.uri().query().unwrap_or("");
            match path {
                "/api/overview" => api::overview(shared).await,
                "/api/journal" => api::journal(shared, query).await,
                _ => api::record(shared, query).await,
            }
        }
        _ => return None,
    };
    Some(secured(resp))
}

/// Adds the console's security headers to a response.
pub fn secured(mut r: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn asset(body: &'static str, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({"error": code, "message": message}),
    )
}
