//! TLS on both legs. Partner side: a rustls `ServerConfig` that asks for a
//! client certificate (a client without one gets only the enrolment paths,
//! see `gateway::est`), verifies chain, validity, EKU clientAuth and the CRL
//! (rustls' WebPKI verifier), then the partner identity and the inventory's
//! revocation state (`PartnerVerifier`; a certificate whose chain already
//! verified skips only the chain's signature checks, see `verified_certs`).
//! Refusals are the one `Refusal` (TLS level), carrying the reason, the
//! certificate's subject and fingerprint, so the refused handshake can be
//! recorded.
//! Upstream side: a `ClientConfig` that verifies the upstream against its
//! configured CA and presents the broker's client certificate.
//!
//! One crypto provider (aws-lc-rs) is used everywhere, passed explicitly.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, UnixTime};

use crate::identity::{describe, identify};
use crate::reason::Reason;
use crate::refusal::Refusal;
pub mod partner_ca;
pub mod verified_certs;

use verified_certs::VerifiedCerts;

/// Number of TLS sessions the server remembers for resumption.
pub const SESSION_CACHE_SIZE: usize = 20_000;

/// The process's crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Problems loading TLS material or building a config.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, message: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(path, "holds no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| file_err(path, format!("not a usable private key: {e}")))
}

/// The CRL in a PEM file.
pub fn load_crl(path: &Path) -> Result<CertificateRevocationListDer<'static>, TlsError> {
    CertificateRevocationListDer::from_pem_file(path)
        .map_err(|e| file_err(path, format!("not a usable CRL: {e}")))
}

/// Every CRL in a PEM file (one per trusted CA; at least one).
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let crls: Vec<_> = CertificateRevocationListDer::pem_file_iter(path)
        .map_err(|e| file_err(path, format!("cannot read CRLs: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, format!("not a usable CRL: {e}")))?;
    if crls.is_empty() {
        return Err(file_err(path, "holds no X509 CRL block"));
    }
    Ok(crls)
}

/// The live revocation view the verifier consults at each handshake: is
/// this serial known, recorded with this SHA-256 fingerprint, and still
/// usable at `now` (unix seconds)? Returns the reason when not.
pub trait CertificateStatus: Send + Sync + fmt::Debug {
    fn check(&self, serial: &str, fingerprint: &str, now_unix: i64) -> Result<(), Reason>;

    /// A certificate that names a partner with its own CA: that CA's
    /// verdict (see `partner_ca`); `None` when no partner's CA is concerned.
    fn own_ca(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Option<Result<(), (Reason, String)>> {
        None
    }
}

/// A refused client certificate as rustls carries it: the TLS-level
/// `Refusal` with the certificate's subject (in the detail) and fingerprint.
fn refuse(reason: Reason, der: &[u8], message: String) -> rustls::Error {
    let (subject, fingerprint) = describe(der);
    let refusal = Refusal::tls(reason)
        .detail(format!("subject: {subject}; {message}"))
        .fingerprint(fingerprint);
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
        refusal,
    ))))
}

/// The reason for a rustls certificate error.
fn certificate_reason(e: &rustls::Error) -> Reason {
    match e {
        rustls::Error::InvalidCertificate(ce) => match ce {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => Reason::Expired,
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                Reason::NotYetValid
            }
            CertificateError::Revoked => Reason::Revoked,
            CertificateError::UnknownIssuer => Reason::UnknownCa,
            CertificateError::BadSignature => Reason::BadSignature,
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                Reason::WrongKeyUsage
            }
            CertificateError::BadEncoding => Reason::BadCertificate,
            _ => Reason::InvalidCertificate,
        },
        _ => Reason::InvalidCertificate,
    }
}

/// WebPKI verification plus gatehouse's identity and inventory checks.
#[derive(Debug)]
pub struct PartnerVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
    status: Arc<dyn CertificateStatus>,
    /// Leaf certificates that passed `inner` (see `verified_certs`).
    verified: VerifiedCerts,
    /// The CA names sent to clients: ours and partners' own CAs' roots
    /// (clients such as Java pick their certificate by them).
    hints: Vec<DistinguishedName>,
}

impl ClientCertVerifier for PartnerVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    /// Optional: a client without a certificate completes the handshake
    /// and gets the enrolment paths alone (`gateway::est::anonymous`); a
    /// certificate that is presented is verified in full, as ever.
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // A partner's own CA judges the certificates that carry its name
        // (never one in our trust domain).
        if let Some(verdict) = self.status.own_ca(end_entity, intermediates, now) {
            return verdict
                .map(|()| ClientCertVerified::assertion())
                .map_err(|(reason, m)| refuse(reason, end_entity, m));
        }
        let now_unix = now.as_secs() as i64;
        // Chains this verifier already verified skip the chain check while
        // every certificate of them is within its validity period;
        // everything after it (identity, inventory, revocation) runs at
        // every handshake.
        let chain =
            || std::iter::once(end_entity.as_ref()).chain(intermediates.iter().map(|c| c.as_ref()));
        let key = verified_certs::chain_digest(chain());
        let known = self.verified.holds(&key, now_unix);
        if !known {
            self.inner
                .verify_client_cert(end_entity, intermediates, now)
                .map_err(|e| refuse(certificate_reason(&e), end_entity, e.to_string()))?;
        }
        let id = identify(end_entity, &self.trust_domain)
            .map_err(|e| refuse(e.reason(), end_entity, e.to_string()))?;
        if !known {
            let window = if intermediates.is_empty() {
                Some((id.not_before_unix, id.not_after_unix))
            } else {
                verified_certs::chain_window(chain())
            };
            if let Some((not_before, not_after)) = window {
                self.verified.insert(key, not_before, not_after);
            }
        }
        self.status
            .check(&id.serial, &id.fingerprint, now.as_secs() as i64)
            .map_err(|reason| {
                refuse(
                    reason,
                    end_entity,
                    format!("certificate {} of {} is {reason}", id.serial, id.partner),
                )
            })?;
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What the partner-facing TLS config is built from.
pub struct ServerMaterial {
    pub trust_anchors: Vec<CertificateDer<'static>>,
    /// Subjects (DER) of partners' own CA roots, announced beside ours.
    pub partner_ca_subjects: Vec<Vec<u8>>,
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: PrivateKeyDer<'static>,
}

/// The provider's cipher suites with the AES-128-GCM/SHA-256 ones first.
/// Clients such as OpenSSL list AES-256-GCM/SHA-384 first, and SHA-384 (the
/// handshake hash and key schedule of that suite) has no hardware support
/// here: it was 5 % of the CPU of a full mTLS handshake. AES-128-GCM is a
/// mandatory TLS 1.3 suite with 128-bit security like the P-256 and X25519
/// key exchange that protects it; every other suite stays allowed, in the
/// provider's order.
fn server_suites_first_aes128(mut provider: CryptoProvider) -> CryptoProvider {
    use rustls::CipherSuite as S;
    provider.cipher_suites.sort_by_key(|s| {
        !matches!(
            s.suite(),
            S::TLS13_AES_128_GCM_SHA256
                | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    });
    provider
}

/// Builds the partner-facing server config: client certificate required,
/// ALPN h2 and http/1.1, a fresh session cache and ticketer (so a rebuild
/// after a revocation forgets every earlier session).
pub fn server_config(
    material: ServerMaterial,
    trust_domain: &str,
    status: Arc<dyn CertificateStatus>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(server_suites_first_aes128(
        rustls::crypto::aws_lc_rs::default_provider(),
    ));
    let mut roots = RootCertStore::empty();
    for anchor in &material.trust_anchors {
        roots.add(anchor.clone()).map_err(|e| {
            TlsError::Config(format!("CA certificate is not a usable trust anchor: {e}"))
        })?;
    }
    let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(material.crls)
        .only_check_end_entity_revocation()
        .allow_unknown_revocation_status()
        .build()
        .map_err(|e| TlsError::Config(format!("client verifier: {e}")))?;
    let mut hints = inner.root_hint_subjects().to_vec();
    hints.extend(
        material
            .partner_ca_subjects
            .into_iter()
            .map(DistinguishedName::from),
    );
    let verifier = Arc::new(PartnerVerifier {
        inner,
        trust_domain: trust_domain.to_string(),
        status,
        verified: VerifiedCerts::new(),
        hints,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(material.server_chain, material.server_key)
        .map_err(|e| TlsError::Config(format!("server certificate/key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Our order, not the client's: see `server_suites_first_aes128`.
    config.ignore_client_order = true;
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
        .map_err(|e| TlsError::Config(format!("session ticketer: {e}")))?;
    Ok(Arc::new(config))
}

/// Builds the upstream-facing client config: trust only `ca_file`, present
/// the broker's client certificate.
pub fn upstream_client_config(
    ca_file: &Path,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivateKeyDer<'static>,
) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca_file)? {
        roots
            .add(c)
            .map_err(|e| file_err(ca_file, format!("not a usable CA certificate: {e}")))?;
    }
    ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(client_chain, client_key)
        .map_err(|e| TlsError::Config(format!("broker client certificate/key: {e}")))
}

/// The refusal a failed server-side handshake is recorded as.
pub fn classify_handshake_error(e: &std::io::Error) -> Refusal {
    let plain = |reason: Reason| Refusal::tls(reason).detail(e.to_string());
    let Some(tls) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) else {
        return match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe => plain(Reason::ClientClosed),
            _ => plain(Reason::TlsError),
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            match other.0.downcast_ref::<Refusal>() {
                Some(r) => r.clone(),
                None => plain(Reason::InvalidCertificate),
            }
        }
        rustls::Error::NoCertificatesPresented => plain(Reason::NoCertificate),
        rustls::Error::AlertReceived(_) => plain(Reason::ClientAlert),
        rustls::Error::NoApplicationProtocol => plain(Reason::NoAlpn),
        rustls::Error::PeerIncompatible(_) => plain(Reason::Incompatible),
        _ => plain(Reason::TlsError),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[derive(Debug, Default)]
    struct Revocable(AtomicBool);

    impl CertificateStatus for Revocable {
        fn check(&self, _serial: &str, _fp: &str, _now_unix: i64) -> Result<(), Reason> {
            if self.0.load(Ordering::SeqCst) {
                Err(Reason::Revoked)
            } else {
                Ok(())
            }
        }
    }

    /// A self-signed CA named `name` that may sign `depth` levels of CAs
    /// below it.
    fn ca_at_depth(
        name: &str,
        depth: u8,
    ) -> (
        rcgen::Issuer<'static, rcgen::KeyPair>,
        CertificateDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(depth));
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        (rcgen::Issuer::new(p, key), cert.der().clone())
    }

    /// A self-signed CA that signs partner certificates directly.
    fn ca(
        name: &str,
    ) -> (
        rcgen::Issuer<'static, rcgen::KeyPair>,
        CertificateDer<'static>,
    ) {
        ca_at_depth(name, 0)
    }

    /// acme's client certificate, valid from `from` for 30 days.
    fn partner_cert(
        issuer: &rcgen::Issuer<'_, rcgen::KeyPair>,
        from: time::OffsetDateTime,
    ) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name.push(rcgen::DnType::CommonName, "acme");
        p.subject_alt_names = vec![rcgen::SanType::URI(
            "spiffe://gatehouse.local/partner/acme".try_into().unwrap(),
        )];
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        p.not_before = from;
        p.not_after = from + time::Duration::days(30);
        p.signed_by(&key, issuer).unwrap().der().clone()
    }

    /// A partner verifier trusting `anchor` alone, for trust domain
    /// gatehouse.local.
    fn verifier(anchor: CertificateDer<'static>, status: Arc<Revocable>) -> PartnerVerifier {
        let mut roots = RootCertStore::empty();
        roots.add(anchor).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let inner = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        PartnerVerifier {
            inner,
            trust_domain: "gatehouse.local".into(),
            status,
            verified: VerifiedCerts::new(),
            hints: Vec::new(),
        }
    }

    fn reason(r: Result<ClientCertVerified, rustls::Error>) -> &'static str {
        match r {
            Ok(_) => "accepted",
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(o))) => {
                match o.0.downcast_ref::<Refusal>() {
                    Some(refusal) => refusal.reason.code(),
                    None => "other",
                }
            }
            Err(_) => "other",
        }
    }

    #[test]
    fn a_remembered_certificate_still_meets_validity_revocation_and_its_ca() {
        let (issuer, ca_der) = ca("gatehouse CA");
        let (rogue, _) = ca("gatehouse CA");
        let status = Arc::new(Revocable::default());
        let v = verifier(ca_der, status.clone());
        let start = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        let leaf = partner_cert(&issuer, start);
        let at =
            |secs: i64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs as u64));
        let now = start.unix_timestamp() + 3600;

        assert_eq!(
            reason(v.verify_client_cert(&leaf, &[], at(now))),
            "accepted"
        );
        assert_eq!(v.verified.len(), 1, "the verified leaf is remembered");
        assert_eq!(
            reason(v.verify_client_cert(&leaf, &[], at(now + 60))),
            "accepted"
        );

        // Past its not-after the remembered certificate is expired again.
        let later = start.unix_timestamp() + 31 * 86_400;
        assert_eq!(
            reason(v.verify_client_cert(&leaf, &[], at(later))),
            Reason::Expired.code()
        );
        // Before its not-before, not yet valid.
        let earlier = start.unix_timestamp() - 60;
        assert_eq!(
            reason(v.verify_client_cert(&leaf, &[], at(earlier))),
            Reason::NotYetValid.code()
        );

        // A look-alike from a foreign CA of the same name (same subject and
        // URI, other bytes) is not it: its signature does not verify.
        let impostor = partner_cert(&rogue, start);
        assert_eq!(
            reason(v.verify_client_cert(&impostor, &[], at(now))),
            Reason::BadSignature.code()
        );
        assert_eq!(
            v.verified.len(),
            1,
            "refused certificates are not remembered"
        );

        // Revocation bites at the next handshake, remembered or not.
        status.0.store(true, Ordering::SeqCst);
        assert_eq!(
            reason(v.verify_client_cert(&leaf, &[], at(now))),
            Reason::Revoked.code()
        );
    }

    /// An issuing CA under `root`, valid from `from` for `days` days.
    fn intermediate(
        root: &rcgen::Issuer<'_, rcgen::KeyPair>,
        from: time::OffsetDateTime,
        days: i64,
    ) -> (
        rcgen::Issuer<'static, rcgen::KeyPair>,
        CertificateDer<'static>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "gatehouse issuing CA");
        p.not_before = from;
        p.not_after = from + time::Duration::days(days);
        let der = p.signed_by(&key, root).unwrap().der().clone();
        (rcgen::Issuer::new(p, key), der)
    }

    #[test]
    fn a_remembered_chain_with_its_issuing_ca_still_meets_every_validity() {
        // Root -> issuing CA -> leaf, as partners of the two-tier PKI
        // present it (leaf and issuing CA).
        let (root, root_der) = ca_at_depth("gatehouse root", 1);
        let v = verifier(root_der, Arc::new(Revocable::default()));
        let start = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        // The issuing CA expires 10 days in, before the leaf (30 days).
        let (issuing, issuing_der) = intermediate(&root, start, 10);
        let leaf = partner_cert(&issuing, start);
        let at =
            |secs: i64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs as u64));
        let now = start.unix_timestamp() + 3600;
        let chain = [issuing_der.clone()];

        assert_eq!(
            reason(v.verify_client_cert(&leaf, &chain, at(now))),
            "accepted"
        );
        assert_eq!(v.verified.len(), 1, "the verified chain is remembered");
        assert_eq!(
            reason(v.verify_client_cert(&leaf, &chain, at(now + 60))),
            "accepted"
        );
        assert_eq!(v.verified.len(), 1, "and found again, not added twice");

        // Past the issuing CA's not-after, though the leaf is still valid,
        // the chain is refused: the shortcut ends with the shortest validity.
        let later = start.unix_timestamp() + 11 * 86_400;
        assert_ne!(
            reason(v.verify_client_cert(&leaf, &chain, at(later))),
            "accepted"
        );

        // The same leaf without its issuing CA is another chain: it does
        // not ride on the remembered one, and does not verify.
        assert_ne!(
            reason(v.verify_client_cert(&leaf, &[], at(now))),
            "accepted"
        );

        // A look-alike issuing CA (same name, other key) signing a
        // look-alike leaf is refused, remembered chain or not.
        let (rogue_root, _) = ca("gatehouse root");
        let (rogue_issuing, rogue_issuing_der) = intermediate(&rogue_root, start, 10);
        let impostor = partner_cert(&rogue_issuing, start);
        assert_ne!(
            reason(v.verify_client_cert(&impostor, &[rogue_issuing_der], at(now))),
            "accepted"
        );
        assert_eq!(v.verified.len(), 1, "refused chains are not remembered");
    }

    #[test]
    fn server_suites_put_aes128_first_and_keep_the_rest() {
        let stock = rustls::crypto::aws_lc_rs::default_provider();
        let ours = server_suites_first_aes128(stock.clone());
        assert_eq!(
            ours.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        let names = |p: &CryptoProvider| {
            let mut v: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
            v.sort_by_key(|s| u16::from(*s));
            v
        };
        assert_eq!(names(&ours), names(&stock), "no suite added or dropped");
    }
}
