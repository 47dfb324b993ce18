//! Interoperability with the client stacks partners actually use — curl
//! (OpenSSL), Python `ssl`, Node.js `https`, Java `HttpClient` with the
//! PKCS#12 file `cert issue --p12` writes, and Go `net/http` — each driving
//! the running broker: a normal call; after `ca rotate`; after
//! `ca rotate --root` holding only the old root; with the root key offline.
//! And a real TLS upstream (Python `ssl`, OpenSSL underneath) trusting only
//! `upstream-client-ca.pem`: the broker gets through, also during an
//! upstream-client CA rotation; a partner certificate presented directly
//! is refused. rustls is deliberately not among the clients: it accepted
//! chains (pathlen) that every one of these refused.

use crate::common;

use std::path::{Path, PathBuf};

use common::broker::{TestHome, home_with_mtls_orders, settle};
use common::stacks::{self as clients, Client, PartnerFiles};

/// `cert issue acme --p12 --out DIR` (or `cert renew`); the files.
fn issue_files(h: &TestHome, what: &str, tag: &str) -> PartnerFiles {
    let dir = h.path().join(format!("partner-{tag}"));
    h.ok(&[
        "cert",
        what,
        "acme",
        "--p12",
        "--out",
        dir.to_str().unwrap(),
    ]);
    PartnerFiles::in_dir(&dir, "acme")
}

fn url(broker: &common::broker::Broker) -> String {
    format!("https://localhost:{}/v1/orders/7", broker.addr.port())
}

/// Every available client makes one call with `files`; each must get 200
/// from the upstream with acme's identity. Returns how many ran.
async fn every_client_gets_through(files: &PartnerFiles, url: &str, scenario: &str) -> usize {
    let mut ran = 0;
    let mut failures = Vec::new();
    for client in clients::ALL {
        if !clients::available(client) {
            continue;
        }
        let (f, u) = (files.clone(), url.to_string());
        let answer = tokio::task::spawn_blocking(move || clients::get(client, &f, &u))
            .await
            .expect("client task");
        ran += 1;
        match answer {
            Ok(a) if a.status == 200 && a.body.contains(r#""x-gatehouse-partner":"acme""#) => {}
            Ok(a) => failures.push(format!("{}: {} {}", client.name(), a.status, a.body)),
            Err(e) => failures.push(e),
        }
    }
    assert!(
        failures.is_empty(),
        "{scenario}: some client stacks failed:\n{}",
        failures.join("\n")
    );
    ran
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_stack_calls_through_the_broker() {
    let (h, up) = home_with_mtls_orders().await;
    let files = issue_files(&h, "issue", "a");
    // The PKCS#12 password file is private, like the key.
    use std::os::unix::fs::PermissionsExt;
    for p in [&files.p12, &files.p12_pass, &files.key] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
    let broker = h.start();
    let ran = every_client_gets_through(&files, &url(&broker), "normal call").await;
    assert_eq!(up.calls(), ran);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_rotating_the_issuing_ca_every_client_keeps_working() {
    let (h, _up) = home_with_mtls_orders().await;
    let old = issue_files(&h, "issue", "old");
    let broker = h.start();
    h.ok(&["ca", "rotate"]);
    let new = issue_files(&h, "issue", "new");
    settle().await;
    // The partner changed nothing: same files, same ca.pem as at onboarding.
    every_client_gets_through(&old, &url(&broker), "after ca rotate, old certificate").await;
    // A certificate of the new issuing CA, with the onboarding ca.pem.
    every_client_gets_through(
        &new.trusting(&old.ca),
        &url(&broker),
        "after ca rotate, new certificate",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_rotating_the_root_a_client_holding_only_the_old_root_keeps_working() {
    let (h, _up) = home_with_mtls_orders().await;
    let old = issue_files(&h, "issue", "old");
    let old_root = std::fs::read_to_string(&old.ca).unwrap();
    assert_eq!(old_root.matches("BEGIN CERTIFICATE").count(), 1);
    let broker = h.start();
    h.ok(&["ca", "rotate", "--root"]);
    let new = issue_files(&h, "issue", "new");
    settle().await;
    // The broker's chain is verified through the cross certificate (path
    // lengths: this is what failed for the old `--cross-sign`).
    every_client_gets_through(
        &old,
        &url(&broker),
        "after ca rotate --root, old root, old certificate",
    )
    .await;
    every_client_gets_through(
        &new.trusting(&old.ca),
        &url(&broker),
        "after ca rotate --root, old root, new certificate",
    )
    .await;
    // New partners get both roots; the new root alone works too.
    assert_eq!(
        std::fs::read_to_string(&new.ca)
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );
    let new_root = h.path().join("certs/root.pem");
    every_client_gets_through(&new.trusting(&new_root), &url(&broker), "new root only").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_root_key_offline_every_client_works() {
    let (h, _up) = home_with_mtls_orders().await;
    let offline = tempfile::tempdir().unwrap();
    std::fs::rename(
        h.path().join("certs/root.key"),
        offline.path().join("root.key"),
    )
    .unwrap();
    let broker = h.start();
    let first = issue_files(&h, "issue", "first");
    let renewed = issue_files(&h, "renew", "renewed");
    h.ok(&["cert", "crl", "--refresh"]);
    settle().await;
    every_client_gets_through(&renewed, &url(&broker), "root key offline, renewed").await;
    every_client_gets_through(&first, &url(&broker), "root key offline, in overlap").await;
}

/// A certificate authority and a `localhost` server certificate for a test
/// upstream, written to `dir`: (ca.pem, server.pem, server.key).
fn upstream_server_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::default();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test upstream CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &issuer).unwrap();
    let paths = (
        dir.join("upstream-ca.pem"),
        dir.join("upstream-server.pem"),
        dir.join("upstream-server.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

const PYTHON_UPSTREAM: &str = r#"
import json, ssl, sys
from http.server import HTTPServer, BaseHTTPRequestHandler
cert, key, client_ca = sys.argv[1:4]
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        peer = self.connection.getpeercert() or {}
        cn = [v for rdn in peer.get("subject", ()) for (k, v) in rdn if k == "commonName"]
        body = json.dumps({"path": self.path, "client_cn": cn,
                           "x-gatehouse-partner": self.headers.get("x-gatehouse-partner")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
ctx.load_verify_locations(client_ca)
ctx.verify_mode = ssl.CERT_REQUIRED
ctx.verify_flags |= ssl.VERIFY_X509_STRICT
srv = HTTPServer(("127.0.0.1", 0), H)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("listening", srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// A Python `ssl` HTTPS server requiring client certificates from
/// `client_ca` only; killed on drop.
struct PythonUpstream {
    child: std::process::Child,
    port: u16,
}

impl PythonUpstream {
    fn start(dir: &Path, server: &(PathBuf, PathBuf, PathBuf), client_ca: &Path) -> PythonUpstream {
        use std::io::BufRead;
        let script = dir.join("upstream.py");
        std::fs::write(&script, PYTHON_UPSTREAM).unwrap();
        let mut child = std::process::Command::new("python3")
            .arg(&script)
            .arg(&server.1)
            .arg(&server.2)
            .arg(client_ca)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the Python upstream");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the Python upstream did not start: {line}"));
        PythonUpstream { child, port }
    }
}

impl Drop for PythonUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_tls_upstream_trusting_only_the_upstream_client_ca_admits_the_broker_not_partners() {
    if !clients::available(Client::Python) || !clients::available(Client::Curl) {
        return;
    }
    let h = TestHome::new();
    let server = upstream_server_pki(h.path());
    let upstream = PythonUpstream::start(
        h.path(),
        &server,
        &h.path().join("certs/upstream-client-ca.pem"),
    );
    h.add_upstream(
        "orders",
        &format!("https://127.0.0.1:{}", upstream.port),
        Some(&std::fs::read_to_string(&server.0).unwrap()),
    );
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    let files = issue_files(&h, "issue", "a");
    let broker = h.start();
    let call = |f: PartnerFiles, u: String| {
        tokio::task::spawn_blocking(move || clients::get(Client::Curl, &f, &u))
    };
    // Through the broker: the upstream admits the broker's certificate.
    let a = call(files.clone(), url(&broker)).await.unwrap().unwrap();
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.body.contains(r#""x-gatehouse-partner": "acme""#),
        "{}",
        a.body
    );
    assert!(a.body.contains("gatehouse-broker"), "{}", a.body);
    // The partner's own certificate, presented to the upstream directly: refused.
    let direct = format!("https://localhost:{}/v1/orders/7", upstream.port);
    let bypass = call(files.trusting(&server.0), direct.clone())
        .await
        .unwrap();
    assert!(
        bypass.is_err(),
        "a partner certificate got into the upstream: {bypass:?}"
    );
    // Rotating the upstream-client CA: the upstream still trusts only the
    // old one, and admits the broker through the cross certificate.
    h.ok(&["ca", "rotate", "--upstream-client"]);
    settle().await;
    let a = call(files.clone(), url(&broker)).await.unwrap().unwrap();
    assert_eq!(a.status, 200, "during the overlap: {}", a.body);
    // Not even with the partner's chain plus the cross certificate.
    let bypass = call(files.trusting(&server.0), direct).await.unwrap();
    assert!(bypass.is_err(), "{bypass:?}");
}
