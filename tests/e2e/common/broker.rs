//! Test harness: a gatehouse home made at test time in a temp dir (real CA,
//! real certificates), the real `gatehouse serve` binary started on ports
//! the OS assigns, and mTLS clients (HTTP/1.1 and HTTP/2) built on rustls +
//! hyper.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// A gatehouse home in a temp dir.
pub struct TestHome {
    pub dir: tempfile::TempDir,
}

/// A partner's client credentials.
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: String,
}

impl TestHome {
    /// `gatehouse init` with the default trust domain, and no upstreams yet.
    pub fn new() -> TestHome {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = TestHome { dir };
        home.ok(&["init"]);
        // Drop the example upstream: each test adds its own.
        let cfg = std::fs::read_to_string(home.path().join("gatehouse.toml")).unwrap();
        let mut doc: toml_edit::DocumentMut = cfg.parse().unwrap();
        doc["upstreams"] = toml_edit::table();
        std::fs::write(home.path().join("gatehouse.toml"), doc.to_string()).unwrap();
        home
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs the binary with `--home`.
    pub fn run(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--home")
            .arg(self.path())
            .args(args)
            .output()
            .expect("run gatehouse")
    }

    /// Runs the binary and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "gatehouse {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Edits gatehouse.toml.
    pub fn edit_config(&self, f: impl FnOnce(&mut toml_edit::DocumentMut)) {
        let p = self.path().join("gatehouse.toml");
        let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&p).unwrap().parse().unwrap();
        f(&mut doc);
        std::fs::write(&p, doc.to_string()).unwrap();
    }

    /// Sets `[server] key = value`.
    pub fn set_server(&self, key: &str, value: impl Into<toml_edit::Value>) {
        let v = value.into();
        self.edit_config(|doc| doc["server"][key] = toml_edit::Item::Value(v));
    }

    /// Adds `[upstreams.<name>]`; `ca_pem` is written to `certs/<name>-ca.pem`.
    pub fn add_upstream(&self, name: &str, url: &str, ca_pem: Option<&str>) {
        let ca_path = ca_pem.map(|pem| {
            let p = self.path().join("certs").join(format!("{name}-ca.pem"));
            std::fs::write(&p, pem).unwrap();
            p
        });
        self.edit_config(|doc| {
            let mut t = toml_edit::Table::new();
            t["url"] = toml_edit::value(url);
            if let Some(p) = &ca_path {
                t["ca"] = toml_edit::value(p.display().to_string());
                t["server_name"] = toml_edit::value("localhost");
            }
            t["response_timeout"] = toml_edit::value("3s");
            doc["upstreams"][name] = toml_edit::Item::Table(t);
        });
    }

    /// `partner add ID --route R...`.
    pub fn add_partner(&self, id: &str, routes: &[&str]) {
        let mut args = vec!["partner", "add", id];
        for r in routes {
            args.push("--route");
            args.push(r);
        }
        self.ok(&args);
    }

    /// `cert issue ID` into a temp folder; returns the credentials.
    pub fn issue(&self, id: &str) -> ClientCert {
        let out = self
            .path()
            .join("out")
            .join(format!("{id}-{}", rand_suffix()));
        self.ok(&["cert", "issue", id, "--out", out.to_str().unwrap()]);
        self.read_client(&out, id)
    }

    pub fn read_client(&self, dir: &Path, id: &str) -> ClientCert {
        let cert_pem = std::fs::read_to_string(dir.join(format!("{id}.pem"))).unwrap();
        let key_pem = std::fs::read_to_string(dir.join(format!("{id}.key"))).unwrap();
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
        ClientCert {
            serial: hex::encode(x.raw_serial()),
            cert_pem,
            key_pem,
        }
    }

    /// Every journal record (`gatehouse log export`), through the running
    /// broker's admin socket when it runs, else from the database.
    pub fn journal(&self) -> Vec<serde_json::Value> {
        self.ok(&["log", "export", "--format", "jsonl"])
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["type"] == "record")
            .collect()
    }

    /// Waits (bounded) until a journal record satisfies `pred`.
    pub async fn wait_journal(
        &self,
        secs: u64,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        for _ in 0..secs * 10 {
            if let Some(v) = self.journal().into_iter().find(|v| pred(v)) {
                return Some(v);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        None
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.path().join("certs/ca.pem")).unwrap()
    }

    /// Starts `gatehouse serve` on OS-assigned ports.
    pub fn start(&self) -> Broker {
        Broker::start(self.path())
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running broker process; killed on drop.
pub struct Broker {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub stderr_path: PathBuf,
}

impl Broker {
    pub fn start(home: &Path) -> Broker {
        Broker::start_with(home, &[])
    }

    /// Starts `gatehouse serve` with extra arguments (`--node-id`, `--data`, ...).
    pub fn start_with(home: &Path, extra: &[&str]) -> Broker {
        let stderr_path = home.join(format!("serve-{}.log", rand_suffix()));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new(BIN)
            .arg("--home")
            .arg(home)
            .args(["serve", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn gatehouse serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        let mut admin = None;
        for _ in 0..10 {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(a) = line.strip_prefix("gatehouse listening on ") {
                        addr = a.trim().parse().ok();
                    }
                    if let Some(a) = line.strip_prefix("gatehouse admin on ") {
                        admin = a.trim().parse().ok();
                    }
                    if addr.is_some() && admin.is_some() {
                        break;
                    }
                }
                _ => break,
            }
        }
        // Keep draining stdout so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        let (Some(addr), Some(admin)) = (addr, admin) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "broker did not start: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        };
        Broker {
            child,
            addr,
            admin,
            stderr_path,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends a signal to the broker process.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }

    /// Waits up to `secs` for the process to exit; returns its status.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        for _ in 0..secs * 20 {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Waits until the broker's log contains `needle` (bounded).
    pub async fn wait_log(&self, needle: &str, secs: u64) -> bool {
        for _ in 0..secs * 20 {
            if self.log().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

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

/// The DER of the first certificate in a PEM file.
pub fn first_cert_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path)
        .expect("PEM certificate")
        .as_ref()
        .to_vec()
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
        let alpn: &[&[u8]] = if h2 { &[b"h2"] } else { &[b"http/1.1"] };
        let tls = tls_connect(addr, client_tls(ca_pem, Some(cert), alpn)).await?;
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
    let mut tcp = TcpStream::connect(admin).await.expect("admin connect");
    let req = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

/// Mints a client certificate signed by the home's CA with custom params
/// (for certificates `gatehouse cert issue` would never make).
pub fn mint_with_home_ca(
    h: &TestHome,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> ClientCert {
    let ca_pem = h.ca_pem();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(h.path().join("certs/ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    mint(&issuer, &ca_pem, edit)
}

/// Mints a client certificate under `issuer`.
pub fn mint<S: rcgen::SigningKey>(
    issuer: &rcgen::Issuer<'_, S>,
    chain_pem: &str,
    edit: impl FnOnce(&mut rcgen::CertificateParams),
) -> ClientCert {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, "acme");
    p.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://gatehouse.local/partner/acme".try_into().unwrap(),
    )];
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(30);
    let serial: [u8; 16] = rand::random();
    let mut serial = serial;
    serial[0] = (serial[0] & 0x7f).max(1);
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    edit(&mut p);
    let cert = p.signed_by(&key, issuer).unwrap();
    ClientCert {
        cert_pem: format!("{}{}", cert.pem(), chain_pem),
        key_pem: key.serialize_pem(),
        serial: hex::encode(serial),
    }
}

/// A fresh foreign CA (issuer + its PEM).
pub fn foreign_ca() -> (rcgen::Issuer<'static, rcgen::KeyPair>, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "rogue CA");
    let cert = p.self_signed(&key).unwrap();
    (rcgen::Issuer::new(p, key), cert.pem())
}

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

impl TestHome {
    /// Adds `[upstreams.<name>]` pointing at an echo upstream (trusting its CA).
    pub fn add_echo_upstream(&self, name: &str, up: &super::upstream::EchoUpstream) {
        self.add_upstream(
            name,
            &format!("https://127.0.0.1:{}", up.addr.port()),
            Some(&up.ca_pem),
        );
    }
}

/// A home whose upstream `orders` is the plain-HTTP server at `addr`, with
/// partner `acme` granted `GET /v1/orders`, and its certificate.
pub fn home_with_plain_upstream(addr: SocketAddr) -> (TestHome, ClientCert) {
    let h = TestHome::new();
    h.add_upstream("orders", &format!("http://{addr}"), None);
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    let acme = h.issue("acme");
    (h, acme)
}

/// The common setup: a home, an echo upstream `orders`, and partner `acme`
/// granted `routes`, with its certificate.
pub async fn home_with_echo(
    routes: &[&str],
) -> (TestHome, super::upstream::EchoUpstream, ClientCert) {
    let h = TestHome::new();
    let up = super::upstream::start_echo_upstream(super::upstream::EchoOptions::default()).await;
    h.add_echo_upstream("orders", &up);
    h.add_partner("acme", routes);
    let acme = h.issue("acme");
    (h, up, acme)
}
