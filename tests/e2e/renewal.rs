//! Partner self-service renewal (`POST /.well-known/gatehouse/renew`) and
//! the renewal agent, against a real broker: the window, the identity of the
//! renewed certificate, refusals (suspended, revoked, too early, twice), the
//! overlap of old and new certificates, and `gatehouse agent renew --exec`.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::broker::{ClientCert, Conn, TestHome, client_tls, get_once, tls_connect};
use common::upstream::{EchoOptions, EchoUpstream, start_echo_upstream};
use http::Method;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const RENEW: &str = "/.well-known/gatehouse/renew";

/// A home with partner `acme` (route GET /v1/orders), `[ca] overlap = "2s"`
/// and, when given, `renewal_window` in the partner file.
pub(crate) async fn setup(window: Option<&str>) -> (TestHome, EchoUpstream) {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_upstream(
        "orders",
        &format!("https://127.0.0.1:{}", up.addr.port()),
        Some(&up.ca_pem),
    );
    h.edit_config(|doc| doc["ca"]["overlap"] = toml_edit::value("2s"));
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    if let Some(w) = window {
        let p = h.path().join("partners/acme.toml");
        let mut doc: toml_edit::DocumentMut = std::fs::read_to_string(&p).unwrap().parse().unwrap();
        doc["renewal_window"] = toml_edit::value(w);
        std::fs::write(&p, doc.to_string()).unwrap();
    }
    (h, up)
}

/// `cert issue acme` with extra arguments.
pub(crate) fn issue(h: &TestHome, extra: &[&str]) -> (ClientCert, std::path::PathBuf) {
    let out = h
        .path()
        .join("out")
        .join(format!("acme-{}", rand::random::<u32>()));
    let mut args = vec!["cert", "issue", "acme", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    h.ok(&args);
    (h.read_client(&out, "acme"), out)
}

/// A CSR for a fresh key, carrying SANs the broker must ignore.
pub(crate) fn hostile_csr() -> (rcgen::KeyPair, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://gatehouse.local/partner/globex"
            .try_into()
            .unwrap(),
    ));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "globex");
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key, csr)
}

pub(crate) async fn post_renew(
    h: &TestHome,
    addr: std::net::SocketAddr,
    cert: &ClientCert,
    csr: &str,
) -> common::broker::Reply {
    let mut c = Conn::open(addr, &h.ca_pem(), cert, false).await.unwrap();
    c.send(Method::POST, RENEW, &[], csr.as_bytes())
        .await
        .unwrap()
}

fn uri_sans(der: &[u8]) -> Vec<String> {
    let (_, x) = x509_parser::parse_x509_certificate(der).unwrap();
    let san = x.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect()
}

#[tokio::test]
async fn renewal_inside_the_window_certifies_only_the_csr_key_with_the_partner_identity() {
    let (h, _up) = setup(Some("7d")).await;
    let (old, _) = issue(&h, &["--days", "3"]);
    let broker = h.start();
    let (key, csr) = hostile_csr();
    let r = post_renew(&h, broker.addr, &old, &csr).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/x-pem-file");
    let chain: Vec<CertificateDer> = CertificateDer::pem_slice_iter(r.body.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    assert_eq!(chain.len(), 2, "leaf + CA");
    let (_, leaf) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        rcgen::PublicKeyData::der_bytes(&key)
    );
    let sans = uri_sans(&chain[0]);
    assert_eq!(sans.len(), 1, "{sans:?}");
    assert!(
        sans[0].contains("spiffe://gatehouse.local/partner/acme"),
        "{sans:?}"
    );
    assert!(leaf.subject().to_string().contains("CN=acme"));
    // Same lifetime as the predecessor (3 days).
    let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!((3 * 86_400..=3 * 86_400 + 600).contains(&life), "{life}");

    // The new certificate works at once; the old one through the overlap, not after.
    let new = ClientCert {
        cert_pem: r.body.clone(),
        key_pem: key.serialize_pem(),
        serial: hex::encode(leaf.raw_serial()),
    };
    assert_eq!(
        get_once(broker.addr, &h.ca_pem(), &new, "/v1/orders")
            .await
            .unwrap()
            .status,
        200
    );
    assert_eq!(
        get_once(broker.addr, &h.ca_pem(), &old, "/v1/orders")
            .await
            .unwrap()
            .status,
        200
    );

    // The superseded certificate cannot renew again; the new one not within a minute.
    let (_, csr2) = hostile_csr();
    let again = post_renew(&h, broker.addr, &old, &csr2).await;
    assert!(matches!(again.status.as_u16(), 409 | 429), "{}", again.body);
    let soon = post_renew(&h, broker.addr, &new, &csr2).await;
    assert_eq!(soon.status, 429, "{}", soon.body);
    assert_eq!(soon.json()["error"], "renewal_rate_limited");
    assert!(soon.headers.contains_key("retry-after"));

    tokio::time::sleep(Duration::from_millis(2500)).await;
    let after = tls_connect(
        broker.addr,
        client_tls(&h.ca_pem(), Some(&old), &[b"http/1.1"]),
    )
    .await;
    assert!(
        after.is_err(),
        "the old certificate still works after the overlap"
    );
    assert_eq!(
        get_once(broker.addr, &h.ca_pem(), &new, "/v1/orders")
            .await
            .unwrap()
            .status,
        200
    );

    // On record: the admin event with both serials, and the inventory.
    let ev = h
        .wait_journal(5, |v| v["reason"] == "cert_renewed")
        .await
        .expect("cert_renewed in the journal");
    let detail = ev["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(&old.serial) && detail.contains(&new.serial),
        "{detail}"
    );
    let list: serde_json::Value =
        serde_json::from_str(&h.ok(&["cert", "list", "acme", "--json"])).unwrap();
    let old_rec = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["serial"] == old.serial)
        .unwrap();
    assert_eq!(old_rec["superseded_by"], new.serial.as_str());
}

#[tokio::test]
async fn renewal_outside_the_window_is_refused_with_the_opening_time() {
    let (h, _up) = setup(None).await;
    let (acme, _) = issue(&h, &[]);
    let broker = h.start();
    let (_, csr) = hostile_csr();
    let r = post_renew(&h, broker.addr, &acme, &csr).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "renewal_not_yet_allowed");
    let opens = r.json()["renewal_opens_at"].as_str().unwrap().to_string();
    let opens = time::OffsetDateTime::parse(&opens, &time::format_description::well_known::Rfc3339)
        .unwrap();
    let in_days = (opens - time::OffsetDateTime::now_utc()).whole_days();
    assert!((59..=60).contains(&in_days), "opens in {in_days} days");
    // Nothing was issued.
    let list: serde_json::Value = serde_json::from_str(&h.ok(&["cert", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn suspended_partners_and_oversized_or_bad_csrs_are_refused() {
    let (h, _up) = setup(Some("7d")).await;
    let (acme, _) = issue(&h, &["--days", "3"]);
    let broker = h.start();
    let big = "A".repeat(70 * 1024);
    let r = post_renew(&h, broker.addr, &acme, &big).await;
    assert_eq!(r.status, 413, "{}", r.body);
    let r = post_renew(&h, broker.addr, &acme, "not a csr").await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["error"], "bad_csr");

    h.ok(&["partner", "suspend", "acme"]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_, csr) = hostile_csr();
    let r = post_renew(&h, broker.addr, &acme, &csr).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["error"], "partner_suspended");
}

#[tokio::test]
async fn a_revoked_certificate_cannot_even_connect_to_renew() {
    let (h, _up) = setup(Some("7d")).await;
    let (acme, _) = issue(&h, &["--days", "3"]);
    let broker = h.start();
    h.ok(&["cert", "revoke", &acme.serial]);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        Conn::open(broker.addr, &h.ca_pem(), &acme, false)
            .await
            .is_err()
    );
    let list: serde_json::Value = serde_json::from_str(&h.ok(&["cert", "list", "--json"])).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "nothing issued");
}

#[tokio::test]
async fn the_agent_renews_against_a_running_broker_and_runs_exec() {
    let (h, _up) = setup(Some("7d")).await;
    let (acme, dir) = issue(&h, &["--days", "3"]);
    let broker = h.start();
    let cert = dir.join("acme.pem");
    let key = dir.join("acme.key");
    let marker = dir.join("MARKER");
    let out = std::process::Command::new(common::broker::BIN)
        .args(["agent", "renew", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .arg("--broker")
        .arg(format!("https://127.0.0.1:{}", broker.addr.port()))
        .arg("--exec")
        .arg(format!("touch {}", marker.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("renewed"));
    assert!(marker.exists(), "--exec did not run");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let renewed = h.read_client(&dir, "acme");
    assert_ne!(renewed.serial, acme.serial);
    assert_eq!(
        get_once(broker.addr, &h.ca_pem(), &renewed, "/v1/orders")
            .await
            .unwrap()
            .status,
        200
    );

    // A second run with the renewed certificate within a minute is refused: exit non-zero.
    let again = std::process::Command::new(common::broker::BIN)
        .args(["agent", "renew", "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .arg("--broker")
        .arg(format!("https://127.0.0.1:{}", broker.addr.port()))
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("renewal_rate_limited"));
}

#[tokio::test]
async fn the_agent_says_when_the_window_is_not_open_and_changes_nothing() {
    let (h, _up) = setup(None).await;
    let (acme, dir) = issue(&h, &[]);
    let broker = h.start();
    let out = std::process::Command::new(common::broker::BIN)
        .args(["agent", "renew", "--cert"])
        .arg(dir.join("acme.pem"))
        .arg("--key")
        .arg(dir.join("acme.key"))
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .arg("--broker")
        .arg(format!("https://localhost:{}", broker.addr.port()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("window"));
    assert_eq!(h.read_client(&dir, "acme").serial, acme.serial);
}
