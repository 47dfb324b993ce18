//! Partner-side clients built on rustls + hyper (HTTP/1.1 keep-alive and
//! HTTP/2), raw byte exchanges for requests no real client sends, and the
//! admin listener's plain-HTTP GET.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::broker::*;

/// A TLS client config that trusts `ca_pem` and presents `cert` (if any).
pub fn client_tls(
    ca_pem: &str,
    cert: Option<&ClientCert>,
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match cert {
        Some(c) => {
            let chain: Vec<_> = CertificateDer::pem_slice_iter(c.cert_pem.as_bytes())
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_slice(c.key_pem.as_bytes()).unwrap();
            b.with_client_auth_cert(chain, key).unwrap()
        }
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

/// TLS-connects to the broker; the error when the handshake is refused.
pub async fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let mut tls = TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    // TLS 1.3: the server judges the client certificate after the client's
    // Finished; a refusal arrives as an alert on the first read. Probe with
    // a zero-byte-safe read timeout: nothing is expected yet.
    let mut probe = [0u8; 1];
    match tokio::time::timeout(Duration::from_millis(200), tls.read(&mut probe)).await {
        Ok(Ok(0)) => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "closed by server",
        )),
        Ok(Ok(_)) => Err(std::io::Error::other("unexpected data from server")),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(tls),
    }
}

/// A partner that stops reading: connects as `cert`, sends `GET path`
/// (HTTP/1.1), reads 1 MiB of the answer (its head and the start of its
/// body), then reads no more; the connection is returned, still open.
pub async fn stalled_reader(
    addr: SocketAddr,
    ca_pem: &str,
    cert: &ClientCert,
    path: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut tls = tls_connect(addr, client_tls(ca_pem, Some(cert), &[b"http/1.1"]))
        .await
        .unwrap();
    tls.write_all(format!("GET {path} HTTP/1.1\r\nhost: l\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < 1024 * 1024 {
        let n = tls.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early");
        got += n;
    }
    tls
}

/// The DER of the leaf certificate the broker presents in a fresh handshake.
pub async fn server_leaf(addr: SocketAddr, ca_pem: &str, cert: &ClientCert) -> Vec<u8> {
    let tls = tls_connect(addr, client_tls(ca_pem, Some(cert), &[b"http/1.1"]))
        .await
        .expect("connect");
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .expect("the broker presents a certificate")
}

/// A response, fully read.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    pub version: http::Version,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// One open HTTP connection (HTTP/1.1 keep-alive or HTTP/2) to the broker.
pub enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Conn {
    /// Opens a connection; HTTP/2 when `h2`.
    pub async fn open(
        addr: SocketAddr,
        ca_pem: &str,
        cert: &ClientCert,
        h2: bool,
    ) -> std::io::Result<Conn> {
        Conn::open_as(addr, ca_pem, Some(cert), h2).await
    }

    /// Opens a connection presenting `cert`, or no certificate at all.
    pub async fn open_as(
        addr: SocketAddr,
        ca_pem: &str,
        cert: Option<&ClientCert>,
        h2: bool,
    ) -> std::io::Result<Conn> {
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tls = tls_connect(addr, client_tls(ca_pem, cert, alpn)).await?;
        let io = TokioIo::new(tls);
        if h2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Ok(Conn::H2(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            Ok(Conn::H1(send))
        }
    }

    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<Reply, hyper::Error> {
        let mut b = Request::builder().method(method);
        b = match self {
            Conn::H1(_) => b.uri(path).header("host", "localhost"),
            Conn::H2(_) => b.uri(format!("https://localhost{path}")),
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
        let resp = match self {
            Conn::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Conn::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let version = resp.version();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            version,
        })
    }

    pub async fn get(&mut self, path: &str) -> Result<Reply, hyper::Error> {
        self.send(Method::GET, path, &[], b"").await
    }
}

/// One request on a fresh HTTP/1.1 connection.
pub async fn get_once(
    addr: SocketAddr,
    ca_pem: &str,
    cert: &ClientCert,
    path: &str,
) -> Result<Reply, String> {
    let mut c = Conn::open(addr, ca_pem, cert, false)
        .await
        .map_err(|e| e.to_string())?;
    c.get(path).await.map_err(|e| e.to_string())
}

/// Writes raw bytes over a fresh mTLS connection and reads until close or
/// timeout (for malformed requests a real client would not send).
pub async fn raw_exchange(
    addr: SocketAddr,
    ca_pem: &str,
    cert: &ClientCert,
    bytes: &[u8],
    wait: Duration,
) -> String {
    let mut tls = tls_connect(addr, client_tls(ca_pem, Some(cert), &[b"http/1.1"]))
        .await
        .expect("connect");
    tls.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// GET on the admin listener (plain HTTP).
pub async fn admin_get(admin: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = admin_request(admin, path, &[]).await;
    (status, body)
}

/// GET on the admin listener with extra request headers; returns the
/// status, the response head (lowercased) and the body.
pub async fn admin_request(
    admin: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let mut tcp = TcpStream::connect(admin).await.expect("admin connect");
    let mut req = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (status, head.to_ascii_lowercase(), body.to_string())
}
