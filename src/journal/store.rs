//! The journal's storage: the one place that knows sled. Four trees —
//! `records` (seq BE → `prev_hash || hash || canonical`), `by_partner`
//! (`len u16 || partner || time BE || seq BE` → empty), `checkpoints`
//! (seq BE → signed checkpoint) and `meta` (`base`: the retention cut) —
//! and every read: tail, query, export, verify, prune.
//!
//! Writes of new records come only from the writer thread (`writer.rs`);
//! `prune` is the only removal and keeps a signed checkpoint at the cut.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::JournalError;
use super::checkpoint::{Checkpoint, CheckpointKind, Signer, Verifier};
use super::record::{self, GENESIS_HASH, Record};
use crate::event::{Decision, EventKind};

const META_BASE: &[u8] = b"base";
const META_PROBE: &[u8] = b"probe";

/// Filters for `log query`. `since_ms` is inclusive, `until_ms` exclusive.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Query {
    pub partner: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub decision: Option<Decision>,
    pub status: Option<u16>,
    pub kind: Option<EventKind>,
    /// At most this many records: the oldest matches first, or with
    /// `reverse` the newest first.
    pub limit: usize,
    #[serde(default)]
    pub reverse: bool,
}

impl Query {
    fn matches(&self, r: &Record) -> bool {
        let e = &r.event;
        self.partner
            .as_ref()
            .is_none_or(|p| e.partner.as_ref() == Some(p))
            && self.since_ms.is_none_or(|s| e.time_ms >= s)
            && self.until_ms.is_none_or(|u| e.time_ms < u)
            && self.decision.is_none_or(|d| e.decision == d)
            && self.status.is_none_or(|s| e.status == Some(s))
            && self.kind.is_none_or(|k| {
                // Refused handshakes include their aggregated summaries.
                e.kind == k
                    || (k == EventKind::Handshake && e.kind == EventKind::HandshakeAggregate)
            })
    }
}

/// One item of an export stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportItem {
    Record(Box<Record>),
    Checkpoint(Checkpoint),
}

/// The first problem `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyFailure {
    pub seq: u64,
    pub reason: String,
}

/// What `verify` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// Verification starts after this sequence number (0, or the prune cut).
    pub base_seq: u64,
    pub last_seq: u64,
    pub records: u64,
    pub checkpoints: u64,
    pub last_checkpoint_seq: Option<u64>,
    /// Records after the last signed checkpoint (chained, not yet signed).
    pub unsigned_tail: u64,
    pub failure: Option<VerifyFailure>,
}

/// What `prune` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub removed: u64,
    /// Verification now starts after this sequence number.
    pub base_seq: u64,
}

/// Statistics for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    pub base_seq: u64,
    pub last_seq: u64,
    pub checkpoints: u64,
    pub size_on_disk: u64,
}

/// What one verify thread found in its range of records.
struct ChunkResult {
    first_prev: Option<[u8; 32]>,
    last_hash: [u8; 32],
    count: u64,
    failure: Option<VerifyFailure>,
    checkpoint_hashes: Vec<(u64, [u8; 32])>,
}

/// Splits `lo..=hi` into `parts` ranges (default: two per core — page
/// loads wait on reads and allocation, so oversubscribing helps — with at
/// least 50,000 records each).
fn chunk_ranges(lo: u64, hi: u64, parts: Option<u64>) -> Vec<(u64, u64)> {
    if hi < lo {
        return Vec::new();
    }
    let n = hi - lo + 1;
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1) as u64;
    let parts = parts.unwrap_or((2 * cores).min(n / 50_000)).clamp(1, n);
    let size = n.div_ceil(parts);
    (0..parts)
        .map(|i| (lo + i * size, (lo + (i + 1) * size - 1).min(hi)))
        .filter(|(a, b)| a <= b)
        .collect()
}

/// Handle on the journal database (cheap to clone).
#[derive(Clone)]
pub struct Store {
    pub(super) db: sled::Db,
    pub(super) records: sled::Tree,
    pub(super) index: sled::Tree,
    pub(super) checkpoints: sled::Tree,
    pub(super) meta: sled::Tree,
}

pub(super) fn be(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn seq_of(key: &[u8]) -> Option<u64> {
    let a: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(a))
}

/// Times sort correctly as unsigned big-endian after flipping the sign bit.
fn time_key(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

fn partner_prefix(partner: &str) -> Option<Vec<u8>> {
    let len = u16::try_from(partner.len()).ok()?;
    let mut k = Vec::with_capacity(2 + partner.len() + 16);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(partner.as_bytes());
    Some(k)
}

/// Index key of a record: `len u16 || partner || time BE (sign flipped) || seq BE`.
pub(super) fn index_key(partner: &str, time_ms: i64, seq: u64) -> Option<Vec<u8>> {
    let mut k = partner_prefix(partner)?;
    k.extend_from_slice(&time_key(time_ms));
    k.extend_from_slice(&be(seq));
    Some(k)
}

fn corrupt(seq: u64, message: impl Into<String>) -> JournalError {
    JournalError::Corrupt {
        seq,
        message: message.into(),
    }
}

/// `time_ms` of a stored record without a full decode.
fn stored_time(v: &[u8]) -> Option<i64> {
    let c = v.get(64 + 9..64 + 17)?;
    Some(i64::from_be_bytes(c.try_into().ok()?))
}

/// sled's page cache. Its default (1 GiB) let a busy broker's resident size
/// grow with the journal (531 MB after 45 s of keep-alive load; 154 MB with
/// this cap, same CPU);
/// appends touch only the tail, and queries and verification read on from
/// disk.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

impl Store {
    /// Opens (or creates) the database at `path`.
    ///
    /// sled releases its file lock from a background thread a moment after
    /// the last handle is dropped, so a lock held by a just-closed handle
    /// is waited for (up to about five seconds, for a loaded machine) before `Locked` is reported.
    pub fn open(path: &Path) -> Result<Store, JournalError> {
        let mut tries = 0;
        let db = loop {
            match sled::Config::new()
                .path(path)
                .cache_capacity(CACHE_BYTES)
                .open()
            {
                Ok(db) => break db,
                Err(e) => match JournalError::open(path, e) {
                    JournalError::Locked { .. } if tries < 100 => {
                        tries += 1;
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    other => return Err(other),
                },
            }
        };
        let tree = |name: &str| db.open_tree(name).map_err(JournalError::from);
        Ok(Store {
            records: tree("records")?,
            index: tree("by_partner")?,
            checkpoints: tree("checkpoints")?,
            meta: tree("meta")?,
            db,
        })
    }

    /// Opens an existing database for reading; refuses to create one.
    pub fn open_existing(path: &Path) -> Result<Store, JournalError> {
        if !path.join("db").exists() && !path.join("conf").exists() {
            return Err(JournalError::NoJournal(path.to_path_buf()));
        }
        Store::open(path)
    }

    /// Stores a piece of broker state (e.g. anomaly baselines) beside the
    /// journal, in the `state` tree. Not part of the hash chain.
    pub fn put_state(&self, key: &str, value: &[u8]) -> Result<(), JournalError> {
        let tree = self.db.open_tree("state").map_err(JournalError::from)?;
        tree.insert(key.as_bytes(), value)
            .map_err(JournalError::from)?;
        Ok(())
    }

    /// Reads a piece of broker state stored with `put_state`.
    pub fn get_state(&self, key: &str) -> Result<Option<Vec<u8>>, JournalError> {
        let tree = self.db.open_tree("state").map_err(JournalError::from)?;
        Ok(tree
            .get(key.as_bytes())
            .map_err(JournalError::from)?
            .map(|v| v.to_vec()))
    }

    pub fn flush(&self) -> Result<(), JournalError> {
        self.db.flush()?;
        Ok(())
    }

    /// The retention cut: records up to here were pruned (0: none).
    pub fn base_seq(&self) -> Result<u64, JournalError> {
        Ok(self
            .meta
            .get(META_BASE)?
            .and_then(|v| seq_of(&v))
            .unwrap_or(0))
    }

    pub fn checkpoint(&self, seq: u64) -> Result<Option<Checkpoint>, JournalError> {
        match self.checkpoints.get(be(seq))? {
            None => Ok(None),
            Some(v) => Checkpoint::from_stored(seq, &v)
                .map(Some)
                .ok_or_else(|| corrupt(seq, "stored checkpoint is malformed")),
        }
    }

    /// The last sequence number and its hash (genesis: 0 and 32 zero bytes).
    pub fn last(&self) -> Result<(u64, [u8; 32]), JournalError> {
        if let Some((k, v)) = self.records.last()? {
            let seq = seq_of(&k).ok_or_else(|| corrupt(0, "record key is not 8 bytes"))?;
            let (_, hash, _) =
                record::split_stored(&v).ok_or_else(|| corrupt(seq, "stored value too short"))?;
            return Ok((seq, hash));
        }
        let base = self.base_seq()?;
        if base == 0 {
            return Ok((0, GENESIS_HASH));
        }
        match self.checkpoint(base)? {
            Some(c) => Ok((base, c.hash)),
            None => Err(corrupt(
                base,
                "the journal was pruned here but the checkpoint at the cut is missing",
            )),
        }
    }

    pub fn last_checkpoint_seq(&self) -> Result<Option<u64>, JournalError> {
        Ok(self.checkpoints.last()?.and_then(|(k, _)| seq_of(&k)))
    }

    pub fn get(&self, seq: u64) -> Result<Option<Record>, JournalError> {
        match self.records.get(be(seq))? {
            None => Ok(None),
            Some(v) => Record::from_stored(&v)
                .map(Some)
                .map_err(|e| corrupt(seq, e.0)),
        }
    }

    fn decode(k: &[u8], v: &[u8]) -> Result<Record, JournalError> {
        let seq = seq_of(k).unwrap_or(0);
        Record::from_stored(v).map_err(|e| corrupt(seq, e.0))
    }

    /// The last `n` records, oldest first.
    pub fn tail(&self, n: usize) -> Result<Vec<Record>, JournalError> {
        let mut out = Vec::with_capacity(n.min(10_000));
        for kv in self.records.iter().rev().take(n) {
            let (k, v) = kv?;
            out.push(Self::decode(&k, &v)?);
        }
        out.reverse();
        Ok(out)
    }

    /// Up to `limit` records with seq > `after`, in order.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<Record>, JournalError> {
        let mut out = Vec::new();
        for kv in self
            .records
            .range(be(after.saturating_add(1))..)
            .take(limit)
        {
            let (k, v) = kv?;
            out.push(Self::decode(&k, &v)?);
        }
        Ok(out)
    }

    /// Checkpoints with `from < seq <= to`, in order.
    pub fn checkpoints_between(&self, from: u64, to: u64) -> Result<Vec<Checkpoint>, JournalError> {
        if to <= from {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for kv in self.checkpoints.range(be(from + 1)..=be(to)) {
            let (k, v) = kv?;
            let seq = seq_of(&k).unwrap_or(0);
            out.push(
                Checkpoint::from_stored(seq, &v)
                    .ok_or_else(|| corrupt(seq, "stored checkpoint is malformed"))?,
            );
        }
        Ok(out)
    }

    /// Records matching `q`, oldest first. With a partner, only that
    /// partner's slice of the index is read (never the whole journal).
    pub fn query(&self, q: &Query) -> Result<Vec<Record>, JournalError> {
        let mut out = Vec::new();
        if q.limit == 0 {
            return Ok(out);
        }
        if let Some(partner) = &q.partner {
            let Some(prefix) = partner_prefix(partner) else {
                return Ok(out);
            };
            let mut lo = prefix.clone();
            lo.extend_from_slice(&time_key(q.since_ms.unwrap_or(i64::MIN)));
            let mut hi = prefix.clone();
            hi.extend_from_slice(&time_key(q.until_ms.unwrap_or(i64::MAX)));
            let range = self.index.range(lo..hi);
            let keys: Box<dyn Iterator<Item = _>> = if q.reverse {
                Box::new(range.rev())
            } else {
                Box::new(range)
            };
            for kv in keys {
                let (k, _) = kv?;
                let Some(seq) = k.len().checked_sub(8).and_then(|at| seq_of(&k[at..])) else {
                    continue;
                };
                // An index entry whose record was pruned is skipped.
                if let Some(r) = self.get(seq)?
                    && q.matches(&r)
                {
                    out.push(r);
                    if out.len() >= q.limit {
                        break;
                    }
                }
            }
            return Ok(out);
        }
        let all: Box<dyn Iterator<Item = _>> = if q.reverse {
            Box::new(self.records.iter().rev())
        } else {
            Box::new(self.records.iter())
        };
        for kv in all {
            let (k, v) = kv?;
            if let Some(t) = stored_time(&v)
                && (q.since_ms.is_some_and(|s| t < s) || q.until_ms.is_some_and(|u| t >= u))
            {
                continue;
            }
            let r = Self::decode(&k, &v)?;
            if q.matches(&r) {
                out.push(r);
                if out.len() >= q.limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Streams records with seq > `after_seq` and the checkpoints among
    /// them (a checkpoint comes after the record it covers; the prune
    /// anchor comes first). `sink` returns false to stop. With `follow`,
    /// waits for new records until `stop()` is true.
    pub fn export(
        &self,
        after_seq: u64,
        follow: bool,
        stop: &dyn Fn() -> bool,
        sink: &mut dyn FnMut(ExportItem) -> bool,
    ) -> Result<(), JournalError> {
        let mut last_rec = after_seq;
        let mut last_ckpt = after_seq;
        const PAGE: usize = 1024;
        loop {
            let batch = self.after(last_rec, PAGE)?;
            let full = batch.len() == PAGE;
            let upto = batch.last().map(|r| r.seq).unwrap_or(last_rec);
            let mut ckpts = self
                .checkpoints_between(last_ckpt, upto)?
                .into_iter()
                .peekable();
            for r in batch {
                while let Some(c) = ckpts.next_if(|c| c.seq < r.seq) {
                    last_ckpt = c.seq;
                    if !sink(ExportItem::Checkpoint(c)) {
                        return Ok(());
                    }
                }
                last_rec = r.seq;
                if !sink(ExportItem::Record(Box::new(r))) {
                    return Ok(());
                }
            }
            for c in ckpts {
                last_ckpt = c.seq;
                if !sink(ExportItem::Checkpoint(c)) {
                    return Ok(());
                }
            }
            if full {
                continue;
            }
            // Caught up: checkpoints written after the last record we saw
            // (at shutdown, or the prune anchor of an emptied journal).
            let to = last_rec.max(self.base_seq()?);
            for c in self.checkpoints_between(last_ckpt, to)? {
                last_ckpt = c.seq;
                if !sink(ExportItem::Checkpoint(c)) {
                    return Ok(());
                }
            }
            if !follow || stop() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Checks the whole chain from the base (genesis or the prune anchor)
    /// and every checkpoint's signature and hash. Reports the lowest bad
    /// sequence number.
    pub fn verify(&self, verifier: &Verifier) -> Result<VerifyReport, JournalError> {
        self.verify_in_parts(verifier, None)
    }

    /// [`Store::verify`], with the records checked in `parts` ranges in
    /// parallel (None: one per core); the links between ranges are checked
    /// after.
    pub(crate) fn verify_in_parts(
        &self,
        verifier: &Verifier,
        parts: Option<u64>,
    ) -> Result<VerifyReport, JournalError> {
        let base = self.base_seq()?;
        let mut ckpts: BTreeMap<u64, Checkpoint> = BTreeMap::new();
        let mut failures: Vec<VerifyFailure> = Vec::new();
        for kv in self.checkpoints.iter() {
            let (k, v) = kv?;
            let Some(seq) = seq_of(&k) else {
                failures.push(VerifyFailure {
                    seq: 0,
                    reason: "a checkpoint key is not 8 bytes".into(),
                });
                continue;
            };
            match Checkpoint::from_stored(seq, &v) {
                None => failures.push(VerifyFailure {
                    seq,
                    reason: format!("checkpoint at seq {seq} is malformed"),
                }),
                Some(c) if !verifier.verify(&c) => failures.push(VerifyFailure {
                    seq,
                    reason: format!(
                        "checkpoint at seq {seq}: signature does not verify with the journal public key"
                    ),
                }),
                Some(c) => {
                    ckpts.insert(seq, c);
                }
            }
        }
        let mut running = GENESIS_HASH;
        if base > 0 {
            match ckpts.get(&base) {
                Some(c) => running = c.hash,
                None => failures.push(VerifyFailure {
                    seq: base,
                    reason: format!(
                        "the journal was pruned at seq {base} but no valid signed checkpoint exists there"
                    ),
                }),
            }
        }
        // The records present now; ones appended during the check are left
        // for the next run.
        let last_key = match self.records.last()? {
            Some((k, _)) => seq_of(&k).unwrap_or(base),
            None => base,
        };
        let ck_seqs: Vec<u64> = ckpts.range(base + 1..).map(|(s, _)| *s).collect();
        let chunks = chunk_ranges(base + 1, last_key, parts);
        let results: Vec<Result<ChunkResult, JournalError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .iter()
                .map(|&(lo, hi)| {
                    let ck = &ck_seqs;
                    scope.spawn(move || self.verify_chunk(lo, hi, ck))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(JournalError::Message("a verify thread panicked".into()))
                    })
                })
                .collect()
        });
        let mut records = 0u64;
        for ((lo, _), r) in chunks.iter().zip(results) {
            let r = r?;
            if let Some(fp) = r.first_prev
                && fp != running
            {
                failures.push(VerifyFailure {
                    seq: *lo,
                    reason: format!(
                        "record {lo}: prev_hash does not match the hash of record {}",
                        lo - 1
                    ),
                });
            }
            records += r.count;
            for (seq, hash) in r.checkpoint_hashes {
                if ckpts.get(&seq).is_some_and(|c| c.hash != hash) {
                    failures.push(VerifyFailure {
                        seq,
                        reason: format!(
                            "checkpoint at seq {seq} signs a different hash than the chain has"
                        ),
                    });
                }
            }
            let failed = r.failure.is_some();
            failures.extend(r.failure);
            if failed {
                break;
            }
            running = r.last_hash;
        }
        let last_seq = last_key;
        if let Some((&s, _)) = ckpts.iter().next_back()
            && s > last_seq
        {
            failures.push(VerifyFailure {
                seq: last_seq + 1,
                reason: format!(
                    "a signed checkpoint exists at seq {s} but the journal ends at {last_seq}: records were deleted from the end"
                ),
            });
        }
        let last_checkpoint_seq = ckpts.keys().next_back().copied();
        let failure = failures.into_iter().min_by_key(|f| f.seq);
        Ok(VerifyReport {
            ok: failure.is_none(),
            base_seq: base,
            last_seq,
            records,
            checkpoints: ckpts.len() as u64,
            last_checkpoint_seq,
            unsigned_tail: last_seq.saturating_sub(last_checkpoint_seq.unwrap_or(0).max(base)),
            failure,
        })
    }

    /// Checks records `lo..=hi` on their own: dense keys, each record's
    /// hash over its bytes, each link inside the range. The link into the
    /// range (`first_prev`) is checked by the caller.
    fn verify_chunk(&self, lo: u64, hi: u64, ck_seqs: &[u64]) -> Result<ChunkResult, JournalError> {
        let mut out = ChunkResult {
            first_prev: None,
            last_hash: GENESIS_HASH,
            count: 0,
            failure: None,
            checkpoint_hashes: Vec::new(),
        };
        let mut expected = lo;
        let mut running: Option<[u8; 32]> = None;
        let mut ck = ck_seqs
            .iter()
            .copied()
            .filter(|s| *s >= lo && *s <= hi)
            .peekable();
        for kv in self.records.range(be(lo)..=be(hi)) {
            let (k, v) = kv?;
            let seq = seq_of(&k).unwrap_or(0);
            let fail = |reason: String| Some(VerifyFailure { seq, reason });
            if seq != expected {
                out.failure = Some(VerifyFailure {
                    seq: expected,
                    reason: format!(
                        "record {expected} is missing (the next record present is {seq}): records were deleted"
                    ),
                });
                return Ok(out);
            }
            let Some((prev, hash, canonical)) = record::split_stored(&v) else {
                out.failure = fail(format!("record {seq} is truncated"));
                return Ok(out);
            };
            if record::canonical_seq(canonical) != Some(seq) {
                out.failure = fail(format!(
                    "record {seq} carries another sequence number or format version (moved or altered)"
                ));
                return Ok(out);
            }
            match running {
                None => out.first_prev = Some(prev),
                Some(r) if r != prev => {
                    out.failure = fail(format!(
                        "record {seq}: prev_hash does not match the hash of record {}",
                        seq - 1
                    ));
                    return Ok(out);
                }
                Some(_) => {}
            }
            if record::chain_hash(&prev, canonical) != hash {
                out.failure = fail(format!(
                    "record {seq}: hash does not match its contents (record altered)"
                ));
                return Ok(out);
            }
            while ck.next_if(|s| *s < seq).is_some() {}
            if ck.next_if(|s| *s == seq).is_some() {
                out.checkpoint_hashes.push((seq, hash));
            }
            running = Some(hash);
            out.last_hash = hash;
            out.count += 1;
            expected = seq + 1;
        }
        if expected <= hi {
            out.failure = Some(VerifyFailure {
                seq: expected,
                reason: format!("record {expected} is missing: records were deleted"),
            });
        }
        Ok(out)
    }

    /// Drops the oldest records whose time is before `before_ms` (a
    /// contiguous prefix), after checking that prefix's chain, and keeps a
    /// signed checkpoint at the cut so verification runs on from there.
    pub fn prune(&self, before_ms: i64, signer: &Signer) -> Result<PruneReport, JournalError> {
        let base = self.base_seq()?;
        let mut running = if base == 0 {
            GENESIS_HASH
        } else {
            self.checkpoint(base)?.map(|c| c.hash).ok_or_else(|| {
                corrupt(
                    base,
                    "the prune anchor checkpoint is missing; run `gatehouse log verify`",
                )
            })?
        };
        let mut cut = base;
        for kv in self.records.range(be(base + 1)..) {
            let (k, v) = kv?;
            let seq = seq_of(&k).unwrap_or(0);
            let Some(t) = stored_time(&v) else {
                return Err(corrupt(
                    seq,
                    "record is truncated; not pruning (run `gatehouse log verify`)",
                ));
            };
            if t >= before_ms {
                break;
            }
            let ok = seq == cut + 1
                && record::split_stored(&v).is_some_and(|(prev, hash, c)| {
                    prev == running && record::chain_hash(&prev, c) == hash && {
                        running = hash;
                        true
                    }
                });
            if !ok {
                return Err(corrupt(
                    seq,
                    "the chain does not verify here; not pruning, which would destroy the evidence (run `gatehouse log verify`)",
                ));
            }
            cut = seq;
        }
        if cut == base {
            return Ok(PruneReport {
                removed: 0,
                base_seq: base,
            });
        }
        let anchor =
            signer.checkpoint(cut, running, crate::event::now_ms(), CheckpointKind::Prune)?;
        self.checkpoints.insert(be(cut), anchor.to_stored())?;
        self.meta.insert(META_BASE, &be(cut))?;
        self.db.flush()?;
        let mut removed = 0u64;
        let mut from = base + 1;
        while from <= cut {
            let to = (from + 9_999).min(cut);
            let mut recs = sled::Batch::default();
            let mut idx = sled::Batch::default();
            for kv in self.records.range(be(from)..=be(to)) {
                let (k, v) = kv?;
                if let Ok(r) = Record::from_stored(&v)
                    && let Some(p) = &r.event.partner
                    && let Some(ik) = index_key(p, r.event.time_ms, r.seq)
                {
                    idx.remove(ik);
                }
                recs.remove(k);
                removed += 1;
            }
            self.index.apply_batch(idx)?;
            self.records.apply_batch(recs)?;
            from = to + 1;
        }
        let mut old = sled::Batch::default();
        for kv in self.checkpoints.range(..be(cut)) {
            old.remove(kv?.0);
        }
        self.checkpoints.apply_batch(old)?;
        self.db.flush()?;
        Ok(PruneReport {
            removed,
            base_seq: cut,
        })
    }

    /// Re-inserts index entries for records after `from` (idempotent; used
    /// on open and after a write failure, in case a crash split a batch).
    pub(super) fn reindex_after(&self, from: u64) -> Result<(), JournalError> {
        let mut idx = sled::Batch::default();
        for kv in self.records.range(be(from.saturating_add(1))..) {
            let (k, v) = kv?;
            let r = Self::decode(&k, &v)?;
            if let Some(p) = &r.event.partner
                && let Some(ik) = index_key(p, r.event.time_ms, r.seq)
            {
                idx.insert(ik, &[] as &[u8]);
            }
        }
        self.index.apply_batch(idx)?;
        Ok(())
    }

    /// Writes and flushes a small marker: proves the disk takes writes again.
    pub(super) fn probe(&self) -> Result<(), JournalError> {
        self.meta
            .insert(META_PROBE, &crate::event::now_ms().to_be_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    pub fn stats(&self) -> Result<StoreStats, JournalError> {
        Ok(StoreStats {
            base_seq: self.base_seq()?,
            last_seq: self.last()?.0,
            checkpoints: self.checkpoints.len() as u64,
            size_on_disk: self.db.size_on_disk().unwrap_or(0),
        })
    }

    /// Number of index entries (for tests and status).
    pub fn index_len(&self) -> usize {
        self.index.len()
    }
}
