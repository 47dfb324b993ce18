//! CA rollover. `rotate` makes a new issuing CA (`certs/ca.pem`/`ca.key`),
//! keeps the old one as `certs/ca-previous/<fingerprint>.pem`/`.key` (its
//! key still signs its CRL), re-issues the broker's server and upstream
//! client certificates under the new CA, optionally cross-signs the new CA
//! with the old one (`certs/ca-cross.pem`, sent in the broker's chains so
//! peers that pinned the old root still verify the broker), and writes the
//! trust bundle `certs/ca-bundle.pem` (every trusted CA). `retire` removes a
//! previous CA from trust once no usable certificate depends on it.
//!
//! Like `lifecycle`, every operation builds everything in memory first and
//! then writes files atomically; keys are created mode 0600.

use std::path::PathBuf;

use rcgen::KeyPair;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::prelude::parse_x509_certificate;

use super::inventory::Inventory;
use super::lifecycle::{BrokerCerts, default_hostnames, sign_broker_certs};
use super::{Authority, CaError, crl, invalid};
use crate::config;
use crate::home::{self, Home, ensure_dir, write_key, write_public};

/// Length of the short fingerprint shown in listings.
pub const SHORT_FP: usize = 12;

/// The short form of a CA fingerprint.
pub fn short(fp: &str) -> &str {
    &fp[..fp.len().min(SHORT_FP)]
}

/// The CAs replaced by `rotate` and not yet retired, oldest file name first.
/// Expired ones are skipped: nothing they signed is valid any more.
pub fn previous(home: &Home) -> Result<Vec<Authority>, CaError> {
    let dir = home.ca_previous_dir();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(home::HomeError::io(&dir, e).into()),
    };
    let mut pems: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pem"))
        .collect();
    pems.sort();
    let mut out = Vec::new();
    for pem in pems {
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

/// The bundle's text: the current CA then every previous one.
fn bundle_pem(current: &Authority, previous: &[Authority]) -> String {
    std::iter::once(current)
        .chain(previous)
        .map(|a| super::der_to_pem(&a.cert_der))
        .collect()
}

/// Rewrites `certs/ca-bundle.pem` from the CA files.
pub fn write_bundle(home: &Home) -> Result<(), CaError> {
    let current = Authority::load(home)?;
    let previous = previous(home)?;
    write_public(
        &home.ca_bundle(),
        bundle_pem(&current, &previous).as_bytes(),
    )?;
    Ok(())
}

/// What `ca rotate` did.
#[derive(Debug)]
pub struct RotateReport {
    pub old_fingerprint: String,
    pub new_fingerprint: String,
    pub cross_signed: bool,
}

/// SAN names (DNS and IP) of the broker's current server certificate.
fn server_hostnames(home: &Home) -> Vec<String> {
    let Ok(der) = CertificateDer::from_pem_file(home.server_cert()) else {
        return default_hostnames();
    };
    let Ok((_, x)) = parse_x509_certificate(&der) else {
        return default_hostnames();
    };
    let mut names = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                x509_parser::extensions::GeneralName::DNSName(d) => names.push(d.to_string()),
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    if names.is_empty() {
        default_hostnames()
    } else {
        names
    }
}

/// `gatehouse ca rotate [--cross-sign]`.
pub fn rotate(home: &Home, cross_sign: bool) -> Result<RotateReport, CaError> {
    let gateway = config::load_gateway(home).map_err(|e| invalid(e.to_string()))?;
    let old = Authority::load(home)?;
    let old_cert_pem = home::read_to_string(&home.ca_cert())?;
    let old_key_pem = home::read_to_string(&home.ca_key())?;
    let now = OffsetDateTime::now_utc();
    let cn = format!("gatehouse CA {} {}", gateway.trust_domain, now.date());
    let (new, new_key_pem, mut params) = Authority::create_named(&cn)?;

    // The new CA's key and subject, signed by the old CA.
    let cross_pem = if cross_sign {
        let key = KeyPair::from_pem(&new_key_pem)
            .map_err(|e| invalid(format!("the new CA key cannot be read back: {e}")))?;
        params.not_after = params.not_after.min(old.not_after);
        params.serial_number = Some(super::random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, old.issuer())?;
        Some(cert.pem())
    } else {
        None
    };
    // The broker's own certificates, under the new CA; their chains carry the
    // cross certificate when there is one, so old-root peers still verify.
    let chain_tail = cross_pem.clone().unwrap_or_else(|| new.chain_pem.clone());
    let hostnames = server_hostnames(home);
    let BrokerCerts {
        server_key,
        server,
        client_key,
        client,
    } = sign_broker_certs(&new, &hostnames, &gateway.trust_domain, now)?;
    let mut previous = previous(home)?;
    previous.retain(|a| a.fingerprint != old.fingerprint);
    previous.push(Authority::from_pem(&old_cert_pem, &old_key_pem)?);

    // Write: the old CA first (never lost), then the new one, then the rest.
    let dir = home.ca_previous_dir();
    ensure_dir(&dir)?;
    write_key(&dir.join(format!("{}.key", old.fingerprint)), &old_key_pem)?;
    write_public(
        &dir.join(format!("{}.pem", old.fingerprint)),
        old_cert_pem.as_bytes(),
    )?;
    write_key(&home.ca_key(), &new_key_pem)?;
    write_public(&home.ca_cert(), new.chain_pem.as_bytes())?;
    write_public(&home.ca_bundle(), bundle_pem(&new, &previous).as_bytes())?;
    match &cross_pem {
        Some(pem) => write_public(&home.ca_cross(), pem.as_bytes())?,
        None => remove_if_exists(&home.ca_cross())?,
    }
    write_key(&home.server_key(), &server_key.serialize_pem())?;
    write_public(
        &home.server_cert(),
        format!("{}{chain_tail}", server.pem).as_bytes(),
    )?;
    write_key(&home.broker_client_key(), &client_key.serialize_pem())?;
    write_public(
        &home.broker_client_cert(),
        format!("{}{chain_tail}", client.pem).as_bytes(),
    )?;
    crl::refresh(home, &new, gateway.ca.crl_validity)?;
    Ok(RotateReport {
        old_fingerprint: old.fingerprint,
        new_fingerprint: new.fingerprint,
        cross_signed: cross_sign,
    })
}

fn remove_if_exists(path: &std::path::Path) -> Result<(), CaError> {
    crate::durable_file::remove_file(path).map_err(|e| home::HomeError::io(path, e).into())
}

/// Finds a previous CA by fingerprint prefix, or `previous` when there is one.
fn find_previous(home: &Home, which: &str) -> Result<Authority, CaError> {
    let current = Authority::load(home)?;
    let which = which.trim().to_ascii_lowercase().replace(':', "");
    if which.len() >= 4 && current.fingerprint.starts_with(&which) {
        return Err(invalid(format!(
            "{} is the current issuing CA; run `gatehouse ca rotate` first, then retire the old one",
            short(&current.fingerprint)
        )));
    }
    let mut list = previous(home)?;
    let listed = |l: &[Authority]| {
        if l.is_empty() {
            "none".to_string()
        } else {
            l.iter()
                .map(|a| short(&a.fingerprint).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    if which == "previous" {
        return match list.len() {
            1 => Ok(list.remove(0)),
            0 => Err(invalid(
                "there is no previous CA to retire (see `gatehouse ca list`)",
            )),
            _ => Err(invalid(format!(
                "several previous CAs ({}); name one by fingerprint prefix",
                listed(&list)
            ))),
        };
    }
    if which.len() < 4 || !which.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(format!(
            "`{which}` is not a CA fingerprint prefix (at least 4 hex digits) or `previous`"
        )));
    }
    let found: Vec<usize> = list
        .iter()
        .enumerate()
        .filter(|(_, a)| a.fingerprint.starts_with(&which))
        .map(|(i, _)| i)
        .collect();
    match found.as_slice() {
        [i] => Ok(list.remove(*i)),
        [] => Err(invalid(format!(
            "no previous CA has fingerprint {which}… (previous CAs: {})",
            listed(&list)
        ))),
        _ => Err(invalid(format!(
            "`{which}` matches several previous CAs; give more of the fingerprint"
        ))),
    }
}

/// `gatehouse ca retire OLD`: refuses while usable certificates from OLD
/// exist (listing serial and partner); else removes it from trust. Its
/// certificate moves to `certs/ca-retired/`, its key is deleted. Returns the
/// retired CA's fingerprint.
pub fn retire(home: &Home, which: &str) -> Result<String, CaError> {
    let gateway = config::load_gateway(home).map_err(|e| invalid(e.to_string()))?;
    let old = find_previous(home, which)?;
    let inventory = Inventory::load(home)?;
    let now = OffsetDateTime::now_utc();
    let dependents: Vec<String> = inventory
        .sorted()
        .into_iter()
        .filter(|c| c.ca_fingerprint == old.fingerprint && c.state(now).usable())
        .map(|c| format!("{} ({})", c.serial, c.partner))
        .collect();
    if !dependents.is_empty() {
        return Err(CaError::CaInUse {
            fingerprint: short(&old.fingerprint).to_string(),
            list: dependents.join(", "),
        });
    }
    let current = Authority::load(home)?;
    // The broker's chains drop a cross certificate signed by the retired CA.
    let cross_from_old = CertificateDer::from_pem_file(home.ca_cross())
        .ok()
        .is_some_and(|der| issued_by(&der, &old));
    let mut remaining = previous(home)?;
    remaining.retain(|a| a.fingerprint != old.fingerprint);

    let src = home
        .ca_previous_dir()
        .join(format!("{}.pem", old.fingerprint));
    let retired = home.ca_retired_dir();
    ensure_dir(&retired)?;
    write_public(
        &retired.join(format!("{}.pem", old.fingerprint)),
        super::der_to_pem(&old.cert_der).as_bytes(),
    )?;
    remove_if_exists(&src)?;
    remove_if_exists(&src.with_extension("key"))?;
    write_public(
        &home.ca_bundle(),
        bundle_pem(&current, &remaining).as_bytes(),
    )?;
    if cross_from_old {
        for path in [home.server_cert(), home.broker_client_cert()] {
            let leaf = CertificateDer::from_pem_file(&path)
                .map_err(|e| invalid(format!("{}: not a PEM certificate: {e}", path.display())))?;
            write_public(
                &path,
                format!("{}{}", super::der_to_pem(&leaf), current.chain_pem).as_bytes(),
            )?;
        }
        remove_if_exists(&home.ca_cross())?;
    }
    crl::refresh(home, &current, gateway.ca.crl_validity)?;
    Ok(old.fingerprint)
}

/// Whether `der` names `ca`'s subject as its issuer.
fn issued_by(der: &[u8], ca: &Authority) -> bool {
    let (Ok((_, c)), Ok((_, a))) = (
        parse_x509_certificate(der),
        parse_x509_certificate(&ca.cert_der),
    ) else {
        return false;
    };
    c.issuer().as_raw() == a.subject().as_raw()
}

/// One CA as `ca list` shows it.
#[derive(Debug, serde::Serialize)]
pub struct CaSummary {
    pub fingerprint: String,
    pub role: &'static str,
    pub subject: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub usable_certs: usize,
}

/// The trusted CAs: the current one, then the previous ones.
pub fn list(home: &Home) -> Result<Vec<CaSummary>, CaError> {
    let inventory = Inventory::load(home)?;
    let now = OffsetDateTime::now_utc();
    let current = Authority::load(home)?;
    let previous = previous(home)?;
    let summary = |a: &Authority, role| CaSummary {
        fingerprint: a.fingerprint.clone(),
        role,
        subject: parse_x509_certificate(&a.cert_der)
            .map(|(_, c)| {
                c.subject()
                    .iter_common_name()
                    .next()
                    .and_then(|cn| cn.as_str().ok())
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default(),
        not_after: a.not_after,
        usable_certs: inventory
            .certs
            .values()
            .filter(|c| c.ca_fingerprint == a.fingerprint && c.state(now).usable())
            .count(),
    };
    Ok(std::iter::once(summary(&current, "current"))
        .chain(previous.iter().map(|a| summary(a, "previous")))
        .collect())
}
