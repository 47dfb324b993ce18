//! Certificates `gatehouse cert issue` would never make: minted with rcgen
//! under the home's CA or a foreign CA, a server certificate for another
//! service (with its own CA), and PEM helpers.

use std::path::Path;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::broker::*;

/// The DER of the first certificate in a PEM file.
pub fn first_cert_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path)
        .expect("PEM certificate")
        .as_ref()
        .to_vec()
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

/// A server certificate for 127.0.0.1 and localhost, with the CA that
/// signed it: for services the broker connects to (a TLS Redis).
pub struct ServerPki {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// A fresh CA named `ca_name` and a server certificate under it.
pub fn server_pki(ca_name: &str) -> ServerPki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
    ServerPki {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}
