//! The partner-side renewal agent (`gatehouse agent renew`): makes a fresh
//! P-256 key and a CSR, keeps them next to the key (`<key>.pending` and
//! `<key>.pending.csr`, mode 0600) until the new certificate is installed,
//! POSTs the CSR to the broker's `/.well-known/gatehouse/renew` over mutual
//! TLS with the partner's current certificate, checks that the certificate
//! it gets back is for the new key, and writes the new certificate and key
//! atomically (key mode 0600 from creation), then removes the pending
//! files. An attempt whose answer was lost leaves them in place; the next
//! attempt sends the same CSR, and the broker delivers the same certificate
//! again. Once, or as a daemon that renews at about two thirds of each
//! certificate's lifetime.
//!
//! It needs no gatehouse home: only the partner's own files and the CA
//! (or CA bundle) that verifies the broker. The broker decides whether a
//! renewal is allowed; the agent only asks at sensible times.

pub mod enrol;
mod exchange;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

use crate::gateway::renewal::RENEW_PATH;
use crate::reason::Reason;
use crate::timefmt::rfc3339;

/// The media type of a CSR the agent sends.
const PKCS10: &str = "application/pkcs10";
/// Retry backoff after a failure: first wait, and the longest.
const BACKOFF_START: Duration = Duration::from_secs(30);
const BACKOFF_MAX: Duration = Duration::from_secs(3600);

/// What went wrong, said so the partner's operator can act.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("broker URL `{0}`: {1}")]
    Url(String, String),
    #[error("cannot reach the broker at {0}: {1}")]
    Connect(String, String),
    #[error("the broker refused the renewal ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("the broker's answer is not usable: {0}")]
    BadAnswer(String),
    #[error("could not make a key or CSR: {0}")]
    Key(String),
    #[error("`{0}` failed: {1}")]
    Exec(String, String),
}

fn file_err(path: &Path, message: impl std::fmt::Display) -> AgentError {
    AgentError::File {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// The agent's inputs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// The partner's certificate chain (PEM), replaced on renewal.
    pub cert: PathBuf,
    /// The partner's private key (PEM), replaced on renewal.
    pub key: PathBuf,
    /// CA certificate(s) that verify the broker (the CA bundle during a rollover).
    pub ca: PathBuf,
    /// `https://broker.example.com:8443`.
    pub broker: String,
    /// Shell command run (`sh -c`) after each successful renewal.
    pub exec: Option<String>,
}

/// What one attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Renewed {
        serial: String,
        not_after: OffsetDateTime,
    },
    /// The broker's renewal window for this certificate is not open yet.
    NotYet { opens_at: Option<String> },
}

/// Validity and serial of the first certificate in a PEM file.
pub fn read_validity(path: &Path) -> Result<(String, OffsetDateTime, OffsetDateTime), AgentError> {
    let der = CertificateDer::from_pem_file(path)
        .map_err(|e| file_err(path, format!("not a PEM certificate: {e}")))?;
    let (_, x) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| file_err(path, format!("the certificate cannot be parsed: {e}")))?;
    Ok((
        hex::encode(x.raw_serial()),
        x.validity().not_before.to_datetime(),
        x.validity().not_after.to_datetime(),
    ))
}

fn client_config(opts: &AgentOptions) -> Result<Arc<rustls::ClientConfig>, AgentError> {
    let mut roots = RootCertStore::empty();
    let cas: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&opts.ca)
        .map_err(|e| file_err(&opts.ca, format!("cannot read: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&opts.ca, format!("not valid PEM: {e}")))?;
    if cas.is_empty() {
        return Err(file_err(&opts.ca, "holds no CERTIFICATE block"));
    }
    for c in cas {
        roots
            .add(c)
            .map_err(|e| file_err(&opts.ca, format!("not a usable CA certificate: {e}")))?;
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&opts.cert)
        .map_err(|e| file_err(&opts.cert, format!("cannot read: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&opts.cert, format!("not valid PEM: {e}")))?;
    if chain.is_empty() {
        return Err(file_err(&opts.cert, "holds no CERTIFICATE block"));
    }
    let key = PrivateKeyDer::from_pem_file(&opts.key)
        .map_err(|e| file_err(&opts.key, format!("not a usable private key: {e}")))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| AgentError::Key(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| file_err(&opts.key, format!("does not match the certificate: {e}")))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Host, port and the renewal path for a broker URL.
pub(crate) fn endpoint(broker: &str) -> Result<(String, u16, String), AgentError> {
    let uri: Uri = broker
        .parse()
        .map_err(|e| AgentError::Url(broker.into(), format!("{e}")))?;
    if uri.scheme_str() != Some("https") {
        return Err(AgentError::Url(
            broker.into(),
            "must start with https://".into(),
        ));
    }
    let host = uri
        .host()
        .ok_or_else(|| AgentError::Url(broker.into(), "no host".into()))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let prefix = uri.path().trim_end_matches('/');
    Ok((host, port, format!("{prefix}{RENEW_PATH}")))
}

/// Makes a fresh P-256 key and a CSR for it (its subject is ignored by the
/// broker, which sets the identity itself).
pub(crate) fn new_csr() -> Result<(KeyPair, String), AgentError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| AgentError::Key(e.to_string()))?;
    let params = CertificateParams::default();
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| AgentError::Key(e.to_string()))?;
    Ok((key, csr))
}

/// The serial and expiry of the certificate the broker sent, once it is
/// known to certify `key` (the key this agent sent the CSR for).
pub(crate) fn issued_for(
    leaf: &[u8],
    key: &KeyPair,
) -> Result<(String, OffsetDateTime), AgentError> {
    let (_, x) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| AgentError::BadAnswer(format!("the certificate cannot be parsed: {e}")))?;
    if x.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(AgentError::BadAnswer(
            "the certificate is not for the key this agent sent".into(),
        ));
    }
    Ok((
        hex::encode(x.raw_serial()),
        x.validity().not_after.to_datetime(),
    ))
}

/// `<key>.pending` and `<key>.pending.csr`: the key and CSR of a renewal
/// not installed yet.
pub fn pending_paths(key: &Path) -> (PathBuf, PathBuf) {
    let with = |suffix: &str| {
        let mut p = key.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    (with(".pending"), with(".pending.csr"))
}

/// The pending key and CSR, when both are on disk, readable, belong
/// together and are not already the installed key; else `None`.
fn read_pending(opts: &AgentOptions) -> Option<(KeyPair, String)> {
    let (key_path, csr_path) = pending_paths(&opts.key);
    let key_pem = std::fs::read_to_string(&key_path).ok()?;
    let csr = std::fs::read_to_string(&csr_path).ok()?;
    let unusable = |why: &str| {
        tracing::warn!(
            "{} and {}: {why}; making a new key",
            key_path.display(),
            csr_path.display()
        );
        None
    };
    let Ok(key) = KeyPair::from_pem(&key_pem) else {
        return unusable("the pending key cannot be read");
    };
    let csr_key = match crate::ca::csr::verified_public_key(csr.as_bytes()) {
        Ok(spki) => rcgen::PublicKeyData::der_bytes(&spki).to_vec(),
        Err(_) => return unusable("the pending CSR cannot be read"),
    };
    if csr_key != key.public_key_raw() {
        return unusable("the pending CSR is not for the pending key");
    }
    if installed_key(&opts.cert).is_some_and(|k| k == csr_key) {
        // Installed by an earlier run that stopped before cleaning up.
        remove_pending(opts);
        return None;
    }
    Some((key, csr))
}

/// The public key of the installed certificate, if it can be read.
fn installed_key(cert: &Path) -> Option<Vec<u8>> {
    let der = CertificateDer::from_pem_file(cert).ok()?;
    let (_, x) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(x.public_key().subject_public_key.data.to_vec())
}

/// The key and CSR to send: the pending ones, or new ones written to disk
/// (0600) before they are sent.
fn pending_or_new(opts: &AgentOptions) -> Result<(KeyPair, String), AgentError> {
    if let Some(pending) = read_pending(opts) {
        tracing::info!("retrying the renewal with the key and CSR kept from an earlier attempt");
        return Ok(pending);
    }
    let (key, csr) = new_csr()?;
    let (key_path, csr_path) = pending_paths(&opts.key);
    crate::home::write_key(&key_path, &key.serialize_pem()).map_err(|e| file_err(&key_path, e))?;
    crate::home::write_key(&csr_path, &csr).map_err(|e| file_err(&csr_path, e))?;
    Ok((key, csr))
}

/// Removes the pending key and CSR (after the new certificate is installed).
fn remove_pending(opts: &AgentOptions) {
    let (key_path, csr_path) = pending_paths(&opts.key);
    for p in [key_path, csr_path] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove {}: {e}", p.display()),
        }
    }
}

/// POSTs `csr` to the broker; returns the status and body.
async fn post_csr(opts: &AgentOptions, csr: String) -> Result<(StatusCode, Bytes), AgentError> {
    let req = exchange::request(
        &opts.broker,
        Method::POST,
        RENEW_PATH,
        exchange::RequestHeaders {
            authorization: None,
            content_type: Some(PKCS10),
        },
        Bytes::from(csr),
    )?;
    let tls = client_config(opts)?;
    exchange::send(&opts.broker, tls, req).await
}

/// One renewal attempt. On success the new certificate and key are on
/// disk, the pending files gone and `--exec` has run; on failure the
/// pending key and CSR stay for the next attempt.
pub async fn renew_once(opts: &AgentOptions) -> Result<Outcome, AgentError> {
    let (key, csr) = pending_or_new(opts)?;
    let (status, body) = post_csr(opts, csr).await?;
    let text = String::from_utf8_lossy(&body).into_owned();
    if status == StatusCode::FORBIDDEN {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if v["error"] == Reason::RenewalNotYetAllowed.code() {
            return Ok(Outcome::NotYet {
                opens_at: v["renewal_opens_at"].as_str().map(String::from),
            });
        }
    }
    if status != StatusCode::OK {
        return Err(AgentError::Refused {
            status: status.as_u16(),
            body: text.trim().to_string(),
        });
    }
    // The answer must be a chain whose leaf certifies our new key.
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&body)
        .collect::<Result<_, _>>()
        .map_err(|e| AgentError::BadAnswer(format!("not PEM: {e}")))?;
    let leaf = chain
        .first()
        .ok_or_else(|| AgentError::BadAnswer("no certificate in the answer".into()))?;
    let (serial, not_after) = issued_for(leaf, &key)?;
    // Key first, then certificate: each write is atomic.
    crate::home::write_key(&opts.key, &key.serialize_pem()).map_err(|e| file_err(&opts.key, e))?;
    crate::home::write_public(&opts.cert, &body).map_err(|e| file_err(&opts.cert, e))?;
    remove_pending(opts);
    if let Some(cmd) = &opts.exec {
        run_exec(cmd).await?;
    }
    Ok(Outcome::Renewed { serial, not_after })
}

async fn run_exec(cmd: &str) -> Result<(), AgentError> {
    let owned = cmd.to_string();
    let status = tokio::task::spawn_blocking(move || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(&owned)
            .status()
    })
    .await
    .map_err(|e| AgentError::Exec(cmd.into(), e.to_string()))?
    .map_err(|e| AgentError::Exec(cmd.into(), e.to_string()))?;
    if status.success() {
        Ok(())
    } else {
        Err(AgentError::Exec(
            cmd.into(),
            format!("exited with {status}"),
        ))
    }
}

/// When the daemon next tries: two thirds into the certificate's lifetime,
/// give or take 5% of the lifetime (so a fleet does not renew in step).
pub fn next_attempt(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    let life = not_after - not_before;
    let jitter = life * (rand::random::<f64>() * 0.1 - 0.05);
    not_before + life * (2.0 / 3.0) + jitter
}

fn until(t: OffsetDateTime) -> Duration {
    let d = t - OffsetDateTime::now_utc();
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

/// Renews forever: sleeps until the next attempt, renews, repeats; backs
/// off on failure (30 s doubling to an hour, never past expiry).
pub async fn run_daemon(opts: &AgentOptions) -> Result<(), AgentError> {
    let mut backoff = BACKOFF_START;
    loop {
        let (serial, nb, na) = read_validity(&opts.cert)?;
        let at = next_attempt(nb, na);
        tracing::info!(%serial, not_after = %rfc3339(na), next_attempt = %rfc3339(at), "waiting to renew");
        tokio::time::sleep(until(at)).await;
        match renew_once(opts).await {
            Ok(Outcome::Renewed { serial, not_after }) => {
                tracing::info!(%serial, not_after = %rfc3339(not_after), "certificate renewed");
                backoff = BACKOFF_START;
            }
            Ok(Outcome::NotYet { opens_at }) => {
                let opens = opens_at
                    .as_deref()
                    .and_then(crate::ca::inventory::parse_time)
                    .unwrap_or_else(|| OffsetDateTime::now_utc() + BACKOFF_MAX);
                tracing::info!(opens_at = %rfc3339(opens), "renewal window not open yet");
                let extra = Duration::from_secs(rand::random::<u64>() % 60);
                tokio::time::sleep(until(opens) + extra).await;
                // Try right away now the window is open.
                match renew_once(opts).await {
                    Ok(_) => backoff = BACKOFF_START,
                    Err(e) => {
                        tracing::warn!("renewal failed: {e}; retrying in {backoff:?}");
                        tokio::time::sleep(backoff.min(until(na))).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            Err(e) => {
                tracing::warn!("renewal failed: {e}; retrying in {backoff:?}");
                tokio::time::sleep(backoff.min(until(na))).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                if OffsetDateTime::now_utc() >= na {
                    return Err(AgentError::Refused {
                        status: 0,
                        body: format!(
                            "certificate {serial} expired before it could be renewed ({e}); ask the broker's operator for a new one"
                        ),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            endpoint("https://broker.example:8443").unwrap(),
            (
                "broker.example".into(),
                8443,
                "/.well-known/gatehouse/renew".into()
            )
        );
        assert_eq!(endpoint("https://127.0.0.1/").unwrap().1, 443);
        assert!(endpoint("http://broker").is_err());
    }

    fn opts_in(dir: &Path) -> AgentOptions {
        AgentOptions {
            cert: dir.join("acme.pem"),
            key: dir.join("acme.key"),
            ca: dir.join("ca.pem"),
            broker: "https://127.0.0.1:1".into(),
            exec: None,
        }
    }

    #[test]
    fn a_pending_key_is_kept_0600_and_reused_until_installed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let opts = opts_in(dir.path());
        let (key, csr) = pending_or_new(&opts).unwrap();
        let (kp, cp) = pending_paths(&opts.key);
        assert_eq!(kp, dir.path().join("acme.key.pending"));
        assert_eq!(cp, dir.path().join("acme.key.pending.csr"));
        for p in [&kp, &cp] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let (again, csr_again) = pending_or_new(&opts).unwrap();
        assert_eq!(again.public_key_raw(), key.public_key_raw());
        assert_eq!(csr_again, csr);
        // A CSR that is not for the pending key is not sent: a new pair is made.
        let (_, other_csr) = new_csr().unwrap();
        std::fs::write(&cp, other_csr).unwrap();
        let (fresh, _) = pending_or_new(&opts).unwrap();
        assert_ne!(fresh.public_key_raw(), key.public_key_raw());
        remove_pending(&opts);
        assert!(!kp.exists() && !cp.exists());
    }

    #[test]
    fn attempts_fall_near_two_thirds() {
        let nb = OffsetDateTime::from_unix_timestamp(0).unwrap();
        let na = nb + time::Duration::days(90);
        for _ in 0..50 {
            let t = next_attempt(nb, na);
            assert!(t >= nb + time::Duration::days(55) && t <= nb + time::Duration::days(65));
        }
    }
}
