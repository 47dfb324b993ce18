//! The partner side of enrolment (`gatehouse agent enroll`): makes a P-256
//! key locally (it never leaves the partner), learns the broker's root from
//! EST `cacerts` and accepts it only if its SHA-256 fingerprint is the one
//! the invitation gave (or takes the root from a file), then enrols over a
//! verified connection with HTTP Basic `ID:SECRET` and a PKCS#10, checks
//! the certificate is for its key, and writes `ID.key` (0600), `ID.pem`
//! (leaf + issuing CA) and `ca.pem` (the root) to the output folder, ready
//! for `gatehouse agent renew`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::{Method, StatusCode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;

use super::exchange::{RequestHeaders, request, send};
use super::{AgentError, PKCS10};
use crate::enrolment::pkcs7;
use crate::gateway::est::{CACERTS_PATH, SIMPLEENROLL_PATH};

/// What `agent enroll` needs.
#[derive(Debug, Clone)]
pub struct EnrolOptions {
    /// `https://broker.example.com:8443`.
    pub url: String,
    pub id: String,
    pub secret: String,
    pub out: PathBuf,
    /// The broker's root as a file, when the partner already has it.
    pub ca: Option<PathBuf>,
    /// SHA-256 (hex, colons allowed) of the broker's root, from the invitation.
    pub root_fingerprint: Option<String>,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Enrolled {
    pub serial: String,
    pub not_after: OffsetDateTime,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> AgentError {
    AgentError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Accepts any server certificate (the handshake signature still has to
/// verify). Used for one thing only: fetching `cacerts`, whose root is then
/// accepted only if it has the fingerprint the invitation gave.
#[derive(Debug)]
struct FingerprintBootstrap(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for FingerprintBootstrap {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_with(
    build: impl FnOnce(
        rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>,
    ) -> rustls::ClientConfig,
) -> Result<Arc<rustls::ClientConfig>, AgentError> {
    let b = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Key(e.to_string()))?;
    let mut cfg = build(b);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The certificates of a certs-only answer (base64 DER PKCS#7).
fn certs_of(body: &[u8]) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let der = pkcs7::decode_base64_body(body)
        .map_err(|e| AgentError::BadAnswer(format!("not base64: {e}")))?;
    let certs = pkcs7::certificates(&der)
        .ok_or_else(|| AgentError::BadAnswer("not a certs-only PKCS#7".into()))?;
    if certs.is_empty() {
        return Err(AgentError::BadAnswer("no certificate in the answer".into()));
    }
    Ok(certs.into_iter().map(CertificateDer::from).collect())
}

/// The broker's root: from `--ca`, or from `cacerts` by its fingerprint.
async fn broker_roots(opts: &EnrolOptions) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    if let Some(ca) = &opts.ca {
        let certs: Vec<_> = CertificateDer::pem_file_iter(ca)
            .map_err(|e| file_err(ca, format!("cannot read: {e}")))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_err(ca, format!("not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(file_err(ca, "holds no CERTIFICATE block"));
        }
        return Ok(certs);
    }
    let want: String = opts
        .root_fingerprint
        .as_deref()
        .ok_or_else(|| {
            AgentError::Url(
                opts.url.clone(),
                "give --root-fingerprint (from the invitation) or --ca ROOT.pem".into(),
            )
        })?
        .chars()
        .filter(|c| c.is_ascii_hexdigit())
        .collect::<String>()
        .to_ascii_lowercase();
    let provider = crate::tls::provider();
    let tls = tls_with(|b| {
        b.dangerous()
            .with_custom_certificate_verifier(Arc::new(FingerprintBootstrap(provider)))
            .with_no_client_auth()
    })?;
    let req = request(
        &opts.url,
        Method::GET,
        CACERTS_PATH,
        RequestHeaders::default(),
        Bytes::new(),
    )?;
    let (status, body) = send(&opts.url, tls, req).await?;
    if status != StatusCode::OK {
        return Err(AgentError::Refused {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).trim().to_string(),
        });
    }
    let root = certs_of(&body)?
        .into_iter()
        .find(|c| crate::ca::fingerprint(c) == want)
        .ok_or_else(|| {
            AgentError::BadAnswer(format!(
                "the broker's CA certificates hold no root with SHA-256 {want}: check the fingerprint, or that this is the right broker"
            ))
        })?;
    Ok(vec![root])
}

/// Enrols: key, CSR, `simpleenroll`, files.
pub async fn enrol(opts: &EnrolOptions) -> Result<Enrolled, AgentError> {
    crate::config::validate_partner_id(&opts.id)
        .map_err(|e| AgentError::Url(opts.url.clone(), format!("--id: {e}")))?;
    let roots = broker_roots(opts).await?;
    let mut store = RootCertStore::empty();
    for r in &roots {
        store
            .add(r.clone())
            .map_err(|e| AgentError::BadAnswer(format!("the root is not usable: {e}")))?;
    }
    let tls = tls_with(|b| b.with_root_certificates(store).with_no_client_auth())?;
    let (key, csr_pem) = crate::agent::new_csr()?;
    let csr_der =
        rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
            .map_err(|e| AgentError::Key(e.to_string()))?;
    let body = base64::engine::general_purpose::STANDARD.encode(csr_der.as_ref());
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", opts.id, opts.secret))
    );
    let req = request(
        &opts.url,
        Method::POST,
        SIMPLEENROLL_PATH,
        RequestHeaders {
            authorization: Some(auth),
            content_type: Some(PKCS10),
        },
        Bytes::from(body),
    )?;
    let (status, answer) = send(&opts.url, tls, req).await?;
    if status != StatusCode::OK {
        return Err(AgentError::Refused {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&answer).trim().to_string(),
        });
    }
    let chain = certs_of(&answer)?;
    let (serial, not_after) = super::issued_for(&chain[0], &key)?;
    let out = &opts.out;
    crate::home::ensure_dir(out).map_err(|e| file_err(out, e))?;
    let (cert_path, key_path, ca_path) = (
        out.join(format!("{}.pem", opts.id)),
        out.join(format!("{}.key", opts.id)),
        out.join("ca.pem"),
    );
    let pem_of = |certs: &[CertificateDer<'_>]| -> String {
        certs.iter().map(|c| crate::ca::der_to_pem(c)).collect()
    };
    crate::home::write_key(&key_path, &key.serialize_pem()).map_err(|e| file_err(&key_path, e))?;
    crate::home::write_public(&cert_path, pem_of(&chain).as_bytes())
        .map_err(|e| file_err(&cert_path, e))?;
    crate::home::write_public(&ca_path, pem_of(&roots).as_bytes())
        .map_err(|e| file_err(&ca_path, e))?;
    Ok(Enrolled {
        serial,
        not_after,
        cert: cert_path,
        key: key_path,
        ca: ca_path,
    })
}
