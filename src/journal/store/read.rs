//! Reads of records and checkpoints: by sequence number, the chain head,
//! the tail, pages after a sequence number, and the export stream (records
//! with the checkpoints among them, optionally following new ones).

use super::keys::{be, seq_of};
use super::{JournalError, Store, corrupt};
use crate::journal::checkpoint::Checkpoint;
use crate::journal::record::{self, GENESIS_HASH, Record};

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
        if let Some((k, v)) = self.t()?.records.last()? {
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
        Ok(self.t()?.checkpoints.last()?.and_then(|(k, _)| seq_of(&k)))
    }

    pub fn get(&self, seq: u64) -> Result<Option<Record>, JournalError> {
        match self.t()?.records.get(be(seq))? {
            None => Ok(None),
            Some(v) => Record::from_stored(&v)
                .map(Some)
                .map_err(|e| corrupt(seq, e.0)),
        }
    }

    pub(super) fn decode(k: &[u8], v: &[u8]) -> Result<Record, JournalError> {
        let seq = seq_of(k).unwrap_or(0);
        Record::from_stored(v).map_err(|e| corrupt(seq, e.0))
    }

    /// The last `n` records, oldest first.
    pub fn tail(&self, n: usize) -> Result<Vec<Record>, JournalError> {
        let mut out = Vec::with_capacity(n.min(10_000));
        for kv in self.t()?.records.iter().rev().take(n) {
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
            .t()?
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
