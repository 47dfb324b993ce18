//! The internal certificate authority: the CA key and certificate, and the
//! signing of every certificate gatehouse hands out (partner client
//! certificates, the broker's server and upstream-client certificates) and of
//! the CRL. Submodules own the CSR check, the inventory of issued
//! certificates and the CRL file; `lifecycle` ties them into the operations
//! the CLI exposes (init, issue, renew, revoke) and self-service renewal
//! uses (renew from a CSR in memory); `rollover` rotates and retires CAs.
//!
//! Private keys never leave this module except as PEM handed to
//! `home::write_key`, and are never logged.

pub mod crl;
pub mod csr;
pub mod inventory;
pub mod lifecycle;
pub mod maintenance;
pub mod rollover;
pub mod upstream_identity;

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{ASN1Time, X509Certificate, parse_x509_certificate};

use crate::home::{Home, HomeError};

/// CA certificate lifetime at `init`.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// Broker server / upstream-client certificate lifetime.
pub const BROKER_CERT_DAYS: i64 = 397;
/// Backdating of `not_before`, for clocks a little behind ours.
pub const BACKDATE: Duration = Duration::minutes(5);

/// What went wrong in the CA, said so an operator can act on it.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error("{0}")]
    Invalid(String),
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
    #[error(
        "{0} already exists: this home already has a CA. Pass --force to replace it (every certificate it issued stops working)"
    )]
    AlreadyInitialized(String),
    #[error("no certificate with serial {0} in the inventory (see `gatehouse cert list`)")]
    UnknownSerial(String),
    #[error("unknown partner `{0}` (see `gatehouse partner list`)")]
    UnknownPartner(String),
    #[error(
        "CA {fingerprint} still has usable certificates: {list}. Renew them under the current CA (`gatehouse cert renew ID`) or revoke them, then retire again"
    )]
    CaInUse { fingerprint: String, list: String },
    #[error(
        "certificate {serial} cannot be renewed: it is {state} (renew with the partner's current certificate)"
    )]
    NotRenewable { serial: String, state: String },
}

pub fn invalid(msg: impl Into<String>) -> CaError {
    CaError::Invalid(msg.into())
}

/// Lowercase hex SHA-256 of a certificate's DER: the fingerprint used
/// everywhere (inventory, journal, XFCC `Hash=`).
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// A fresh serial: 16 random bytes, first byte in 0x01..=0x7f so the DER
/// integer is positive, minimal and exactly 16 bytes (126 random bits).
pub fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] = (bytes[0] & 0x7f).max(1);
    SerialNumber::from_slice(&bytes)
}

/// The serial as gatehouse writes it: lowercase hex of the DER integer's bytes.
pub fn serial_hex(cert: &X509Certificate<'_>) -> String {
    hex::encode(cert.raw_serial())
}

/// Converts an x509 time to `OffsetDateTime`.
pub fn asn1_time(t: ASN1Time) -> OffsetDateTime {
    t.to_datetime()
}

/// A certificate just signed.
#[derive(Debug, Clone)]
pub struct Signed {
    pub pem: String,
    pub der: CertificateDer<'static>,
    pub serial: String,
    pub fingerprint: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

/// What a leaf certificate is for.
pub enum LeafKind<'a> {
    /// A partner's client certificate (docs/architecture.md, "Identity").
    Partner {
        trust_domain: &'a str,
        id: &'a str,
        name: &'a str,
    },
    /// The broker's TLS server certificate.
    Server { hostnames: &'a [String] },
    /// The broker's client certificate for the upstream leg.
    BrokerClient { trust_domain: &'a str },
}

/// The SPIFFE URI of a partner.
pub fn partner_uri(trust_domain: &str, id: &str) -> String {
    format!("spiffe://{trust_domain}/partner/{id}")
}

/// A loaded CA able to sign.
pub struct Authority {
    /// The issuing CA certificate (first in `ca.pem`).
    pub cert_der: CertificateDer<'static>,
    /// Everything in `ca.pem` (issuing CA first, then any chain above it).
    pub chain_pem: String,
    pub not_after: OffsetDateTime,
    pub fingerprint: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// Creates a new self-signed ECDSA P-256 CA. Returns it and its key PEM.
    pub fn create(trust_domain: &str) -> Result<(Authority, String), CaError> {
        let (authority, key_pem, _) =
            Authority::create_named(&format!("gatehouse CA {trust_domain}"))?;
        Ok((authority, key_pem))
    }

    /// Creates a new self-signed ECDSA P-256 CA with common name `cn`.
    /// Returns it, its key PEM, and its parameters (for cross-signing).
    pub fn create_named(cn: &str) -> Result<(Authority, String, CertificateParams), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        dn.push(DnType::OrganizationName, "gatehouse");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        let authority = Authority::from_pem(&cert.pem(), &key_pem)?;
        Ok((authority, key_pem, params))
    }

    /// Loads `certs/ca.pem` and `certs/ca.key`.
    pub fn load(home: &Home) -> Result<Authority, CaError> {
        let cert = crate::home::read_to_string(&home.ca_cert())?;
        let key = crate::home::read_to_string(&home.ca_key())?;
        Authority::from_pem(&cert, &key).map_err(|e| match e {
            CaError::Invalid(m) => invalid(format!("{}: {m}", home.ca_cert().display())),
            other => other,
        })
    }

    /// Builds a CA from PEM, checking that the certificate is a CA allowed to
    /// sign certificates, is within its validity, and that the key matches it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Authority, CaError> {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("the CA certificate is not valid PEM: {e}")))?;
        let cert_der = certs
            .first()
            .cloned()
            .ok_or_else(|| invalid("the CA certificate file holds no CERTIFICATE block"))?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| invalid(format!("the CA key is not a usable private key: {e}")))?;
        let (_, x509) = parse_x509_certificate(&cert_der)
            .map_err(|e| invalid(format!("the CA certificate cannot be parsed: {e}")))?;
        let is_ca = x509
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(invalid(
                "the certificate is not a CA (basicConstraints CA:TRUE missing)",
            ));
        }
        if let Ok(Some(ku)) = x509.key_usage()
            && !ku.value.key_cert_sign()
        {
            return Err(invalid(
                "the CA certificate's keyUsage does not allow signing certificates (keyCertSign)",
            ));
        }
        if x509.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(invalid("the CA key does not match the CA certificate"));
        }
        let not_after = asn1_time(x509.validity().not_after);
        if not_after <= OffsetDateTime::now_utc() {
            return Err(invalid("the CA certificate has expired"));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)?;
        let fingerprint = fingerprint(&cert_der);
        let chain_pem = certs
            .iter()
            .map(|c| der_to_pem(c))
            .collect::<Vec<_>>()
            .join("");
        Ok(Authority {
            cert_der,
            chain_pem,
            not_after,
            fingerprint,
            issuer,
        })
    }

    pub(crate) fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// Signs a leaf certificate for `public_key`. Subject, SANs and
    /// extensions come from `kind` only.
    pub fn sign_leaf(
        &self,
        kind: LeafKind<'_>,
        public_key: &impl PublicKeyData,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<Signed, CaError> {
        if not_after > self.not_after {
            return Err(invalid(format!(
                "the certificate would outlive the CA (CA expires {}); choose fewer days",
                crate::timefmt::rfc3339(self.not_after)
            )));
        }
        if not_after <= not_before {
            return Err(invalid("the validity period is empty"));
        }
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        match kind {
            LeafKind::Partner {
                trust_domain,
                id,
                name,
            } => {
                dn.push(DnType::CommonName, id);
                dn.push(DnType::OrganizationName, name);
                params.subject_alt_names = vec![SanType::URI(
                    partner_uri(trust_domain, id)
                        .try_into()
                        .map_err(|_| invalid("partner URI is not valid"))?,
                )];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            LeafKind::Server { hostnames } => {
                dn.push(
                    DnType::CommonName,
                    hostnames.first().map(String::as_str).unwrap_or("gatehouse"),
                );
                dn.push(DnType::OrganizationName, "gatehouse");
                params.subject_alt_names = hostnames
                    .iter()
                    .map(|h| match h.parse::<IpAddr>() {
                        Ok(ip) => Ok(SanType::IpAddress(ip)),
                        Err(_) => h
                            .clone()
                            .try_into()
                            .map(SanType::DnsName)
                            .map_err(|_| invalid(format!("hostname `{h}` is not valid"))),
                    })
                    .collect::<Result<_, _>>()?;
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
            LeafKind::BrokerClient { trust_domain } => {
                dn.push(DnType::CommonName, "gatehouse-broker");
                dn.push(DnType::OrganizationName, "gatehouse");
                params.subject_alt_names = vec![SanType::URI(
                    format!("spiffe://{trust_domain}/broker")
                        .try_into()
                        .map_err(|_| invalid("broker URI is not valid"))?,
                )];
                params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(public_key, &self.issuer)?;
        let der = cert.der().clone();
        let serial = {
            let (_, x) = parse_x509_certificate(&der)
                .map_err(|e| invalid(format!("signed certificate does not parse: {e}")))?;
            serial_hex(&x)
        };
        Ok(Signed {
            pem: cert.pem(),
            fingerprint: fingerprint(&der),
            der,
            serial,
            not_before,
            not_after,
        })
    }
}

/// PEM of one DER certificate.
pub fn der_to_pem(der: &[u8]) -> String {
    pem_block("CERTIFICATE", der)
}

/// One PEM block with LF line endings.
pub fn pem_block(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der.to_vec()),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// A new P-256 key pair (partner keys made by `cert issue`, broker keys).
pub fn new_key() -> Result<KeyPair, CaError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}
