//! The certificate revocation lists, `certs/crl.pem`: built from the
//! inventory (revoked certificates, and superseded ones past their overlap),
//! one CRL per trusted CA (the current one first, then each previous CA kept
//! by a rollover: rustls needs a CRL from every issuer), each signed by its
//! CA, with an increasing CRL number kept in `certs/crl.number` and a
//! next-update `crl_validity` ahead. Written atomically, as one file, under
//! the CA lock. The root's own CRL, `certs/root-crl.pem` (retired issuing
//! CAs), is built and written here too.

use std::time::Duration;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevokedCertParams, SerialNumber};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::prelude::parse_x509_certificate;

use super::inventory::Inventory;
use super::lock::CaLock;
use super::pki::{self, pem_files};
use super::{Authority, BACKDATE, CaError, invalid, is_self_issued};
use crate::home::{Home, read_to_string, write_public};

/// How long the root's CRL is valid: it is re-signed only when the root
/// key is at hand (`ca rotate`, `ca retire`, `ca migrate`).
pub const ROOT_CRL_VALIDITY: Duration = Duration::from_secs(365 * 86_400);

/// Reads the last CRL number (0 when none was issued).
pub fn last_number(home: &Home) -> Result<u64, CaError> {
    read_number(&home.crl_number())
}

/// Reads a CRL number file (0 when it does not exist).
pub fn read_number(path: &std::path::Path) -> Result<u64, CaError> {
    if !path.exists() {
        return Ok(0);
    }
    read_to_string(path)?
        .trim()
        .parse()
        .map_err(|_| invalid(format!("{} does not hold a number", path.display())))
}

/// DER integer bytes of a positive number.
fn positive_bytes(n: u64) -> Vec<u8> {
    let mut b: Vec<u8> = n
        .to_be_bytes()
        .iter()
        .copied()
        .skip_while(|&x| x == 0)
        .collect();
    if b.first().is_none_or(|&x| x >= 0x80) {
        b.insert(0, 0);
    }
    b
}

/// Builds and signs the CRL for `inventory` at `now`, returning its PEM.
pub fn build(
    ca: &Authority,
    inventory: &Inventory,
    number: u64,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<String, CaError> {
    let mut entries: Vec<_> = inventory
        .certs
        .values()
        .filter(|c| c.ca_fingerprint == ca.fingerprint && c.not_after > now)
        .filter_map(|c| c.revocation(now).map(|r| (c, r)))
        .collect();
    entries.sort_by(|a, b| a.0.serial.cmp(&b.0.serial));
    let mut revoked = Vec::new();
    for (cert, (at, reason)) in entries {
        let serial = hex::decode(&cert.serial)
            .map_err(|_| invalid(format!("inventory serial `{}` is not hex", cert.serial)))?;
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: at,
            reason_code: Some(reason.to_rcgen()),
            invalidity_date: None,
        });
    }
    sign(ca, revoked, number, now, validity)
}

/// Builds and signs a CRL of CA certificates `ca` signed (the root's CRL:
/// retired issuing CAs, reason cessationOfOperation).
pub fn build_ca_crl(
    ca: &Authority,
    revoked: Vec<(Vec<u8>, OffsetDateTime)>,
    number: u64,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<String, CaError> {
    let revoked = revoked
        .into_iter()
        .map(|(serial, at)| RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: at,
            reason_code: Some(rcgen::RevocationReason::CessationOfOperation),
            invalidity_date: None,
        })
        .collect();
    sign(ca, revoked, number, now, validity)
}

fn sign(
    ca: &Authority,
    revoked_certs: Vec<RevokedCertParams>,
    number: u64,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<String, CaError> {
    let params = CertificateRevocationListParams {
        this_update: now - BACKDATE,
        next_update: now
            + time::Duration::try_from(validity)
                .map_err(|_| invalid("crl_validity is too long"))?,
        crl_number: SerialNumber::from_slice(&positive_bytes(number)),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(ca.issuer())?;
    Ok(crl.pem()?)
}

/// Re-signs the CRLs (of `ca` and of every previous CA) from the inventory
/// with the next number and writes them. The caller holds the CA lock, so
/// the inventory read here is the one the CRL is written from.
pub fn refresh(
    home: &Home,
    _lock: &CaLock,
    ca: &Authority,
    validity: Duration,
) -> Result<u64, CaError> {
    let inventory = Inventory::load(home)?;
    let number = last_number(home)? + 1;
    let now = OffsetDateTime::now_utc();
    let mut pem = build(ca, &inventory, number, now, validity)?;
    for previous in pki::previous(home)? {
        if previous.fingerprint != ca.fingerprint {
            pem.push_str(&build(&previous, &inventory, number, now, validity)?);
        }
    }
    write_public(&home.crl_number(), format!("{number}\n").as_bytes())?;
    write_public(&home.crl(), pem.as_bytes())?;
    Ok(number)
}

/// Re-signs the root's CRL: every issuing CA the root signed that was
/// retired (`certs/ca-retired/`), revoked as `cessationOfOperation`.
pub fn write_root_crl(home: &Home, root: &Authority) -> Result<(), CaError> {
    let (_, root_x) = parse_x509_certificate(&root.cert_der)
        .map_err(|e| invalid(format!("the root certificate cannot be parsed: {e}")))?;
    let mut revoked = Vec::new();
    for path in pem_files(&home.ca_retired_dir()) {
        let Ok(der) = CertificateDer::from_pem_file(&path) else {
            continue;
        };
        let Ok((_, x)) = parse_x509_certificate(&der) else {
            continue;
        };
        if x.issuer().as_raw() != root_x.subject().as_raw() || is_self_issued(&der) {
            continue;
        }
        let at = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .map(OffsetDateTime::from)
            .unwrap_or_else(|_| OffsetDateTime::now_utc());
        revoked.push((x.raw_serial().to_vec(), at));
    }
    let number = read_number(&home.root_crl_number())? + 1;
    let pem = build_ca_crl(
        root,
        revoked,
        number,
        OffsetDateTime::now_utc(),
        ROOT_CRL_VALIDITY,
    )?;
    write_public(&home.root_crl_number(), format!("{number}\n").as_bytes())?;
    write_public(&home.root_crl(), pem.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::positive_bytes;

    #[test]
    fn crl_numbers_are_positive_der() {
        assert_eq!(positive_bytes(1), vec![1]);
        assert_eq!(positive_bytes(0x80), vec![0, 0x80]);
        assert_eq!(positive_bytes(0), vec![0]);
        assert_eq!(positive_bytes(0x1234), vec![0x12, 0x34]);
    }
}
