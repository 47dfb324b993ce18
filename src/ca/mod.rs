//! The internal certificate authority: the CA key and certificate, and the
//! signing of every certificate gatehouse hands out (partner client
//! certificates, the broker's server and upstream-client certificates) and of
//! the CRL. This file owns what every submodule builds on: `Authority` (a
//! CA able to sign), `CaError`, the lifetimes, fingerprints and serials.
//!
//! The submodules stand in layers; each uses only those below it:
//!
//! - `lifecycle` (issue, renew, revoke, self-service renewal), `rollover`
//!   (rotate, migrate, retire CAs), `maintenance` (CRL re-signing while the
//!   broker runs);
//! - `init` (setting up a home);
//! - `broker_certs` (the broker's server and upstream-client certificates,
//!   `cert server-renew`);
//! - `crl` (the CRLs of the issuing CAs and of the root);
//! - `pki` (reads the two-tier layout: root, issuing CA, upstream-client CA,
//!   previous CAs, trust bundle, chains, `ca list`);
//! - `inventory` (issued certificates), `lock` (serialises every writer of
//!   the inventory and the CRLs), `csr`, `p12` (PKCS#12 files); the
//!   identity token key (`crate::identity_token`) sits below this module:
//!   `init` creates it and `cert server-renew` rotates it.
//!
//! Private keys never leave this module except as PEM handed to
//! `home::write_key`, and are never logged.

pub mod broker_certs;
pub mod crl;
pub mod csr;
pub mod init;
pub mod inventory;
pub mod lifecycle;
pub mod lock;
pub mod maintenance;
pub mod p12;
pub mod pki;
pub mod rollover;

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

/// Root CA lifetime (the trust anchor partners hold).
pub const ROOT_VALIDITY_DAYS: i64 = 7300;
/// Issuing CA lifetime (rotated under the same root with `ca rotate`).
pub const ISSUING_VALIDITY_DAYS: i64 = 1825;
/// Upstream-client CA lifetime.
pub const UPSTREAM_CLIENT_CA_DAYS: i64 = 3650;
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
        "the root key {0} is not here (kept offline, or the root belongs to the PKI whose CA you adopted): bring it back, or pass --root-key FILE"
    )]
    RootKeyMissing(String),
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
    /// Creates a new ECDSA P-256 CA certificate and key: self-signed when
    /// `signer` is `None`, else signed by `signer` (and never outliving it).
    /// `path_len` is the basicConstraints path length (`None`: no limit).
    /// Returns it, its key PEM, and its parameters (for cross-signing).
    pub fn create_ca(
        cn: &str,
        path_len: Option<u8>,
        days: i64,
        signer: Option<&Authority>,
    ) -> Result<(Authority, String, CertificateParams), CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let now = OffsetDateTime::now_utc();
        let mut params = ca_params(cn, path_len);
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(days);
        let cert = match signer {
            None => params.self_signed(&key)?,
            Some(s) => {
                params.not_after = params.not_after.min(s.not_after);
                params.use_authority_key_identifier_extension = true;
                params.signed_by(&key, s.issuer())?
            }
        };
        let key_pem = key.serialize_pem();
        let authority = Authority::from_pem(&cert.pem(), &key_pem)?;
        Ok((authority, key_pem, params))
    }

    /// Signs `subject`'s CA certificate again, with `self` as issuer and
    /// the given path length: a cross certificate (same subject and key,
    /// another issuer). Never outlives `self`.
    pub fn cross_sign(
        &self,
        subject: &CertificateParams,
        subject_key_pem: &str,
        path_len: Option<u8>,
    ) -> Result<String, CaError> {
        let key = KeyPair::from_pem(subject_key_pem)
            .map_err(|e| invalid(format!("the new CA key cannot be read back: {e}")))?;
        let mut params = subject.clone();
        params.is_ca = IsCa::Ca(match path_len {
            Some(n) => BasicConstraints::Constrained(n),
            None => BasicConstraints::Unconstrained,
        });
        params.not_after = params.not_after.min(self.not_after);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        Ok(params.signed_by(&key, &self.issuer)?.pem())
    }

    /// Whether this CA's certificate is self-signed (subject = issuer).
    pub fn is_self_signed(&self) -> bool {
        is_self_issued(&self.cert_der)
    }

    /// The chain a peer needs after a leaf this CA signed: the CA and any
    /// intermediate above it in `ca.pem`, without self-signed roots (the
    /// peer holds those) unless the CA is itself the root (single tier).
    pub fn chain_to_send(&self) -> String {
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
                .filter_map(Result::ok)
                .collect();
        certs
            .iter()
            .enumerate()
            .filter(|(i, c)| *i == 0 || !is_self_issued(c))
            .map(|(_, c)| der_to_pem(c))
            .collect()
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

/// Parameters of a CA certificate named `cn` (O=gatehouse), with a fresh
/// random serial; validity is the caller's.
fn ca_params(cn: &str, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, "gatehouse");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(match path_len {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    params
}

/// Whether a certificate names itself as its issuer.
pub fn is_self_issued(der: &[u8]) -> bool {
    parse_x509_certificate(der).is_ok_and(|(_, c)| c.issuer().as_raw() == c.subject().as_raw())
}

/// A CA common name that stays unique across rotations on one day.
pub fn ca_name(what: &str, trust_domain: &str) -> String {
    let now = OffsetDateTime::now_utc();
    let tag: [u8; 3] = rand::random();
    format!(
        "gatehouse {what} {trust_domain} {} {}",
        now.date(),
        hex::encode(tag)
    )
}

/// A new P-256 key pair (partner keys made by `cert issue`, broker keys).
pub fn new_key() -> Result<KeyPair, CaError> {
    Ok(KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?)
}

/// Removes a file if it is there (durably: the folder is synced).
pub(crate) fn remove_if_exists(path: &std::path::Path) -> Result<(), CaError> {
    crate::durable_file::remove_file(path).map_err(|e| HomeError::io(path, e).into())
}
