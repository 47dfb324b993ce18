//! The broker's live state: the validated configuration, each partner's
//! compiled route table, the certificate inventory's states, the upstream
//! clients and the partner-facing TLS config, held behind `ArcSwap`s so the
//! request path reads them without a lock. `reload` rebuilds them from the
//! home's files; a file that fails validation is refused and the running
//! state stays in force. The watcher (`control::watch`) hears of file
//! changes through `notify` (inotify; a slow safety poll for file systems
//! that do not notify, and polling every tick where notifications are
//! unavailable) and of SIGHUP, and calls `reload` within a second.
//!
//! A reload tells what it did: the settings it changed and put in force,
//! and (against `gatehouse.toml` as read at start) those only a restart
//! applies, kept in `Snapshot::restart_pending` (`config::settings` decides
//! which is which). hyper's connection settings are rebuilt with `[server]`
//! and the TLS configuration with `trust_domain`.
//!
//! **No lost edit.** A file's stamp is a hash of its content (not its
//! length and mtime, which two quick writes of the same length share), and
//! every stamp is taken *before* the files it covers are read: a write that
//! lands while a reload reads leaves the stored stamp behind the files, so
//! the next look reloads again. The last edit is always picked up.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use rustls::ServerConfig;

use crate::ca::inventory::{Inventory, RecordStatus};
use crate::config::settings::{self, Apply};
use crate::config::{self, GatewayConfig, Partner, PartnerStatus};
use crate::gateway::relay::Upstream;
use crate::gateway::split::Split;
use crate::guard::limits::LimitState;
use crate::home::{Home, stamp_files};
use crate::identity::PartnerIdentity;
use crate::policy::RouteTable;
use crate::reason::Reason;
use crate::tls::partner_ca::{self, PartnerCa};
use crate::tls::{self, CertificateStatus, ServerMaterial};

/// Why the configuration could not be loaded (at start: the broker does
/// not start; on reload: the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// `gatehouse.toml` or a partner file fails validation (file and line).
    #[error(transparent)]
    Config(#[from] config::ConfigErrors),
    /// The certificate inventory cannot be read.
    #[error(transparent)]
    Inventory(#[from] crate::ca::CaError),
    /// TLS material (CA, CRL, server certificate or key) cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// Upstream clients cannot be built, one line per upstream.
    #[error("{}", .0.join("\n"))]
    Upstreams(Vec<String>),
    /// A rebuilt partner-facing TLS configuration failed.
    #[error(
        "the partner-facing TLS configuration was not rebuilt; the running one stays in force: {0}"
    )]
    TlsNotRebuilt(tls::TlsError),
}

/// Why `reload` kept the running state.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The files fail validation (the message names file and line).
    #[error(transparent)]
    Refused(LiveError),
    /// The same files were refused before (already reported).
    #[error("the same files were refused before")]
    RefusedAgain,
}

/// How often the watcher looks at the files.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// A partner, ready for the request path.
pub struct PartnerEntry {
    pub partner: Partner,
    pub routes: RouteTable,
}

/// What the request path needs to know about a certificate.
#[derive(Debug, Clone)]
pub struct CertEntry {
    pub partner: String,
    /// SHA-256 of the certificate as issued: a certificate with a known
    /// serial but other bytes (signed out of band) is not this one.
    pub fingerprint: String,
    pub status: RecordStatus,
    pub overlap_until: Option<i64>,
    pub not_after: i64,
}

/// One consistent view of the configuration.
pub struct Snapshot {
    pub gateway: GatewayConfig,
    /// Rate, quota and concurrency state (kept across reloads for unchanged limits).
    pub limits: Arc<LimitState>,
    pub partners: HashMap<String, PartnerEntry>,
    pub certs: HashMap<String, CertEntry>,
    /// The pools, by upstream name (a split upstream has none).
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// Partners' own CAs (`[own_ca]`).
    pub partner_cas: Vec<Arc<PartnerCa>>,
    /// The split upstreams, by name: each sends to pools in `upstreams`.
    pub splits: HashMap<String, Split>,
    /// `gatehouse.toml` keys whose value in force is still the one the
    /// broker started with: changed in the files, waiting for a restart.
    pub restart_pending: Vec<String>,
    stamps: Stamps,
}

impl Snapshot {
    /// Every setting of this snapshot, as shown and compared (secrets digested).
    pub fn settings(&self) -> BTreeMap<String, String> {
        let partners: Vec<&Partner> = self.partners.values().map(|e| &e.partner).collect();
        settings::flatten(&self.gateway, &partners).public()
    }

    /// Whether the certificate `serial` with SHA-256 `fingerprint` may be
    /// used at `now` (unix seconds). The inventory is looked up by serial
    /// and the fingerprint must match the one recorded at issue.
    pub fn cert_status(
        &self,
        serial: &str,
        fingerprint: &str,
        now: i64,
    ) -> Result<&CertEntry, Reason> {
        let c = self.certs.get(serial).ok_or(Reason::UnknownCertificate)?;
        if !c.fingerprint.eq_ignore_ascii_case(fingerprint) {
            return Err(Reason::CertificateMismatch);
        }
        match c.status {
            RecordStatus::Revoked => return Err(Reason::Revoked),
            RecordStatus::Superseded if c.overlap_until.is_none_or(|t| now >= t) => {
                return Err(Reason::Superseded);
            }
            _ => {}
        }
        if now >= c.not_after {
            return Err(Reason::Expired);
        }
        Ok(c)
    }

    /// The per-request check: the partner exists and is active, and its
    /// certificate is still valid, unrevoked and not superseded past overlap.
    pub fn admit(&self, id: &PartnerIdentity, now: i64) -> Result<&PartnerEntry, Reason> {
        if now >= id.not_after_unix {
            return Err(Reason::Expired);
        }
        if id.own_issuer.is_some() {
            // The partner's own CA: still configured for this partner, and
            // its CRL (as last reloaded) does not revoke the certificate.
            let ca = self
                .partner_cas
                .iter()
                .find(|c| c.partner == *id.partner)
                .ok_or(Reason::UnknownCa)?;
            if ca.revokes(&id.serial) {
                return Err(Reason::Revoked);
            }
        } else {
            let cert = self.cert_status(&id.serial, &id.fingerprint, now)?;
            if cert.partner != *id.partner {
                return Err(Reason::CertificatePartnerMismatch);
            }
        }
        let entry = self
            .partners
            .get(&*id.partner)
            .ok_or(Reason::UnknownPartner)?;
        if entry.partner.status == PartnerStatus::Suspended {
            return Err(Reason::PartnerSuspended);
        }
        Ok(entry)
    }
}

/// File stamps (content hashes) per group of inputs, to tell what changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Stamps {
    config: u64,
    tls: u64,
    upstream: u64,
}

fn files_in(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == ext))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn compute_stamps(
    home: &Home,
    gateway: Option<&GatewayConfig>,
    own_ca_files: Vec<PathBuf>,
) -> Stamps {
    let mut config_files = vec![home.config_file()];
    config_files.extend(files_in(&home.partners_dir(), "toml"));
    let mut tls_files = vec![
        home.ca_cert(),
        home.crl(),
        home.server_cert(),
        home.server_key(),
    ];
    tls_files.extend(files_in(&home.issued_dir(), "toml"));
    tls_files.extend(files_in(&home.ca_previous_dir(), "pem"));
    tls_files.push(home.root_cross());
    tls_files.extend(own_ca_files);
    Stamps {
        config: stamp_files(&config_files),
        tls: stamp_files(&tls_files),
        upstream: gateway.map_or(0, |g| stamp_upstreams(home, g)),
    }
}

/// The upstream clients' inputs: their settings as parsed, and the files
/// they load (the broker's client certificate, each upstream's CA and
/// client certificate). Taken before the clients read those files.
fn stamp_upstreams(home: &Home, gateway: &GatewayConfig) -> u64 {
    let mut files = vec![home.broker_client_cert(), home.broker_client_key()];
    for u in gateway.upstreams.values() {
        for f in [&u.ca, &u.client_cert, &u.client_key].into_iter().flatten() {
            files.push(home.resolve(f));
        }
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    toml::to_string(&gateway.upstreams).ok().hash(&mut h);
    stamp_files(&files).hash(&mut h);
    h.finish()
}

/// The certificate view the TLS verifier consults at each handshake.
#[derive(Debug)]
pub struct LiveCertStatus(pub Arc<ArcSwap<SnapshotCell>>);

/// Wrapper so `Debug` is cheap for the verifier.
pub struct SnapshotCell(pub Arc<Snapshot>);

impl std::fmt::Debug for SnapshotCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Snapshot")
    }
}

impl CertificateStatus for LiveCertStatus {
    fn check(&self, serial: &str, fingerprint: &str, now_unix: i64) -> Result<(), Reason> {
        let snap = self.0.load();
        let entry = snap.0.cert_status(serial, fingerprint, now_unix)?;
        match snap.0.partners.get(&entry.partner) {
            None => Err(Reason::UnknownPartner),
            Some(_) => Ok(()),
        }
    }

    fn own_ca(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Option<Result<(), (Reason, String)>> {
        let snap = self.0.load();
        let ca = partner_ca::find(
            &snap.0.partner_cas,
            end_entity,
            &snap.0.gateway.trust_domain,
        )?;
        Some(ca.verify(end_entity, intermediates, now))
    }
}

/// Every partner's `[own_ca]`, by partner id.
fn own_cas(snapshot: &Snapshot) -> BTreeMap<&str, &config::OwnCa> {
    snapshot
        .partners
        .iter()
        .filter_map(|(id, e)| e.partner.own_ca.as_ref().map(|o| (id.as_str(), o)))
        .collect()
}

/// The files of every partner's own CA (CA and CRL), to notice changes.
fn own_ca_files(home: &Home, snapshot: &Snapshot) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in snapshot.partners.values() {
        if let Some(own) = &e.partner.own_ca {
            v.push(home.resolve(&own.ca));
            if let Some(crl) = &own.crl {
                v.push(home.resolve(crl));
            }
        }
    }
    v.sort();
    v
}

/// The live state shared by every connection.
pub struct Live {
    pub home: Home,
    snapshot: Arc<ArcSwap<SnapshotCell>>,
    tls: ArcSwap<ServerConfig>,
    /// Partner files parsed by earlier reloads (re-parsed only when changed).
    partner_cache: std::sync::Mutex<config::PartnerCache>,
    /// Stamps of the last refused attempt: not retried until files change again.
    refused: std::sync::Mutex<Option<Stamps>>,
    /// The last TLS rebuild failed (e.g. a certificate and key caught between
    /// two renames): retried at every tick until it succeeds.
    tls_retry: std::sync::atomic::AtomicBool,
    /// Today's value totals per partner and currency (a single node's; in a
    /// fleet, the stand-in while the store does not answer).
    pub values: Arc<crate::risk::Ledger>,
    /// Nonces of accepted signatures (a single node's; in a fleet, the
    /// stand-in while the store does not answer).
    pub nonces: Arc<crate::risk::signature::nonce::NonceLog>,
    /// The mirrors' slots, counts, learned noise and latest mismatches
    /// (kept across reloads).
    pub mirrors: Arc<crate::gateway::mirror::board::MirrorBoard>,
    /// hyper's connection settings from the live `[server]` table.
    http: ArcSwap<auto::Builder<TokioExecutor>>,
    /// `gatehouse.toml` as it was when the broker started: the values of
    /// the settings only a restart applies.
    started: GatewayConfig,
    started_settings: BTreeMap<String, String>,
}

/// What a reload did.
#[derive(Debug, Default, Clone)]
pub struct ReloadOutcome {
    pub changed: bool,
    pub tls_rebuilt: bool,
    pub partners: usize,
    /// Settings this reload changed and put in force (`server.idle_timeout`,
    /// `partners/acme.toml limits.burst`).
    pub applied: Vec<String>,
    /// Settings this reload saw changed that only a restart applies.
    pub restart_now: Vec<String>,
    /// Every setting waiting for a restart after this reload (those of
    /// earlier reloads too).
    pub restart_pending: Vec<String>,
    /// What this reload read but could not put in force (the running one
    /// stays; retried at the next look).
    pub not_applied: Vec<String>,
    /// What changed for the audit trail: certificates issued, superseded or
    /// revoked, partners added, removed, suspended or resumed (by the CLI or
    /// by hand), one line each.
    pub changes: Vec<AuditedChange>,
}

/// One audited change seen by a reload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditedChange {
    /// `cert_issued`, `cert_superseded`, `cert_revoked`, `partner_added`, ...
    pub kind: &'static str,
    pub partner: String,
    pub serial: Option<String>,
}

/// The audited differences between two snapshots.
fn diff(old: &Snapshot, new: &Snapshot) -> Vec<AuditedChange> {
    let mut out = Vec::new();
    for (serial, c) in &new.certs {
        let kind = match old.certs.get(serial) {
            None => Some("cert_issued"),
            Some(o) if o.status != c.status => match c.status {
                RecordStatus::Revoked => Some("cert_revoked"),
                RecordStatus::Superseded => Some("cert_superseded"),
                RecordStatus::Active => Some("cert_reactivated"),
            },
            _ => None,
        };
        if let Some(kind) = kind {
            out.push(AuditedChange {
                kind,
                partner: c.partner.clone(),
                serial: Some(serial.clone()),
            });
        }
    }
    for (id, p) in &new.partners {
        let kind = match old.partners.get(id) {
            None => Some("partner_added"),
            Some(o) if o.partner.status != p.partner.status => match p.partner.status {
                PartnerStatus::Suspended => Some("partner_suspended"),
                PartnerStatus::Active => Some("partner_resumed"),
            },
            Some(o) if o.partner != p.partner => Some("partner_changed"),
            _ => None,
        };
        if let Some(kind) = kind {
            out.push(AuditedChange {
                kind,
                partner: id.clone(),
                serial: None,
            });
        }
    }
    for id in old
        .partners
        .keys()
        .filter(|id| !new.partners.contains_key(*id))
    {
        out.push(AuditedChange {
            kind: "partner_removed",
            partner: id.clone(),
            serial: None,
        });
    }
    out.sort_by(|a, b| (a.partner.as_str(), a.kind).cmp(&(b.partner.as_str(), b.kind)));
    out
}

impl Live {
    /// Loads everything; any problem is an error (the broker does not start).
    pub fn load(home: Home) -> Result<Live, LiveError> {
        let mut cache = config::PartnerCache::default();
        let stamps = compute_stamps(&home, None, Vec::new());
        let mut snapshot = build(&home, None, &mut cache, stamps)?;
        // Partners' own CA files are known once the partner files are read:
        // stamped now, so the first look does not take them for a change.
        let own_files = own_ca_files(&home, &snapshot);
        if !own_files.is_empty() {
            snapshot.stamps.tls = compute_stamps(&home, None, own_files).tls;
        }
        let gateway = snapshot.gateway.clone();
        let snapshot = Arc::new(ArcSwap::from_pointee(SnapshotCell(Arc::new(snapshot))));
        let tls = build_tls(&home, &gateway, snapshot.clone())?;
        let http = crate::gateway::http_builder(&gateway.server);
        Ok(Live {
            home,
            snapshot,
            tls: ArcSwap::new(tls),
            refused: std::sync::Mutex::new(None),
            partner_cache: std::sync::Mutex::new(cache),
            tls_retry: std::sync::atomic::AtomicBool::new(false),
            values: Arc::default(),
            nonces: Arc::default(),
            mirrors: Arc::default(),
            http: ArcSwap::from_pointee(http),
            started_settings: settings::flatten_gateway(&gateway).public(),
            started: gateway,
        })
    }

    /// `gatehouse.toml` as the broker read it at start (the listeners,
    /// node id and store it runs with, whatever the files say now).
    pub fn started(&self) -> &GatewayConfig {
        &self.started
    }

    /// The `gatehouse.toml` settings the broker started with, as shown and
    /// compared (secrets digested).
    pub fn started_settings(&self) -> &BTreeMap<String, String> {
        &self.started_settings
    }

    /// Settings changed in the files that wait for a restart.
    pub fn restart_pending(&self) -> Vec<String> {
        self.snapshot().restart_pending.clone()
    }

    /// hyper's connection settings in force now.
    pub fn http_builder(&self) -> Arc<auto::Builder<TokioExecutor>> {
        self.http.load_full()
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load().0.clone()
    }

    /// The current partner-facing TLS config.
    pub fn tls_config(&self) -> Arc<ServerConfig> {
        self.tls.load_full()
    }

    /// Rebuilds the partner-facing TLS config. On failure the running
    /// config stays and the next `reload` tries again, even if no file
    /// changes in between.
    fn rebuild_tls(&self) -> Result<(), LiveError> {
        use std::sync::atomic::Ordering;
        match build_tls(&self.home, &self.snapshot().gateway, self.snapshot.clone()) {
            Ok(cfg) => {
                self.tls.store(cfg);
                self.tls_retry.store(false, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                self.tls_retry.store(true, Ordering::Relaxed);
                Err(LiveError::TlsNotRebuilt(e))
            }
        }
    }

    /// Whether a failed TLS rebuild waits to be retried.
    pub fn tls_retry_pending(&self) -> bool {
        self.tls_retry.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The folders whose files make up the configuration (never `data/`).
    pub fn watched_dirs(&self) -> Vec<PathBuf> {
        let h = &self.home;
        let mut dirs = vec![
            h.root().to_path_buf(),
            h.partners_dir(),
            h.certs_dir(),
            h.issued_dir(),
            h.ca_previous_dir(),
        ];
        // Partners' own CAs and CRLs (a CRL refreshed in place bites at once).
        for f in own_ca_files(h, &self.snapshot()) {
            if let Some(parent) = f.parent() {
                dirs.push(parent.to_path_buf());
            }
        }
        for u in self.snapshot().gateway.upstreams.values() {
            for f in [&u.ca, &u.client_cert, &u.client_key].into_iter().flatten() {
                if let Some(parent) = h.resolve(f).parent() {
                    dirs.push(parent.to_path_buf());
                }
            }
        }
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Re-reads the files if they changed (or `force`). On a validation
    /// failure the running state stays and the error names file and line.
    pub fn reload(&self, force: bool) -> Result<ReloadOutcome, ReloadError> {
        let current = self.snapshot();
        let stamps = compute_stamps(
            &self.home,
            Some(&current.gateway),
            own_ca_files(&self.home, &current),
        );
        if !force && stamps == current.stamps {
            if self.tls_retry.load(std::sync::atomic::Ordering::Relaxed) {
                self.rebuild_tls().map_err(ReloadError::Refused)?;
                return Ok(ReloadOutcome {
                    changed: true,
                    tls_rebuilt: true,
                    partners: current.partners.len(),
                    restart_pending: current.restart_pending.clone(),
                    ..ReloadOutcome::default()
                });
            }
            return Ok(ReloadOutcome::default());
        }
        let mut refused = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if !force && refused.as_ref() == Some(&stamps) {
            // Same broken files as last time: the error was already reported.
            return Err(ReloadError::RefusedAgain);
        }
        let mut cache = self.partner_cache.lock().unwrap_or_else(|p| p.into_inner());
        if force {
            // SIGHUP: read every file afresh.
            cache.clear();
        }
        let mut next = match build(&self.home, Some(&current), &mut cache, stamps.clone()) {
            Ok(n) => n,
            Err(e) => {
                *refused = Some(stamps);
                return Err(ReloadError::Refused(e));
            }
        };
        *refused = None;
        drop(refused);
        // Which settings changed, and which of them only a restart applies.
        let setting_changes = settings::changes(&current.settings(), &next_flat(&next));
        next.restart_pending = settings::changes(
            &self.started_settings,
            &settings::flatten_gateway(&next.gateway),
        )
        .into_iter()
        .filter(|c| c.apply == Apply::Restart)
        .map(|c| c.key)
        .collect();
        let (applied, restart_now): (Vec<_>, Vec<_>) = setting_changes
            .into_iter()
            .partition(|c| c.apply == Apply::Live);
        // A partner's own CA added, removed or moved: its files are stamped
        // from now on (taken after they were read: a change in between is
        // seen at the next change or SIGHUP), and the TLS configuration is
        // rebuilt (the CA hints it announces, no session resumed across).
        let own_cas_changed = own_cas(&next) != own_cas(&current);
        let next_own_files = own_ca_files(&self.home, &next);
        if next_own_files != own_ca_files(&self.home, &current) {
            next.stamps.tls = compute_stamps(&self.home, None, next_own_files).tls;
        }
        let tls_changed = force
            || own_cas_changed
            || next.stamps.tls != current.stamps.tls
            || next.gateway.trust_domain != current.gateway.trust_domain;
        if toml::to_string(&next.gateway.server).ok()
            != toml::to_string(&current.gateway.server).ok()
        {
            // New connections take the new timeouts and sizes; open ones
            // keep theirs.
            self.http
                .store(Arc::new(crate::gateway::http_builder(&next.gateway.server)));
        }
        let partners = next.partners.len();
        let changes = diff(&current, &next);
        let restart_pending = next.restart_pending.clone();
        self.snapshot.store(Arc::new(SnapshotCell(Arc::new(next))));
        let mut not_applied = Vec::new();
        let mut tls_rebuilt = false;
        if tls_changed {
            // A fresh config also means a fresh session cache and ticketer:
            // no session from before a revocation can be resumed. On failure
            // the rest of the reload is in force, and the TLS part is said
            // not to be (and retried at every look).
            match self.rebuild_tls() {
                Ok(()) => tls_rebuilt = true,
                Err(e) => not_applied.push(e.to_string()),
            }
        }
        Ok(ReloadOutcome {
            changed: true,
            tls_rebuilt,
            not_applied,
            partners,
            applied: applied.into_iter().map(|c| c.key).collect(),
            restart_now: restart_now.into_iter().map(|c| c.key).collect(),
            restart_pending,
            changes,
        })
    }
}

/// Every setting of a snapshot being built.
fn next_flat(next: &Snapshot) -> settings::Flat {
    let partners: Vec<&Partner> = next.partners.values().map(|e| &e.partner).collect();
    settings::flatten(&next.gateway, &partners)
}

fn build_tls(
    home: &Home,
    gateway: &GatewayConfig,
    cell: Arc<ArcSwap<SnapshotCell>>,
) -> Result<Arc<ServerConfig>, tls::TlsError> {
    // Trusted: the issuing CA (first in ca.pem) and every CA a rollover
    // keeps until it is retired (certs/ca-previous/*.pem).
    let mut anchors = tls::load_certs(&home.ca_cert())?;
    anchors.truncate(1);
    for path in files_in(&home.ca_previous_dir(), "pem") {
        let mut certs = tls::load_certs(&path)?;
        certs.truncate(1);
        anchors.extend(certs);
    }
    let crls = tls::load_crls(&home.crl())?;
    let chain = tls::load_certs(&home.server_cert())?;
    let key = tls::load_key(&home.server_key())?;
    let partner_ca_subjects = cell
        .load()
        .0
        .partner_cas
        .iter()
        .flat_map(|c| c.subjects.iter().cloned())
        .collect();
    tls::server_config(
        ServerMaterial {
            trust_anchors: anchors,
            partner_ca_subjects,
            crls,
            server_chain: chain,
            server_key: key,
        },
        &gateway.trust_domain,
        Arc::new(LiveCertStatus(cell)),
    )
}

/// Builds a snapshot from the files. Upstream clients are reused from
/// `previous` when their inputs did not change (their pools stay warm).
/// `stamps` were taken before anything is read here (their `upstream` part
/// is taken again below, once the new gateway names the upstream files).
fn build(
    home: &Home,
    previous: Option<&Snapshot>,
    cache: &mut config::PartnerCache,
    mut stamps: Stamps,
) -> Result<Snapshot, LiveError> {
    let gateway = config::load_gateway(home)?;
    // Parsed partner files stay valid while gatehouse.toml (their upstream
    // names) is unchanged.
    let same_gateway = previous
        .is_some_and(|p| toml::to_string(&p.gateway).ok() == toml::to_string(&gateway).ok());
    if !same_gateway {
        cache.clear();
    }
    let partners = config::load_partners_cached(home, &gateway, cache)?;
    let loaded = config::Loaded { gateway, partners };
    stamps.upstream = stamp_upstreams(home, &loaded.gateway);
    let inventory = Inventory::load(home)?;
    let certs = inventory
        .certs
        .into_values()
        .map(|c| {
            (
                c.serial,
                CertEntry {
                    partner: c.partner,
                    fingerprint: c.fingerprint,
                    status: c.status,
                    overlap_until: c.overlap_until.map(|t| t.unix_timestamp()),
                    not_after: c.not_after.unix_timestamp(),
                },
            )
        })
        .collect();
    let upstreams = match previous {
        Some(p) if p.stamps.upstream == stamps.upstream => p.upstreams.clone(),
        _ => {
            let mut m = HashMap::new();
            let mut errors = Vec::new();
            for (name, settings) in &loaded.gateway.upstreams {
                if settings.is_split() {
                    continue;
                }
                let before = previous.and_then(|p| p.upstreams.get(name));
                match Upstream::build(name, settings, home, before.map(|b| b.as_ref())) {
                    Ok(u) => {
                        m.insert(name.clone(), Arc::new(u));
                    }
                    Err(e) => errors.push(format!("{}: {e}", home.config_file().display())),
                }
            }
            if !errors.is_empty() {
                return Err(LiveError::Upstreams(errors));
            }
            // Endpoints the new pools no longer have drain. A pool in use
            // keeps its upkeep (health checks, DNS refresh) going on the
            // new settings at once, not only from its next request.
            for (name, old) in previous.iter().flat_map(|p| p.upstreams.iter()) {
                match m.get(name) {
                    Some(new) => {
                        new.retire(old);
                        if old.upkeep_running() {
                            new.ensure_upkeep();
                        }
                    }
                    None => old.retire_all(),
                }
            }
            m
        }
    };
    let splits = loaded
        .gateway
        .upstreams
        .iter()
        .filter(|(_, s)| s.is_split())
        .map(|(name, s)| (name.clone(), Split::new(&s.split)))
        .collect();
    let limits = Arc::new(LimitState::build(
        &loaded.partners,
        previous.map(|p| p.limits.as_ref()),
    ));
    let partner_cas = partner_ca::build_all(
        loaded
            .partners
            .iter()
            .filter_map(|p| p.own_ca.as_ref().map(|o| (p.id.as_str(), o))),
        |p| home.resolve(p),
    )?;
    let partners = loaded
        .partners
        .into_iter()
        .map(|p| {
            let routes = RouteTable::compile(&p.routes);
            (p.id.clone(), PartnerEntry { partner: p, routes })
        })
        .collect();
    let snapshot = Snapshot {
        gateway: loaded.gateway,
        limits,
        partners,
        certs,
        upstreams,
        partner_cas,
        splits,
        restart_pending: previous
            .map(|p| p.restart_pending.clone())
            .unwrap_or_default(),
        stamps,
    };
    Ok(snapshot)
}

impl crate::guard::Throttles for Live {
    fn set_throttle(&self, partner: &str, per_minute: Option<f64>) {
        self.snapshot().limits.set_throttle(partner, per_minute);
    }
}
