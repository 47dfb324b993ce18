//! A connection with a certificate that is not a valid partner certificate
//! never gets an HTTP response: a foreign CA, expired, serverAuth-only,
//! another trust domain, not in the inventory; one without a certificate
//! gets 403 `no_certificate` for anything but enrolment. Each refusal is
//! recorded with its reason.

use crate::common;

use common::broker::{
    Conn, TestHome, client_tls, foreign_ca, get_once, mint, mint_with_home_ca, tls_connect,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

#[tokio::test]
async fn bad_certificates_are_refused_at_the_handshake() {
    let h = TestHome::new();
    h.add_partner("acme", &[]);
    let good = h.issue("acme");
    // Every refusal individually on record (the flood aggregation is tested apart).
    h.edit_config(|d| d["journal"]["handshake_refusals_per_interval"] = toml_edit::value(1000));
    let broker = h.start();
    let ca = h.ca_pem();

    // The good certificate connects (and, with no routes, is denied by policy: 403).
    let r = get_once(broker.addr, &ca, &good, "/v1/orders")
        .await
        .unwrap();
    assert_eq!(r.status, 403);

    // No certificate: the handshake completes (enrolment needs it), the
    // request does not get past 403.
    let mut anonymous = Conn::open_as(broker.addr, &ca, None, false).await.unwrap();
    let r = anonymous.get("/v1/orders").await.unwrap();
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "no_certificate");

    let (rogue, rogue_pem) = foreign_ca();
    let cases = vec![
        ("unknown_ca", mint(&rogue, &rogue_pem, |_| {})),
        (
            "expired",
            mint_with_home_ca(&h, |p| {
                let now = time::OffsetDateTime::now_utc();
                p.not_before = now - time::Duration::days(10);
                p.not_after = now - time::Duration::days(1);
            }),
        ),
        (
            "wrong_key_usage",
            mint_with_home_ca(&h, |p| {
                p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
            }),
        ),
        (
            "foreign_identity",
            mint_with_home_ca(&h, |p| {
                p.subject_alt_names = vec![rcgen::SanType::URI(
                    "spiffe://other.example/partner/acme".try_into().unwrap(),
                )];
            }),
        ),
        (
            "ambiguous_identity",
            mint_with_home_ca(&h, |p| {
                p.subject_alt_names.push(rcgen::SanType::URI(
                    "spiffe://gatehouse.local/partner/globex"
                        .try_into()
                        .unwrap(),
                ));
            }),
        ),
        // Signed by our CA with a valid identity, but never issued (not in the inventory).
        ("unknown_certificate", mint_with_home_ca(&h, |_| {})),
    ];
    for (reason, cert) in &cases {
        let res = tls_connect(broker.addr, client_tls(&ca, Some(cert), &[b"http/1.1"])).await;
        assert!(res.is_err(), "{reason}: handshake should be refused");
        let r = get_once(broker.addr, &ca, cert, "/v1/orders").await;
        assert!(r.is_err(), "{reason}: got an HTTP response {r:?}");
    }
    // Each refusal is in the journal, with the certificate's fingerprint.
    let records = h.journal();
    for (reason, cert) in &cases {
        let fp = {
            let der = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap();
            gatehouse::ca::fingerprint(&der)
        };
        let rec = records
            .iter()
            .find(|r| r["kind"] == "handshake" && r["reason"] == *reason)
            .unwrap_or_else(|| panic!("refusal {reason} not recorded: {records:#?}"));
        assert_eq!(rec["decision"], "denied");
        assert_eq!(rec["cert_fingerprint"], fp.as_str(), "{reason}");
        assert!(
            rec["client_addr"]
                .as_str()
                .unwrap()
                .starts_with("127.0.0.1:")
        );
    }
    assert!(records.iter().any(|r| r["kind"] == "exchange"
        && r["reason"] == "no_certificate"
        && r["partner"].is_null()));
    drop(broker);
}

/// The broker picks the cipher suite (AES-128-GCM/SHA-256 first) even when
/// the client lists AES-256-GCM/SHA-384 first, as OpenSSL clients do.
#[tokio::test]
async fn the_broker_prefers_aes128_gcm_over_the_clients_order() {
    let h = TestHome::new();
    h.add_partner("acme", &[]);
    let acme = h.issue("acme");
    let broker = h.start();
    let ca = h.ca_pem();
    let cfg = client_tls(&ca, Some(&acme), &[b"http/1.1"]);
    let first = cfg.crypto_provider().cipher_suites[0].suite();
    assert_eq!(
        first,
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
        "the test client must list AES-256 first for this test to mean anything"
    );
    let tls = tls_connect(broker.addr, cfg).await.unwrap();
    let (_, conn) = tls.get_ref();
    assert_eq!(
        conn.negotiated_cipher_suite().map(|s| s.suite()),
        Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
    );
}
