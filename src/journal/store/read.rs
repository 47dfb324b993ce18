//! Reads of records and checkpoints (a record is read by decoding the
//! segment that holds it): by sequence number, the chain head,
//! the tail, pages after a sequence number, and the export stream (records
//! with the checkpoints among them, optionally following new ones).

use super::keys::{be, seq_of};
use super::segment::{Segment, StoredRef};
use super::{JournalError, Store, corrupt, plain};
use crate::journal::checkpoint::Checkpoint;
use crate::journal::record::{GENESIS_HASH, Record};

/// One item of an export stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ExportItem {
    Record(Box<Record>),
    Checkpoint(Checkpoint),
}

impl Store {
    pub fn checkpoint(&self, seq: u64) -> Result<Option<Checkpoint>, JournalError> {
        match self.t()?.checkpoints.get(be(seq))? {
            None => Ok(None),
            Some(v) => Checkpoint::from_stored(seq, &v)
                .map(Some)
                .ok_or_else(|| corrupt(seq, "stored checkpoint is malformed")),
        }
    }

    /// The last sequence number and its hash (genesis: 0 and 32 zero bytes).
    pub fn last(&self) -> Result<(u64, [u8; 32]), JournalError> {
        if let Some((k, v)) = self.t()?.segments.last()? {
            let first = seq_of(&k).ok_or_else(|| corrupt(0, "segment key is not 8 bytes"))?;
            let p = plain(first, &v)?;
            let s = Segment::parse(first, &p).map_err(|e| corrupt(first, e.to_string()))?;
            if let Some(r) = s.records.last() {
                return Ok((r.seq, r.hash));
            }
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
        Ok(self.t()?.checkpoints.last()?.and_then(|(k, _)| seq_of(&k)))
    }

    /// The segment holding `seq`, as (first seq, value), if any: the last
    /// segment keyed at or before `seq`. Looked for first in a short
    /// forward range (sled's forward iteration is much cheaper than its
    /// reverse iteration; a segment holds at most 255 records), then, if
    /// none starts there, backwards.
    pub(super) fn segment_of(&self, seq: u64) -> Result<Option<(u64, sled::IVec)>, JournalError> {
        const WINDOW: u64 = 255;
        let t = self.t()?;
        let key = |k: &[u8]| seq_of(k).ok_or_else(|| corrupt(seq, "segment key is not 8 bytes"));
        let mut found = None;
        for kv in t.segments.range(be(seq.saturating_sub(WINDOW))..=be(seq)) {
            found = Some(kv?);
        }
        if found.is_none() && seq > WINDOW {
            found = t.segments.range(..=be(seq)).next_back().transpose()?;
        }
        match found {
            None => Ok(None),
            Some((k, v)) => Ok(Some((key(&k)?, v))),
        }
    }

    pub fn get(&self, seq: u64) -> Result<Option<Record>, JournalError> {
        let Some((first, v)) = self.segment_of(seq)? else {
            return Ok(None);
        };
        let p = plain(first, &v)?;
        let s = Segment::parse(first, &p).map_err(|e| corrupt(first, e.to_string()))?;
        match s.get(seq) {
            None => Ok(None),
            Some(r) => r.record().map(Some).map_err(|e| corrupt(seq, e.0)),
        }
    }

    /// Calls `f` on the stored records from `from` on, in seq order (or,
    /// with `reverse`, from the last record back to `from`), until it
    /// returns false.
    pub(super) fn scan(
        &self,
        from: u64,
        reverse: bool,
        f: &mut dyn FnMut(&StoredRef<'_>) -> Result<bool, JournalError>,
    ) -> Result<(), JournalError> {
        let t = self.t()?;
        let start = match self.segment_of(from)? {
            Some((first, _)) => first,
            None => from,
        };
        let range = t.segments.range(be(start)..);
        let segs: Box<dyn Iterator<Item = _>> = if reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        for kv in segs {
            let (k, v) = kv?;
            let first = seq_of(&k).ok_or_else(|| corrupt(from, "segment key is not 8 bytes"))?;
            let p = plain(first, &v)?;
            let s = Segment::parse(first, &p).map_err(|e| corrupt(first, e.to_string()))?;
            let wanted = |r: &&StoredRef<'_>| r.seq >= from;
            if reverse {
                for r in s.records.iter().rev().filter(wanted) {
                    if !f(r)? {
                        return Ok(());
                    }
                }
            } else {
                for r in s.records.iter().filter(wanted) {
                    if !f(r)? {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn decode(r: &StoredRef<'_>) -> Result<Record, JournalError> {
        r.record().map_err(|e| corrupt(r.seq, e.0))
    }

    /// The last `n` records, oldest first.
    pub fn tail(&self, n: usize) -> Result<Vec<Record>, JournalError> {
        let mut out = Vec::with_capacity(n.min(10_000));
        if n > 0 {
            self.scan(0, true, &mut |r| {
                out.push(Self::decode(r)?);
                Ok(out.len() < n)
            })?;
        }
        out.reverse();
        Ok(out)
    }

    /// Up to `limit` records with seq > `after`, in order.
    pub fn after(&self, after: u64, limit: usize) -> Result<Vec<Record>, JournalError> {
        let mut out = Vec::new();
        if limit > 0 {
            self.scan(after.saturating_add(1), false, &mut |r| {
                out.push(Self::decode(r)?);
                Ok(out.len() < limit)
            })?;
        }
        Ok(out)
    }

    /// Checkpoints with `from < seq <= to`, in order.
    pub fn checkpoints_between(&self, from: u64, to: u64) -> Result<Vec<Checkpoint>, JournalError> {
        if to <= from {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for kv in self.t()?.checkpoints.range(be(from + 1)..=be(to)) {
            let (k, v) = kv?;
            let seq = seq_of(&k).unwrap_or(0);
            out.push(
                Checkpoint::from_stored(seq, &v)
                    .ok_or_else(|| corrupt(seq, "stored checkpoint is malformed"))?,
            );
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
}
