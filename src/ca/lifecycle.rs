//! The CA operations the CLI exposes: set up a home (`init`), issue a
//! partner certificate (from a generated key or a CSR), renew it with an
//! overlap (all of a partner's active certificates, or exactly one serial
//! from a CSR held in memory, for self-service renewal), revoke, re-sign the
//! CRL, and re-issue the broker's own certificates. Each one prepares
//! everything in memory first and then writes files atomically, so a refused
//! command leaves nothing half-done, and holds the CA lock from its first
//! read of the inventory to its last write (see `lock`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{KeyPair, PublicKeyData};
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

use super::inventory::{
    CertState, Inventory, IssuedCert, RecordStatus, RevocationReason, write_record,
};
use super::lock::{self, CaLock};
use super::{
    Authority, BACKDATE, BROKER_CERT_DAYS, CaError, ISSUING_VALIDITY_DAYS, LeafKind,
    ROOT_VALIDITY_DAYS, Signed, UPSTREAM_CLIENT_CA_DAYS, crl, csr, invalid, new_key,
};
use crate::config::{self, GatewayConfig, validate_trust_domain};
use crate::home::{self, Home, ensure_dir, write_key, write_public};

/// Options of `gatehouse init`.
#[derive(Debug, Default, Clone)]
pub struct InitOptions {
    pub trust_domain: Option<String>,
    pub hostnames: Vec<String>,
    pub force: bool,
    pub ca_cert: Option<PathBuf>,
    pub ca_key: Option<PathBuf>,
}

/// What `init` did.
#[derive(Debug)]
pub struct InitReport {
    pub trust_domain: String,
    pub adopted: bool,
    pub ca_fingerprint: String,
    pub config_written: bool,
}

/// Default server-certificate names.
pub fn default_hostnames() -> Vec<String> {
    vec!["localhost".to_string(), "127.0.0.1".to_string()]
}

/// `gatehouse init`: creates the root, the issuing CA under it (or adopts
/// an existing CA as the issuing CA), the upstream-client CA, the broker's
/// certificates, the journal signing key, the upstream identity signing
/// key, `gatehouse.toml`, empty CRLs and the folders. With `--force` over an
/// existing home, the replaced CAs' certificates are marked superseded (no
/// overlap) in the inventory: none of them stays usable.
pub fn init(home: &Home, opts: &InitOptions) -> Result<InitReport, CaError> {
    let existing_cfg = if home.config_file().is_file() {
        Some(config::load_gateway(home).map_err(|e| invalid(e.to_string()))?)
    } else {
        None
    };
    let trust_domain = opts
        .trust_domain
        .clone()
        .or_else(|| existing_cfg.as_ref().map(|c| c.trust_domain.clone()))
        .unwrap_or_else(|| "gatehouse.local".to_string());
    validate_trust_domain(&trust_domain).map_err(invalid)?;
    if (home.ca_cert().exists() || home.ca_key().exists()) && !opts.force {
        return Err(CaError::AlreadyInitialized(
            home.ca_cert().display().to_string(),
        ));
    }
    let hostnames = if opts.hostnames.is_empty() {
        default_hostnames()
    } else {
        opts.hostnames.clone()
    };

    // Everything is built in memory before anything is written.
    // The root: ours (key written), or the top of an adopted CA's chain.
    let (ca, ca_cert_pem, ca_key_pem, root_pem, root_key_pem, adopted) =
        match (&opts.ca_cert, &opts.ca_key) {
            (Some(c), Some(k)) => {
                let cert_pem = home::read_to_string(c)?;
                let key_pem = home::read_to_string(k)?;
                let ca = Authority::from_pem(&cert_pem, &key_pem)
                    .map_err(|e| invalid(format!("cannot adopt {}: {e}", c.display())))?;
                let chain: Vec<_> =
                    rustls_pki_types::CertificateDer::pem_slice_iter(ca.chain_pem.as_bytes())
                        .filter_map(Result::ok)
                        .collect();
                let top = chain
                    .iter()
                    .find(|d| super::is_self_issued(d))
                    .or(chain.last())
                    .map(|d| super::der_to_pem(d))
                    .unwrap_or_default();
                let chain = ca.chain_pem.clone();
                (ca, chain, key_pem, top, None, true)
            }
            (None, None) => {
                let (root, root_key, _) = Authority::create_ca(
                    &super::ca_name("root CA", &trust_domain),
                    None,
                    ROOT_VALIDITY_DAYS,
                    None,
                )?;
                let (ca, key_pem, _) = Authority::create_ca(
                    &super::ca_name("issuing CA", &trust_domain),
                    Some(0),
                    ISSUING_VALIDITY_DAYS,
                    Some(&root),
                )?;
                let chain = ca.chain_pem.clone();
                let root_pem = super::der_to_pem(&root.cert_der);
                (ca, chain, key_pem, root_pem, Some((root, root_key)), false)
            }
            _ => return Err(invalid("--ca-cert and --ca-key go together")),
        };
    let (upstream_ca, upstream_ca_key, _) = Authority::create_ca(
        &super::ca_name("upstream-client CA", &trust_domain),
        None,
        UPSTREAM_CLIENT_CA_DAYS,
        None,
    )?;
    let now = OffsetDateTime::now_utc();
    let (server_key, server) = sign_server_cert(&ca, &hostnames, now)?;
    let (client_key, client) = sign_broker_client_cert(&upstream_ca, &trust_domain, now)?;
    let journal_key = new_key()?;
    let crl_validity = existing_cfg
        .as_ref()
        .map(|c| c.ca.crl_validity)
        .unwrap_or(Duration::from_secs(7 * 86_400));
    let crl_pem = crl::build(&ca, &Inventory::default(), 1, now, crl_validity)?;

    for dir in [
        home.root().to_path_buf(),
        home.certs_dir(),
        home.issued_dir(),
        home.partners_dir(),
        home.data_dir(),
    ] {
        ensure_dir(&dir)?;
    }
    let lock = lock::lock(home)?;
    if opts.force {
        // The replaced CAs' certificates no longer chain to anything the
        // broker trusts: mark them superseded, with no overlap, so that the
        // inventory says so too. They stay on file for the record.
        supersede_everything(home, &lock, now)?;
        // Earlier CAs kept by a rollover belong to the replaced lineage:
        // out of trust (their files move to ca-retired/ for the record).
        retire_all_previous(home)?;
        for f in [
            home.root_cross(),
            home.upstream_client_cross(),
            home.upstream_client_ca_previous(),
            home.root_crl_number(),
            home.crl_number(),
        ] {
            remove_if_exists(&f)?;
        }
        if root_key_pem.is_none() {
            remove_if_exists(&home.root_key())?;
        }
    }
    if let Some((root, key)) = &root_key_pem {
        write_key(&home.root_key(), key)?;
        write_public(&home.root_cert(), root_pem.as_bytes())?;
        crate::ca::pki::write_root_crl(home, root)?;
    } else {
        write_public(&home.root_cert(), root_pem.as_bytes())?;
        remove_if_exists(&home.root_crl())?;
    }
    write_key(&home.ca_key(), &ca_key_pem)?;
    write_public(&home.ca_cert(), ca_cert_pem.as_bytes())?;
    write_key(&home.upstream_client_ca_key(), &upstream_ca_key)?;
    write_public(
        &home.upstream_client_ca_cert(),
        super::der_to_pem(&upstream_ca.cert_der).as_bytes(),
    )?;
    write_key(&home.server_key(), &server_key.serialize_pem())?;
    write_public(
        &home.server_cert(),
        format!("{}{}", server.pem, crate::ca::pki::chain_tail(home, &ca)?).as_bytes(),
    )?;
    write_key(&home.broker_client_key(), &client_key.serialize_pem())?;
    write_public(&home.broker_client_cert(), client.pem.as_bytes())?;
    write_key(&home.journal_key(), &journal_key.serialize_pem())?;
    write_public(&home.journal_pub(), journal_key.public_key_pem().as_bytes())?;
    crate::ca::pki::write_trust_bundle(home)?;
    write_public(&home.crl_number(), b"1\n")?;
    write_public(&home.crl(), crl_pem.as_bytes())?;
    drop(lock);
    // The upstream identity key (kept when it exists: upstreams trust its JWKS).
    let issuer = crate::ca::upstream_identity::issuer(
        &existing_cfg
            .as_ref()
            .map(|c| c.server.node_id.clone())
            .unwrap_or_default(),
    );
    crate::ca::upstream_identity::ensure(home, &issuer).map_err(|e| invalid(e.to_string()))?;

    let mut config_written = false;
    match existing_cfg {
        None => {
            write_public(
                &home.config_file(),
                config::default_gateway_toml(&trust_domain).as_bytes(),
            )?;
            config_written = true;
        }
        Some(cfg) if cfg.trust_domain != trust_domain => {
            let text = home::read_to_string(&home.config_file())?;
            let mut doc: toml_edit::DocumentMut = text
                .parse()
                .map_err(|e: toml_edit::TomlError| invalid(e.to_string()))?;
            doc["trust_domain"] = toml_edit::value(trust_domain.clone());
            write_public(&home.config_file(), doc.to_string().as_bytes())?;
            config_written = true;
        }
        Some(_) => {}
    }
    Ok(InitReport {
        trust_domain,
        adopted,
        ca_fingerprint: ca.fingerprint.clone(),
        config_written,
    })
}

/// `init --force`: every usable certificate of the inventory becomes
/// superseded with its overlap ending now (so it counts as revoked).
fn supersede_everything(home: &Home, _lock: &CaLock, now: OffsetDateTime) -> Result<(), CaError> {
    let inventory = Inventory::load(home)?;
    for rec in inventory.certs.values() {
        if rec.state(now).usable() {
            let mut rec = rec.clone();
            rec.status = RecordStatus::Superseded;
            rec.overlap_until = Some(now);
            write_record(home, &rec, None)?;
        }
    }
    Ok(())
}

fn remove_if_exists(path: &Path) -> Result<(), CaError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(home::HomeError::io(path, e).into()),
    }
}

/// Moves every `certs/ca-previous/*` and `certs/root-previous/*` file to
/// `certs/ca-retired/`.
fn retire_all_previous(home: &Home) -> Result<(), CaError> {
    let retired = home.ca_retired_dir();
    for dir in [home.ca_previous_dir(), home.root_previous_dir()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        ensure_dir(&retired)?;
        for entry in entries.flatten() {
            let from = entry.path();
            if let Some(name) = from.file_name() {
                let to = retired.join(name);
                std::fs::rename(&from, &to).map_err(|e| home::HomeError::io(&from, e))?;
            }
        }
    }
    Ok(())
}

/// Options of `gatehouse cert server-renew`.
#[derive(Debug, Default, Clone)]
pub struct ServerRenewOptions {
    /// SANs of the new server certificate; empty keeps the current ones.
    pub hostnames: Vec<String>,
    /// Also rotate the upstream identity signing key.
    pub identity_key: bool,
}

/// What `cert server-renew` did.
#[derive(Debug)]
pub struct ServerRenewReport {
    pub hostnames: Vec<String>,
    pub server_serial: String,
    pub client_serial: String,
    pub not_after: OffsetDateTime,
    pub identity: Option<crate::ca::upstream_identity::Rotation>,
}

/// The names in a server certificate's SANs (DNS names and IP addresses).
fn server_hostnames(path: &Path) -> Result<Vec<String>, CaError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use x509_parser::prelude::GeneralName;
    let der = CertificateDer::from_pem_file(path).map_err(|e| {
        invalid(format!(
            "{}: not a PEM certificate ({e}); pass --hostname to choose the names",
            path.display()
        ))
    })?;
    let (_, x) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| invalid(format!("{}: cannot parse: {e}", path.display())))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*b).unwrap_or([0; 4]))
                            .to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*b).unwrap_or([0; 16]))
                            .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    if names.is_empty() {
        return Err(invalid(format!(
            "{} names no host; pass --hostname",
            path.display()
        )));
    }
    Ok(names)
}

/// `gatehouse cert server-renew`: new keys and certificates for the
/// broker's server certificate (signed by the issuing CA) and its upstream
/// client certificate (signed by the upstream-client CA). All of it is made
/// in memory first; then each key and certificate pair is renamed into
/// place back to back, so a running broker sees a mismatched pair for
/// microseconds at most (and then keeps its old config and retries at the
/// next tick). The running broker picks them up within a second.
pub fn server_renew(home: &Home, opts: &ServerRenewOptions) -> Result<ServerRenewReport, CaError> {
    let gateway = config::load_gateway(home).map_err(|e| invalid(e.to_string()))?;
    let _lock = lock::lock(home)?;
    let ca = Authority::load(home)?;
    let hostnames = if opts.hostnames.is_empty() {
        server_hostnames(&home.server_cert())?
    } else {
        opts.hostnames.clone()
    };
    let now = OffsetDateTime::now_utc();
    let until = (now + time::Duration::days(BROKER_CERT_DAYS)).min(ca.not_after);
    let (server_key, server) = sign_server_cert(&ca, &hostnames, now)?;
    let (upstream_ca, client_tail) = crate::ca::pki::upstream_client_signer(home)?;
    let (client_key, client) = sign_broker_client_cert(&upstream_ca, &gateway.trust_domain, now)?;
    let (server_key_pem, client_key_pem) = (server_key.serialize_pem(), client_key.serialize_pem());
    let server_pem = format!("{}{}", server.pem, crate::ca::pki::chain_tail(home, &ca)?);
    let client_pem = format!("{}{client_tail}", client.pem);
    home::write_atomic_many(&[
        (
            &home.server_key(),
            server_key_pem.as_bytes(),
            home::KEY_MODE,
        ),
        (
            &home.server_cert(),
            server_pem.as_bytes(),
            home::PUBLIC_MODE,
        ),
        (
            &home.broker_client_key(),
            client_key_pem.as_bytes(),
            home::KEY_MODE,
        ),
        (
            &home.broker_client_cert(),
            client_pem.as_bytes(),
            home::PUBLIC_MODE,
        ),
    ])?;
    let identity = if opts.identity_key {
        Some(crate::ca::upstream_identity::rotate(home).map_err(|e| invalid(e.to_string()))?)
    } else {
        None
    };
    Ok(ServerRenewReport {
        hostnames,
        server_serial: server.serial,
        client_serial: client.serial,
        not_after: until,
        identity,
    })
}

/// A new key and TLS server certificate (`hostnames`) for the broker under
/// `ca`, valid `BROKER_CERT_DAYS`, never past the CA.
pub(crate) fn sign_server_cert(
    ca: &Authority,
    hostnames: &[String],
    now: OffsetDateTime,
) -> Result<(KeyPair, Signed), CaError> {
    let until = (now + time::Duration::days(BROKER_CERT_DAYS)).min(ca.not_after);
    let key = new_key()?;
    let cert = ca.sign_leaf(LeafKind::Server { hostnames }, &key, now - BACKDATE, until)?;
    Ok((key, cert))
}

/// A new key and upstream-leg client certificate for the broker under `ca`
/// (the upstream-client CA), valid `BROKER_CERT_DAYS`, never past the CA.
pub(crate) fn sign_broker_client_cert(
    ca: &Authority,
    trust_domain: &str,
    now: OffsetDateTime,
) -> Result<(KeyPair, Signed), CaError> {
    let until = (now + time::Duration::days(BROKER_CERT_DAYS)).min(ca.not_after);
    let key = new_key()?;
    let cert = ca.sign_leaf(
        LeafKind::BrokerClient { trust_domain },
        &key,
        now - BACKDATE,
        until,
    )?;
    Ok((key, cert))
}

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
    config::validate_partner_id(partner).map_err(invalid)?;
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
    let out_dir = opts
        .out
        .clone()
        .unwrap_or_else(|| home.root().join("clients").join(partner));
    ensure_dir(&out_dir)?;
    let chain = chain_pem(&signed, &ctx.ca);
    let trust = crate::ca::pki::trust_bundle_pem(home)?;
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
    config::validate_partner_id(partner).map_err(invalid)?;
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
