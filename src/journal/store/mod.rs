//! The journal's storage: the one place that knows sled. Four trees —
//! `segments` (first seq BE → the records of one group commit, see
//! `segment`), `partner_index` (one entry per partner per run of records, see
//! `index` and `index_tail`), `checkpoints` (seq BE → signed checkpoint)
//! and `meta` (`base`: the retention cut; `indexed`: how far the partner
//! index is complete).
//!
//! This file owns the handle: opening (and reopening after a write
//! failure), the broker's `state` tree and statistics. The rest is one job
//! per file: `sled_config` (sled's settings: cache, log segment size),
//! `keys` (key layout), `segment` (the segment value), `index`
//! (the partner index entry), `index_tail` (the entries the writer keeps
//! open, and the records not yet in the index), `migrate` (the older one-value-per-record
//! layout, converted on open), `read` (point and range reads, export),
//! `query` (`log query`), `verify` (the chain and checkpoints), `prune`
//! (retention) and `write` (what the writer thread stores: group commits,
//! checkpoints, truncation, probes).
//!
//! Writes of new records come only from the writer thread (`writer.rs`);
//! `prune` is the only removal and keeps a signed checkpoint at the cut.

mod index;
mod index_tail;
mod keys;
mod migrate;
mod prune;
mod query;
mod read;
pub(in crate::journal) mod segment;
pub(in crate::journal) mod sled_config;
mod verify;
mod write;

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::JournalError;
#[cfg(test)]
pub(super) use index_tail::INDEX_LAG;
pub(super) use index_tail::IndexTail;
pub(super) use keys::be;
use keys::seq_of;
pub use prune::PruneReport;
pub use query::Query;
pub use read::ExportItem;
pub use verify::{VerifyFailure, VerifyReport};
pub(super) use write::CommitRecord;

const META_BASE: &[u8] = b"base";
/// The tree of segments (first seq BE → segment value).
pub(in crate::journal) const SEGMENTS: &str = "segments";
/// The partner index tree.
pub(in crate::journal) const PARTNER_INDEX: &str = "partner_index";
const META_PROBE: &[u8] = b"probe";

/// Statistics for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    pub base_seq: u64,
    pub last_seq: u64,
    pub checkpoints: u64,
    pub size_on_disk: u64,
}

/// The open sled database and its trees.
pub(super) struct Trees {
    pub(super) db: sled::Db,
    pub(super) segments: sled::Tree,
    pub(super) index: sled::Tree,
    pub(super) checkpoints: sled::Tree,
    pub(super) meta: sled::Tree,
    /// Plain bytes at which a new segment closes (by sled's log segment
    /// size, see `segment::max_bytes_for`).
    pub(super) segment_bytes: usize,
}

impl Trees {
    /// The journal's trees in the database `db` opened at `path`.
    fn of(db: sled::Db, path: &Path) -> Result<Trees, JournalError> {
        let tree = |name: &str| db.open_tree(name).map_err(JournalError::from);
        Ok(Trees {
            segments: tree(SEGMENTS)?,
            index: tree(PARTNER_INDEX)?,
            checkpoints: tree("checkpoints")?,
            meta: tree("meta")?,
            segment_bytes: segment::max_bytes_for(sled_config::segment_size(path)),
            db,
        })
    }
}

/// Handle on the journal database (cheap to clone). Every clone sees the
/// same database, also after [`Store::reopen`] replaced it (after a write
/// failure: sled's errors are sticky until the database is opened anew).
#[derive(Clone)]
pub struct Store {
    path: std::path::PathBuf,
    trees: Arc<RwLock<Option<Arc<Trees>>>>,
}

fn corrupt(seq: u64, message: impl Into<String>) -> JournalError {
    JournalError::Corrupt {
        seq,
        message: message.into(),
    }
}

/// Opens sled with `config` at `path`. sled releases its file lock from a
/// background thread a moment after the last handle is dropped, so a lock
/// held by a just-closed handle is waited for (up to about five seconds,
/// for a loaded machine) before `Locked` is reported.
fn open_locked(path: &Path, config: impl Fn() -> sled::Config) -> Result<sled::Db, JournalError> {
    let mut tries = 0;
    loop {
        match config().open() {
            Ok(db) => return Ok(db),
            Err(e) => match JournalError::open(path, e) {
                JournalError::Locked { .. } if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return Err(other),
            },
        }
    }
}

/// The plain form of the stored segment keyed `first` (decompressed if
/// need be); a damaged value is a `Corrupt` error at `first`.
fn plain(first: u64, v: &[u8]) -> Result<segment::Plain<'_>, JournalError> {
    segment::Plain::of(v).map_err(|e| corrupt(first, e.to_string()))
}

impl Store {
    /// Opens (or creates) the database at `path` for reading and writing
    /// (a lock just released by a closed handle is waited for, see
    /// `open_locked`).
    pub fn open(path: &Path) -> Result<Store, JournalError> {
        let mut cleaned = false;
        let db = loop {
            match open_locked(path, || sled_config::config(path)) {
                Ok(db) => break db,
                // Not locked, so no other process has it open: remove
                // what a failed write (a full disk) may have left in
                // sled's folder and try once more (see `space`).
                Err(JournalError::Open { .. })
                    if !cleaned && !super::space::remove_sled_leftovers(path).is_empty() =>
                {
                    cleaned = true;
                }
                Err(other) => return Err(other),
            }
        };
        let trees = Trees::of(db, path)?;
        // The folder entries of new files are durable before anything
        // written into them is reported durable (sled syncs the database's
        // own folder; this covers the folders above it).
        for dir in [Some(path), path.parent()].into_iter().flatten() {
            crate::durable_file::sync_dir(dir).map_err(|e| JournalError::Open {
                path: dir.to_path_buf(),
                message: format!("cannot sync the folder: {e}"),
            })?;
        }
        migrate::from_records_layout(&trees)?;
        Ok(Store {
            path: path.to_path_buf(),
            trees: Arc::new(RwLock::new(Some(Arc::new(trees)))),
        })
    }

    /// The open database, or an error while [`Store::reopen`] replaces it.
    pub(super) fn t(&self) -> Result<Arc<Trees>, JournalError> {
        self.trees
            .read()
            .ok()
            .and_then(|g| g.clone())
            .ok_or_else(|| {
                JournalError::Storage(
                    "the journal database is being reopened after a write failure; retry in a moment"
                        .into(),
                )
            })
    }

    /// Closes the database and opens it again from disk: the way out of a
    /// sled write error, which is sticky for the life of the handle. Readers
    /// in progress are waited for (up to 5 s; sled allows one open handle
    /// per process); meanwhile every call on any clone answers an error.
    pub(super) fn reopen(&self) -> Result<(), JournalError> {
        let old = self
            .trees
            .write()
            .map_err(|_| JournalError::Storage("journal handle lock poisoned".into()))?
            .take();
        if let Some(old) = old {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut old = old;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(trees) => {
                        drop(trees);
                        break;
                    }
                    Err(still) if Instant::now() < deadline => {
                        old = still;
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(still) => {
                        // Put it back: better a failing handle than none.
                        if let Ok(mut g) = self.trees.write() {
                            *g = Some(still);
                        }
                        return Err(JournalError::Storage(
                            "cannot reopen the journal database: readers still hold it".into(),
                        ));
                    }
                }
            }
        }
        let fresh = Store::open(&self.path)?;
        let trees = fresh.t()?;
        drop(fresh);
        let mut g = self
            .trees
            .write()
            .map_err(|_| JournalError::Storage("journal handle lock poisoned".into()))?;
        *g = Some(trees);
        Ok(())
    }

    /// Opens an existing database for reading and writing; refuses to
    /// create one.
    pub fn open_existing(path: &Path) -> Result<Store, JournalError> {
        if !path.join("db").exists() && !path.join("conf").exists() {
            return Err(JournalError::NoJournal(path.to_path_buf()));
        }
        Store::open(path)
    }

    /// Opens an existing database for reading only (`log query`, `export`,
    /// `verify`, `tail` on a stopped broker): sled opens its file
    /// without write access and writes nothing — no snapshot, no zeroing of
    /// its log's free space (`sled_config::read_only`) — so the open costs
    /// reads alone, and every write through this handle fails. Still one
    /// process at a time (sled's lock). A database that needs writing
    /// before it can be read (the older layout to convert, a tree to
    /// create) is opened read-write instead, as is one sled refuses to open
    /// read-only for any reason other than the lock.
    pub fn open_read_only(path: &Path) -> Result<Store, JournalError> {
        if !path.join("db").exists() && !path.join("conf").exists() {
            return Err(JournalError::NoJournal(path.to_path_buf()));
        }
        let db = match open_locked(path, || sled_config::read_only(path)) {
            Ok(db) => db,
            Err(e @ JournalError::Locked { .. }) => return Err(e),
            Err(_) => return Store::open(path),
        };
        let names = db.tree_names();
        let all_there = [SEGMENTS, PARTNER_INDEX, "checkpoints", "meta"]
            .iter()
            .all(|n| names.iter().any(|x| x.as_ref() == n.as_bytes()));
        if !all_there || migrate::needed(&db) {
            drop(db);
            return Store::open(path);
        }
        let trees = Trees::of(db, path)?;
        Ok(Store {
            path: path.to_path_buf(),
            trees: Arc::new(RwLock::new(Some(Arc::new(trees)))),
        })
    }

    /// Stores a piece of broker state (e.g. anomaly baselines) beside the
    /// journal, in the `state` tree, and flushes it (durable when this
    /// returns). Not part of the hash chain.
    pub fn put_state(&self, key: &str, value: &[u8]) -> Result<(), JournalError> {
        let tree = self
            .t()?
            .db
            .open_tree("state")
            .map_err(JournalError::from)?;
        tree.insert(key.as_bytes(), value)
            .map_err(JournalError::from)?;
        self.t()?.db.flush()?;
        Ok(())
    }

    /// Reads a piece of broker state stored with `put_state`.
    pub fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        let tree = self
            .t()?
            .db
            .open_tree("state")
            .map_err(JournalError::from)?;
        Ok(tree
            .get(key.as_bytes())
            .map_err(JournalError::from)?
            .map(|v| v.to_vec()))
    }

    pub fn flush(&self) -> Result<(), JournalError> {
        self.t()?.db.flush()?;
        Ok(())
    }

    /// The retention cut: records up to here were pruned (0: none).
    pub fn base_seq(&self) -> Result<u64, JournalError> {
        Ok(self
            .t()?
            .meta
            .get(META_BASE)?
            .and_then(|v| seq_of(&v))
            .unwrap_or(0))
    }

    pub fn stats(&self) -> Result<StoreStats, JournalError> {
        Ok(StoreStats {
            base_seq: self.base_seq()?,
            last_seq: self.last()?.0,
            checkpoints: self.t()?.checkpoints.len() as u64,
            size_on_disk: self.t()?.db.size_on_disk().unwrap_or(0),
        })
    }

    /// Number of stored partner index entries (for tests and status; the
    /// writer's open ones are stored at shutdown).
    pub fn index_len(&self) -> usize {
        self.t().map(|t| t.index.len()).unwrap_or(0)
    }
}
