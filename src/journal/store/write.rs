//! What the writer thread stores: a group commit (its records packed into
//! segments, its partner index entries), signed checkpoints, the removal
//! of records whose flush failed, and the probe that proves the disk takes
//! writes again. Also the cuts shared with `prune`: whole segments out, the
//! boundary segment rewritten, index entries trimmed.

use super::index::{Entry, prefix_len_of};
use super::index_tail::IndexTail;
use super::keys::{be, seq_of};
use super::segment::{self, Segment};
use super::{JournalError, META_PROBE, Store, Trees, corrupt, plain};
use crate::journal::checkpoint::Checkpoint;

/// One record of a group commit, as the writer made it.
pub(in crate::journal) struct CommitRecord<'a> {
    pub seq: u64,
    pub hash: [u8; 32],
    pub canonical: &'a [u8],
    pub partner: Option<&'a str>,
    pub time_ms: i64,
}

impl Store {
    /// Inserts a group commit's records (not flushed): the partner index
    /// entries it stores first (see `index_tail`), then the segments, then
    /// the index mark. sled recovers a prefix of its log, so after a crash
    /// the mark never runs ahead of the segments on disk; an entry whose
    /// records never made it is skipped by queries (they check every
    /// record they read).
    pub(in crate::journal) fn insert_commit(
        t: &Trees,
        prev: &[u8; 32],
        records: &[CommitRecord<'_>],
        tail: &mut IndexTail,
    ) -> Result<(), JournalError> {
        let Some(last) = records.last().map(|r| r.seq) else {
            return Ok(());
        };
        let mut prev = *prev;
        let links = records.iter().map(|r| {
            let link = (r.seq, prev, r.hash, r.canonical);
            prev = r.hash;
            link
        });
        let segments = segment::pack(links, t.segment_bytes);
        let firsts: Vec<u64> = segments.iter().map(|(f, _)| *f).collect();
        for r in records {
            if let Some(p) = r.partner {
                tail.add(r.seq, p, r.time_ms, segment::position(&firsts, r.seq));
            }
        }
        // Plain inserts, not `apply_batch`: sled starts every batch by
        // writing out its log buffer and a batch marker (two synchronous
        // writes per group commit). The caller's one flush makes them all
        // durable; recovery keeps a prefix of the log.
        tail.insert_entries(t, last)?;
        for (first, v) in segments {
            t.segments.insert(be(first), v)?;
        }
        tail.insert_mark(t, last)
    }

    /// Stores a signed checkpoint (not flushed).
    pub(in crate::journal) fn put_checkpoint(&self, c: &Checkpoint) -> Result<(), JournalError> {
        self.t()?.checkpoints.insert(be(c.seq), c.to_stored())?;
        Ok(())
    }

    /// Removes every record after `seq`, with its index entries, and every
    /// checkpoint after `seq`, then flushes; returns how many records went.
    /// Only for records never acknowledged (a group commit whose flush
    /// failed): the chain up to `seq` is untouched.
    pub(in crate::journal) fn truncate_after(&self, seq: u64) -> Result<u64, JournalError> {
        let t = self.t()?;
        let mut removed = 0u64;
        let mut segs = sled::Batch::default();
        for kv in t.segments.range(be(seq.saturating_add(1))..) {
            let (k, v) = kv?;
            let first = seq_of(&k).unwrap_or(0);
            removed += segment::last_seq_of(first, &v)
                .map(|last| last.saturating_sub(first) + 1)
                .unwrap_or(1);
            segs.remove(k);
        }
        // The segment holding `seq` may run past it.
        if let Some((k, v)) = t.segments.range(..=be(seq)).next_back().transpose()? {
            let first = seq_of(&k).unwrap_or(0);
            let p = plain(first, &v)?;
            let s = Segment::parse(first, &p).map_err(|e| corrupt(first, e.to_string()))?;
            if s.last_seq() > seq {
                removed += s.last_seq() - seq;
                let keep = s
                    .records
                    .iter()
                    .filter(|r| r.seq <= seq)
                    .map(|r| (r.seq, r.prev, r.hash, r.canonical));
                for (f, v) in segment::pack(keep, t.segment_bytes) {
                    segs.insert(&be(f), v);
                }
            }
        }
        t.segments.apply_batch(segs)?;
        self.trim_index(|s| s > seq)?;
        self.lower_index_mark(seq)?;
        let mut ckpts = sled::Batch::default();
        for kv in t.checkpoints.range(be(seq.saturating_add(1))..) {
            ckpts.remove(kv?.0);
        }
        t.checkpoints.apply_batch(ckpts)?;
        t.db.flush()?;
        Ok(removed)
    }

    /// Removes the records `lo..=hi` (not flushed): whole segments go, and
    /// a segment reaching past `hi` is rewritten from `hi + 1` (keyed by it,
    /// with the hash of record `hi` as its prev_hash). Returns how many
    /// records went. Index entries are left to [`Store::trim_index`].
    pub(super) fn remove_records(&self, lo: u64, hi: u64) -> Result<u64, JournalError> {
        const SLICE: usize = 1024;
        let t = self.t()?;
        let mut removed = 0u64;
        let mut from = match t.segments.range(..=be(lo)).next_back().transpose()? {
            Some((k, _)) => seq_of(&k).unwrap_or(lo),
            None => lo,
        };
        loop {
            let mut segs = sled::Batch::default();
            let mut n = 0usize;
            let mut done = true;
            for kv in t.segments.range(be(from)..=be(hi)).take(SLICE) {
                let (k, v) = kv?;
                let first = seq_of(&k).unwrap_or(0);
                let p = plain(first, &v)?;
                let s = Segment::parse(first, &p).map_err(|e| corrupt(first, e.to_string()))?;
                n += 1;
                from = first.saturating_add(1);
                if s.last_seq() < lo {
                    continue;
                }
                segs.remove(k.clone());
                let keep = s
                    .records
                    .iter()
                    .filter(|r| r.seq < lo || r.seq > hi)
                    .map(|r| (r.seq, r.prev, r.hash, r.canonical));
                for (f, v) in segment::pack(keep, t.segment_bytes) {
                    segs.insert(&be(f), v);
                }
                removed += s
                    .records
                    .iter()
                    .filter(|r| r.seq >= lo && r.seq <= hi)
                    .count() as u64;
            }
            if n == SLICE {
                done = false;
            }
            t.segments.apply_batch(segs)?;
            if done {
                return Ok(removed);
            }
        }
    }

    /// Drops every partner index entry's seqs for which `gone` is true
    /// (entries left empty are removed, the others rewritten under the same
    /// key, which stays a valid lower bound). Reads the whole index: for
    /// prune and for recovery after a failed write, never per commit.
    pub(super) fn trim_index(&self, gone: impl Fn(u64) -> bool) -> Result<(), JournalError> {
        let t = self.t()?;
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        for kv in t.index.iter() {
            let (k, v) = kv?;
            let Some(e) = prefix_len_of(&k).and_then(|p| Entry::parse(p, &k, &v)) else {
                batch.remove(k);
                n += 1;
                continue;
            };
            if !e.seqs.iter().any(|s| gone(*s)) {
                continue;
            }
            let kept: Vec<u64> = e.seqs.iter().copied().filter(|s| !gone(*s)).collect();
            if kept.is_empty() {
                batch.remove(k);
            } else {
                let at = e
                    .seqs
                    .iter()
                    .zip(&e.at)
                    .filter(|(s, _)| !gone(**s))
                    .map(|(_, a)| *a)
                    .collect();
                batch.insert(
                    k,
                    Entry {
                        seqs: kept,
                        at,
                        ..e
                    }
                    .value(),
                );
            }
            n += 1;
            if n >= 10_000 {
                t.index.apply_batch(std::mem::take(&mut batch))?;
                n = 0;
            }
        }
        t.index.apply_batch(batch)?;
        Ok(())
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
