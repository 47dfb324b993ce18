//! CA rollover, migration and retirement, on the two-tier layout of `pki`.
//!
//! - `rotate` makes a new issuing CA under the same root. The old one moves
//!   to `certs/ca-previous/<fingerprint>.pem`/`.key` (its key still signs
//!   its CRL; the broker keeps trusting its certificates until retired); the
//!   broker's server certificate is re-issued under the new one. Partners
//!   and upstreams trust the root: nothing changes for them.
//! - `rotate_root` makes a new root and a new issuing CA under it, and
//!   cross-signs the new root with the old one (`certs/root-cross.pem`,
//!   `pathlen:1`), which the broker sends after its server certificate:
//!   holders of only the old root keep verifying the broker.
//! - `rotate_upstream_client` does the same for the upstream-client CA: the
//!   new CA cross-signed by the old (`pathlen:0`) follows the broker's
//!   client certificate, so upstreams trusting only the old CA keep
//!   admitting it while they add the new one.
//! - `migrate` turns a single-tier home into a two-tier one without
//!   touching any issued certificate (the old CA stays trusted as a
//!   previous CA, and the broker keeps its certificates until
//!   `cert server-renew`).
//! - `retire` removes a previous issuing CA (refused while any certificate
//!   it signed is usable), a previous root (refused while an issuing CA
//!   under it is trusted) or the previous upstream-client CA from trust.
//!
//! Every operation holds the CA lock, builds everything in memory first and
//! then writes files atomically; keys are created mode 0600. Only operations
//! that sign a CA certificate need the root key (`--root-key FILE` when it
//! is kept offline).

use std::path::{Path, PathBuf};

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

use super::broker_certs::{current_hostnames, sign_broker_client_cert, sign_server_cert};
use super::crl::{self, write_root_crl};
use super::inventory::Inventory;
use super::lock::{self, CaLock};
use super::pki::{self, issued_by, previous, previous_root_files};
use super::{
    Authority, CaError, ISSUING_VALIDITY_DAYS, ROOT_VALIDITY_DAYS, UPSTREAM_CLIENT_CA_DAYS,
    ca_name, der_to_pem, invalid, remove_if_exists,
};
use crate::config::{self, GatewayConfig};
use crate::home::{self, Home, ensure_dir, write_key, write_public};

/// `ca list` reads the layout without changing it; it lives in `pki`.
pub use super::pki::{CaSummary, list};

/// Length of the short fingerprint shown in listings.
pub const SHORT_FP: usize = 12;

/// The short form of a CA fingerprint.
pub fn short(fp: &str) -> &str {
    &fp[..fp.len().min(SHORT_FP)]
}

/// What a rotation did.
#[derive(Debug)]
pub struct RotateReport {
    pub kind: RotateKind,
    pub old_fingerprint: String,
    pub new_fingerprint: String,
    /// The new root, for `--root` (and a migration).
    pub new_root: Option<String>,
    /// The root key was given with `--root-key` (it is not kept in the home).
    pub root_key_given: bool,
}

/// Which CA a rotation replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RotateKind {
    Issuing,
    Root,
    UpstreamClient,
    /// A single-tier home moved to the two-tier layout.
    Migration,
}

/// Options of `ca rotate` / `ca migrate`.
#[derive(Debug, Default, Clone)]
pub struct RotateOptions {
    /// Also a new root, cross-signed by the old one.
    pub root: bool,
    /// The upstream-client CA instead of the issuing CA.
    pub upstream_client: bool,
    /// The root key, when it is kept outside the home.
    pub root_key: Option<PathBuf>,
}

/// `gatehouse ca rotate [--root | --upstream-client] [--root-key FILE]`.
/// In a single-tier home, the first rotation is the migration.
pub fn rotate(home: &Home, opts: &RotateOptions) -> Result<RotateReport, CaError> {
    let gateway = config::load_gateway(home).map_err(|e| invalid(e.to_string()))?;
    let lock = lock::lock(home)?;
    if opts.upstream_client {
        if !pki::is_two_tier(home) {
            return Err(invalid(
                "this single-tier home has no upstream-client CA yet: run `gatehouse ca migrate` first",
            ));
        }
        return rotate_upstream_client(home, &lock, &gateway);
    }
    if !pki::is_two_tier(home) {
        return migrate_locked(home, &lock, &gateway);
    }
    let old_root = pki::load_root(home, opts.root_key.as_deref())?;
    if opts.root {
        rotate_root(home, &lock, &gateway, old_root, opts.root_key.is_some())
    } else {
        rotate_issuing(home, &lock, &gateway, &old_root, opts.root_key.is_some())
    }
}

/// `gatehouse ca migrate`: a single-tier home to the two-tier layout.
pub fn migrate(home: &Home) -> Result<RotateReport, CaError> {
    let gateway = config::load_gateway(home).map_err(|e| invalid(e.to_string()))?;
    let lock = lock::lock(home)?;
    if pki::is_two_tier(home) {
        return Err(invalid(format!(
            "this home is already two-tier ({} exists); use `gatehouse ca rotate`",
            home.root_cert().display()
        )));
    }
    migrate_locked(home, &lock, &gateway)
}

/// Moves the current issuing CA to `certs/ca-previous/` (never lost: it is
/// written before anything replaces it).
fn keep_as_previous(home: &Home, old: &Authority) -> Result<(), CaError> {
    let old_cert_pem = home::read_to_string(&home.ca_cert())?;
    let old_key_pem = home::read_to_string(&home.ca_key())?;
    let dir = home.ca_previous_dir();
    ensure_dir(&dir)?;
    write_key(&dir.join(format!("{}.key", old.fingerprint)), &old_key_pem)?;
    write_public(
        &dir.join(format!("{}.pem", old.fingerprint)),
        old_cert_pem.as_bytes(),
    )?;
    Ok(())
}

/// Writes the new issuing CA and re-issues the broker's server certificate
/// under it (chain: leaf, issuing CA, cross certificate if any).
fn install_issuing(home: &Home, new: &Authority, new_key_pem: &str) -> Result<(), CaError> {
    let (server_key, server) =
        sign_server_cert(new, &current_hostnames(home), OffsetDateTime::now_utc())?;
    let server_pem = format!("{}{}", server.pem, pki::chain_tail(home, new)?);
    write_key(&home.ca_key(), new_key_pem)?;
    write_public(&home.ca_cert(), new.chain_pem.as_bytes())?;
    home::write_atomic_many(&[
        (
            &home.server_key(),
            server_key.serialize_pem().as_bytes(),
            home::KEY_MODE,
        ),
        (
            &home.server_cert(),
            server_pem.as_bytes(),
            home::PUBLIC_MODE,
        ),
    ])?;
    Ok(())
}

fn rotate_issuing(
    home: &Home,
    lock: &CaLock,
    gateway: &GatewayConfig,
    root: &Authority,
    root_key_given: bool,
) -> Result<RotateReport, CaError> {
    let old = Authority::load(home)?;
    let (new, new_key_pem, _) = Authority::create_ca(
        &ca_name("issuing CA", &gateway.trust_domain),
        Some(0),
        ISSUING_VALIDITY_DAYS,
        Some(root),
    )?;
    keep_as_previous(home, &old)?;
    install_issuing(home, &new, &new_key_pem)?;
    pki::write_trust_bundle(home)?;
    crl::refresh(home, lock, &new, gateway.ca.crl_validity)?;
    write_root_crl(home, root)?;
    Ok(RotateReport {
        kind: RotateKind::Issuing,
        old_fingerprint: old.fingerprint,
        new_fingerprint: new.fingerprint,
        new_root: None,
        root_key_given,
    })
}

fn rotate_root(
    home: &Home,
    lock: &CaLock,
    gateway: &GatewayConfig,
    old_root: Authority,
    root_key_given: bool,
) -> Result<RotateReport, CaError> {
    let old = Authority::load(home)?;
    let (root, root_key_pem, root_params) = Authority::create_ca(
        &ca_name("root CA", &gateway.trust_domain),
        None,
        ROOT_VALIDITY_DAYS,
        None,
    )?;
    // The new root signed by the old one: old root -> cross -> issuing -> leaf
    // needs room for one CA below the cross certificate.
    let cross = old_root.cross_sign(&root_params, &root_key_pem, Some(1))?;
    let (new, new_key_pem, _) = Authority::create_ca(
        &ca_name("issuing CA", &gateway.trust_domain),
        Some(0),
        ISSUING_VALIDITY_DAYS,
        Some(&root),
    )?;
    // The old root stays trusted (by partners, through ca-bundle.pem) until retired.
    let prev = home.root_previous_dir();
    ensure_dir(&prev)?;
    write_public(
        &prev.join(format!("{}.pem", old_root.fingerprint)),
        der_to_pem(&old_root.cert_der).as_bytes(),
    )?;
    keep_as_previous(home, &old)?;
    write_key(&home.root_key(), &root_key_pem)?;
    write_public(&home.root_cert(), der_to_pem(&root.cert_der).as_bytes())?;
    write_public(&home.root_cross(), cross.as_bytes())?;
    install_issuing(home, &new, &new_key_pem)?;
    pki::write_trust_bundle(home)?;
    crl::refresh(home, lock, &new, gateway.ca.crl_validity)?;
    write_root_crl(home, &root)?;
    Ok(RotateReport {
        kind: RotateKind::Root,
        old_fingerprint: old_root.fingerprint,
        new_fingerprint: new.fingerprint,
        new_root: Some(root.fingerprint),
        root_key_given,
    })
}

fn rotate_upstream_client(
    home: &Home,
    _lock: &CaLock,
    gateway: &GatewayConfig,
) -> Result<RotateReport, CaError> {
    let Some(old) = pki::load_upstream_client_ca(home)? else {
        return Err(invalid(format!(
            "{} is missing: run `gatehouse ca migrate` (or `init`) first",
            home.upstream_client_ca_cert().display()
        )));
    };
    if home.upstream_client_ca_previous().is_file() {
        return Err(invalid(
            "an upstream-client CA rotation is still in its overlap: once every upstream trusts the current certs/upstream-client-ca.pem, run `gatehouse ca retire --upstream-client`, then rotate again",
        ));
    }
    let (new, new_key_pem, params) = Authority::create_ca(
        &ca_name("upstream-client CA", &gateway.trust_domain),
        None,
        UPSTREAM_CLIENT_CA_DAYS,
        None,
    )?;
    let cross = old.cross_sign(&params, &new_key_pem, Some(0))?;
    let (client_key, client) =
        sign_broker_client_cert(&new, &gateway.trust_domain, OffsetDateTime::now_utc())?;
    write_public(
        &home.upstream_client_ca_previous(),
        der_to_pem(&old.cert_der).as_bytes(),
    )?;
    write_key(&home.upstream_client_ca_key(), &new_key_pem)?;
    write_public(
        &home.upstream_client_ca_cert(),
        der_to_pem(&new.cert_der).as_bytes(),
    )?;
    write_public(&home.upstream_client_cross(), cross.as_bytes())?;
    let client_pem = format!("{}{cross}", client.pem);
    home::write_atomic_many(&[
        (
            &home.broker_client_key(),
            client_key.serialize_pem().as_bytes(),
            home::KEY_MODE,
        ),
        (
            &home.broker_client_cert(),
            client_pem.as_bytes(),
            home::PUBLIC_MODE,
        ),
    ])?;
    Ok(RotateReport {
        kind: RotateKind::UpstreamClient,
        old_fingerprint: old.fingerprint,
        new_fingerprint: new.fingerprint,
        new_root: None,
        root_key_given: false,
    })
}

/// A single-tier home to two tiers: a new root, an issuing CA under it and
/// an upstream-client CA. The old CA (its own root, `pathlen:0`, so it can
/// cross-sign nothing) stays trusted as a previous issuing CA and in the
/// partners' bundle; the broker keeps its certificates (signed by the old
/// CA) until `cert server-renew`, so no partner or upstream notices.
fn migrate_locked(
    home: &Home,
    lock: &CaLock,
    gateway: &GatewayConfig,
) -> Result<RotateReport, CaError> {
    let old = Authority::load(home)?;
    let (root, root_key_pem, _) = Authority::create_ca(
        &ca_name("root CA", &gateway.trust_domain),
        None,
        ROOT_VALIDITY_DAYS,
        None,
    )?;
    let (new, new_key_pem, _) = Authority::create_ca(
        &ca_name("issuing CA", &gateway.trust_domain),
        Some(0),
        ISSUING_VALIDITY_DAYS,
        Some(&root),
    )?;
    let (upstream, upstream_key_pem, _) = Authority::create_ca(
        &ca_name("upstream-client CA", &gateway.trust_domain),
        None,
        UPSTREAM_CLIENT_CA_DAYS,
        None,
    )?;
    keep_as_previous(home, &old)?;
    write_key(&home.upstream_client_ca_key(), &upstream_key_pem)?;
    write_public(
        &home.upstream_client_ca_cert(),
        der_to_pem(&upstream.cert_der).as_bytes(),
    )?;
    write_key(&home.root_key(), &root_key_pem)?;
    write_key(&home.ca_key(), &new_key_pem)?;
    write_public(&home.ca_cert(), new.chain_pem.as_bytes())?;
    // Last: root.pem makes the home two-tier.
    write_public(&home.root_cert(), der_to_pem(&root.cert_der).as_bytes())?;
    pki::write_trust_bundle(home)?;
    crl::refresh(home, lock, &new, gateway.ca.crl_validity)?;
    write_root_crl(home, &root)?;
    Ok(RotateReport {
        kind: RotateKind::Migration,
        old_fingerprint: old.fingerprint,
        new_fingerprint: new.fingerprint,
        new_root: Some(root.fingerprint),
        root_key_given: false,
    })
}

fn listed(fps: &[String]) -> String {
    if fps.is_empty() {
        "none".to_string()
    } else {
        fps.iter()
            .map(|f| short(f).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What `retire` removed.
#[derive(Debug)]
pub struct Retired {
    pub what: &'static str,
    pub fingerprint: String,
}

/// `gatehouse ca retire OLD [--root-key FILE]` / `ca retire --upstream-client`.
pub fn retire(
    home: &Home,
    which: Option<&str>,
    upstream_client: bool,
    root_key: Option<&Path>,
) -> Result<Retired, CaError> {
    let gateway = config::load_gateway(home).map_err(|e| invalid(e.to_string()))?;
    let lock = lock::lock(home)?;
    if upstream_client {
        return retire_upstream_client(home);
    }
    let which = which
        .ok_or_else(|| invalid("name the CA to retire (a fingerprint prefix, or `previous`)"))?
        .trim()
        .to_ascii_lowercase()
        .replace(':', "");
    let current = Authority::load(home)?;
    if which.len() >= 4 && current.fingerprint.starts_with(&which) {
        return Err(invalid(format!(
            "{} is the current issuing CA; run `gatehouse ca rotate` first, then retire the old one",
            short(&current.fingerprint)
        )));
    }
    let prev = previous(home)?;
    let roots = previous_root_files(home);
    let prev_fps: Vec<String> = prev.iter().map(|a| a.fingerprint.clone()).collect();
    let root_fps: Vec<String> = roots.iter().map(|r| r.0.clone()).collect();
    if which == "previous" {
        return match (prev.len(), roots.len()) {
            (1, _) => retire_issuing(home, &lock, &gateway, &prev[0], root_key),
            (0, 1) => retire_root(home, &roots[0], &prev),
            (0, 0) => Err(invalid(
                "there is no previous CA to retire (see `gatehouse ca list`)",
            )),
            _ => Err(invalid(format!(
                "several previous CAs (issuing: {}; roots: {}); name one by fingerprint prefix",
                listed(&prev_fps),
                listed(&root_fps)
            ))),
        };
    }
    if which.len() < 4 || !which.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(invalid(format!(
            "`{which}` is not a CA fingerprint prefix (at least 4 hex digits) or `previous`"
        )));
    }
    let issuing: Vec<&Authority> = prev
        .iter()
        .filter(|a| a.fingerprint.starts_with(&which))
        .collect();
    let root: Vec<_> = roots.iter().filter(|r| r.0.starts_with(&which)).collect();
    match (issuing.as_slice(), root.as_slice()) {
        ([a], []) => retire_issuing(home, &lock, &gateway, a, root_key),
        ([], [r]) => retire_root(home, r, &prev),
        ([], []) => Err(invalid(format!(
            "no previous CA has fingerprint {which}… (previous issuing CAs: {}; previous roots: {})",
            listed(&prev_fps),
            listed(&root_fps)
        ))),
        _ => Err(invalid(format!(
            "`{which}` matches several previous CAs; give more of the fingerprint"
        ))),
    }
}

/// Retires a previous issuing CA: refused while usable certificates from
/// it exist (listing serial and partner); else its certificate moves to
/// `certs/ca-retired/`, its key is deleted, and — when the root key is at
/// hand — the root's CRL lists it.
fn retire_issuing(
    home: &Home,
    lock: &CaLock,
    gateway: &GatewayConfig,
    old: &Authority,
    root_key: Option<&Path>,
) -> Result<Retired, CaError> {
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
    // The broker's own certificates must not hang off the retired CA.
    for path in [home.server_cert(), home.broker_client_cert()] {
        if let Ok(der) = CertificateDer::from_pem_file(&path)
            && issued_by(&der, &old.cert_der)
        {
            return Err(invalid(format!(
                "{} is still signed by CA {}: run `gatehouse cert server-renew` first (once partners trust {} and upstreams {})",
                path.display(),
                short(&old.fingerprint),
                home.root_cert().display(),
                home.upstream_client_ca_cert().display()
            )));
        }
    }
    let current = Authority::load(home)?;
    let src = home
        .ca_previous_dir()
        .join(format!("{}.pem", old.fingerprint));
    let retired = home.ca_retired_dir();
    ensure_dir(&retired)?;
    write_public(
        &retired.join(format!("{}.pem", old.fingerprint)),
        der_to_pem(&old.cert_der).as_bytes(),
    )?;
    remove_if_exists(&src)?;
    remove_if_exists(&src.with_extension("key"))?;
    pki::write_trust_bundle(home)?;
    crl::refresh(home, lock, &current, gateway.ca.crl_validity)?;
    if pki::is_two_tier(home) {
        match pki::load_root(home, root_key) {
            Ok(root) => write_root_crl(home, &root)?,
            Err(CaError::RootKeyMissing(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Retired {
        what: "issuing CA",
        fingerprint: old.fingerprint.clone(),
    })
}

/// Retires a previous root: refused while an issuing CA it signed is still
/// trusted. Partners stop getting it in their bundle, and the broker stops
/// sending the cross certificate it signed.
fn retire_root(
    home: &Home,
    root: &(String, PathBuf, CertificateDer<'static>),
    previous: &[Authority],
) -> Result<Retired, CaError> {
    let (fp, path, der) = root;
    let current = Authority::load(home)?;
    let under: Vec<String> = std::iter::once(&current)
        .chain(previous)
        .filter(|a| issued_by(&a.cert_der, der))
        .map(|a| a.fingerprint.clone())
        .collect();
    if !under.is_empty() {
        return Err(invalid(format!(
            "root {} still has issuing CAs in trust ({}); retire them first",
            short(fp),
            listed(&under)
        )));
    }
    let retired = home.ca_retired_dir();
    ensure_dir(&retired)?;
    write_public(
        &retired.join(format!("{fp}.pem")),
        der_to_pem(der).as_bytes(),
    )?;
    remove_if_exists(path)?;
    remove_if_exists(&path.with_extension("key"))?;
    let cross_from_old = CertificateDer::from_pem_file(home.root_cross())
        .ok()
        .is_some_and(|c| issued_by(&c, der));
    if cross_from_old {
        // The server chain without the cross certificate.
        let leaf = CertificateDer::from_pem_file(home.server_cert()).map_err(|e| {
            invalid(format!(
                "{}: not a PEM certificate: {e}",
                home.server_cert().display()
            ))
        })?;
        remove_if_exists(&home.root_cross())?;
        let signer = previous
            .iter()
            .chain(std::iter::once(&current))
            .find(|a| issued_by(&leaf, &a.cert_der))
            .unwrap_or(&current);
        write_public(
            &home.server_cert(),
            format!("{}{}", der_to_pem(&leaf), pki::chain_tail(home, signer)?).as_bytes(),
        )?;
    }
    pki::write_trust_bundle(home)?;
    Ok(Retired {
        what: "root",
        fingerprint: fp.clone(),
    })
}

/// Ends an upstream-client CA rotation's overlap: the broker stops sending
/// the cross certificate (upstreams must trust the new CA by now) and the
/// old CA is kept in `certs/ca-retired/` for the record.
fn retire_upstream_client(home: &Home) -> Result<Retired, CaError> {
    let prev = home.upstream_client_ca_previous();
    let der = CertificateDer::from_pem_file(&prev).map_err(|_| {
        invalid("there is no previous upstream-client CA to retire (see `gatehouse ca list`)")
    })?;
    let fp = super::fingerprint(&der);
    let leaf = CertificateDer::from_pem_file(home.broker_client_cert()).map_err(|e| {
        invalid(format!(
            "{}: not a PEM certificate: {e}",
            home.broker_client_cert().display()
        ))
    })?;
    if issued_by(&leaf, &der) {
        return Err(invalid(format!(
            "{} is still signed by the previous upstream-client CA: run `gatehouse cert server-renew` first",
            home.broker_client_cert().display()
        )));
    }
    let retired = home.ca_retired_dir();
    ensure_dir(&retired)?;
    write_public(
        &retired.join(format!("{fp}.pem")),
        der_to_pem(&der).as_bytes(),
    )?;
    write_public(&home.broker_client_cert(), der_to_pem(&leaf).as_bytes())?;
    remove_if_exists(&home.upstream_client_cross())?;
    remove_if_exists(&prev)?;
    Ok(Retired {
        what: "upstream-client CA",
        fingerprint: fp,
    })
}
