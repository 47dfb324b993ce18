//! A gatehouse home made at test time in a temp dir by the real `gatehouse
//! init`: partners, upstreams and certificates added through the CLI, and
//! the usual set-ups (an echo or plain upstream, partner `acme`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::broker::*;

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
        run_in(self.path(), args)
    }

    /// Runs the binary and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        ok_in(self.path(), args)
    }

    /// The text of a file in the home (`rel` relative to it).
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap()
    }

    /// Adds `[cluster]` (the fleet store at `url`, and `on_store_failure`
    /// when given) to gatehouse.toml.
    pub fn set_cluster(&self, url: &str, on_store_failure: Option<&str>) {
        self.edit_config(|doc| {
            let mut t = toml_edit::Table::new();
            t["redis_url"] = toml_edit::value(url);
            if let Some(mode) = on_store_failure {
                t["on_store_failure"] = toml_edit::value(mode);
            }
            doc["cluster"] = toml_edit::Item::Table(t);
        });
    }

    /// Appends TOML text to gatehouse.toml.
    pub fn append_config(&self, text: &str) {
        let path = self.path().join("gatehouse.toml");
        let mut all = std::fs::read_to_string(&path).unwrap();
        all.push('\n');
        all.push_str(text);
        std::fs::write(&path, all).unwrap();
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

    /// Sets `[limits]` in a partner's file (replacing what it had).
    pub fn set_partner_limits(&self, partner: &str, values: &[(&str, i64)]) {
        let p = self.path().join("partners").join(format!("{partner}.toml"));
        let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&p).unwrap().parse().unwrap();
        let mut t = toml_edit::Table::new();
        for (k, v) in values {
            t[*k] = toml_edit::value(*v);
        }
        doc["limits"] = toml_edit::Item::Table(t);
        std::fs::write(&p, doc.to_string()).unwrap();
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

    /// The issuing CA (`certs/ca.pem`), which signs partner and server certificates.
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.path().join("certs/ca.pem")).unwrap()
    }

    /// What partners trust: the root(s) (`certs/ca-bundle.pem`).
    pub fn roots_pem(&self) -> String {
        std::fs::read_to_string(self.path().join("certs/ca-bundle.pem")).unwrap()
    }

    /// The CA an upstream trusts to admit the broker (and only the broker).
    pub fn upstream_client_ca_pem(&self) -> String {
        std::fs::read_to_string(self.path().join("certs/upstream-client-ca.pem")).unwrap()
    }

    /// Starts `gatehouse serve` on OS-assigned ports.
    pub fn start(&self) -> Broker {
        Broker::start(self.path())
    }
}

/// Runs the built binary with `--home root` (any home, also one a test
/// made without `TestHome`).
pub fn run_in(root: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--home")
        .arg(root)
        .args(args)
        .output()
        .expect("run gatehouse")
}

/// [`run_in`], asserting success; returns stdout.
pub fn ok_in(root: &Path, args: &[&str]) -> String {
    let out = run_in(root, args);
    assert!(
        out.status.success(),
        "gatehouse {args:?} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Lets a running broker take in files just written: its watcher hears of
/// the change (or polls) and reloads within a second.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(1200)).await;
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

/// A home whose upstream `orders` is an echo upstream that admits only the
/// broker (mTLS, trusting the upstream-client CA), with partner `acme`
/// granted `GET /v1/orders` (no certificate issued yet).
pub async fn home_with_mtls_orders() -> (TestHome, super::upstream::EchoUpstream) {
    let h = TestHome::new();
    let up = super::upstream::start_echo_upstream(super::upstream::EchoOptions::mtls(
        h.upstream_client_ca_pem(),
    ))
    .await;
    h.add_echo_upstream("orders", &up);
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    (h, up)
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
