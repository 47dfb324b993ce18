//! The two-tier layout of a home's PKI: the **root** (`certs/root.pem`,
//! its key `certs/root.key` may be kept offline), the **issuing CA** under it
//! (`certs/ca.pem`/`.key`, `pathlen:0`) that signs partner and server
//! certificates, and the separate self-signed **upstream-client CA**
//! (`certs/upstream-client-ca.pem`/`.key`) that signs only the broker's
//! upstream-leg certificate. This module reads that layout and writes
//! nothing but the partners' trust bundle: the root as a signer (from
//! `certs/root.key` or `--root-key FILE`), the CAs a rollover kept
//! (previous issuing CAs and roots), what partners trust (`ca-bundle.pem`:
//! the roots), the chains the broker sends, and every CA as `ca list` shows
//! it. A home made by an earlier single-tier `init` (only `certs/ca.*`, its
//! own root) keeps working: every function here falls back to it.
//!
//! Path lengths: the root has no limit (a root rollover makes chains old
//! root → cross certificate → issuing CA → leaf), a cross certificate has
//! `pathlen:1`, an issuing CA `pathlen:0`.

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::prelude::parse_x509_certificate;

use super::inventory::Inventory;
use super::{Authority, CaError, der_to_pem, invalid};
use crate::home::{self, Home, write_public};

/// Whether the home has a root above its issuing CA.
pub fn is_two_tier(home: &Home) -> bool {
    home.root_cert().is_file()
}

/// Where the root key is, as `check` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootKeyState {
    /// `certs/root.key` is there.
    Present,
    /// It is not: `ca rotate` needs `--root-key FILE`.
    Offline,
    /// Single-tier home: no root.
    NoRoot,
}

pub fn root_key_state(home: &Home) -> RootKeyState {
    if !is_two_tier(home) {
        RootKeyState::NoRoot
    } else if home.root_key().is_file() {
        RootKeyState::Present
    } else {
        RootKeyState::Offline
    }
}

/// The current root's certificate.
pub fn root_cert(home: &Home) -> Result<CertificateDer<'static>, CaError> {
    let path = home.root_cert();
    CertificateDer::from_pem_file(&path)
        .map_err(|e| invalid(format!("{}: not a PEM certificate: {e}", path.display())))
}

/// The root as a signer: its key from `given`, else `certs/root.key`.
pub fn load_root(home: &Home, given: Option<&Path>) -> Result<Authority, CaError> {
    let key_path = given
        .map(Path::to_path_buf)
        .unwrap_or_else(|| home.root_key());
    if !key_path.is_file() {
        return Err(CaError::RootKeyMissing(key_path.display().to_string()));
    }
    let cert = home::read_to_string(&home.root_cert())?;
    let key = home::read_to_string(&key_path)?;
    Authority::from_pem(&cert, &key).map_err(|e| match e {
        CaError::Invalid(m) => invalid(format!(
            "{} with {}: {m}",
            home.root_cert().display(),
            key_path.display()
        )),
        other => other,
    })
}

/// `.pem` files of a folder, sorted.
pub(crate) fn pem_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "pem"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Whether a certificate is still within its validity.
fn unexpired(der: &[u8]) -> bool {
    parse_x509_certificate(der)
        .is_ok_and(|(_, c)| super::asn1_time(c.validity().not_after) > OffsetDateTime::now_utc())
}

/// Roots replaced by `ca rotate --root` and not retired (unexpired ones).
pub fn previous_roots(home: &Home) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let mut out = Vec::new();
    for path in pem_files(&home.root_previous_dir()) {
        let der = CertificateDer::from_pem_file(&path)
            .map_err(|e| invalid(format!("{}: not a PEM certificate: {e}", path.display())))?;
        if unexpired(&der) {
            out.push(der);
        }
    }
    Ok(out)
}

/// The issuing CAs replaced by `rotate` and not yet retired, oldest file
/// name first. Expired ones are skipped: nothing they signed is valid any more.
pub fn previous(home: &Home) -> Result<Vec<Authority>, CaError> {
    let mut out = Vec::new();
    for pem in pem_files(&home.ca_previous_dir()) {
        let key = pem.with_extension("key");
        let cert_text = home::read_to_string(&pem)?;
        let key_text = home::read_to_string(&key)?;
        match Authority::from_pem(&cert_text, &key_text) {
            Ok(a) => out.push(a),
            Err(CaError::Invalid(m)) if m.contains("has expired") => continue,
            Err(CaError::Invalid(m)) => return Err(invalid(format!("{}: {m}", pem.display()))),
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The previous roots: (fingerprint, file).
pub(crate) fn previous_root_files(home: &Home) -> Vec<(String, PathBuf, CertificateDer<'static>)> {
    pem_files(&home.root_previous_dir())
        .into_iter()
        .filter_map(|p| {
            let der = CertificateDer::from_pem_file(&p).ok()?;
            Some((super::fingerprint(&der), p, der))
        })
        .collect()
}

/// What partners trust (`certs/ca-bundle.pem`, and `ca.pem` in every
/// partner folder): the current root, every previous root not retired,
/// and any self-signed CA still trusted from a single-tier past. In a
/// single-tier home: the CA and every previous CA.
pub fn trust_bundle_pem(home: &Home) -> Result<String, CaError> {
    let mut certs: Vec<CertificateDer<'static>> = Vec::new();
    if is_two_tier(home) {
        certs.push(root_cert(home)?);
        certs.extend(previous_roots(home)?);
        for prev in previous(home)? {
            if prev.is_self_signed() {
                certs.push(prev.cert_der.clone());
            }
        }
    } else {
        certs.push(Authority::load(home)?.cert_der);
        certs.extend(previous(home)?.into_iter().map(|a| a.cert_der));
    }
    let mut seen = std::collections::HashSet::new();
    Ok(certs
        .into_iter()
        .filter(|c| seen.insert(c.as_ref().to_vec()))
        .map(|c| der_to_pem(&c))
        .collect())
}

/// Rewrites `certs/ca-bundle.pem` from the CA files.
pub fn write_trust_bundle(home: &Home) -> Result<(), CaError> {
    write_public(&home.ca_bundle(), trust_bundle_pem(home)?.as_bytes())?;
    Ok(())
}

/// What follows a leaf `ca` signed in the broker's server chain (and in a
/// partner's `ID.pem`): the issuing CA (and any intermediate above it),
/// then the cross certificate of a root rollover, if there is one, so a
/// peer holding only the previous root still builds a path.
pub fn chain_tail(home: &Home, ca: &Authority) -> Result<String, CaError> {
    let mut tail = ca.chain_to_send();
    if home.root_cross().is_file() {
        tail.push_str(&home::read_to_string(&home.root_cross())?);
    }
    Ok(tail)
}

/// The upstream-client CA, when the home has one (not in a single-tier home).
pub fn load_upstream_client_ca(home: &Home) -> Result<Option<Authority>, CaError> {
    let (cert, key) = (
        home.upstream_client_ca_cert(),
        home.upstream_client_ca_key(),
    );
    if !cert.is_file() {
        return Ok(None);
    }
    let text = home::read_to_string(&cert)?;
    let key_text = home::read_to_string(&key)?;
    Authority::from_pem(&text, &key_text)
        .map(Some)
        .map_err(|e| match e {
            CaError::Invalid(m) => invalid(format!("{}: {m}", cert.display())),
            other => other,
        })
}

/// The CA that signs the broker's upstream-client certificate and what
/// follows that leaf in `broker-client.pem`: the upstream-client CA and,
/// during the overlap of its rotation, its cross certificate (else nothing:
/// the upstream holds the CA). A single-tier home has no such CA: there
/// the issuing CA signs it, followed by its chain.
pub fn upstream_client_signer(home: &Home) -> Result<(Authority, String), CaError> {
    match load_upstream_client_ca(home)? {
        Some(ca) => {
            let tail = if home.upstream_client_cross().is_file() {
                home::read_to_string(&home.upstream_client_cross())?
            } else {
                String::new()
            };
            Ok((ca, tail))
        }
        None => {
            let ca = Authority::load(home)?;
            let tail = ca.chain_to_send();
            Ok((ca, tail))
        }
    }
}

/// Whether `der` names `ca`'s subject as its issuer.
pub(crate) fn issued_by(der: &[u8], ca: &[u8]) -> bool {
    let (Ok((_, c)), Ok((_, a))) = (parse_x509_certificate(der), parse_x509_certificate(ca)) else {
        return false;
    };
    c.issuer().as_raw() == a.subject().as_raw()
}

/// One CA as `ca list` shows it.
#[derive(Debug, serde::Serialize)]
pub struct CaSummary {
    pub fingerprint: String,
    /// `root`, `issuing` or `upstream-client`.
    pub kind: &'static str,
    /// `current` or `previous`.
    pub role: &'static str,
    /// Fingerprint of the CA that signed it (itself for a root).
    pub issuer: Option<String>,
    pub subject: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Usable partner certificates it signed (issuing CAs), issuing CAs in
    /// trust under it (roots).
    pub usable_certs: usize,
    /// For the current root: `present` or `offline`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<&'static str>,
}

fn subject_cn(der: &[u8]) -> String {
    parse_x509_certificate(der)
        .map(|(_, c)| {
            c.subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}

fn not_after(der: &[u8]) -> OffsetDateTime {
    parse_x509_certificate(der)
        .map(|(_, c)| super::asn1_time(c.validity().not_after))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Every CA of the home: roots, issuing CAs, upstream-client CAs, with
/// what still depends on each.
pub fn list(home: &Home) -> Result<Vec<CaSummary>, CaError> {
    let inventory = Inventory::load(home)?;
    let now = OffsetDateTime::now_utc();
    let current = Authority::load(home)?;
    let previous = previous(home)?;
    let issuing: Vec<(&Authority, &'static str)> = std::iter::once((&current, "current"))
        .chain(previous.iter().map(|a| (a, "previous")))
        .collect();
    let mut roots: Vec<(CertificateDer<'static>, &'static str)> = Vec::new();
    if is_two_tier(home) {
        roots.push((root_cert(home)?, "current"));
        roots.extend(
            previous_root_files(home)
                .into_iter()
                .map(|(_, _, d)| (d, "previous")),
        );
    }
    let parent = |der: &[u8]| -> Option<String> {
        roots
            .iter()
            .find(|(r, _)| issued_by(der, r))
            .map(|(r, _)| super::fingerprint(r))
    };
    let mut out = Vec::new();
    for (der, role) in &roots {
        out.push(CaSummary {
            fingerprint: super::fingerprint(der),
            kind: "root",
            role,
            issuer: Some(super::fingerprint(der)),
            subject: subject_cn(der),
            not_after: not_after(der),
            usable_certs: issuing
                .iter()
                .filter(|(a, _)| issued_by(&a.cert_der, der))
                .count(),
            key: (*role == "current").then(|| match root_key_state(home) {
                RootKeyState::Present => "present",
                _ => "offline",
            }),
        });
    }
    for (a, role) in &issuing {
        out.push(CaSummary {
            fingerprint: a.fingerprint.clone(),
            kind: "issuing",
            role,
            issuer: if a.is_self_signed() {
                Some(a.fingerprint.clone())
            } else {
                parent(&a.cert_der)
            },
            subject: subject_cn(&a.cert_der),
            not_after: a.not_after,
            usable_certs: inventory
                .certs
                .values()
                .filter(|c| c.ca_fingerprint == a.fingerprint && c.state(now).usable())
                .count(),
            key: None,
        });
    }
    for (path, role) in [
        (home.upstream_client_ca_cert(), "current"),
        (home.upstream_client_ca_previous(), "previous"),
    ] {
        if let Ok(der) = CertificateDer::from_pem_file(&path) {
            out.push(CaSummary {
                fingerprint: super::fingerprint(&der),
                kind: "upstream-client",
                role,
                issuer: Some(super::fingerprint(&der)),
                subject: subject_cn(&der),
                not_after: not_after(&der),
                usable_certs: 0,
                key: None,
            });
        }
    }
    Ok(out)
}
