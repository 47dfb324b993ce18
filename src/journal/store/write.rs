//! What the writer thread does to the database besides inserting a group
//! commit's records (`writer.rs` does that): signed checkpoints, removing
//! records whose flush failed, re-inserting index entries after a crash,
//! and the probe that proves the disk takes writes again.

use super::keys::{be, index_key, seq_of};
use super::{JournalError, META_PROBE, Store};
use crate::journal::checkpoint::Checkpoint;
use crate::journal::record::Record;

impl Store {
    /// Re-inserts index entries for records after `from` (idempotent; used
    /// on open and after a write failure, in case a crash split a batch).
    pub(in crate::journal) fn reindex_after(&self, from: u64) -> Result<(), JournalError> {
        let mut idx = sled::Batch::default();
        for kv in self.t()?.records.range(be(from.saturating_add(1))..) {
            let (k, v) = kv?;
            let r = Self::decode(&k, &v)?;
            if let Some(p) = &r.event.partner
                && let Some(ik) = index_key(p, r.event.time_ms, r.seq)
            {
                idx.insert(ik, &[] as &[u8]);
            }
        }
        self.t()?.index.apply_batch(idx)?;
        Ok(())
    }

    /// Stores a signed checkpoint (not flushed).
    pub(in crate::journal) fn put_checkpoint(&self, c: &Checkpoint) -> Result<(), JournalError> {
        self.t()?.checkpoints.insert(be(c.seq), c.to_stored())?;
        Ok(())
    }

    /// Removes every record after `seq`, with its index entry, and every
    /// checkpoint after `seq`, then flushes; returns how many records went.
    /// Only for records never acknowledged (a group commit whose flush
    /// failed): the chain up to `seq` is untouched.
    pub(in crate::journal) fn truncate_after(&self, seq: u64) -> Result<u64, JournalError> {
        let removed = self.remove_records(seq.saturating_add(1), u64::MAX)?;
        let t = self.t()?;
        let mut ckpts = sled::Batch::default();
        for kv in t.checkpoints.range(be(seq.saturating_add(1))..) {
            ckpts.remove(kv?.0);
        }
        t.checkpoints.apply_batch(ckpts)?;
        t.db.flush()?;
        Ok(removed)
    }

    /// Removes the records `lo..=hi` with their index entries (not flushed),
    /// 10,000 at a time, the index entries of each slice first; returns how
    /// many records went. For retention and for unacknowledged records only.
    pub(super) fn remove_records(&self, lo: u64, hi: u64) -> Result<u64, JournalError> {
        const SLICE: usize = 10_000;
        let mut removed = 0u64;
        let mut from = lo;
        while from <= hi {
            let t = self.t()?;
            let mut recs = sled::Batch::default();
            let mut idx = sled::Batch::default();
            let mut n = 0usize;
            let mut last = from;
            for kv in t.records.range(be(from)..=be(hi)).take(SLICE) {
                let (k, v) = kv?;
                if let Ok(r) = Record::from_stored(&v)
                    && let Some(p) = &r.event.partner
                    && let Some(ik) = index_key(p, r.event.time_ms, r.seq)
                {
                    idx.remove(ik);
                }
                last = seq_of(&k).unwrap_or(last);
                recs.remove(k);
                n += 1;
            }
            t.index.apply_batch(idx)?;
            t.records.apply_batch(recs)?;
            removed += n as u64;
            if n < SLICE || last >= hi {
                break;
            }
            from = last + 1;
        }
        Ok(removed)
    }

    /// Writes and flushes a small marker: proves the disk takes writes again.
    pub(in crate::journal) fn probe(&self) -> Result<(), JournalError> {
        self.t()?
            .meta
            .insert(META_PROBE, &crate::event::now_ms().to_be_bytes())?;
        self.t()?.db.flush()?;
        Ok(())
    }
}
