//! An alert webhook receiver started by a test: plain HTTP or HTTPS (a
//! certificate from a CA minted here), collecting the bodies POSTed to it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::upstream::{EchoPki, server_tls_config};

/// A running receiver; it stops with the test's runtime.
pub struct Webhook {
    pub addr: SocketAddr,
    /// The CA of its certificate (HTTPS only).
    pub ca_pem: Option<String>,
    got: Arc<Mutex<Vec<String>>>,
}

impl Webhook {
    /// A plain-HTTP receiver on a loopback port.
    pub async fn start() -> Webhook {
        Webhook::spawn(None).await
    }

    /// An HTTPS receiver whose certificate (for `127.0.0.1` and
    /// `localhost`) a fresh CA signed.
    pub async fn start_tls() -> Webhook {
        let pki = EchoPki::generate(false).expect("webhook PKI");
        Webhook::spawn(Some(pki)).await
    }

    async fn spawn(pki: Option<EchoPki>) -> Webhook {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let ca_pem = pki.as_ref().map(|p| p.ca_pem.clone());
        let acceptor = pki.map(|p| {
            tokio_rustls::TlsAcceptor::from(Arc::new(
                server_tls_config(&p, None).expect("webhook TLS"),
            ))
        });
        let g = got.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                let Ok((s, _)) = l.accept().await else {
                    return;
                };
                match &acceptor {
                    None => serve_one(s, &g).await,
                    Some(a) => {
                        if let Ok(Ok(tls)) =
                            tokio::time::timeout(Duration::from_secs(2), a.accept(s)).await
                        {
                            serve_one(tls, &g).await;
                        }
                    }
                }
            }
        });
        Webhook { addr, ca_pem, got }
    }

    /// `http://` or `https://` URL of the receiver.
    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://127.0.0.1:{}/alerts", self.addr.port())
    }

    /// The bodies received so far.
    pub fn received(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }

    /// Waits (bounded) until at least `n` bodies arrived; returns them.
    pub async fn wait_for(&self, n: usize, secs: u64) -> Vec<String> {
        for _ in 0..secs * 10 {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.received()
    }
}

/// Reads one request (head and a Content-Length body, bounded), keeps the
/// body, answers 204.
async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, got: &Mutex<Vec<String>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    for _ in 0..100 {
        let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk)).await
        else {
            break;
        };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                })
                .unwrap_or(0);
            if body.len() >= len {
                got.lock().unwrap().push(body.to_string());
                break;
            }
        }
    }
    let _ = s
        .write_all(b"HTTP/1.1 204 No Content\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
        .await;
    let _ = s.shutdown().await;
}
