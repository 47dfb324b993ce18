//! The agent's one HTTPS exchange with the broker: connect, TLS with the
//! given client config, one HTTP/1.1 request, the status and a bounded body,
//! all within one timeout. Shared by renewal and enrolment; what the TLS
//! config trusts and presents is the caller's business.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;

use super::AgentError;

/// Largest answer read (a chain is a few KiB).
const MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// Connect + request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A request to the broker at `url` (its path is a prefix of `path`), with
/// `Host`, and the optional `Authorization` and `Content-Type`.
pub(crate) fn request(
    url: &str,
    method: Method,
    path: &str,
    headers: RequestHeaders,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, AgentError> {
    let (host, port, _) = super::endpoint(url)?;
    let prefix = url
        .parse::<http::Uri>()
        .map(|u| u.path().trim_end_matches('/').to_string())
        .unwrap_or_default();
    let authority = if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    };
    let mut b = Request::builder()
        .method(method)
        .uri(format!("{prefix}{path}"))
        .header(http::header::HOST, authority);
    if let Some(a) = headers.authorization {
        b = b.header(http::header::AUTHORIZATION, a);
    }
    if let Some(t) = headers.content_type {
        b = b.header(http::header::CONTENT_TYPE, t);
    }
    b.body(Full::new(body))
        .map_err(|e| AgentError::Url(url.to_string(), e.to_string()))
}

/// The optional headers of a [`request`].
#[derive(Debug, Default)]
pub(crate) struct RequestHeaders {
    pub authorization: Option<String>,
    pub content_type: Option<&'static str>,
}

/// Sends `req` to the broker at `url` over TLS with `tls`; the status and
/// the body (at most 256 KiB), or why there is none.
pub(crate) async fn send(
    url: &str,
    tls: Arc<rustls::ClientConfig>,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), AgentError> {
    let (host, port, _) = super::endpoint(url)?;
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| AgentError::Url(url.to_string(), e.to_string()))?;
    let conn_err = |e: &dyn std::fmt::Display| AgentError::Connect(url.to_string(), e.to_string());
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|e| conn_err(&e))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|e| conn_err(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| conn_err(&e))?;
        tokio::spawn(conn);
        let resp = sender.send_request(req).await.map_err(|e| conn_err(&e))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| conn_err(&e))?
            .to_bytes();
        Ok::<_, AgentError>((status, body))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| conn_err(&"no answer within 30 s"))?
}
