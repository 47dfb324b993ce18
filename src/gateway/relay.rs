//! The relay to upstream services: one pooled hyper client per upstream
//! (HTTP/1.1, and h2 where the upstream offers it; https verified against the
//! upstream's CA with the broker's client certificate presented, or plain
//! http for legacy services), the header hygiene on both directions, and the
//! classification of upstream failures into 502 / 504.

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::ServerName;

use crate::config::UpstreamSettings;
use crate::home::Home;
use crate::reason::Reason;
use crate::tls;

/// Error type of relayed bodies.
pub type BoxError = Box<dyn StdError + Send + Sync>;
/// The body the broker sends upstream.
pub type RelayBody = BoxBody<Bytes, BoxError>;

/// How long an idle pooled upstream connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// One configured upstream and its connection pool.
pub struct Upstream {
    pub name: String,
    /// `scheme://authority`
    origin: String,
    /// Path prefix from the URL (`https://h/base` → `/base`), without trailing `/`.
    base_path: String,
    client: Client<HttpsConnector<HttpConnector>, RelayBody>,
    pub response_timeout: Duration,
    /// Whether requests relayed here carry `X-Gatehouse-Identity`.
    pub signed_identity: bool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.name)
            .field("origin", &self.origin)
            .finish()
    }
}

impl Upstream {
    /// Builds the client for `[upstreams.<name>]`, loading its CA and the
    /// broker's client certificate.
    pub fn build(
        name: &str,
        settings: &UpstreamSettings,
        home: &Home,
    ) -> Result<Upstream, UpstreamBuildError> {
        let uri: Uri = settings.url.parse().map_err(|e| UpstreamBuildError::Url {
            name: name.to_string(),
            url: settings.url.clone(),
            why: format!("{e}"),
        })?;
        let scheme = uri.scheme_str().unwrap_or("http").to_string();
        let authority = uri.authority().ok_or_else(|| UpstreamBuildError::Url {
            name: name.to_string(),
            url: settings.url.clone(),
            why: "it has no host".to_string(),
        })?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let tls_config = if scheme == "https" {
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
            let chain = tls::load_certs(&cert)?;
            let key = tls::load_key(&key)?;
            tls::upstream_client_config(&home.resolve(ca), chain, key)?
        } else {
            // Plain-http upstream: the TLS config is never used, but the
            // connector type wants one.
            rustls::ClientConfig::builder_with_provider(tls::provider())
                .with_safe_default_protocol_versions()
                .map_err(|e| tls::TlsError::Config(e.to_string()))?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        };
        let server_name = settings.server_name.clone().unwrap_or(host);
        let server_name = ServerName::try_from(server_name.clone()).map_err(|_| {
            UpstreamBuildError::ServerName {
                name: name.to_string(),
                server_name: server_name.clone(),
            }
        })?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config)
            .https_or_http()
            .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(server_name))
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_max_idle_per_host(256)
            .build(connector);
        Ok(Upstream {
            name: name.to_string(),
            origin: format!("{scheme}://{authority}"),
            base_path: uri.path().trim_end_matches('/').to_string(),
            client,
            response_timeout: settings.response_timeout,
            signed_identity: settings.signed_identity,
        })
    }

    /// The upstream URI for a relayed path and query.
    pub fn uri_for(&self, path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        let mut s = String::with_capacity(
            self.origin.len()
                + self.base_path.len()
                + path.len()
                + 1
                + query.map_or(0, |q| q.len() + 1),
        );
        s.push_str(&self.origin);
        s.push_str(&self.base_path);
        s.push_str(path);
        if let Some(q) = query {
            s.push('?');
            s.push_str(q);
        }
        Ok(Uri::try_from(s)?)
    }

    /// Sends a request; waits at most `response_timeout` for the response head.
    pub async fn send(&self, req: Request<RelayBody>) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(self.response_timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(classify(&e)),
        }
    }
}

/// Why an upstream's client cannot be built from its settings.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBuildError {
    #[error("[upstreams.{name}] url `{url}`: {why}")]
    Url {
        name: String,
        url: String,
        why: String,
    },
    #[error("[upstreams.{0}] is https but has no `ca`")]
    NoCa(String),
    #[error("[upstreams.{name}] server_name `{server_name}` is not a valid name")]
    ServerName { name: String, server_name: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// Why the upstream leg failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamError {
    /// No response head within the response timeout (504).
    Timeout,
    /// The upstream's certificate failed verification (502).
    Tls(String),
    /// Connection refused, reset, or connect timeout (502).
    Connect(String),
    /// The request body exceeded its limit while streaming (413).
    BodyTooLarge,
    /// Anything else on the upstream leg (502).
    Other(String),
}

impl UpstreamError {
    /// The reason a refusal for this failure gives.
    pub fn reason(&self) -> Reason {
        match self {
            UpstreamError::Timeout => Reason::UpstreamTimeout,
            UpstreamError::Tls(_) => Reason::UpstreamTls,
            UpstreamError::Connect(_) => Reason::UpstreamUnavailable,
            UpstreamError::BodyTooLarge => Reason::BodyTooLarge,
            UpstreamError::Other(_) => Reason::UpstreamError,
        }
    }
}

/// Finds a rustls error anywhere in an error chain, looking through the
/// `io::Error` and boxed-error wrappers the connector stack adds.
fn find_rustls<'a>(e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    if let Some(t) = e.downcast_ref::<rustls::Error>() {
        return Some(t);
    }
    if let Some(inner) = e
        .downcast_ref::<std::io::Error>()
        .and_then(|io| io.get_ref())
        && let Some(t) = find_rustls(inner)
    {
        return Some(t);
    }
    e.source().and_then(find_rustls)
}

fn classify(e: &hyper_util::client::legacy::Error) -> UpstreamError {
    let mut text = e.to_string();
    let mut source: Option<&(dyn StdError + 'static)> = e.source();
    while let Some(s) = source {
        if let Some(tls) = find_rustls(s) {
            return UpstreamError::Tls(tls.to_string());
        }
        if s.downcast_ref::<http_body_util::LengthLimitError>()
            .is_some()
        {
            return UpstreamError::BodyTooLarge;
        }
        text = format!("{text}: {s}");
        source = s.source();
    }
    if e.is_connect() {
        UpstreamError::Connect(text)
    } else {
        UpstreamError::Other(text)
    }
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never relayed.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
}

/// Whether a partner-sent header could be used to pose as someone else,
/// forge the broker's own annotations or override the granted method or
/// path, in any spelling (`_` for `-`, any case): such headers are dropped.
/// The list and the folding live in [`crate::gateway::header_guard`].
pub fn is_spoofable(name: &HeaderName) -> bool {
    crate::gateway::header_guard::is_reserved(name.as_str())
}

/// Prepares a partner's request headers for the upstream: hop-by-hop and
/// spoofable headers removed, `Host` dropped (the client sets the
/// upstream's), then the broker's identity headers set.
pub fn upstream_request_headers(headers: &mut HeaderMap, annotations: &Annotations<'_>) {
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    crate::gateway::header_guard::strip_reserved(headers);
    // Repeated (equal) Content-Length values go upstream as one.
    if let Some(len) = headers.get(header::CONTENT_LENGTH).cloned()
        && headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .nth(1)
            .is_some()
    {
        headers.insert(header::CONTENT_LENGTH, len);
    }
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set("x-gatehouse-partner", annotations.partner);
    set("x-gatehouse-cert-serial", annotations.serial);
    set("x-request-id", annotations.request_id);
    set("x-forwarded-for", annotations.client_ip);
    set("x-forwarded-proto", "https");
    set(
        "x-forwarded-client-cert",
        &format!("Hash={};URI={}", annotations.fingerprint, annotations.uri),
    );
    if let Some(token) = annotations.identity {
        set(crate::identity_token::HEADER, token);
    }
}

/// What the broker tells the upstream about the caller.
pub struct Annotations<'a> {
    pub partner: &'a str,
    pub serial: &'a str,
    pub fingerprint: &'a str,
    pub uri: &'a str,
    pub request_id: &'a str,
    pub client_ip: &'a str,
    /// The signed identity token (`X-Gatehouse-Identity`), when there is one.
    pub identity: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofed_and_hop_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-gatehouse-partner", HeaderValue::from_static("globex"));
        h.insert("x-gatehouse-identity", HeaderValue::from_static("forged"));
        h.insert(
            "X-Forwarded-Client-Cert",
            HeaderValue::from_static("Hash=x;URI=y"),
        );
        h.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("accept", HeaderValue::from_static("application/json"));
        upstream_request_headers(
            &mut h,
            &Annotations {
                partner: "acme",
                serial: "0a",
                fingerprint: "ff",
                uri: "spiffe://td/partner/acme",
                request_id: "r1",
                client_ip: "127.0.0.1",
                identity: Some("e30.e30.sig"),
            },
        );
        assert_eq!(h["x-gatehouse-partner"], "acme");
        assert_eq!(h["x-gatehouse-identity"], "e30.e30.sig");
        assert_eq!(
            h["x-forwarded-client-cert"],
            "Hash=ff;URI=spiffe://td/partner/acme"
        );
        assert!(h.get("forwarded").is_none());
        assert!(h.get("x-forwarded-host").is_none());
        assert!(h.get("x-secret").is_none());
        assert!(h.get("te").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h["accept"], "application/json");
    }
}
