//! Setting up a home, `gatehouse init`: the root and the issuing CA under it
//! (or an adopted CA as the issuing CA), the upstream-client CA, the
//! broker's certificates, the journal signing key, the upstream identity
//! signing key, `gatehouse.toml`, empty CRLs and the folders. Everything is
//! built in memory first and written under the CA lock; with `--force` over
//! an existing home, what the replaced CAs issued is marked superseded and
//! their rollover leftovers move out of trust first.

use std::path::PathBuf;
use std::time::Duration;

use rcgen::KeyPair;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;

use super::broker_certs::{default_hostnames, sign_broker_client_cert, sign_server_cert};
use super::inventory::{Inventory, RecordStatus, write_record};
use super::lock::{self, CaLock};
use super::{
    Authority, CaError, ISSUING_VALIDITY_DAYS, ROOT_VALIDITY_DAYS, Signed, UPSTREAM_CLIENT_CA_DAYS,
    ca_name, crl, der_to_pem, invalid, is_self_issued, new_key, pki, remove_if_exists,
};
use crate::config::{self, GatewayConfig, validate_trust_domain};
use crate::home::{self, Home, ensure_dir, write_key, write_public};
use crate::identity_token;

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

/// `gatehouse init`: creates the root, the issuing CA under it (or adopts
/// an existing CA as the issuing CA), the upstream-client CA, the broker's
/// certificates, the journal signing key, the upstream identity signing
/// key, `gatehouse.toml`, empty CRLs and the folders. With `--force` over an
/// existing home, the replaced CAs' certificates are marked superseded (no
/// overlap) in the inventory: none of them stays usable.
pub fn init(home: &Home, opts: &InitOptions) -> Result<InitReport, CaError> {
    let existing_cfg = existing_config(home)?;
    let trust_domain = opts
        .trust_domain
        .clone()
        .or_else(|| existing_cfg.as_ref().map(|c| c.trust_domain.clone()))
        .unwrap_or_else(|| "gatehouse.local".to_string());
    validate_trust_domain(&trust_domain).map_err(|e| invalid(e.to_string()))?;
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
    let crl_validity = existing_cfg
        .as_ref()
        .map(|c| c.ca.crl_validity)
        .unwrap_or(Duration::from_secs(7 * 86_400));

    // Everything is built in memory before anything is written.
    let new = NewPki::build(opts, &trust_domain, &hostnames, crl_validity)?;
    make_folders(home)?;
    let lock = lock::lock(home)?;
    if opts.force {
        clear_replaced(home, &lock, new.now, new.issuing.root.is_some())?;
    }
    new.write(home)?;
    drop(lock);
    ensure_identity_key(home, existing_cfg.as_ref())?;
    let config_written = write_config(home, existing_cfg, &trust_domain)?;
    Ok(InitReport {
        trust_domain,
        adopted: new.issuing.root.is_none(),
        ca_fingerprint: new.issuing.ca.fingerprint.clone(),
        config_written,
    })
}

/// The home's `gatehouse.toml`, when there is one (its trust domain, node
/// id and CRL validity carry over).
fn existing_config(home: &Home) -> Result<Option<GatewayConfig>, CaError> {
    if home.config_file().is_file() {
        Ok(Some(
            config::load_gateway(home).map_err(|e| invalid(e.to_string()))?,
        ))
    } else {
        Ok(None)
    }
}

/// The issuing CA `init` installs and what stands above it.
struct Issuing {
    ca: Authority,
    /// `ca.pem`: the issuing CA and any chain above it.
    cert_pem: String,
    key_pem: String,
    /// `root.pem`: our new root, or the top of an adopted CA's chain.
    root_pem: String,
    /// Our new root and its key; `None` when an existing CA was adopted.
    root: Option<(Authority, String)>,
}

impl Issuing {
    /// Adopts `--ca-cert`/`--ca-key`, or makes a root and an issuing CA.
    fn make(opts: &InitOptions, trust_domain: &str) -> Result<Issuing, CaError> {
        match (&opts.ca_cert, &opts.ca_key) {
            (Some(c), Some(k)) => Issuing::adopt(c, k),
            (None, None) => Issuing::create(trust_domain),
            _ => Err(invalid("--ca-cert and --ca-key go together")),
        }
    }

    /// An existing CA as the issuing CA; the top of its chain stands as root
    /// (its key is not ours).
    fn adopt(cert: &std::path::Path, key: &std::path::Path) -> Result<Issuing, CaError> {
        let cert_pem = home::read_to_string(cert)?;
        let key_pem = home::read_to_string(key)?;
        let ca = Authority::from_pem(&cert_pem, &key_pem)
            .map_err(|e| invalid(format!("cannot adopt {}: {e}", cert.display())))?;
        let chain: Vec<_> = CertificateDer::pem_slice_iter(ca.chain_pem.as_bytes())
            .filter_map(Result::ok)
            .collect();
        let top = chain
            .iter()
            .find(|d| is_self_issued(d))
            .or(chain.last())
            .map(|d| der_to_pem(d))
            .unwrap_or_default();
        Ok(Issuing {
            cert_pem: ca.chain_pem.clone(),
            ca,
            key_pem,
            root_pem: top,
            root: None,
        })
    }

    /// A new root and an issuing CA (`pathlen:0`) under it.
    fn create(trust_domain: &str) -> Result<Issuing, CaError> {
        let (root, root_key, _) = Authority::create_ca(
            &ca_name("root CA", trust_domain),
            None,
            ROOT_VALIDITY_DAYS,
            None,
        )?;
        let (ca, key_pem, _) = Authority::create_ca(
            &ca_name("issuing CA", trust_domain),
            Some(0),
            ISSUING_VALIDITY_DAYS,
            Some(&root),
        )?;
        Ok(Issuing {
            cert_pem: ca.chain_pem.clone(),
            ca,
            key_pem,
            root_pem: der_to_pem(&root.cert_der),
            root: Some((root, root_key)),
        })
    }
}

/// Everything `init` writes under `certs/` and `data/`, made in memory.
struct NewPki {
    issuing: Issuing,
    upstream_ca: Authority,
    upstream_ca_key: String,
    server_key: KeyPair,
    server: Signed,
    client_key: KeyPair,
    client: Signed,
    journal_key: KeyPair,
    crl_pem: String,
    now: OffsetDateTime,
}

impl NewPki {
    fn build(
        opts: &InitOptions,
        trust_domain: &str,
        hostnames: &[String],
        crl_validity: Duration,
    ) -> Result<NewPki, CaError> {
        let issuing = Issuing::make(opts, trust_domain)?;
        let (upstream_ca, upstream_ca_key, _) = Authority::create_ca(
            &ca_name("upstream-client CA", trust_domain),
            None,
            UPSTREAM_CLIENT_CA_DAYS,
            None,
        )?;
        let now = OffsetDateTime::now_utc();
        let (server_key, server) = sign_server_cert(&issuing.ca, hostnames, now)?;
        let (client_key, client) = sign_broker_client_cert(&upstream_ca, trust_domain, now)?;
        let journal_key = new_key()?;
        let crl_pem = crl::build(&issuing.ca, &Inventory::default(), 1, now, crl_validity)?;
        Ok(NewPki {
            issuing,
            upstream_ca,
            upstream_ca_key,
            server_key,
            server,
            client_key,
            client,
            journal_key,
            crl_pem,
            now,
        })
    }

    /// Writes the CA files, the broker's keys and certificates, the journal
    /// key, the trust bundle and the first CRL. The caller holds the lock.
    fn write(&self, home: &Home) -> Result<(), CaError> {
        let issuing = &self.issuing;
        if let Some((root, key)) = &issuing.root {
            write_key(&home.root_key(), key)?;
            write_public(&home.root_cert(), issuing.root_pem.as_bytes())?;
            crl::write_root_crl(home, root)?;
        } else {
            write_public(&home.root_cert(), issuing.root_pem.as_bytes())?;
            remove_if_exists(&home.root_crl())?;
        }
        write_key(&home.ca_key(), &issuing.key_pem)?;
        write_public(&home.ca_cert(), issuing.cert_pem.as_bytes())?;
        write_key(&home.upstream_client_ca_key(), &self.upstream_ca_key)?;
        write_public(
            &home.upstream_client_ca_cert(),
            der_to_pem(&self.upstream_ca.cert_der).as_bytes(),
        )?;
        write_key(&home.server_key(), &self.server_key.serialize_pem())?;
        write_public(
            &home.server_cert(),
            format!("{}{}", self.server.pem, pki::chain_tail(home, &issuing.ca)?).as_bytes(),
        )?;
        write_key(&home.broker_client_key(), &self.client_key.serialize_pem())?;
        write_public(&home.broker_client_cert(), self.client.pem.as_bytes())?;
        write_key(&home.journal_key(), &self.journal_key.serialize_pem())?;
        write_public(
            &home.journal_pub(),
            self.journal_key.public_key_pem().as_bytes(),
        )?;
        pki::write_trust_bundle(home)?;
        write_public(&home.crl_number(), b"1\n")?;
        write_public(&home.crl(), self.crl_pem.as_bytes())?;
        Ok(())
    }
}

/// The home's folders (`data/` private).
fn make_folders(home: &Home) -> Result<(), CaError> {
    for dir in [
        home.root().to_path_buf(),
        home.certs_dir(),
        home.issued_dir(),
        home.partners_dir(),
    ] {
        ensure_dir(&dir)?;
    }
    home::ensure_private_dir(&home.data_dir())?;
    Ok(())
}

/// `init --force`: what the replaced CAs left behind goes out of trust
/// before the new CAs are written. `new_root`: the new CAs have a root key
/// of ours (else a stale `root.key` is removed too).
fn clear_replaced(
    home: &Home,
    lock: &CaLock,
    now: OffsetDateTime,
    new_root: bool,
) -> Result<(), CaError> {
    // The replaced CAs' certificates no longer chain to anything the
    // broker trusts: mark them superseded, with no overlap, so that the
    // inventory says so too. They stay on file for the record.
    supersede_everything(home, lock, now)?;
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
    if !new_root {
        remove_if_exists(&home.root_key())?;
    }
    Ok(())
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
                crate::durable_file::rename(&from, &to)
                    .map_err(|e| home::HomeError::io(&from, e))?;
            }
        }
    }
    Ok(())
}

/// The upstream identity key (kept when it exists: upstreams trust its JWKS).
fn ensure_identity_key(home: &Home, existing: Option<&GatewayConfig>) -> Result<(), CaError> {
    let issuer = identity_token::issuer(
        &existing
            .map(|c| c.server.node_id.clone())
            .unwrap_or_default(),
    );
    identity_token::ensure(home, &issuer).map_err(|e| invalid(e.to_string()))?;
    Ok(())
}

/// Writes `gatehouse.toml` when there is none, or sets its trust domain
/// when `--trust-domain` changed it (the rest of the file kept as it is).
/// Returns whether it wrote.
fn write_config(
    home: &Home,
    existing: Option<GatewayConfig>,
    trust_domain: &str,
) -> Result<bool, CaError> {
    match existing {
        None => {
            write_public(
                &home.config_file(),
                config::default_gateway_toml(trust_domain).as_bytes(),
            )?;
            Ok(true)
        }
        Some(cfg) if cfg.trust_domain != trust_domain => {
            let text = home::read_to_string(&home.config_file())?;
            let mut doc: toml_edit::DocumentMut = text
                .parse()
                .map_err(|e: toml_edit::TomlError| invalid(e.to_string()))?;
            doc["trust_domain"] = toml_edit::value(trust_domain);
            write_public(&home.config_file(), doc.to_string().as_bytes())?;
            Ok(true)
        }
        Some(_) => Ok(false),
    }
}
