//! Signed requests end to end, with the partner-side libraries partners
//! use: Python's `requests-http-signature` and Node's
//! `http-message-signatures` (installed by `.ci/run` under
//! `target/sig-clients/`). A high-risk route of a partner with
//! `signing = true` requires an RFC 9421 signature: a correct one passes;
//! the body changed after signing, `created` ten minutes old, a replayed
//! nonce, another partner's key and no signature at all are 401 with the
//! reason, and none of them reaches the upstream. ECDSA P-256 with the
//! certificate's own key (keyid = its fingerprint), Ed25519 and
//! RSA-PSS-SHA512 with `[[signing_keys]]`.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::Digest;

use crate::common;
use common::broker::{ClientCert, TestHome};
use common::upstream::{EchoOptions, EchoUpstream, start_echo_upstream};

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sig-clients")
}

fn python() -> PathBuf {
    std::env::var_os("GATEHOUSE_SIGNERS_PY")
        .map(PathBuf::from)
        .unwrap_or_else(|| clients_dir().join("py/bin/python"))
}

fn node_modules() -> PathBuf {
    clients_dir().join("node/node_modules")
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e/partner_signers")
        .join(name)
}

/// Whether the partner-side library is installed; in CI it must be.
fn installed(what: &str, ok: bool) -> bool {
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{what} is not installed, and CI must run it (.ci/run installs it)");
        }
        println!("signed requests: {what} not installed (see .ci/run): skipping");
    }
    ok
}

/// The lowercase hex SHA-256 of a certificate PEM's first certificate.
fn fingerprint(cert_pem: &str) -> String {
    let der = pem::parse(cert_pem).unwrap().into_contents();
    hex::encode(sha2::Sha256::digest(&der))
}

struct Partner {
    cert: PathBuf,
    key: PathBuf,
    fingerprint: String,
}

fn files(h: &TestHome, id: &str, c: &ClientCert) -> Partner {
    let dir = h.path().join("partner-files").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, &c.cert_pem).unwrap();
    std::fs::write(&key, &c.key_pem).unwrap();
    Partner {
        cert,
        key,
        fingerprint: fingerprint(&c.cert_pem),
    }
}

/// openssl genpkey: a private key of `alg` and its public key, in the home.
fn openssl_key(h: &TestHome, name: &str, args: &[&str]) -> (PathBuf, String) {
    let dir = h.path().join("keys");
    std::fs::create_dir_all(&dir).unwrap();
    let private = dir.join(format!("{name}.key"));
    let public = format!("keys/{name}.pub.pem");
    let ok = Command::new("openssl")
        .args(["genpkey", "-quiet"])
        .args(args)
        .arg("-out")
        .arg(&private)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genpkey {args:?}");
    let ok = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(h.path().join(&public))
        .status()
        .unwrap()
        .success();
    assert!(ok);
    (private, public)
}

struct Setup {
    h: TestHome,
    up: EchoUpstream,
    acme: Partner,
    beta: Partner,
    ca: PathBuf,
    ed25519: PathBuf,
    rsa: PathBuf,
}

async fn setup() -> Setup {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("payments", &up);
    h.add_partner("acme", &["GET /v1/orders -> payments"]);
    h.add_partner("beta", &["GET /v1/orders -> payments"]);
    let (ed25519, ed_pub) = openssl_key(&h, "acme-ed25519", &["-algorithm", "ed25519"]);
    let (rsa, rsa_pub) = openssl_key(
        &h,
        "acme-rsa",
        &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
    );
    std::fs::write(
        h.path().join("partners/acme.toml"),
        format!(
            r#"id = "acme"
signing = true

[[routes]]
methods = ["POST"]
path = "/v1/transfers"
upstream = "payments"
risk = "high"

[[routes]]
methods = ["POST"]
path = "/v1/notes"
upstream = "payments"

[[signing_keys]]
id = "acme-hsm-ed25519"
public_key = "{ed_pub}"

[[signing_keys]]
id = "acme-hsm-rsa"
public_key = "{rsa_pub}"
"#
        ),
    )
    .unwrap();
    let acme_cert = h.issue("acme");
    let beta_cert = h.issue("beta");
    let acme = files(&h, "acme", &acme_cert);
    let beta = files(&h, "beta", &beta_cert);
    let ca = h.path().join("partner-files/roots.pem");
    std::fs::write(&ca, h.roots_pem()).unwrap();
    Setup {
        h,
        up,
        acme,
        beta,
        ca,
        ed25519,
        rsa,
    }
}

/// The cases' answers: (case, status, JSON body).
fn run(cmd: &mut Command) -> Vec<(String, u16, serde_json::Value)> {
    let out = cmd.output().expect("the partner-side signer runs");
    assert!(
        out.status.success(),
        "signer failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["case"].as_str().unwrap().to_string(),
                v["status"].as_u64().unwrap() as u16,
                serde_json::from_str(v["body"].as_str().unwrap()).unwrap_or_default(),
            )
        })
        .collect()
}

/// Asserts the six cases: only `ok` and the replay's first send pass.
fn assert_cases(answers: &[(String, u16, serde_json::Value)]) {
    let get = |case: &str| {
        answers
            .iter()
            .find(|(c, _, _)| c == case)
            .unwrap_or_else(|| panic!("no answer for {case}: {answers:?}"))
    };
    assert_eq!(get("ok").1, 200, "{answers:?}");
    assert_eq!(get("replay_first").1, 200, "{answers:?}");
    for (case, problem) in [
        ("tampered", "Content-Digest"),
        ("stale", "created"),
        ("replay", "nonce"),
        ("other_key", "not a key of this partner"),
    ] {
        let (_, status, body) = get(case);
        assert_eq!(*status, 401, "{case}: {body}");
        assert_eq!(body["error"], "signature_invalid", "{case}: {body}");
        assert!(
            body["problem"].as_str().unwrap_or("").contains(problem),
            "{case}: {body}"
        );
    }
    let (_, status, body) = get("unsigned");
    assert_eq!(*status, 401, "{body}");
    assert_eq!(body["error"], "signature_required");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_http_signature_signs_with_the_certificate_key() {
    if !installed("requests-http-signature", python().exists()) {
        return;
    }
    let s = setup().await;
    let b = s.h.start();
    let url = format!("https://localhost:{}/v1/transfers?ref=1", b.addr.port());
    let answers = tokio::task::spawn_blocking({
        let (acme, beta, ca) = (
            (
                s.acme.cert.clone(),
                s.acme.key.clone(),
                s.acme.fingerprint.clone(),
            ),
            (s.beta.key.clone(), s.beta.fingerprint.clone()),
            s.ca.clone(),
        );
        move || {
            run(Command::new(python())
                .arg(script("sign_requests.py"))
                .arg(&url)
                .arg(&acme.0)
                .arg(&acme.1)
                .arg(&ca)
                .arg("ecdsa-p256-sha256")
                .arg(&acme.1)
                .arg(&acme.2)
                .arg(&beta.0)
                .arg(&beta.1))
        }
    })
    .await
    .unwrap();
    assert_cases(&answers);
    assert_eq!(
        s.up.calls(),
        2,
        "only the signed, fresh calls reached the upstream"
    );
    let seen = s.up.seen();
    assert!(seen[0]["headers"]["signature-input"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_signs_with_ed25519_and_rsa_pss_signing_keys() {
    if !installed("requests-http-signature", python().exists()) {
        return;
    }
    let s = setup().await;
    let b = s.h.start();
    let url = format!("https://localhost:{}/v1/transfers", b.addr.port());
    for (alg, key, keyid) in [
        ("ed25519", s.ed25519.clone(), "acme-hsm-ed25519"),
        ("rsa-pss-sha512", s.rsa.clone(), "acme-hsm-rsa"),
    ] {
        let mut cmd = Command::new(python());
        cmd.arg(script("sign_requests.py"))
            .arg(&url)
            .arg(&s.acme.cert)
            .arg(&s.acme.key)
            .arg(&s.ca)
            .arg(alg)
            .arg(&key)
            .arg(keyid)
            .arg(&s.beta.key)
            .arg(&s.beta.fingerprint)
            .arg("ok,tampered,unsigned");
        let answers = tokio::task::spawn_blocking(move || run(&mut cmd))
            .await
            .unwrap();
        assert_eq!(answers[0].1, 200, "{alg}: {answers:?}");
        assert_eq!(answers[1].1, 401, "{alg}: {answers:?}");
        assert_eq!(answers[2].2["error"], "signature_required", "{alg}");
    }
    assert_eq!(s.up.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_http_message_signatures_signs_with_the_certificate_key() {
    let have_node = Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed(
        "node http-message-signatures",
        have_node && node_modules().join("http-message-signatures").exists(),
    ) {
        return;
    }
    let s = setup().await;
    let b = s.h.start();
    let url = format!("https://localhost:{}/v1/transfers?ref=1", b.addr.port());
    let mut cmd = Command::new("node");
    cmd.env("NODE_PATH", node_modules())
        .arg(script("sign_requests.js"))
        .arg(&url)
        .arg(&s.acme.cert)
        .arg(&s.acme.key)
        .arg(&s.ca)
        .arg(&s.acme.key)
        .arg(&s.acme.fingerprint)
        .arg(&s.beta.key)
        .arg(&s.beta.fingerprint);
    let answers = tokio::task::spawn_blocking(move || run(&mut cmd))
        .await
        .unwrap();
    assert_cases(&answers);
    assert_eq!(s.up.calls(), 2);
}

#[tokio::test]
async fn a_normal_route_of_a_signing_partner_needs_no_signature() {
    let s = setup().await;
    let b = s.h.start();
    let acme = common::broker::ClientCert {
        serial: String::new(),
        cert_pem: std::fs::read_to_string(&s.acme.cert).unwrap(),
        key_pem: std::fs::read_to_string(&s.acme.key).unwrap(),
    };
    let mut c = common::broker::Conn::open(b.addr, &s.h.ca_pem(), &acme, false)
        .await
        .unwrap();
    let r = c
        .send(http::Method::POST, "/v1/notes", &[], b"{}")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    let r = c
        .send(http::Method::POST, "/v1/transfers", &[], b"{}")
        .await
        .unwrap();
    assert_eq!(r.status, 401, "{}", r.body);
    assert_eq!(r.json()["error"], "signature_required");
    assert_eq!(s.up.calls(), 1);
}
