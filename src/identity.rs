//! Turns a verified client certificate into a partner identity: the one
//! `spiffe://<trust-domain>/partner/<id>` URI SAN, the serial and the SHA-256
//! fingerprint. The identity comes from the verified leaf only, never from a
//! header. A certificate without exactly one such SAN for this trust domain
//! has no identity and is refused.

use std::sync::Arc;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::parse_x509_certificate;

use crate::ca::fingerprint;
use crate::config::valid_id;
use crate::reason::Reason;

/// Who is calling, from the verified certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerIdentity {
    pub partner: Arc<str>,
    /// Lowercase hex of the serial's DER bytes.
    pub serial: Arc<str>,
    /// Lowercase hex SHA-256 of the certificate DER.
    pub fingerprint: Arc<str>,
    pub uri: Arc<str>,
    /// Seconds since the epoch before which the certificate is not valid.
    pub not_before_unix: i64,
    /// Seconds since the epoch after which the certificate is expired.
    pub not_after_unix: i64,
    /// The certificate's subject, for logs.
    pub subject: String,
    /// `Some(CA subject)` when the partner's own CA issued the certificate
    /// (`[own_ca]`); `None` for ours.
    pub own_issuer: Option<Arc<str>>,
    /// The certificate's SubjectPublicKeyInfo (DER): the key that verifies
    /// the partner's request signatures when it signs with this key.
    pub spki: Arc<[u8]>,
}

/// Why a certificate carries no usable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed")]
    Unparsable,
    #[error("the certificate has no spiffe://{0}/partner/<id> URI SAN")]
    NoPartnerUri(String),
    #[error("the certificate has more than one URI SAN; exactly one partner URI is allowed")]
    AmbiguousUri,
    #[error("the certificate's URI SAN `{0}` is not a partner of trust domain {1}")]
    ForeignUri(String, String),
}

impl IdentityError {
    /// The reason a refused handshake for this error gives.
    pub fn reason(&self) -> Reason {
        match self {
            IdentityError::Unparsable => Reason::BadCertificate,
            IdentityError::NoPartnerUri(_) => Reason::NoPartnerIdentity,
            IdentityError::AmbiguousUri => Reason::AmbiguousIdentity,
            IdentityError::ForeignUri(..) => Reason::ForeignIdentity,
        }
    }
}

/// Subject and fingerprint of any certificate, for refusal records.
pub fn describe(der: &[u8]) -> (String, String) {
    let subject = parse_x509_certificate(der)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_else(|_| "(unparsable)".to_string());
    (subject, fingerprint(der))
}

/// Extracts the identity of a (chain-verified) leaf for `trust_domain`.
pub fn identify(der: &[u8], trust_domain: &str) -> Result<PartnerIdentity, IdentityError> {
    let (_, cert) = parse_x509_certificate(der).map_err(|_| IdentityError::Unparsable)?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(u) = name {
                uris.push(*u);
            }
        }
    }
    let uri = match uris.as_slice() {
        [] => return Err(IdentityError::NoPartnerUri(trust_domain.to_string())),
        [one] => *one,
        _ => return Err(IdentityError::AmbiguousUri),
    };
    let prefix = format!("spiffe://{trust_domain}/partner/");
    let id = uri
        .strip_prefix(&prefix)
        .filter(|id| valid_id(id))
        .ok_or_else(|| IdentityError::ForeignUri(uri.to_string(), trust_domain.to_string()))?;
    Ok(PartnerIdentity {
        partner: Arc::from(id),
        serial: Arc::from(hex::encode(cert.raw_serial())),
        fingerprint: Arc::from(fingerprint(der)),
        uri: Arc::from(uri),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
        subject: cert.subject().to_string(),
        own_issuer: None,
        spki: Arc::from(cert.public_key().raw),
    })
}

/// The identity of a leaf a partner's own CA verified: the partner its
/// name maps to, `name` (what matched) in place of the URI, and the issuer.
pub fn identify_own(
    der: &[u8],
    partner: &str,
    name: &str,
    issuer: &str,
) -> Result<PartnerIdentity, IdentityError> {
    let (_, cert) = parse_x509_certificate(der).map_err(|_| IdentityError::Unparsable)?;
    Ok(PartnerIdentity {
        partner: Arc::from(partner),
        serial: Arc::from(hex::encode(cert.raw_serial())),
        fingerprint: Arc::from(fingerprint(der)),
        uri: Arc::from(name),
        not_before_unix: cert.validity().not_before.timestamp(),
        not_after_unix: cert.validity().not_after.timestamp(),
        subject: cert.subject().to_string(),
        own_issuer: Some(Arc::from(issuer)),
        spki: Arc::from(cert.public_key().raw),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI(u.to_string().try_into().unwrap()))
            .collect();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn exactly_one_partner_uri_of_this_domain() {
        let ok = identify(
            &cert_with_uris(&["spiffe://td.example/partner/acme"]),
            "td.example",
        )
        .unwrap();
        assert_eq!(&*ok.partner, "acme");
        assert_eq!(
            identify(&cert_with_uris(&[]), "td.example")
                .unwrap_err()
                .reason(),
            Reason::NoPartnerIdentity
        );
        assert_eq!(
            identify(
                &cert_with_uris(&[
                    "spiffe://td.example/partner/acme",
                    "spiffe://td.example/partner/globex"
                ]),
                "td.example"
            )
            .unwrap_err(),
            IdentityError::AmbiguousUri
        );
        assert_eq!(
            identify(
                &cert_with_uris(&["spiffe://other.example/partner/acme"]),
                "td.example"
            )
            .unwrap_err()
            .reason(),
            Reason::ForeignIdentity
        );
        assert_eq!(
            identify(
                &cert_with_uris(&["spiffe://td.example/partner/Bad_Id"]),
                "td.example"
            )
            .unwrap_err()
            .reason(),
            Reason::ForeignIdentity
        );
        assert_eq!(
            identify(
                &cert_with_uris(&["spiffe://td.example/broker"]),
                "td.example"
            )
            .unwrap_err()
            .reason(),
            Reason::ForeignIdentity
        );
    }
}
