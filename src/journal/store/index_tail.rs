//! The partner index's unwritten tail. The writer keeps each partner's
//! index entry open across group commits and stores it when it is full
//! (`index::EntryBuilder`) or when the records not yet in the index
//! reach [`INDEX_LAG`]: a few sled inserts per few thousand records
//! instead of one per partner per commit (sled's insert path was most of
//! the writer's time, and its many small index pages most of a cold
//! open's).
//!
//! The mark `indexed` in `meta` says how far the index is complete: every
//! record up to it has its entries stored. The records after it (at most
//! [`INDEX_LAG`] plus one group commit) are found by reading their
//! segments: partner queries read them beside the index (`query`), and the
//! writer loads them into its open entries when it opens the journal
//! ([`Store::index_tail`]), so a crash loses no index entry for good.
//!
//! Order in sled's log, of which a crash keeps a prefix: the entries of a
//! commit, then its segments, then the mark. So the mark never runs ahead
//! of the records on disk, and the entries of every record up to it are
//! there. A journal without the mark (written before it existed, or new)
//! is indexed throughout; the first commit that leaves a record out of the
//! index stores the mark before its segments.

use super::index::EntryBuilder;
use super::keys::{be, seq_of};
use super::segment::{Segment, StoredRef};
use super::{JournalError, Store, Trees, corrupt, plain};

/// Most records after the mark before every open entry is stored.
pub(in crate::journal) const INDEX_LAG: u64 = 4096;
/// `meta` key of the mark (seq BE).
const META_INDEXED: &[u8] = b"indexed";

/// The writer's open index entries and the mark, as stored.
pub(in crate::journal) struct IndexTail {
    /// Every record up to here has its index entries stored.
    indexed: u64,
    /// Whether `meta` holds `indexed` (see the module doc).
    stored: bool,
    entries: EntryBuilder,
}

impl IndexTail {
    /// Records the partner of record `seq` (time `t`, position `at` in its
    /// segment).
    pub(super) fn add(&mut self, seq: u64, partner: &str, t: i64, at: u8) {
        self.entries.add(seq, partner, t, at);
    }

    /// Inserts what this commit (last record `last`) stores of the index:
    /// the entries closed by it, or every entry once the tail reached
    /// [`INDEX_LAG`]. Before the commit's segments.
    pub(super) fn insert_entries(&mut self, t: &Trees, last: u64) -> Result<(), JournalError> {
        let entries = if last.saturating_sub(self.indexed) >= INDEX_LAG {
            self.entries.take_all()
        } else {
            self.entries.take_done()
        };
        for (k, v) in entries {
            t.index.insert(k, v)?;
        }
        if !self.stored {
            t.meta.insert(META_INDEXED, &be(self.indexed))?;
            self.stored = true;
        }
        Ok(())
    }

    /// Moves the mark up to the oldest record whose entry is still open
    /// (or `last`). After the commit's segments.
    pub(super) fn insert_mark(&mut self, t: &Trees, last: u64) -> Result<(), JournalError> {
        let mark = self
            .entries
            .oldest()
            .map_or(last, |s| s.saturating_sub(1))
            .max(self.indexed);
        if mark != self.indexed {
            t.meta.insert(META_INDEXED, &be(mark))?;
            self.indexed = mark;
        }
        Ok(())
    }
}

impl Store {
    /// The mark: every record up to it has its partner index entries
    /// stored (`None`: every record has).
    pub(super) fn indexed_mark(&self) -> Result<Option<u64>, JournalError> {
        Ok(self.t()?.meta.get(META_INDEXED)?.and_then(|v| seq_of(&v)))
    }

    /// The writer's starting state: the records after the mark, read from
    /// their segments into open entries (a crash or a failed write left
    /// them unindexed; they are stored with the next entries).
    pub(in crate::journal) fn index_tail(&self) -> Result<IndexTail, JournalError> {
        let last = self.last()?.0;
        let mut tail = IndexTail {
            indexed: last,
            stored: false,
            entries: EntryBuilder::default(),
        };
        let Some(mark) = self.indexed_mark()? else {
            return Ok(tail);
        };
        // A mark past the last record (never written so by this build)
        // is stored again, lowered, before the next commit's segments.
        if mark >= last {
            tail.stored = mark == last;
            return Ok(tail);
        }
        tail.indexed = mark;
        tail.stored = true;
        self.each_unindexed(mark, &mut |first, r| {
            if let Ok((_, e)) = crate::journal::record::decode(r.canonical)
                && let Some(p) = &e.partner
            {
                let at = u8::try_from(r.seq - first).unwrap_or(u8::MAX);
                tail.add(r.seq, p, e.time_ms, at);
            }
            Ok(true)
        })?;
        Ok(tail)
    }

    /// Stores every open entry and moves the mark to the last record (not
    /// flushed): at shutdown, so a stopped journal's index is complete.
    pub(in crate::journal) fn store_index_tail(
        &self,
        tail: &mut IndexTail,
        last: u64,
    ) -> Result<(), JournalError> {
        let t = self.t()?;
        for (k, v) in tail.entries.take_all() {
            t.index.insert(k, v)?;
        }
        t.meta.insert(META_INDEXED, &be(last))?;
        tail.indexed = last;
        tail.stored = true;
        Ok(())
    }

    /// Lowers the mark to `seq` if it is past it (the records after `seq`
    /// were removed; new ones will take their seqs).
    pub(super) fn lower_index_mark(&self, seq: u64) -> Result<(), JournalError> {
        if self.indexed_mark()?.is_some_and(|m| m > seq) {
            self.t()?.meta.insert(META_INDEXED, &be(seq))?;
        }
        Ok(())
    }

    /// Every seq the stored index entries list, in key order, repeats kept
    /// (for tests).
    #[cfg(test)]
    pub(in crate::journal) fn index_seqs(&self) -> Vec<u64> {
        use super::index::{Entry, prefix_len_of};
        let Ok(t) = self.t() else {
            return Vec::new();
        };
        t.index
            .iter()
            .filter_map(|kv| kv.ok())
            .filter_map(|(k, v)| prefix_len_of(&k).and_then(|p| Entry::parse(p, &k, &v)))
            .flat_map(|e| e.seqs)
            .collect()
    }

    /// Calls `f` with (segment's first seq, record) on every record after
    /// `mark`, in seq order, until it returns false.
    pub(super) fn each_unindexed(
        &self,
        mark: u64,
        f: &mut dyn FnMut(u64, &StoredRef<'_>) -> Result<bool, JournalError>,
    ) -> Result<(), JournalError> {
        let from = mark.saturating_add(1);
        let t = self.t()?;
        let start = match self.segment_of(from)? {
            Some((first, _)) => first,
            None => from,
        };
        for kv in t.segments.range(be(start)..) {
            let (k, v) = kv?;
            let first = seq_of(&k).ok_or_else(|| corrupt(from, "segment key is not 8 bytes"))?;
            let p = plain(first, &v)?;
            let s = Segment::parse(first, &p).map_err(|e| corrupt(first, e.to_string()))?;
            for r in s.records.iter().filter(|r| r.seq >= from) {
                if !f(first, r)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
