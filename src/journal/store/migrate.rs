//! Converts a journal of the older layout — one sled value per record in
//! the `records` tree (seq BE → `prev_hash ‖ hash ‖ canonical`) and one
//! `by_partner` entry per record — into segments and the per-commit
//! partner index, on open, before anything else reads or writes.
//!
//! Every stored byte is carried over as it is: records keep their seq,
//! hash, prev_hash and canonical bytes (a record whose seq or prev_hash does
//! not follow its predecessor starts a new segment, and one too short to
//! split is kept whole with zero hashes), so tampering is carried over,
//! never laundered, and checkpoints stay valid. The work goes in slices of
//! [`SLICE`] records, each inserted, then its old values removed, then
//! flushed; an interrupted migration resumes where it stopped.

use super::index::EntryBuilder;
use super::keys::{be, seq_of};
use super::segment;
use super::{JournalError, Trees, corrupt};
use crate::journal::record;

const OLD_RECORDS: &str = "records";
const OLD_INDEX: &str = "by_partner";
/// Records migrated per slice (one flush each).
const SLICE: usize = 4096;

/// Whether `db` holds the older layout (a `records` tree) to convert.
pub(super) fn needed(db: &sled::Db) -> bool {
    db.tree_names()
        .iter()
        .any(|x| x.as_ref() == OLD_RECORDS.as_bytes())
}

/// Migrates the `records` tree, if there is one; a no-op otherwise.
pub(super) fn from_records_layout(t: &Trees) -> Result<(), JournalError> {
    if !needed(&t.db) {
        return Ok(());
    }
    let old = t.db.open_tree(OLD_RECORDS)?;
    // A migration interrupted after a slice's inserts: what segments hold
    // already is removed from the old tree, not stored twice.
    let done_upto = match t.segments.last()? {
        Some((k, v)) => {
            let first = seq_of(&k).ok_or_else(|| corrupt(0, "segment key is not 8 bytes"))?;
            segment::last_seq_of(first, &v).map_err(|e| corrupt(first, e.to_string()))?
        }
        None => 0,
    };
    let mut moved = 0u64;
    loop {
        let mut slice = Vec::with_capacity(SLICE);
        for kv in old.iter().take(SLICE) {
            slice.push(kv?);
        }
        if slice.is_empty() {
            break;
        }
        let mut indexed = Vec::new();
        let mut parts = Vec::with_capacity(slice.len());
        let mut old_keys = sled::Batch::default();
        for (k, v) in &slice {
            old_keys.remove(k);
            let seq = seq_of(k).ok_or_else(|| {
                corrupt(
                    0,
                    "a record key of the older layout is not 8 bytes; restore the journal from a backup",
                )
            })?;
            if seq <= done_upto {
                continue;
            }
            let (prev, hash, canonical) =
                record::split_stored(v).unwrap_or(([0; 32], [0; 32], v.as_ref()));
            if let Ok((_, e)) = record::decode(canonical)
                && let Some(p) = &e.partner
            {
                indexed.push((seq, p.clone(), e.time_ms));
            }
            parts.push((seq, prev, hash, canonical));
        }
        let packed = segment::pack(parts.iter().copied(), t.segment_bytes);
        let firsts: Vec<u64> = packed.iter().map(|(f, _)| *f).collect();
        let mut entries = EntryBuilder::default();
        for (seq, p, t) in &indexed {
            entries.add(*seq, p, *t, segment::position(&firsts, *seq));
        }
        let mut idx = sled::Batch::default();
        for (k, v) in entries.finish() {
            idx.insert(k, v);
        }
        let mut segs = sled::Batch::default();
        for (first, v) in packed {
            segs.insert(&be(first), v);
        }
        t.index.apply_batch(idx)?;
        t.segments.apply_batch(segs)?;
        old.apply_batch(old_keys)?;
        t.db.flush()?;
        moved += slice.len() as u64;
        if moved.is_multiple_of(100 * SLICE as u64) {
            tracing::info!(moved, "migrating the journal to segments");
        }
    }
    t.db.drop_tree(OLD_RECORDS)?;
    if t.db
        .tree_names()
        .iter()
        .any(|x| x.as_ref() == OLD_INDEX.as_bytes())
    {
        t.db.drop_tree(OLD_INDEX)?;
    }
    t.db.flush()?;
    if moved > 0 {
        tracing::info!(
            records = moved,
            "journal migrated to segments (one sled value per group commit)"
        );
    }
    Ok(())
}
