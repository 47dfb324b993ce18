//! Partner-owned CAs (`[own_ca]` in a partner file): a certificate from a
//! partner's own CA is that partner's, and only if it carries the configured
//! name (URI SAN, DNS SAN or subject CN) and, when pins are set, one of the
//! pinned keys. The chain is path-validated against that partner's CA
//! alone, with the intermediates the partner sends and its CRL when given.
//! A certificate carrying a URI in our trust domain is never taken here
//! (our own CA's path judges it, and refuses a foreign issuer). Names are
//! unique across partners (checked when the set is built), so a name picks
//! at most one partner, and only that partner's CA can vouch for it.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, parse_x509_certificate};

use crate::config::{NameMatch, OwnCa};
use crate::reason::Reason;

use super::{TlsError, certificate_reason, load_certs, load_crls, provider};

/// One partner's CA, ready for handshakes and requests.
pub struct PartnerCa {
    pub partner: String,
    pub name: NameMatch,
    pins: Vec<String>,
    verifier: Arc<dyn ClientCertVerifier>,
    /// Serials (lowercase hex) the partner's CRL revokes, checked per request.
    revoked: HashSet<String>,
    /// The CA's subject, for records and `partner show`.
    pub issuer: String,
    /// The CA certificate's not-after (unix seconds), for expiry warnings.
    pub not_after_unix: i64,
    /// The roots' subjects (DER), announced to clients.
    pub subjects: Vec<Vec<u8>>,
}

impl std::fmt::Debug for PartnerCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartnerCa")
            .field("partner", &self.partner)
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .finish()
    }
}

fn config_err(partner: &str, m: impl std::fmt::Display) -> TlsError {
    TlsError::Config(format!("partner {partner} [own_ca]: {m}"))
}

impl PartnerCa {
    /// Reads `own`'s files (paths relative to `resolve`) for `partner`.
    pub fn build(
        partner: &str,
        own: &OwnCa,
        resolve: impl Fn(&Path) -> std::path::PathBuf,
    ) -> Result<PartnerCa, TlsError> {
        let anchors = load_certs(&resolve(&own.ca))?;
        let (issuer, not_after_unix) = parse_x509_certificate(&anchors[0])
            .map(|(_, c)| (c.subject().to_string(), c.validity().not_after.timestamp()))
            .map_err(|e| {
                config_err(partner, format!("the CA certificate cannot be parsed: {e}"))
            })?;
        let subjects = anchors
            .iter()
            .filter_map(|a| {
                parse_x509_certificate(a)
                    .ok()
                    .map(|(_, c)| c.subject().as_raw().to_vec())
            })
            .collect();
        let mut roots = RootCertStore::empty();
        for a in anchors {
            roots
                .add(a)
                .map_err(|e| config_err(partner, format!("not a usable CA certificate: {e}")))?;
        }
        let crls = match &own.crl {
            Some(p) => load_crls(&resolve(p))?,
            None => Vec::new(),
        };
        let mut revoked = HashSet::new();
        for crl in &crls {
            let (_, parsed) =
                x509_parser::revocation_list::CertificateRevocationList::from_der(crl.as_ref())
                    .map_err(|e| config_err(partner, format!("the CRL cannot be parsed: {e}")))?;
            for r in parsed.iter_revoked_certificates() {
                revoked.insert(hex::encode(r.raw_serial()));
            }
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .with_crls(crls)
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| config_err(partner, format!("client verifier: {e}")))?;
        Ok(PartnerCa {
            partner: partner.to_string(),
            name: own.name.clone(),
            pins: own.pin_spki.clone(),
            verifier,
            revoked,
            issuer,
            not_after_unix,
            subjects,
        })
    }

    /// Whether `cert` carries this partner's name.
    fn names(&self, cert: &X509Certificate<'_>) -> bool {
        let sans = || {
            cert.subject_alternative_name()
                .ok()
                .flatten()
                .map(|s| s.value.general_names.clone())
                .unwrap_or_default()
        };
        match &self.name {
            NameMatch::SanUri(want) => sans()
                .iter()
                .any(|n| matches!(n, GeneralName::URI(u) if u == want)),
            NameMatch::SanDns(want) => sans()
                .iter()
                .any(|n| matches!(n, GeneralName::DNSName(d) if d.eq_ignore_ascii_case(want))),
            NameMatch::SubjectCn(want) => cert
                .subject()
                .iter_common_name()
                .any(|cn| cn.as_str().is_ok_and(|c| c == want)),
        }
    }

    /// Chain (with the partner's intermediates), validity, EKU, CRL, pin.
    pub fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), (Reason, String)> {
        self.verifier
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(|e| (certificate_reason(&e), e.to_string()))?;
        let (_, cert) = parse_x509_certificate(end_entity)
            .map_err(|_| (Reason::BadCertificate, "unparsable".to_string()))?;
        if !self.pins.is_empty() {
            let spki = hex::encode(Sha256::digest(cert.public_key().raw));
            if !self.pins.contains(&spki) {
                return Err((
                    Reason::KeyPinMismatch,
                    format!(
                        "the key (SPKI SHA-256 {spki}) is not one pinned for partner {}",
                        self.partner
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether the CRL revokes `serial` (lowercase hex), per request.
    pub fn revokes(&self, serial: &str) -> bool {
        self.revoked.contains(serial)
    }
}

/// The partner CA whose name `der` carries, unless `der` carries a URI in
/// our trust domain (then it is for our own CA to judge).
pub fn find<'a>(
    cas: &'a [Arc<PartnerCa>],
    der: &[u8],
    trust_domain: &str,
) -> Option<&'a Arc<PartnerCa>> {
    if cas.is_empty() {
        return None;
    }
    let (_, cert) = parse_x509_certificate(der).ok()?;
    let ours = format!("spiffe://{trust_domain}/");
    let in_our_domain = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|s| {
            s.value
                .general_names
                .iter()
                .any(|n| matches!(n, GeneralName::URI(u) if u.starts_with(&ours)))
        });
    if in_our_domain {
        return None;
    }
    cas.iter().find(|ca| ca.names(&cert))
}

/// Builds every partner's CA; refuses two partners with the same name.
pub fn build_all<'a>(
    owned: impl IntoIterator<Item = (&'a str, &'a OwnCa)>,
    resolve: impl Fn(&Path) -> std::path::PathBuf + Copy,
) -> Result<Vec<Arc<PartnerCa>>, TlsError> {
    let mut out: Vec<Arc<PartnerCa>> = Vec::new();
    for (partner, own) in owned {
        if let Some(other) = out.iter().find(|c| c.name == own.name) {
            return Err(config_err(
                partner,
                format!(
                    "{} is already partner {}'s name: a name picks one partner",
                    own.name.describe(),
                    other.partner
                ),
            ));
        }
        out.push(Arc::new(PartnerCa::build(partner, own, resolve)?));
    }
    Ok(out)
}
