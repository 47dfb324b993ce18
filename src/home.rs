//! The gatehouse home folder: where every file lives (docs/architecture.md,
//! "Files"), and the one way files are written there — atomically and
//! durably (`durable_file`), with private keys created mode 0600 from the
//! start.
//!
//! Nothing else in the crate builds paths under the home by hand.

use std::fs;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use crate::durable_file;

/// File mode for private keys: owner read/write only.
pub const KEY_MODE: u32 = 0o600;
/// File mode for public material (certificates, CRL, config).
pub const PUBLIC_MODE: u32 = 0o644;

/// Errors touching the home folder's files.
#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} is not a gatehouse home (no gatehouse.toml); run `gatehouse init` there first, or pass --home"
    )]
    NotInitialized(PathBuf),
}

impl HomeError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        HomeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// The paths of one gatehouse home.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
    /// `--data DIR` / `GATEHOUSE_DATA`: this node's own data folder (a fleet
    /// shares the home's configuration, each node keeps its own journal).
    data: Option<PathBuf>,
}

impl Home {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Home {
            root: root.into(),
            data: None,
        }
    }

    /// The same home with its data folder (journal, admin socket) at `dir`
    /// instead of `HOME/data`; a relative `dir` is taken from the current
    /// directory.
    pub fn with_data(mut self, dir: Option<PathBuf>) -> Self {
        self.data = dir.map(|d| {
            if d.is_absolute() {
                d
            } else {
                std::env::current_dir().map(|c| c.join(&d)).unwrap_or(d)
            }
        });
        self
    }

    /// A home that `init` has already set up; refuses anything else.
    pub fn existing(root: impl Into<PathBuf>) -> Result<Self, HomeError> {
        let home = Home::new(root);
        if !home.config_file().is_file() {
            return Err(HomeError::NotInitialized(home.root.clone()));
        }
        // Absolute from here on: paths stay right whatever the working directory.
        let root = std::fs::canonicalize(&home.root).map_err(|e| HomeError::io(&home.root, e))?;
        Ok(Home { root, data: None })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    /// Resolves a path from a config file: relative paths are relative to the home.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }
    pub fn config_file(&self) -> PathBuf {
        self.root.join("gatehouse.toml")
    }
    pub fn partners_dir(&self) -> PathBuf {
        self.root.join("partners")
    }
    /// Where `cert issue` writes a partner's files when no `--out` is given.
    pub fn client_dir(&self, partner: &str) -> PathBuf {
        self.root.join("clients").join(partner)
    }
    pub fn partner_file(&self, id: &str) -> PathBuf {
        self.partners_dir().join(format!("{id}.toml"))
    }
    /// `invitations/`: one-time enrolment invitations (hashed secrets, 0600).
    pub fn invitations_dir(&self) -> PathBuf {
        self.root.join("invitations")
    }
    pub fn invitation_file(&self, id: &str) -> PathBuf {
        self.invitations_dir().join(format!("{id}.json"))
    }
    pub fn certs_dir(&self) -> PathBuf {
        self.root.join("certs")
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.certs_dir().join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.certs_dir().join("ca.key")
    }
    /// The root(s) partners trust: the current root, every previous root
    /// not yet retired, and a single-tier CA kept by a migration.
    pub fn ca_bundle(&self) -> PathBuf {
        self.certs_dir().join("ca-bundle.pem")
    }
    /// The root CA (the trust anchor partners hold); absent in a
    /// single-tier home made by an earlier `init`.
    pub fn root_cert(&self) -> PathBuf {
        self.certs_dir().join("root.pem")
    }
    /// The root's key; may be moved offline (only `ca rotate` needs it).
    pub fn root_key(&self) -> PathBuf {
        self.certs_dir().join("root.key")
    }
    /// Roots replaced by `ca rotate --root`, until retired: `<fingerprint>.pem` (and `.key`).
    pub fn root_previous_dir(&self) -> PathBuf {
        self.certs_dir().join("root-previous")
    }
    /// The current root cross-signed by the previous one (`ca rotate --root`),
    /// sent in the broker's server chain so holders of the old root verify it.
    pub fn root_cross(&self) -> PathBuf {
        self.certs_dir().join("root-cross.pem")
    }
    /// The root's CRL (issuing CAs retired under it).
    pub fn root_crl(&self) -> PathBuf {
        self.certs_dir().join("root-crl.pem")
    }
    pub fn root_crl_number(&self) -> PathBuf {
        self.certs_dir().join("root-crl.number")
    }
    /// The CA used only for the broker's upstream-leg client certificate.
    pub fn upstream_client_ca_cert(&self) -> PathBuf {
        self.certs_dir().join("upstream-client-ca.pem")
    }
    pub fn upstream_client_ca_key(&self) -> PathBuf {
        self.certs_dir().join("upstream-client-ca.key")
    }
    /// The upstream-client CA replaced by `ca rotate --upstream-client`, until retired.
    pub fn upstream_client_ca_previous(&self) -> PathBuf {
        self.certs_dir().join("upstream-client-ca-previous.pem")
    }
    /// The current upstream-client CA cross-signed by the previous one, sent
    /// after `broker-client.pem`'s leaf during the overlap.
    pub fn upstream_client_cross(&self) -> PathBuf {
        self.certs_dir().join("upstream-client-cross.pem")
    }
    /// The lock file every inventory and CRL writer holds (CLI and broker).
    pub fn ca_lock(&self) -> PathBuf {
        self.certs_dir().join("ca.lock")
    }
    /// CAs replaced by `ca rotate` and not yet retired: `<fingerprint>.pem` / `.key`.
    pub fn ca_previous_dir(&self) -> PathBuf {
        self.certs_dir().join("ca-previous")
    }
    /// CAs `ca retire` removed from trust (certificates only, for the record).
    pub fn ca_retired_dir(&self) -> PathBuf {
        self.certs_dir().join("ca-retired")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.certs_dir().join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.certs_dir().join("server.key")
    }
    pub fn broker_client_cert(&self) -> PathBuf {
        self.certs_dir().join("broker-client.pem")
    }
    pub fn broker_client_key(&self) -> PathBuf {
        self.certs_dir().join("broker-client.key")
    }
    pub fn journal_key(&self) -> PathBuf {
        self.certs_dir().join("journal-signing.key")
    }
    pub fn journal_pub(&self) -> PathBuf {
        self.certs_dir().join("journal-signing.pub.pem")
    }
    /// The key that signs `X-Gatehouse-Identity` tokens (not the CA key).
    pub fn identity_key(&self) -> PathBuf {
        self.certs_dir().join("identity-signing.key")
    }
    /// The public keys for those tokens (JWKS: current and previous).
    pub fn identity_jwks(&self) -> PathBuf {
        self.certs_dir().join("identity-jwks.json")
    }
    pub fn issued_dir(&self) -> PathBuf {
        self.certs_dir().join("issued")
    }
    /// An empty file whose presence says the certificate `serial` (lowercase
    /// hex) completed a handshake at least once.
    pub fn seen_marker(&self, serial: &str) -> PathBuf {
        self.issued_dir().join(format!("{serial}.seen"))
    }
    pub fn crl(&self) -> PathBuf {
        self.certs_dir().join("crl.pem")
    }
    pub fn crl_number(&self) -> PathBuf {
        self.certs_dir().join("crl.number")
    }
    pub fn data_dir(&self) -> PathBuf {
        match &self.data {
            Some(d) => d.clone(),
            None => self.root.join("data"),
        }
    }
    pub fn journal_db(&self) -> PathBuf {
        self.data_dir().join("journal")
    }
    pub fn admin_socket(&self) -> PathBuf {
        self.data_dir().join("admin.sock")
    }
}

/// Creates `dir` and its parents, durably (see `durable_file`).
pub fn ensure_dir(dir: &Path) -> Result<(), HomeError> {
    durable_file::create_dir_all(dir, 0o755).map_err(|e| HomeError::io(dir, e))
}

/// Creates `dir` and its parents closed to other users (0700), durably.
pub fn ensure_private_dir(dir: &Path) -> Result<(), HomeError> {
    durable_file::create_private_dir(dir).map_err(|e| HomeError::io(dir, e))
}

/// Writes `bytes` to `path` atomically and durably: a temporary file in the
/// same folder, created with `mode`, synced, then renamed over `path`, then
/// the folder synced. A crash leaves either the old or the new content,
/// never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), HomeError> {
    write_atomic_many(&[(path, bytes, mode)])
}

/// Writes several files so they change together as closely as a file
/// system allows (see [`durable_file::write_atomic_many`]).
pub fn write_atomic_many(files: &[(&Path, &[u8], u32)]) -> Result<(), HomeError> {
    durable_file::write_atomic_many(files).map_err(|(p, e)| HomeError::io(&p, e))
}

/// Writes a private key: atomically, created with mode 0600.
pub fn write_key(path: &Path, pem: &str) -> Result<(), HomeError> {
    write_atomic(path, pem.as_bytes(), KEY_MODE)
}

/// Writes public material (certificate, CRL, config): atomically, mode 0644.
pub fn write_public(path: &Path, bytes: &[u8]) -> Result<(), HomeError> {
    write_atomic(path, bytes, PUBLIC_MODE)
}

/// Reads a whole file, naming it in the error.
pub fn read_to_string(path: &Path) -> Result<String, HomeError> {
    fs::read_to_string(path).map_err(|e| HomeError::io(path, e))
}

/// A hash of each file's path and content (changes when a file does, however
/// quickly and whatever its length: two writes of the same length within one
/// clock tick of the file system share an mtime).
pub fn stamp_files(paths: &[PathBuf]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for p in paths {
        p.hash(&mut h);
        match std::fs::read(p) {
            Ok(bytes) => {
                1u8.hash(&mut h);
                bytes.hash(&mut h);
            }
            Err(_) => 0u8.hash(&mut h),
        }
    }
    h.finish()
}
