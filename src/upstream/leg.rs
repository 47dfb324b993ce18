//! The upstream leg: one connection to one endpoint address, on hyper's
//! connection-level client. TCP (no Nagle), then for https a rustls
//! handshake that verifies the upstream against its CA, checks
//! `server_name` and presents the broker's client certificate; h2 when the
//! upstream's ALPN says so, HTTP/1.1 otherwise. No pooling here: that is
//! [`super::endpoint`]'s.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::RelayBody;
use super::error::{chain_text, find_rustls};

/// How to open a connection to any endpoint of one pool.
pub struct Leg {
    /// `None`: plain http.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
}

/// A ready-to-use connection handle.
pub enum Conn {
    H1(http1::SendRequest<RelayBody>),
    H2(http2::SendRequest<RelayBody>),
}

/// Why a connection could not be opened (the request never left).
#[derive(Debug, Clone)]
pub enum ConnectError {
    /// Refused, unreachable, reset or timed out before the handshake ended.
    Io(String),
    /// The upstream's certificate (or ours) was refused.
    Tls(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Io(m) => write!(f, "connect: {m}"),
            ConnectError::Tls(m) => write!(f, "TLS: {m}"),
        }
    }
}

impl Leg {
    /// A leg for plain http (`tls = None`) or https with this client
    /// configuration (ALPN is set here) and the name to check.
    pub fn new(
        tls: Option<(rustls::ClientConfig, ServerName<'static>)>,
        connect_timeout: Duration,
    ) -> Leg {
        let tls = tls.map(|(mut config, name)| {
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            (TlsConnector::from(Arc::new(config)), name)
        });
        Leg {
            tls,
            connect_timeout,
        }
    }

    /// Opens a connection, within `connect_timeout` (TCP and TLS together).
    pub async fn connect(&self, addr: SocketAddr) -> Result<Conn, ConnectError> {
        match tokio::time::timeout(self.connect_timeout, self.open(addr)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Io(format!(
                "{addr}: no connection within {:?}",
                self.connect_timeout
            ))),
        }
    }

    async fn open(&self, addr: SocketAddr) -> Result<Conn, ConnectError> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| ConnectError::Io(format!("{addr}: {e}")))?;
        let _ = tcp.set_nodelay(true);
        let Some((connector, name)) = &self.tls else {
            return handshake_h1(TokioIo::new(tcp)).await;
        };
        let tls =
            connector
                .connect(name.clone(), tcp)
                .await
                .map_err(|e| match find_rustls(&e) {
                    Some(t) => ConnectError::Tls(t.to_string()),
                    None => ConnectError::Io(format!("{addr}: TLS handshake: {e}")),
                })?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .map_err(|e| {
                    ConnectError::Io(format!("{addr}: h2 handshake: {}", chain_text(&e)))
                })?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!("upstream h2 connection ended: {e}");
                }
            });
            Ok(Conn::H2(sender))
        } else {
            handshake_h1(io).await
        }
    }
}

async fn handshake_h1<T>(io: TokioIo<T>) -> Result<Conn, ConnectError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|e| ConnectError::Io(format!("h1 handshake: {}", chain_text(&e))))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!("upstream connection ended: {e}");
        }
    });
    Ok(Conn::H1(sender))
}
