//! The echo upstream: an HTTPS (or plain HTTP) server that answers every
//! request with 200 and a JSON description of what it received, for the
//! quick start and for end-to-end tests of the broker.
//!
//! This file is the one implementation. Tests use it in-process through
//! [`start_echo_upstream`]; `examples/echo-upstream.rs` includes it with
//! `#[path]` and adds the command line, signal handling and `--write-ca`.
//! It mints its own PKI with rcgen at start: a CA and a server certificate
//! for `localhost` and `127.0.0.1`. Nothing here touches files.
//!
//! The answer body:
//! `{"method", "path" (path and query as received), "headers" {name: value},
//!   "client_cert_cn", "client_cert_uri", "client_cert_serial" (hex; or null),
//!   "body_bytes", "trailers" {name: value} (request trailers; empty when none)}`.
//! Its status is 200, or the one a request asks for in `X-Echo-Status`.
#![allow(dead_code)] // not every helper is used by every test build

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::RootCertStore;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::{GeneralName, parse_x509_certificate};

/// How long a client may take to finish the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How the echo upstream is started.
#[derive(Debug, Clone)]
pub struct EchoOptions {
    /// Address to bind; port 0 picks a free port (the default, on loopback).
    pub listen: SocketAddr,
    /// When set, client certificates are required and verified against this
    /// CA (PEM, one or more certificates). When `None`, none is requested.
    pub client_ca_pem: Option<String>,
    /// Serve plain HTTP instead of HTTPS.
    pub plain: bool,
    /// Serve a server certificate from a CA other than the one reported in
    /// [`EchoUpstream::ca_pem`], so a client trusting `ca_pem` must refuse it.
    pub wrong_ca: bool,
}

impl Default for EchoOptions {
    fn default() -> Self {
        EchoOptions {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            client_ca_pem: None,
            plain: false,
            wrong_ca: false,
        }
    }
}

impl EchoOptions {
    /// HTTPS, client certificates required and verified against `ca_pem`.
    pub fn mtls(ca_pem: impl Into<String>) -> Self {
        EchoOptions {
            client_ca_pem: Some(ca_pem.into()),
            ..EchoOptions::default()
        }
    }

    /// Plain HTTP.
    pub fn plain() -> Self {
        EchoOptions {
            plain: true,
            ..EchoOptions::default()
        }
    }

    /// HTTPS with a server certificate the reported CA did not sign.
    pub fn wrong_ca() -> Self {
        EchoOptions {
            wrong_ca: true,
            ..EchoOptions::default()
        }
    }
}

/// Why the echo upstream could not start.
#[derive(Debug)]
pub struct EchoError(pub String);

impl fmt::Display for EchoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EchoError {}

fn fail(context: &str, e: impl fmt::Display) -> EchoError {
    EchoError(format!("{context}: {e}"))
}

/// A running echo upstream. Dropping it stops it (listener and every open
/// connection); [`EchoUpstream::shutdown`] also waits for that.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    /// PEM of the CA a client should trust for this upstream's certificate
    /// (with `wrong_ca`, a CA that did *not* sign it).
    pub ca_pem: String,
    /// Requests received (counted before the body is read).
    pub calls: Arc<AtomicUsize>,
    /// The JSON echoed for each request, in order.
    pub seen: Arc<Mutex<Vec<serde_json::Value>>>,
    /// `"https"` or `"http"`.
    pub scheme: &'static str,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl EchoUpstream {
    /// `https://127.0.0.1:PORT` (or `http://…` when plain).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Requests received so far.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// A copy of the JSON echoed so far.
    pub fn seen(&self) -> Vec<serde_json::Value> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Stops accepting, closes every connection, and waits for that.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A freshly minted PKI: a CA and a server certificate it signed for
/// `localhost` and `127.0.0.1`.
pub struct EchoPki {
    pub ca_pem: String,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: PrivateKeyDer<'static>,
}

fn new_ca(name: &str) -> Result<(Issuer<'static, KeyPair>, String), rcgen::Error> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok((Issuer::new(params, key), cert.pem()))
}

impl EchoPki {
    /// Mints a CA and a server certificate. With `wrong_ca`, the server
    /// certificate is signed by a second CA and `ca_pem` is the first.
    pub fn generate(wrong_ca: bool) -> Result<EchoPki, EchoError> {
        let (ca, ca_pem) = new_ca("echo-upstream CA").map_err(|e| fail("generating a CA", e))?;
        let other = if wrong_ca {
            Some(new_ca("echo-upstream unrelated CA").map_err(|e| fail("generating a CA", e))?)
        } else {
            None
        };
        let signer = other.as_ref().map_or(&ca, |(issuer, _)| issuer);

        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| fail("generating the server key", e))?;
        let mut params = CertificateParams::new(vec!["localhost".to_string()])
            .map_err(|e| fail("server certificate names", e))?;
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "localhost");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, signer)
            .map_err(|e| fail("signing the server certificate", e))?;
        Ok(EchoPki {
            ca_pem,
            server_chain: vec![cert.der().clone()],
            server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

/// The TLS server configuration: aws-lc-rs, TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1, client certificates required when `client_ca_pem` is given.
pub fn server_tls_config(
    pki: &EchoPki,
    client_ca_pem: Option<&str>,
) -> Result<ServerConfig, EchoError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| fail("TLS versions", e))?;
    let builder = match client_ca_pem {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| fail("client CA is not valid PEM", e))?;
                roots
                    .add(cert)
                    .map_err(|e| fail("client CA certificate refused", e))?;
            }
            if roots.is_empty() {
                return Err(EchoError("client CA holds no CERTIFICATE block".into()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| fail("client certificate verifier", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
        .map_err(|e| fail("server certificate", e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// What the peer's certificate says, as echoed.
#[derive(Debug, Clone, Default)]
struct PeerIdentity {
    cn: Option<String>,
    uri: Option<String>,
    /// Lowercase hex of the certificate's serial.
    serial: Option<String>,
}

fn peer_identity(der: &[u8]) -> PeerIdentity {
    let Ok((_, cert)) = parse_x509_certificate(der) else {
        return PeerIdentity::default();
    };
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    let uri = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|n| match n {
                GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
        });
    PeerIdentity {
        cn,
        uri,
        serial: Some(cert.raw_serial_as_string().replace(':', "")),
    }
}

#[derive(Clone)]
struct Recorder {
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
}

async fn echo(
    req: Request<Incoming>,
    peer: Arc<PeerIdentity>,
    rec: Recorder,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    rec.calls.fetch_add(1, Ordering::SeqCst);
    let method = req.method().to_string();
    let path = req.uri().path_and_query().map_or_else(
        || req.uri().path().to_string(),
        |pq| pq.as_str().to_string(),
    );
    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let value = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(", ");
        headers.insert(name.as_str().to_string(), value.into());
    }
    // `X-Echo-Status: 500` asks for that status (failure paths of callers).
    let status = req
        .headers()
        .get("x-echo-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|v| StatusCode::from_u16(v).ok())
        .unwrap_or(StatusCode::OK);
    let mut body = req.into_body();
    let mut body_bytes = 0usize;
    let mut trailers = serde_json::Map::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Some(data) = frame.data_ref() {
            body_bytes += data.len();
        }
        if let Some(t) = frame.trailers_ref() {
            for (name, value) in t {
                trailers.insert(
                    name.as_str().to_string(),
                    String::from_utf8_lossy(value.as_bytes())
                        .into_owned()
                        .into(),
                );
            }
        }
    }
    let json = serde_json::json!({
        "method": method,
        "path": path,
        "headers": headers,
        "client_cert_cn": peer.cn,
        "client_cert_uri": peer.uri,
        "client_cert_serial": peer.serial,
        "body_bytes": body_bytes,
        "trailers": trailers,
    });
    let text = json.to_string();
    if let Ok(mut seen) = rec.seen.lock() {
        seen.push(json);
    }
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

async fn serve_connection<S>(io: S, peer: PeerIdentity, rec: Recorder)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = Arc::new(peer);
    let service = hyper::service::service_fn(move |req| echo(req, peer.clone(), rec.clone()));
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Starts an echo upstream on `opts.listen`, minting a fresh PKI.
pub async fn try_start_echo_upstream(opts: EchoOptions) -> Result<EchoUpstream, EchoError> {
    let pki = EchoPki::generate(opts.wrong_ca)?;
    try_start_with_pki(opts, pki).await
}

/// Starts an echo upstream with the given PKI (the example uses this to
/// write the CA it serves under).
pub async fn try_start_with_pki(
    opts: EchoOptions,
    pki: EchoPki,
) -> Result<EchoUpstream, EchoError> {
    let acceptor = if opts.plain {
        None
    } else {
        let config = server_tls_config(&pki, opts.client_ca_pem.as_deref())?;
        Some(TlsAcceptor::from(Arc::new(config)))
    };
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|e| fail(&format!("cannot listen on {}", opts.listen), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| fail("bound address", e))?;
    let rec = Recorder {
        calls: Arc::new(AtomicUsize::new(0)),
        seen: Arc::new(Mutex::new(Vec::new())),
    };
    let (tx, mut rx) = oneshot::channel::<()>();
    let loop_rec = rec.clone();
    let task = tokio::spawn(async move {
        // Dropping the set at the end aborts every open connection.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                _ = &mut rx => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else {
                        // Out of descriptors or similar: back off, do not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    let rec = loop_rec.clone();
                    match acceptor.clone() {
                        None => {
                            connections.spawn(serve_connection(tcp, PeerIdentity::default(), rec));
                        }
                        Some(acceptor) => {
                            connections.spawn(async move {
                                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                                let Ok(Ok(tls)) = handshake.await else { return };
                                let peer = tls
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(|c| peer_identity(c))
                                    .unwrap_or_default();
                                serve_connection(tls, peer, rec).await;
                            });
                        }
                    }
                }
            }
        }
    });
    Ok(EchoUpstream {
        addr,
        ca_pem: pki.ca_pem,
        calls: rec.calls,
        seen: rec.seen,
        scheme: if opts.plain { "http" } else { "https" },
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// Starts an echo upstream; panics if it cannot (tests only).
pub async fn start_echo_upstream(opts: EchoOptions) -> EchoUpstream {
    match try_start_echo_upstream(opts).await {
        Ok(u) => u,
        Err(e) => panic!("echo upstream did not start: {e}"),
    }
}
