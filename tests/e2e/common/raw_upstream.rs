//! Deliberately odd plain-HTTP upstreams (slow, cut short, hand-timed
//! chunks), for the relay's failure paths.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain-HTTP upstream (hyper) that answers every request with 200 and
/// `body` after `delay`: for timeouts, idle and drain tests.
pub async fn start_slow_upstream(delay: Duration, body: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..64 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(body.as_bytes()),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// A deliberately raw plain-HTTP upstream, for peers no well-behaved server
/// would be (a body cut short, hand-timed chunks): for each connection it
/// reads one request head, writes `pieces` in order (sleeping after each
/// for its duration), then closes. Serves at most 4 connections.
pub async fn start_raw_upstream(pieces: Vec<(&'static [u8], Duration)>) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for _ in 0..4 {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let pieces = pieces.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                for (bytes, pause) in pieces {
                    if tcp.write_all(bytes).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
            });
        }
    });
    addr
}

/// A plain-HTTP upstream that answers one huge response, writing until the
/// broker closes the connection; `closed_after_ms` is when that happened
/// (ms after the first byte was written), `writing` whether it still writes.
pub async fn start_endless_upstream() -> (std::net::SocketAddr, Arc<AtomicU64>, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let closed_at = Arc::new(AtomicU64::new(0));
    let writing = Arc::new(AtomicBool::new(false));
    let (c, w) = (closed_at.clone(), writing.clone());
    tokio::spawn(async move {
        let Ok((mut tcp, _)) = listener.accept().await else {
            return;
        };
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|x| x == b"\r\n\r\n") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let started = Instant::now();
        w.store(true, Ordering::SeqCst);
        let _ = tcp
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4000000000\r\n\r\n")
            .await;
        let chunk = vec![b'x'; 64 * 1024];
        // Bounded: 4 GB at most, and at most 60 s.
        while started.elapsed() < Duration::from_secs(60) {
            if tcp.write_all(&chunk).await.is_err() {
                break;
            }
        }
        c.store(started.elapsed().as_millis() as u64, Ordering::SeqCst);
        w.store(false, Ordering::SeqCst);
    });
    (addr, closed_at, writing)
}
