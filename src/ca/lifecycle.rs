//! The partner-certificate operations the CLI and self-service renewal
//! use: issue a partner certificate (from a generated key or a CSR), renew
//! it with an overlap (all of a partner's active certificates, or exactly
//! one serial from a CSR held in memory, for self-service renewal), revoke,
//! and re-sign the CRL. Each one prepares everything in memory first and
//! then writes files atomically, so a refused command leaves nothing
//! half-done, and holds the CA lock from its first read of the inventory to
//! its last write (see `lock`). Setting up a home (`init`) and the broker's
//! own certificates (`broker_certs`) have modules of their own, re-exported
//! here so that the CLI finds every certificate command in one place.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

use super::inventory::{
    CertState, Inventory, IssuedCert, RecordStatus, RevocationReason, write_record,
};
use super::lock::{self, CaLock};
use super::{Authority, BACKDATE, CaError, LeafKind, Signed, crl, csr, invalid, new_key, pki};
use crate::config::{self, GatewayConfig};
use crate::home::{self, Home, ensure_dir, write_key, write_public};

pub use super::broker_certs::{ServerRenewOptions, ServerRenewReport, server_renew};
pub use super::init::{InitOptions, InitReport, init};

/// Leaf followed by what a peer needs of the CA chain (the issuing CA and
/// any intermediate above it; never a self-signed root).
pub fn chain_pem(leaf: &Signed, ca: &Authority) -> String {
    format!("{}{}", leaf.pem, ca.chain_to_send())
}

/// Options shared by `cert issue` and `cert renew`.
#[derive(Debug, Clone, Default)]
pub struct IssueOptions {
    pub csr: Option<PathBuf>,
    pub days: Option<u32>,
    pub out: Option<PathBuf>,
    /// Also write `ID.p12` (key + chain) and its password in `ID.p12.pass`.
    pub p12: bool,
    /// PKCS#12 with 3DES and a SHA-1 MAC, for Java 8-era readers.
    pub p12_legacy: bool,
}

/// What `cert issue` / `cert renew` produced.
#[derive(Debug)]
pub struct IssueReport {
    pub record: IssuedCert,
    pub out_dir: PathBuf,
    pub key_written: bool,
    pub p12_written: bool,
    pub superseded: Vec<String>,
}

/// The loaded context every issuing command needs.
struct Context {
    gateway: GatewayConfig,
    ca: Authority,
    partner_name: String,
}

fn context(home: &Home, partner: &str) -> Result<Context, CaError> {
    config::validate_partner_id(partner).map_err(|e| invalid(e.to_string()))?;
    let gateway = config::load_gateway(home).map_err(|e| invalid(e.to_string()))?;
    let path = home.partner_file(partner);
    if !path.is_file() {
        return Err(CaError::UnknownPartner(partner.to_string()));
    }
    let text = home::read_to_string(&path)?;
    let p = config::parse_partner(&path, &text, &gateway).map_err(|e| invalid(e.to_string()))?;
    let ca = Authority::load(home)?;
    Ok(Context {
        gateway,
        ca,
        partner_name: p.name,
    })
}

/// The public key to certify: the CSR's (checked), or a fresh key of ours.
enum Subject {
    Csr(rcgen::SubjectPublicKeyInfo),
    Generated(KeyPair),
}

impl Subject {
    fn from_options(opts: &IssueOptions) -> Result<Subject, CaError> {
        match &opts.csr {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| home::HomeError::io(path, e))?;
                Ok(Subject::Csr(csr::verified_public_key(&bytes).map_err(
                    |e| invalid(format!("{}: {e}", path.display())),
                )?))
            }
            None => Ok(Subject::Generated(new_key()?)),
        }
    }
    fn from_csr_pem(pem: &[u8]) -> Result<Subject, CaError> {
        Ok(Subject::Csr(csr::verified_public_key(pem)?))
    }
    fn key(&self) -> &dyn PublicKeyData {
        match self {
            Subject::Csr(spki) => spki,
            Subject::Generated(k) => k,
        }
    }
}

struct DynKey<'a>(&'a dyn PublicKeyData);
impl PublicKeyData for DynKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0.der_bytes()
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.0.algorithm()
    }
}

/// Validity for a new partner certificate.
fn validity(
    ctx: &Context,
    days: Option<u32>,
    now: OffsetDateTime,
) -> Result<(OffsetDateTime, OffsetDateTime), CaError> {
    let days = days.unwrap_or(ctx.gateway.ca.default_days);
    if days == 0 {
        return Err(invalid("--days must be at least 1"));
    }
    let not_after = now + time::Duration::days(i64::from(days));
    if not_after > ctx.ca.not_after {
        return Err(invalid(format!(
            "--days {days} would outlive the CA, which expires {}; choose fewer days",
            crate::timefmt::rfc3339(ctx.ca.not_after)
        )));
    }
    Ok((now - BACKDATE, not_after))
}

/// What `issue_inner` wrote.
struct Written {
    record: IssuedCert,
    out_dir: PathBuf,
    key_written: bool,
    p12_written: bool,
}

/// Signs and records a partner certificate; writes the files for the
/// partner: `ID.pem` (leaf + issuing CA), `ID.key` (when we made the key),
/// `ca.pem` (the root(s) to trust), and with `--p12` `ID.p12` + `ID.p12.pass`.
fn issue_inner(
    home: &Home,
    lock: &CaLock,
    partner: &str,
    opts: &IssueOptions,
    ctx: &Context,
    now: OffsetDateTime,
) -> Result<Written, CaError> {
    let _ = lock;
    if (opts.p12 || opts.p12_legacy) && opts.csr.is_some() {
        return Err(invalid(
            "--p12 needs the private key, which a CSR does not give: issue without --csr, or let the partner build its PKCS#12 file itself",
        ));
    }
    let subject = Subject::from_options(opts)?;
    let (record, signed) = sign_partner(partner, &subject, opts.days, ctx, now)?;
    let out_dir = opts.out.clone().unwrap_or_else(|| home.client_dir(partner));
    ensure_dir(&out_dir)?;
    let chain = chain_pem(&signed, &ctx.ca);
    let trust = pki::trust_bundle_pem(home)?;
    // Partner files first: if they cannot be written, nothing is recorded.
    let mut p12_written = false;
    let key_written = if let Subject::Generated(key) = &subject {
        write_key(
            &out_dir.join(format!("{partner}.key")),
            &key.serialize_pem(),
        )?;
        if opts.p12 || opts.p12_legacy {
            let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_slice_iter(chain.as_bytes())
                .filter_map(Result::ok)
                .collect();
            let password = super::p12::random_password();
            let bytes = super::p12::build(
                partner,
                &key.serialize_der(),
                &certs,
                &password,
                opts.p12_legacy,
            )?;
            home::write_atomic(
                &out_dir.join(format!("{partner}.p12")),
                &bytes,
                home::KEY_MODE,
            )?;
            write_key(
                &out_dir.join(format!("{partner}.p12.pass")),
                &format!("{password}\n"),
            )?;
            p12_written = true;
        }
        true
    } else {
        false
    };
    write_public(&out_dir.join(format!("{partner}.pem")), chain.as_bytes())?;
    write_public(&out_dir.join("ca.pem"), trust.as_bytes())?;
    write_record(home, &record, Some(&signed.pem))?;
    Ok(Written {
        record,
        out_dir,
        key_written,
        p12_written,
    })
}

/// Signs a partner certificate for `subject`'s key under the current CA
/// and builds its inventory record (nothing is written).
fn sign_partner(
    partner: &str,
    subject: &Subject,
    days: Option<u32>,
    ctx: &Context,
    now: OffsetDateTime,
) -> Result<(IssuedCert, Signed), CaError> {
    let (nb, na) = validity(ctx, days, now)?;
    let signed = ctx.ca.sign_leaf(
        LeafKind::Partner {
            trust_domain: &ctx.gateway.trust_domain,
            id: partner,
            name: &ctx.partner_name,
        },
        &DynKey(subject.key()),
        nb,
        na,
    )?;
    let record = IssuedCert {
        serial: signed.serial.clone(),
        partner: partner.to_string(),
        fingerprint: signed.fingerprint.clone(),
        ca_fingerprint: ctx.ca.fingerprint.clone(),
        issued_at: now,
        not_before: nb,
        not_after: na,
        status: RecordStatus::Active,
        superseded_by: None,
        overlap_until: None,
        revoked_at: None,
        reason: None,
    };
    Ok((record, signed))
}

/// `gatehouse cert issue ID [--csr FILE] [--days N] [--out DIR]`.
pub fn issue(home: &Home, partner: &str, opts: &IssueOptions) -> Result<IssueReport, CaError> {
    let ctx = context(home, partner)?;
    let lock = lock::lock(home)?;
    let w = issue_inner(home, &lock, partner, opts, &ctx, OffsetDateTime::now_utc())?;
    Ok(IssueReport {
        record: w.record,
        out_dir: w.out_dir,
        key_written: w.key_written,
        p12_written: w.p12_written,
        superseded: Vec::new(),
    })
}

/// Which certificates a renewal supersedes.
#[derive(Debug, Clone)]
pub enum Supersede {
    /// Every active certificate of the partner (`cert renew`).
    AllActive,
    /// Exactly this one, which must be the partner's and active (self-service
    /// renewal: the certificate that authenticated the request).
    Serial(String),
}

/// `gatehouse cert renew ID [--csr FILE] [--overlap D]`: issues a successor
/// and marks the partner's active certificates superseded; they stay valid
/// for `overlap`, then count as revoked.
pub fn renew(
    home: &Home,
    partner: &str,
    opts: &IssueOptions,
    overlap: Option<Duration>,
) -> Result<IssueReport, CaError> {
    let ctx = context(home, partner)?;
    let overlap = overlap_of(&ctx, overlap)?;
    // Under the lock from the read of the predecessors to the last write: a
    // concurrent revoke or renewal runs entirely before or after.
    let lock = lock::lock(home)?;
    let now = OffsetDateTime::now_utc();
    let predecessors = predecessors(home, &lock, partner, &Supersede::AllActive, now)?;
    let w = issue_inner(home, &lock, partner, opts, &ctx, now)?;
    let superseded = supersede(home, &lock, predecessors, &w.record, overlap, now)?;
    Ok(IssueReport {
        record: w.record,
        out_dir: w.out_dir,
        key_written: w.key_written,
        p12_written: w.p12_written,
        superseded,
    })
}

/// What a renewal from a CSR produced (nothing is written outside the home).
#[derive(Debug)]
pub struct CsrRenewal {
    pub record: IssuedCert,
    /// The new leaf followed by the issuing CA chain.
    pub chain_pem: String,
    pub superseded: Vec<String>,
}

/// Renews from a PEM CSR held in memory (self-service renewal): signs only
/// the CSR's public key under the current CA, records the new certificate,
/// and supersedes `which` with the configured (or given) overlap. `days`
/// defaults to `[ca] default_days`.
pub fn renew_from_csr(
    home: &Home,
    partner: &str,
    csr_pem: &[u8],
    which: &Supersede,
    days: Option<u32>,
    overlap: Option<Duration>,
) -> Result<CsrRenewal, CaError> {
    let subject = Subject::from_csr_pem(csr_pem)?;
    let ctx = context(home, partner)?;
    let overlap = overlap_of(&ctx, overlap)?;
    let lock = lock::lock(home)?;
    let now = OffsetDateTime::now_utc();
    let predecessors = predecessors(home, &lock, partner, which, now)?;
    let (record, signed) = sign_partner(partner, &subject, days, &ctx, now)?;
    write_record(home, &record, Some(&signed.pem))?;
    let superseded = supersede(home, &lock, predecessors, &record, overlap, now)?;
    Ok(CsrRenewal {
        chain_pem: chain_pem(&signed, &ctx.ca),
        record,
        superseded,
    })
}

/// A partner's certificate from a PEM CSR held in memory (enrolment over
/// EST): signs only the CSR's public key under the current CA with
/// `[ca] default_days`, records it, and supersedes nothing (the partner's
/// other certificates stay as they are).
pub fn enrol_from_csr(home: &Home, partner: &str, csr_pem: &[u8]) -> Result<CsrRenewal, CaError> {
    let subject = Subject::from_csr_pem(csr_pem)?;
    let ctx = context(home, partner)?;
    let _lock = lock::lock(home)?;
    let now = OffsetDateTime::now_utc();
    let (record, signed) = sign_partner(partner, &subject, None, &ctx, now)?;
    write_record(home, &record, Some(&signed.pem))?;
    Ok(CsrRenewal {
        chain_pem: chain_pem(&signed, &ctx.ca),
        record,
        superseded: Vec::new(),
    })
}

/// The certificates a renewal will supersede (checked before signing).
fn predecessors(
    home: &Home,
    _lock: &CaLock,
    partner: &str,
    which: &Supersede,
    now: OffsetDateTime,
) -> Result<Vec<IssuedCert>, CaError> {
    let inventory = Inventory::load(home)?;
    match which {
        Supersede::AllActive => Ok(inventory
            .for_partner(partner)
            .into_iter()
            .filter(|c| c.state(now) == CertState::Active)
            .cloned()
            .collect()),
        Supersede::Serial(serial) => {
            let rec = inventory
                .get(serial)
                .ok_or_else(|| CaError::UnknownSerial(serial.clone()))?;
            if rec.partner != partner {
                return Err(invalid(format!(
                    "certificate {serial} belongs to partner {}, not {partner}",
                    rec.partner
                )));
            }
            match rec.state(now) {
                CertState::Active => Ok(vec![rec.clone()]),
                state => Err(CaError::NotRenewable {
                    serial: serial.clone(),
                    state: state.to_string(),
                }),
            }
        }
    }
}

/// The overlap to give superseded certificates (checked before signing).
fn overlap_of(ctx: &Context, overlap: Option<Duration>) -> Result<time::Duration, CaError> {
    time::Duration::try_from(overlap.unwrap_or(ctx.gateway.ca.overlap))
        .map_err(|_| invalid("--overlap is too long"))
}

/// Marks `predecessors` superseded by `record`, valid until the overlap ends.
fn supersede(
    home: &Home,
    _lock: &CaLock,
    predecessors: Vec<IssuedCert>,
    record: &IssuedCert,
    overlap: time::Duration,
    now: OffsetDateTime,
) -> Result<Vec<String>, CaError> {
    let mut superseded = Vec::new();
    for mut old in predecessors {
        old.status = RecordStatus::Superseded;
        old.superseded_by = Some(record.serial.clone());
        old.overlap_until = Some((now + overlap).min(old.not_after));
        write_record(home, &old, None)?;
        superseded.push(old.serial);
    }
    Ok(superseded)
}

/// Normalizes a serial as typed: hex, any case, colons allowed.
pub fn normalize_serial(s: &str) -> Result<String, CaError> {
    let hexed: String = s
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hexed.is_empty() || hexed.len() > 40 || !hexed.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(format!(
            "`{s}` is not a certificate serial (hex, as `cert list` shows it)"
        )));
    }
    Ok(hexed)
}

/// Revokes certificates by serial and re-signs the CRL. Returns the serials
/// newly revoked (already revoked ones are left as they are).
pub fn revoke(
    home: &Home,
    serials: &[String],
    reason: RevocationReason,
) -> Result<Vec<String>, CaError> {
    let serials = serials
        .iter()
        .map(|s| normalize_serial(s))
        .collect::<Result<Vec<_>, _>>()?;
    let lock = lock::lock(home)?;
    revoke_locked(home, &lock, &serials, reason)
}

fn revoke_locked(
    home: &Home,
    lock: &CaLock,
    serials: &[String],
    reason: RevocationReason,
) -> Result<Vec<String>, CaError> {
    let gateway = config::load_gateway(home).map_err(|e| invalid(e.to_string()))?;
    let ca = Authority::load(home)?;
    // Read under the lock: what a concurrent renewal wrote is seen here.
    let inventory = Inventory::load(home)?;
    let now = OffsetDateTime::now_utc();
    let mut changed = Vec::new();
    let mut records = Vec::new();
    for serial in serials {
        let rec = inventory
            .get(serial)
            .ok_or_else(|| CaError::UnknownSerial(serial.clone()))?;
        if rec.status == RecordStatus::Revoked {
            continue;
        }
        let mut rec = rec.clone();
        rec.status = RecordStatus::Revoked;
        rec.revoked_at = Some(now);
        rec.reason = Some(reason);
        records.push(rec);
    }
    for rec in records {
        write_record(home, &rec, None)?;
        changed.push(rec.serial);
    }
    crl::refresh(home, lock, &ca, gateway.ca.crl_validity)?;
    Ok(changed)
}

/// Revokes every certificate of a partner that is still usable (chosen
/// under the lock, so one a concurrent renewal just issued is included).
pub fn revoke_partner(
    home: &Home,
    partner: &str,
    reason: RevocationReason,
) -> Result<Vec<String>, CaError> {
    config::validate_partner_id(partner).map_err(|e| invalid(e.to_string()))?;
    let lock = lock::lock(home)?;
    let inventory = Inventory::load(home)?;
    let now = OffsetDateTime::now_utc();
    let certs: Vec<_> = inventory.for_partner(partner);
    if certs.is_empty() && !home.partner_file(partner).is_file() {
        return Err(CaError::UnknownPartner(partner.to_string()));
    }
    let serials: Vec<String> = certs
        .into_iter()
        .filter(|c| c.state(now).usable())
        .map(|c| c.serial.clone())
        .collect();
    revoke_locked(home, &lock, &serials, reason)
}

/// `gatehouse cert crl --refresh`: re-signs the CRL now.
pub fn refresh_crl(home: &Home) -> Result<u64, CaError> {
    let gateway = config::load_gateway(home).map_err(|e| invalid(e.to_string()))?;
    let lock = lock::lock(home)?;
    let ca = Authority::load(home)?;
    crl::refresh(home, &lock, &ca, gateway.ca.crl_validity)
}

/// Reads a PEM file's first certificate as (serial, not_after).
pub fn read_cert_summary(path: &Path) -> Result<(String, OffsetDateTime), CaError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_file(path)
        .map_err(|e| invalid(format!("{}: not a PEM certificate: {e}", path.display())))?;
    let (_, x) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| invalid(format!("{}: cannot parse: {e}", path.display())))?;
    Ok((
        super::serial_hex(&x),
        super::asn1_time(x.validity().not_after),
    ))
}

/// Self-service renewal, answer lost and retried with another key:
/// replaces `successor`, the never-used certificate issued to renew
/// `predecessor`, by one for the CSR's key. Signs first, then points the
/// predecessor at the new certificate, then revokes `successor` (reason
/// superseded) and re-signs the CRL; a crash in between leaves at worst an
/// extra active certificate of the same partner, never a usable revoked one.
/// `successor` must still be active and the predecessor still point at it.
pub fn replace_successor(
    home: &Home,
    partner: &str,
    csr_pem: &[u8],
    predecessor: &str,
    successor: &str,
    days: Option<u32>,
) -> Result<CsrRenewal, CaError> {
    let subject = Subject::from_csr_pem(csr_pem)?;
    let ctx = context(home, partner)?;
    // Under the lock from the read of both records to the CRL: a concurrent
    // revoke or renewal runs entirely before or after.
    let lock = lock::lock(home)?;
    let now = OffsetDateTime::now_utc();
    let inventory = Inventory::load(home)?;
    let (Some(old), Some(unused)) = (inventory.get(predecessor), inventory.get(successor)) else {
        return Err(CaError::UnknownSerial(format!(
            "{predecessor} or {successor}"
        )));
    };
    let current = old.partner == partner
        && unused.partner == partner
        && old.superseded_by.as_deref() == Some(successor)
        && unused.state(now) == CertState::Active;
    if !current {
        return Err(CaError::NotRenewable {
            serial: predecessor.to_string(),
            state: format!("{} (renewed by {successor}, now changed)", old.state(now)),
        });
    }
    let (record, signed) = sign_partner(partner, &subject, days, &ctx, now)?;
    write_record(home, &record, Some(&signed.pem))?;
    let mut old = old.clone();
    old.superseded_by = Some(record.serial.clone());
    write_record(home, &old, None)?;
    let mut unused = unused.clone();
    unused.status = RecordStatus::Revoked;
    unused.revoked_at = Some(now);
    unused.reason = Some(RevocationReason::Superseded);
    unused.superseded_by = Some(record.serial.clone());
    write_record(home, &unused, None)?;
    crl::refresh(home, &lock, &ctx.ca, ctx.gateway.ca.crl_validity)?;
    Ok(CsrRenewal {
        chain_pem: chain_pem(&signed, &ctx.ca),
        record,
        superseded: vec![unused.serial],
    })
}

/// An issued certificate as renewal delivered it: its PEM from the
/// inventory followed by the CA chain, when the current CA issued it (else
/// the leaf alone; the broker still trusts a previous CA during a rollover).
pub fn issued_chain(home: &Home, rec: &IssuedCert) -> Result<String, CaError> {
    let leaf = home::read_to_string(&home.issued_dir().join(format!("{}.pem", rec.serial)))?;
    let ca = Authority::load(home)?;
    if ca.fingerprint == rec.ca_fingerprint {
        Ok(format!("{leaf}{}", ca.chain_to_send()))
    } else {
        Ok(leaf)
    }
}
