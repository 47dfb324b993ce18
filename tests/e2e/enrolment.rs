//! Enrolment over EST (RFC 7030) with one-time invitations, against a real
//! broker and real clients: the commands `partner invite` prints (openssl
//! req, curl, openssl pkcs7) enrol a partner whose certificate then calls a
//! route; a used, an expired and a locked invitation are refused; attempts
//! are limited per address; every step is on record. A client without a
//! certificate gets `cacerts` and `simpleenroll` and nothing else (never an
//! upstream, never a partner identity). `gatehouse agent enroll` enrols,
//! `agent renew` renews, and `simplereenroll` renews with curl over mTLS.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use common::broker::{Conn, TestHome, get_once};
use common::upstream::{EchoOptions, EchoUpstream, start_echo_upstream};

/// Whether openssl and curl are here (in CI they must be).
fn have_tools() -> bool {
    let openssl = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !openssl {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "openssl is required in CI"
        );
        eprintln!("openssl not installed: skipping");
    }
    openssl && common::tools::have("curl")
}

/// A home with partners `acme` and `globex` (GET /v1/orders), their
/// renewal window open from the start, and an echo upstream.
async fn setup() -> (TestHome, EchoUpstream) {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("orders", &up);
    for id in ["acme", "globex"] {
        h.add_partner(id, &["GET /v1/orders -> orders"]);
        let p = h.path().join(format!("partners/{id}.toml"));
        let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&p).unwrap().parse().unwrap();
        doc["renewal_window"] = toml_edit::value("3650d");
        std::fs::write(&p, doc.to_string()).unwrap();
    }
    (h, up)
}

/// `partner invite ID --json` for the broker at `port`.
fn invite(h: &TestHome, id: &str, port: u16) -> serde_json::Value {
    let url = format!("https://localhost:{port}");
    let out = h.ok(&["partner", "invite", id, "--url", &url, "--json"]);
    serde_json::from_str(&out).unwrap()
}

/// Runs a printed command with `bash -o pipefail -c` in `dir` (a failing
/// step of a pipe fails the command).
fn sh(dir: &Path, cmd: &str) -> Output {
    Command::new("bash")
        .args(["-o", "pipefail", "-c"])
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap()
}

/// `curl` of the enrolment with `id:secret` and the CSR in `dir`; the HTTP
/// status and the body.
fn enrol_with_curl(dir: &Path, port: u16, id: &str, secret: &str) -> (String, String) {
    let o = Command::new("curl")
        .args(["--silent", "--max-time", "20", "--cacert", "root.pem", "-u"])
        .arg(format!("{id}:{secret}"))
        .args(["-H", "Content-Type: application/pkcs10", "--data-binary"])
        .arg(format!("@{id}.csr.b64"))
        .args(["-w", "\n%{http_code}"])
        .arg(format!(
            "https://localhost:{port}/.well-known/est/simpleenroll"
        ))
        .current_dir(dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_string(), body.to_string())
}

fn json_error(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body).unwrap_or_default()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// A partner directory with `root.pem` from the invitation.
fn partner_dir(h: &TestHome, name: &str, inv: &serde_json::Value) -> std::path::PathBuf {
    let dir = h.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("root.pem"), inv["root_pem"].as_str().unwrap()).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invitations_commands_enrol_once_and_the_certificate_calls_a_route() {
    if !have_tools() {
        return;
    }
    let (h, up) = setup().await;
    let broker = h.start();
    let port = broker.addr.port();
    let inv = invite(&h, "acme", port);
    let secret = inv["secret"].as_str().unwrap().to_string();
    assert!(secret.len() >= 22, "at least 128 bits: {secret}");
    let stored = std::fs::read_to_string(h.path().join("invitations/acme.json")).unwrap();
    assert!(
        !stored.contains(&secret),
        "the secret is stored hashed only"
    );
    let mode = std::fs::metadata(h.path().join("invitations/acme.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // The printed commands, as the partner runs them.
    let dir = partner_dir(&h, "acme-side", &inv);
    let cmds: Vec<String> = inv["commands"]["openssl_curl"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect();
    for c in &cmds[..2] {
        let o = sh(&dir, c);
        assert!(
            o.status.success(),
            "{c}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // The chain is leaf first, for acme, for the key made on the partner's side.
    let o = Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName",
            "-in",
        ])
        .arg(dir.join("acme.pem"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("spiffe://gatehouse.local/partner/acme"),
        "{text}"
    );

    // The new certificate calls the route (curl, as the third command says).
    let calls = up.calls();
    let o = Command::new("curl")
        .args([
            "--silent",
            "--fail",
            "--max-time",
            "20",
            "--cacert",
            "root.pem",
        ])
        .args(["--cert", "acme.pem", "--key", "acme.key"])
        .arg(format!("https://localhost:{port}/v1/orders"))
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["headers"]["x-gatehouse-partner"], "acme");
    assert_eq!(up.calls(), calls + 1);

    // The same secret a second time: refused.
    let (status, body) = enrol_with_curl(&dir, port, "acme", &secret);
    assert_eq!(
        (status.as_str(), json_error(&body).as_str()),
        ("403", "invitation_used")
    );

    // An expired invitation: refused (its expiry moved into the past).
    let inv2 = invite(&h, "acme", port);
    let secret2 = inv2["secret"].as_str().unwrap().to_string();
    let path = h.path().join("invitations/acme.json");
    let mut stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    stored["expires_at"] = serde_json::json!(stored["created_at"].as_i64().unwrap() - 1);
    std::fs::write(&path, stored.to_string()).unwrap();
    let (status, body) = enrol_with_curl(&dir, port, "acme", &secret2);
    assert_eq!(
        (status.as_str(), json_error(&body).as_str()),
        ("403", "invitation_expired")
    );

    // Every step on record.
    let records = h.journal();
    let enrolled = records
        .iter()
        .find(|r| r["path"] == "/.well-known/est/simpleenroll" && r["decision"] == "allowed")
        .unwrap_or_else(|| panic!("no enrolment record: {records:#?}"));
    assert_eq!(enrolled["partner"], "acme");
    assert_eq!(enrolled["status"], 200);
    assert!(
        enrolled["cert_serial"]
            .as_str()
            .is_some_and(|s| !s.is_empty())
    );
    assert!(
        records
            .iter()
            .any(|r| r["reason"] == "cert_enrolment_issuing")
    );
    for reason in ["invitation_used", "invitation_expired"] {
        assert!(
            records
                .iter()
                .any(|r| r["reason"] == reason && r["partner"] == "acme"),
            "{reason} not on record"
        );
    }
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secrets_lock_the_invitation_and_attempts_are_limited_per_address() {
    if !have_tools() {
        return;
    }
    let (h, _up) = setup().await;
    let broker = h.start();
    let port = broker.addr.port();
    let inv = invite(&h, "acme", port);
    let secret = inv["secret"].as_str().unwrap().to_string();
    let dir = partner_dir(&h, "acme-side", &inv);
    let cmds = inv["commands"]["openssl_curl"].as_array().unwrap();
    assert!(sh(&dir, cmds[0].as_str().unwrap()).status.success());

    let mut seen = Vec::new();
    for _ in 0..6 {
        let (status, body) = enrol_with_curl(&dir, port, "acme", "not-the-secret");
        seen.push(format!("{status} {}", json_error(&body)));
    }
    assert_eq!(
        seen,
        [
            "401 enrolment_unauthorized",
            "401 enrolment_unauthorized",
            "401 enrolment_unauthorized",
            "401 enrolment_unauthorized",
            "403 invitation_locked",
            "403 invitation_locked",
        ]
    );
    // Locked: the right secret no longer enrols.
    let (status, body) = enrol_with_curl(&dir, port, "acme", &secret);
    assert_eq!(
        (status.as_str(), json_error(&body).as_str()),
        ("403", "invitation_locked")
    );
    // No invitation at all, then the per-address limit (10 a minute).
    std::fs::copy(dir.join("acme.csr.b64"), dir.join("globex.csr.b64")).unwrap();
    let (status, _) = enrol_with_curl(&dir, port, "globex", "whatever");
    assert_eq!(status, "401");
    let mut last = String::new();
    for _ in 0..3 {
        let (status, body) = enrol_with_curl(&dir, port, "acme", &secret);
        last = format!("{status} {}", json_error(&body));
    }
    assert_eq!(last, "429 enrolment_rate_limited");

    let out = h.ok(&["partner", "show", "acme"]);
    assert!(out.contains("invitation: locked"), "{out}");
    let records = h.journal();
    let count = |reason: &str| {
        records
            .iter()
            .filter(|r| r["reason"] == reason && r["path"] == "/.well-known/est/simpleenroll")
            .count()
    };
    assert_eq!(
        count("enrolment_unauthorized"),
        5,
        "4 wrong tries and globex"
    );
    // Two wrong tries, the right secret, and two more until the 11th attempt.
    assert_eq!(count("invitation_locked"), 5);
    assert_eq!(count("enrolment_rate_limited"), 1);
    assert!(
        !records
            .iter()
            .any(|r| r["reason"] == "cert_enrolment_issuing")
    );
    // Revoked: the invitation is gone.
    h.ok(&["partner", "invite", "--revoke", "acme"]);
    assert!(!h.path().join("invitations/acme.json").exists());
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_gets_enrolment_and_nothing_else() {
    if !have_tools() {
        return;
    }
    let (h, up) = setup().await;
    let broker = h.start();
    let roots = h.roots_pem();
    let mut c = Conn::open_as(broker.addr, &roots, None, false)
        .await
        .unwrap();

    // cacerts: certs-only PKCS#7, base64, which openssl reads.
    let r = c.get("/.well-known/est/cacerts").await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["content-type"],
        "application/pkcs7-mime; smime-type=certs-only"
    );
    let dir = h.path().join("anon");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cacerts.b64"), &r.body).unwrap();
    let o = sh(
        &dir,
        "openssl base64 -d -in cacerts.b64 | openssl pkcs7 -inform DER -print_certs",
    );
    let printed = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(printed.contains("root"), "{printed}");
    assert!(
        printed.matches("BEGIN CERTIFICATE").count() >= 2,
        "{printed}"
    );

    // Anything else: 403 before routing, never an upstream.
    let calls = up.calls();
    let mut denied = Vec::new();
    for (method, path) in [
        (http::Method::GET, "/v1/orders"),
        (http::Method::POST, "/v1/orders"),
        (http::Method::GET, "/.well-known/est/../../v1/orders"),
        (http::Method::POST, "/.well-known/gatehouse/renew"),
        (http::Method::POST, "/.well-known/est/simplereenroll"),
        (http::Method::GET, "/.well-known/est/simpleenroll"),
    ] {
        let mut c = Conn::open_as(broker.addr, &roots, None, false)
            .await
            .unwrap();
        let headers = [("x-gatehouse-partner", "acme")];
        let r = c.send(method.clone(), path, &headers, b"").await.unwrap();
        assert_eq!(r.status, 403, "{method} {path}");
        assert_eq!(r.json()["error"], "no_certificate", "{method} {path}");
        denied.push(r.headers["x-request-id"].to_str().unwrap().to_string());
    }
    // Over HTTP/2 too.
    let mut c2 = Conn::open_as(broker.addr, &roots, None, true)
        .await
        .unwrap();
    assert_eq!(c2.get("/v1/orders").await.unwrap().status, 403);
    assert_eq!(
        up.calls(),
        calls,
        "no request without a certificate reached the upstream"
    );

    // simpleenroll answers (here: no credentials).
    let mut c = Conn::open_as(broker.addr, &roots, None, false)
        .await
        .unwrap();
    let r = c
        .send(
            http::Method::POST,
            "/.well-known/est/simpleenroll",
            &[],
            b"AAAA",
        )
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    assert!(r.headers.contains_key("www-authenticate"));

    // Recorded, with no partner identity.
    let records = h.journal();
    for rid in &denied {
        let rec = records
            .iter()
            .find(|r| r["request_id"] == rid.as_str())
            .unwrap_or_else(|| panic!("{rid} not recorded"));
        assert_eq!(rec["reason"], "no_certificate");
        assert_eq!(rec["decision"], "denied");
        assert!(rec["partner"].is_null(), "{rec}");
        assert!(rec["route"].is_null(), "{rec}");
    }
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_enroll_then_renewal_with_the_agent_and_with_curl_over_est() {
    if !have_tools() {
        return;
    }
    let (h, up) = setup().await;
    let broker = h.start();
    let port = broker.addr.port();
    let url = format!("https://localhost:{port}");
    let roots = h.roots_pem();

    // acme: agent enroll with the fingerprint, then simplereenroll with curl.
    let inv = invite(&h, "acme", port);
    let out = h.path().join("acme-agent");
    let o = Command::new(common::process::BIN)
        .args(["agent", "enroll", "--url", &url, "--id", "acme", "--secret"])
        .arg(inv["secret"].as_str().unwrap())
        .arg("--root-fingerprint")
        .arg(inv["root_sha256"].as_str().unwrap())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mode = std::fs::metadata(out.join("acme.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let acme = h.read_client(&out, "acme");
    let r = get_once(broker.addr, &roots, &acme, "/v1/orders")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.calls(), 1);

    // A wrong fingerprint: the agent refuses the broker.
    let inv_g = invite(&h, "globex", port);
    let o = Command::new(common::process::BIN)
        .args([
            "agent", "enroll", "--url", &url, "--id", "globex", "--secret",
        ])
        .arg(inv_g["secret"].as_str().unwrap())
        .arg("--root-fingerprint")
        .arg("00".repeat(32))
        .arg("--out")
        .arg(h.path().join("globex-wrong"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("fingerprint"));

    let o = sh(
        &out,
        &format!(
            "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout next.key -subj /CN=x -outform DER | openssl base64 > next.csr.b64 && \
             curl --silent --fail-with-body --max-time 20 --cacert ca.pem --cert acme.pem --key acme.key \
             -H 'Content-Type: application/pkcs10' --data-binary @next.csr.b64 {url}/.well-known/est/simplereenroll \
             | openssl base64 -d | openssl pkcs7 -inform DER -print_certs -out next.pem"
        ),
    );
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let next = common::broker::ClientCert {
        cert_pem: std::fs::read_to_string(out.join("next.pem")).unwrap(),
        key_pem: std::fs::read_to_string(out.join("next.key")).unwrap(),
        serial: String::new(),
    };
    let r = get_once(broker.addr, &roots, &next, "/v1/orders")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_ne!(next.cert_pem, acme.cert_pem);

    // globex: agent enroll with the root file, then agent renew.
    let out_g = h.path().join("globex-agent");
    std::fs::create_dir_all(&out_g).unwrap();
    std::fs::write(out_g.join("root.pem"), &roots).unwrap();
    let o = Command::new(common::process::BIN)
        .args([
            "agent", "enroll", "--url", &url, "--id", "globex", "--secret",
        ])
        .arg(inv_g["secret"].as_str().unwrap())
        .arg("--ca")
        .arg(out_g.join("root.pem"))
        .arg("--out")
        .arg(&out_g)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let before = std::fs::read_to_string(out_g.join("globex.pem")).unwrap();
    let o = Command::new(common::process::BIN)
        .args(["agent", "renew", "--cert"])
        .arg(out_g.join("globex.pem"))
        .arg("--key")
        .arg(out_g.join("globex.key"))
        .arg("--ca")
        .arg(out_g.join("ca.pem"))
        .arg("--broker")
        .arg(&url)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let globex = h.read_client(&out_g, "globex");
    assert_ne!(globex.cert_pem, before);
    let r = get_once(broker.addr, &roots, &globex, "/v1/orders")
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    let records = h.journal();
    assert!(
        records
            .iter()
            .any(|r| r["path"] == "/.well-known/est/simplereenroll"
                && r["decision"] == "allowed"
                && r["partner"] == "acme")
    );
    drop(broker);
}
