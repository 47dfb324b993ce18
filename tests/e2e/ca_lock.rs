//! Operators racing the broker and each other: every writer of the
//! inventory and the CRLs holds `certs/ca.lock`, so many concurrent
//! `cert revoke` and `cert renew` processes end with every revoked serial
//! revoked (and in the CRL) and at most one active certificate. And the
//! handshake's inventory lookup compares the fingerprint: a certificate
//! signed out of band with the CA key and a real serial is refused.

use crate::common;

use std::collections::HashSet;
use std::process::{Command, Stdio};

use common::broker::{BIN, TestHome, client_tls, get_once, mint_with_home_ca, tls_connect};

fn list(h: &TestHome) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&h.ok(&["cert", "list", "--json"])).unwrap();
    v.as_array().unwrap().clone()
}

fn crl_serials(h: &TestHome) -> HashSet<String> {
    use rustls_pki_types::CertificateRevocationListDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let pem = std::fs::read(h.path().join("certs/crl.pem")).unwrap();
    let mut out = HashSet::new();
    for crl in CertificateRevocationListDer::pem_slice_iter(&pem) {
        let crl = crl.unwrap();
        let (_, parsed) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(crl.as_ref())
                .unwrap();
        for r in parsed.iter_revoked_certificates() {
            out.insert(hex::encode(r.raw_serial()));
        }
    }
    out
}

#[test]
fn concurrent_revokes_and_renewals_never_resurrect_a_revoked_certificate() {
    let h = TestHome::new();
    h.add_partner("acme", &[]);
    for round in 0..3 {
        let originals: Vec<String> = (0..6).map(|_| h.issue("acme").serial).collect();
        let mut children = Vec::new();
        for (i, serial) in originals.iter().enumerate() {
            let out = h.path().join(format!("renew-{round}-{i}"));
            for args in [
                vec!["cert".to_string(), "revoke".into(), serial.clone()],
                vec![
                    "cert".into(),
                    "renew".into(),
                    "acme".into(),
                    "--overlap".into(),
                    "1h".into(),
                    "--out".into(),
                    out.display().to_string(),
                ],
            ] {
                children.push(
                    Command::new(BIN)
                        .arg("--home")
                        .arg(h.path())
                        .args(&args)
                        .stdout(Stdio::null())
                        .stderr(Stdio::piped())
                        .spawn()
                        .unwrap(),
                );
            }
        }
        for c in children {
            let out = c.wait_with_output().unwrap();
            // A renewal may find nothing left to supersede, a revoke may
            // find its serial already superseded: both are fine. Only a
            // damaged or conflicting write would be an error.
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let certs = list(&h);
        let state = |s: &str| {
            certs
                .iter()
                .find(|c| c["serial"] == s)
                .map(|c| c["state"].as_str().unwrap().to_string())
                .unwrap()
        };
        for s in &originals {
            assert_eq!(
                state(s),
                "revoked",
                "round {round}: {s} was revoked, then came back"
            );
        }
        let active: Vec<_> = certs.iter().filter(|c| c["state"] == "active").collect();
        assert_eq!(
            active.len(),
            1,
            "round {round}: renewals supersede every active certificate, so one stays: {active:?}"
        );
        let crl = crl_serials(&h);
        for s in &originals {
            assert!(
                crl.contains(s),
                "round {round}: revoked {s} missing from the CRL"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_signed_out_of_band_with_a_real_serial_is_refused() {
    let (h, _up, acme) = common::broker::home_with_echo(&["GET /v1/orders -> orders"]).await;
    let broker = h.start();
    let ca = h.ca_pem();
    assert_eq!(
        get_once(broker.addr, &ca, &acme, "/v1/orders")
            .await
            .unwrap()
            .status,
        200
    );
    // Same CA key, same partner, a serial the inventory knows: other bytes.
    let serial = hex::decode(&acme.serial).unwrap();
    let forged = mint_with_home_ca(&h, |p| {
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    });
    let hs = tls_connect(broker.addr, client_tls(&ca, Some(&forged), &[b"http/1.1"])).await;
    assert!(
        hs.is_err(),
        "an out-of-band certificate with a real serial got in"
    );
    let ev = h
        .wait_journal(5, |v| {
            v["kind"] == "handshake" && v["reason"] == "certificate_mismatch"
        })
        .await;
    assert!(ev.is_some(), "no certificate_mismatch handshake record");
    // The genuine certificate still works.
    assert_eq!(
        get_once(broker.addr, &ca, &acme, "/v1/orders")
            .await
            .unwrap()
            .status,
        200
    );
}
