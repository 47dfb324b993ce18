//! CA rollover on the two-tier PKI against a running broker:
//! - `ca rotate` (a new issuing CA under the same root) changes nothing for
//!   a partner that holds only the root; certificates of both issuing CAs
//!   are accepted; `ca retire` is refused while old certificates are usable,
//!   then works, lists the retired CA in the root's CRL, and a certificate
//!   from it is refused at the handshake.
//! - `ca rotate --root` cross-signs the new root with the old one with path
//!   lengths real clients accept (`openssl verify`, strict).
//! - The root key offline: everything but `ca rotate` works without it.
//! - `ca rotate --upstream-client`: an upstream trusting only the old
//!   upstream-client CA keeps admitting the broker during the overlap.
//! - A single-tier home keeps working and `ca migrate` breaks nothing.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::broker::{
    ClientCert, TestHome, client_tls, get_once, home_with_mtls_orders, mint, settle, tls_connect,
};
use common::upstream::{EchoOptions, start_echo_upstream};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

fn ca_of(h: &TestHome, serial: &str) -> String {
    let list: serde_json::Value = serde_json::from_str(&h.ok(&["cert", "list", "--json"])).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["serial"] == serial)
        .unwrap()["ca_fingerprint"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn status(addr: std::net::SocketAddr, trust: &str, c: &ClientCert) -> Result<u16, String> {
    get_once(addr, trust, c, "/v1/orders")
        .await
        .map(|r| r.status.as_u16())
}

/// Path length of a CA certificate in PEM (None: no limit).
fn path_len(pem: &str) -> Option<u32> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(&der).unwrap();
    let bc = c.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    bc.path_len_constraint
}

/// `openssl verify -x509_strict` of the first certificate of `chain_file`
/// (the rest as untrusted intermediates) against `trust_file` alone.
/// None when openssl is not installed.
fn openssl_verify(
    trust_file: &Path,
    chain_file: &Path,
    purpose: &str,
) -> Option<Result<(), String>> {
    let out = std::process::Command::new("openssl")
        .args(["verify", "-x509_strict", "-purpose", purpose, "-CAfile"])
        .arg(trust_file)
        .arg("-untrusted")
        .arg(chain_file)
        .arg(chain_file)
        .output()
        .ok()?;
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    })
}

#[tokio::test]
async fn rotating_the_issuing_ca_changes_nothing_for_partners_then_retire() {
    let (h, _up) = home_with_mtls_orders().await;
    let root = h.roots_pem();
    let old_ca_pem = h.ca_pem();
    let old_ca_key = h.read("certs/ca.key");
    let old = h.issue("acme");
    let broker = h.start();
    assert_eq!(status(broker.addr, &root, &old).await, Ok(200));

    let out = h.ok(&["ca", "rotate"]);
    assert!(out.contains("new issuing CA"), "{out}");
    assert_ne!(h.ca_pem(), old_ca_pem);
    assert_eq!(h.roots_pem(), root, "the root partners hold is unchanged");
    // The broker picks up the new issuing CA and its new server certificate live.
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let new = h.issue("acme");
    settle().await;
    assert_ne!(ca_of(&h, &old.serial), ca_of(&h, &new.serial));
    // A partner holding only the root it got at onboarding: both certificates work.
    assert_eq!(
        status(broker.addr, &root, &old).await,
        Ok(200),
        "old issuing CA's"
    );
    assert_eq!(
        status(broker.addr, &root, &new).await,
        Ok(200),
        "new issuing CA's"
    );
    let list: serde_json::Value = serde_json::from_str(&h.ok(&["ca", "list", "--json"])).unwrap();
    let kinds: Vec<(String, String)> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["kind"].as_str().unwrap().into(),
                c["role"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(kinds.contains(&("root".into(), "current".into())), "{list}");
    assert!(
        kinds.contains(&("issuing".into(), "previous".into())),
        "{list}"
    );

    // Retire is refused while the old certificate is usable, naming it.
    let refused = h.run(&["ca", "retire", "previous"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains(&old.serial) && err.contains("acme"), "{err}");
    // The old CA's certificates can be revoked (its CRL is signed by its own key).
    h.ok(&["cert", "revoke", &old.serial]);
    let out = h.ok(&["ca", "retire", "previous"]);
    assert!(out.contains("retired issuing CA"), "{out}");
    // The root's CRL now lists the retired issuing CA.
    let old_serial = {
        let der = CertificateDer::from_pem_slice(old_ca_pem.as_bytes()).unwrap();
        hex::encode(
            x509_parser::parse_x509_certificate(&der)
                .unwrap()
                .1
                .raw_serial(),
        )
    };
    let crl_der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(
        h.read("certs/root-crl.pem").as_bytes(),
    )
    .unwrap();
    let (_, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der_ok(crl_der.as_ref());
    assert!(
        crl.iter_revoked_certificates()
            .any(|r| hex::encode(r.raw_serial()) == old_serial),
        "the retired issuing CA is in the root's CRL"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // A certificate the old issuing CA signs now is refused at the handshake.
    let issuer = rcgen::Issuer::from_ca_cert_pem(
        &old_ca_pem,
        rcgen::KeyPair::from_pem(&old_ca_key).unwrap(),
    )
    .unwrap();
    let forged = mint(&issuer, &old_ca_pem, |_| {});
    let hs = tls_connect(
        broker.addr,
        client_tls(&root, Some(&forged), &[b"http/1.1"]),
    )
    .await;
    assert!(hs.is_err(), "a certificate of the retired CA was accepted");
    let ev = h
        .wait_journal(5, |v| {
            v["kind"] == "handshake" && v["reason"] == "unknown_ca"
        })
        .await;
    assert!(ev.is_some(), "no unknown_ca handshake record");
    assert_eq!(status(broker.addr, &root, &new).await, Ok(200));
    assert!(h.ok(&["check"]).contains("ok"));
}

/// Parses a CRL from DER, panicking on failure (test helper).
trait FromDerOk<'a>: Sized {
    fn from_der_ok(der: &'a [u8]) -> ((), Self);
}
impl<'a> FromDerOk<'a> for x509_parser::revocation_list::CertificateRevocationList<'a> {
    fn from_der_ok(der: &'a [u8]) -> ((), Self) {
        use x509_parser::prelude::FromDer;
        ((), Self::from_der(der).unwrap().1)
    }
}

#[tokio::test]
async fn root_rotation_is_cross_signed_with_path_lengths_real_clients_accept() {
    let (h, _up) = home_with_mtls_orders().await;
    let old_root_file = h.path().join("old-root.pem");
    std::fs::write(&old_root_file, h.roots_pem()).unwrap();
    let old_root = h.roots_pem();
    let acme = h.issue("acme");
    let out = h.ok(&["ca", "rotate", "--root"]);
    assert!(out.contains("cross-signed"), "{out}");
    // Path lengths: root no limit, cross certificate 1, issuing CA 0. With
    // pathlen 0 on the CA that signs the cross certificate (the old
    // `--cross-sign`), OpenSSL, Go, Java and Node refuse the chain.
    assert_eq!(path_len(&h.read("certs/root.pem")), None);
    assert_eq!(path_len(&h.read("certs/root-cross.pem")), Some(1));
    assert_eq!(path_len(&h.ca_pem()), Some(0));
    let server = h.read("certs/server.pem");
    assert_eq!(
        CertificateDer::pem_slice_iter(server.as_bytes()).count(),
        3,
        "leaf, issuing CA, cross certificate"
    );
    // The bundle partners get now holds both roots.
    assert_eq!(h.roots_pem().matches("BEGIN CERTIFICATE").count(), 2);
    if let Some(r) = openssl_verify(
        &old_root_file,
        &h.path().join("certs/server.pem"),
        "sslserver",
    ) {
        r.expect("OpenSSL verifies the broker's chain against the old root alone");
    } else {
        println!("openssl not installed: skipping the OpenSSL check of the cross-signed chain");
    }
    let new_root_file = h.path().join("certs/root.pem");
    if let Some(r) = openssl_verify(
        &new_root_file,
        &h.path().join("certs/server.pem"),
        "sslserver",
    ) {
        r.expect("OpenSSL verifies the broker's chain against the new root");
    }
    let broker = h.start();
    // A client holding only the old root verifies the broker; its old
    // certificate (old root's issuing CA) is still accepted.
    assert_eq!(status(broker.addr, &old_root, &acme).await, Ok(200));
    let fresh = h.issue("acme");
    settle().await;
    assert_eq!(status(broker.addr, &old_root, &fresh).await, Ok(200));
    assert_eq!(
        status(broker.addr, &h.read("certs/root.pem"), &fresh).await,
        Ok(200)
    );
    // The old root cannot be retired while its issuing CA is trusted.
    let list: serde_json::Value = serde_json::from_str(&h.ok(&["ca", "list", "--json"])).unwrap();
    let old_root_fp = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "root" && c["role"] == "previous")
        .unwrap()["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    let refused = h.run(&["ca", "retire", &old_root_fp[..12]]);
    assert!(!refused.status.success());
    // Revoke the old issuing CA's certificate, retire it, then the old root:
    // the cross certificate leaves the server chain.
    h.ok(&["cert", "revoke", &acme.serial]);
    let prev_issuing = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["kind"] == "issuing" && c["role"] == "previous")
        .unwrap()["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();
    h.ok(&["ca", "retire", &prev_issuing[..12]]);
    h.ok(&["ca", "retire", &old_root_fp[..12]]);
    assert!(!h.path().join("certs/root-cross.pem").exists());
    assert_eq!(
        CertificateDer::pem_slice_iter(h.read("certs/server.pem").as_bytes()).count(),
        2
    );
    assert_eq!(h.roots_pem().matches("BEGIN CERTIFICATE").count(), 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        status(broker.addr, &h.read("certs/root.pem"), &fresh).await,
        Ok(200)
    );
}

#[tokio::test]
async fn with_the_root_key_offline_everything_but_rotation_works() {
    let (h, _up) = home_with_mtls_orders().await;
    let offline = tempfile::tempdir().unwrap();
    let kept = offline.path().join("root.key");
    std::fs::rename(h.path().join("certs/root.key"), &kept).unwrap();
    let out = h.ok(&["check"]);
    assert!(out.contains("root key: offline"), "{out}");
    let root = h.roots_pem();
    let broker = h.start();
    let a = h.issue("acme");
    settle().await;
    assert_eq!(status(broker.addr, &root, &a).await, Ok(200));
    let renew_dir = h.path().join("renewed");
    h.ok(&[
        "cert",
        "renew",
        "acme",
        "--out",
        renew_dir.to_str().unwrap(),
    ]);
    let b = h.read_client(&renew_dir, "acme");
    h.ok(&["cert", "revoke", &a.serial]);
    h.ok(&["cert", "crl", "--refresh"]);
    h.ok(&["cert", "server-renew"]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(status(broker.addr, &root, &b).await, Ok(200));
    assert!(status(broker.addr, &root, &a).await.is_err(), "revoked");
    // Rotation refuses with one line naming the missing key...
    let o = h.run(&["ca", "rotate"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("root.key") && err.contains("--root-key"),
        "{err}"
    );
    // ...and works with it brought back for the occasion.
    let out = h.ok(&["ca", "rotate", "--root-key", kept.to_str().unwrap()]);
    assert!(out.contains("new issuing CA"), "{out}");
    assert!(
        !h.path().join("certs/root.key").exists(),
        "the root key stays offline"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(status(broker.addr, &root, &b).await, Ok(200));
}

#[tokio::test]
async fn an_upstream_trusting_only_the_old_upstream_client_ca_keeps_admitting_the_broker() {
    let (h, old_up) = home_with_mtls_orders().await;
    let acme = h.issue("acme");
    let root = h.roots_pem();
    let broker = h.start();
    assert_eq!(status(broker.addr, &root, &acme).await, Ok(200));
    let out = h.ok(&["ca", "rotate", "--upstream-client"]);
    assert!(out.contains("cross-signed"), "{out}");
    assert_eq!(
        path_len(&h.read("certs/upstream-client-cross.pem")),
        Some(0)
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The old-CA-only upstream still admits the broker (leaf + cross certificate).
    assert_eq!(status(broker.addr, &root, &acme).await, Ok(200));
    assert_eq!(old_up.calls(), 2);
    // An upstream that already trusts only the new CA admits it too.
    let new_up = start_echo_upstream(EchoOptions::mtls(h.upstream_client_ca_pem())).await;
    h.add_upstream("orders", &new_up.url(), Some(&new_up.ca_pem));
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(status(broker.addr, &root, &acme).await, Ok(200));
    assert_eq!(new_up.calls(), 1);
    // End of the overlap: the broker sends its leaf alone.
    h.ok(&["ca", "retire", "--upstream-client"]);
    assert_eq!(
        h.read("certs/broker-client.pem")
            .matches("BEGIN CERTIFICATE")
            .count(),
        1
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(status(broker.addr, &root, &acme).await, Ok(200));
    assert_eq!(new_up.calls(), 2);
}

/// Turns a fresh home into what an earlier single-tier `init` made: one
/// self-signed CA with pathlen 0 signing everything, no root, no
/// upstream-client CA.
fn make_single_tier(h: &TestHome) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "gatehouse CA gatehouse.local");
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(3650);
    let cert = p.self_signed(&key).unwrap();
    let certs = h.path().join("certs");
    for f in [
        "root.pem",
        "root.key",
        "root-crl.pem",
        "root-crl.number",
        "upstream-client-ca.pem",
        "upstream-client-ca.key",
    ] {
        std::fs::remove_file(certs.join(f)).unwrap();
    }
    std::fs::write(certs.join("ca.pem"), cert.pem()).unwrap();
    std::fs::write(certs.join("ca.key"), key.serialize_pem()).unwrap();
    h.ok(&["cert", "server-renew"]);
    h.ok(&["cert", "crl", "--refresh"]);
}

#[tokio::test]
async fn a_single_tier_home_keeps_working_and_migrates_without_breaking_anything() {
    let h = TestHome::new();
    make_single_tier(&h);
    let old_ca = h.ca_pem();
    // Its upstream trusts the single CA, as the old README said.
    let up = start_echo_upstream(EchoOptions::mtls(old_ca.clone())).await;
    h.add_echo_upstream("orders", &up);
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    let out = h.ok(&["check"]);
    assert!(out.contains("single-tier"), "{out}");
    let acme = h.issue("acme");
    let broker = h.start();
    assert_eq!(status(broker.addr, &old_ca, &acme).await, Ok(200));

    let out = h.ok(&["ca", "migrate"]);
    assert!(out.contains("migrated"), "{out}");
    let out = h.ok(&["check"]);
    assert!(out.contains("two-tier"), "{out}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // Nothing changed for the partner holding the old CA, nor for the upstream.
    assert_eq!(status(broker.addr, &old_ca, &acme).await, Ok(200));
    assert_eq!(up.calls(), 2);
    // New certificates come from the new issuing CA; the bundle holds the
    // new root and the old CA.
    let bundle = h.roots_pem();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
    let fresh = h.issue("acme");
    settle().await;
    assert_eq!(status(broker.addr, &bundle, &fresh).await, Ok(200));
    // Retiring the old CA is refused while the broker's certificates hang off it.
    h.ok(&["cert", "revoke", &acme.serial]);
    let o = h.run(&["ca", "retire", "previous"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("server-renew"));
    // Once partners and upstreams have the new CAs: server-renew, retire.
    let new_up = start_echo_upstream(EchoOptions::mtls(h.upstream_client_ca_pem())).await;
    h.add_echo_upstream("orders", &new_up);
    h.ok(&["cert", "server-renew"]);
    h.ok(&["ca", "retire", "previous"]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let root = h.read("certs/root.pem");
    assert_eq!(status(broker.addr, &root, &fresh).await, Ok(200));
    assert_eq!(new_up.calls(), 1);
    assert!(h.ok(&["check"]).contains("ok"));
}
