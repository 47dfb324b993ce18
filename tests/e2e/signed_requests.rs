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

/// The README's shell blocks, in order.
fn readme_steps(dir: &Path) -> Vec<String> {
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let mut steps = Vec::new();
    let mut current: Option<String> = None;
    for line in readme.lines() {
        match (&mut current, line) {
            (None, "```sh") => current = Some(String::new()),
            (Some(_), "```") => steps.push(current.take().unwrap()),
            (Some(s), l) => {
                s.push_str(l);
                s.push('\n');
            }
            (None, _) => {}
        }
    }
    steps
}

fn step_holds(dir: &Path, script: &str) -> bool {
    Command::new("sh")
        .args(["-e", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap()
        .status
        .success()
}

/// Each step's result.
fn steps_hold(dir: &Path) -> Vec<bool> {
    readme_steps(dir)
        .iter()
        .map(|s| step_holds(dir, s))
        .collect()
}

fn flip_byte(path: &Path, at: usize) -> Vec<u8> {
    let original = std::fs::read(path).unwrap();
    let mut b = original.clone();
    b[at] ^= 0x01;
    std::fs::write(path, &b).unwrap();
    original
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_evidence_checks_out_with_openssl_and_a_flipped_byte_does_not() {
    if !installed("requests-http-signature", python().exists()) {
        return;
    }
    let s = setup().await;
    let mut b = s.h.start();
    let url = format!("https://localhost:{}/v1/transfers", b.addr.port());
    for (alg, key, keyid) in [
        (
            "ecdsa-p256-sha256",
            s.acme.key.clone(),
            s.acme.fingerprint.clone(),
        ),
        ("ed25519", s.ed25519.clone(), "acme-hsm-ed25519".to_string()),
        ("rsa-pss-sha512", s.rsa.clone(), "acme-hsm-rsa".to_string()),
    ] {
        let mut cmd = Command::new(python());
        cmd.arg(script("sign_requests.py"))
            .arg(&url)
            .arg(&s.acme.cert)
            .arg(&s.acme.key)
            .arg(&s.ca)
            .arg(alg)
            .arg(&key)
            .arg(&keyid)
            .arg(&s.beta.key)
            .arg(&s.beta.fingerprint)
            .arg("ok");
        let answers = tokio::task::spawn_blocking(move || run(&mut cmd))
            .await
            .unwrap();
        assert_eq!(answers[0].1, 200, "{alg}: {answers:?}");
    }
    // A few more records after them, then a shutdown checkpoint covers all.
    let mut c = common::broker::Conn::open(
        b.addr,
        &s.h.ca_pem(),
        &common::broker::ClientCert {
            serial: String::new(),
            cert_pem: std::fs::read_to_string(&s.acme.cert).unwrap(),
            key_pem: std::fs::read_to_string(&s.acme.key).unwrap(),
        },
        false,
    )
    .await
    .unwrap();
    for _ in 0..3 {
        let r = c
            .send(http::Method::POST, "/v1/notes", &[], b"{}")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    drop(c);
    b.signal("TERM");
    assert!(b.wait_exit(20).is_some_and(|s| s.success()));

    let signed: Vec<serde_json::Value> =
        s.h.journal()
            .into_iter()
            .filter(|r| r["signature_base"].is_string())
            .collect();
    assert_eq!(signed.len(), 3, "the three signed calls are on record");
    for rec in &signed {
        let seq = rec["seq"].as_u64().unwrap();
        let dir = s.h.path().join(format!("evidence-{seq}"));
        s.h.ok(&[
            "log",
            "evidence",
            &seq.to_string(),
            "--out",
            dir.to_str().unwrap(),
        ]);
        let steps = readme_steps(&dir);
        assert!(steps.len() >= 4, "{steps:?}");
        assert!(
            steps_hold(&dir).iter().all(|ok| *ok),
            "{seq}: every README step holds: {:?}\n{}",
            steps_hold(&dir),
            std::fs::read_to_string(dir.join("README.md")).unwrap()
        );
        let n = steps.len();
        // The signature base changed by one byte: only step 1 fails.
        let base = dir.join("signature-base.txt");
        let original = flip_byte(&base, 10);
        let held = steps_hold(&dir);
        assert!(
            !held[0],
            "a flipped signature base fails the signature check"
        );
        assert!(held[n - 3..].iter().all(|ok| *ok), "{held:?}");
        std::fs::write(&base, original).unwrap();
        // The record changed by one byte (inside its canonical encoding):
        // the record's hash step fails.
        let record = dir.join("record.json");
        let text = std::fs::read_to_string(&record).unwrap();
        let at = text.find("\"canonical_b64\": \"").unwrap() + 40;
        let original = std::fs::read(&record).unwrap();
        let mut b = original.clone();
        b[at] = if b[at] == b'A' { b'B' } else { b'A' };
        std::fs::write(&record, &b).unwrap();
        let held = steps_hold(&dir);
        assert!(
            !held[n - 3],
            "a flipped record fails its hash check: {held:?}"
        );
        std::fs::write(&record, original).unwrap();
        // A later record of the chain changed: the chain step fails.
        let chain: Vec<PathBuf> = std::fs::read_dir(dir.join("chain"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!chain.is_empty());
        let original = flip_byte(&chain[0], 40);
        assert!(!steps_hold(&dir)[n - 2], "a flipped chain link fails");
        std::fs::write(&chain[0], original).unwrap();
        // The checkpoint changed: its signature step fails.
        let original = flip_byte(&dir.join("checkpoint.msg"), 20);
        assert!(!steps_hold(&dir)[n - 1], "a flipped checkpoint fails");
        std::fs::write(dir.join("checkpoint.msg"), original).unwrap();
        assert!(steps_hold(&dir).iter().all(|ok| *ok));
    }
}
