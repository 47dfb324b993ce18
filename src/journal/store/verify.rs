//! `log verify`: the whole chain from the base (genesis or the prune
//! anchor), checked in ranges on several threads and stitched, and every
//! signed checkpoint's signature and hash.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::keys::{be, seq_of};
use super::segment::{self, Plain, Segment};
use super::{JournalError, Store};
use crate::journal::checkpoint::{Checkpoint, Verifier};
use crate::journal::record::{self, GENESIS_HASH};

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

/// The hash the chain starts from: genesis, or the signed checkpoint at
/// the prune cut `base` (a failure when that checkpoint is missing).
fn anchor_hash(
    base: u64,
    ckpts: &BTreeMap<u64, Checkpoint>,
    failures: &mut Vec<VerifyFailure>,
) -> [u8; 32] {
    if base == 0 {
        return GENESIS_HASH;
    }
    match ckpts.get(&base) {
        Some(c) => c.hash,
        None => {
            failures.push(VerifyFailure {
                seq: base,
                reason: format!(
                    "the journal was pruned at seq {base} but no valid signed checkpoint exists there"
                ),
            });
            GENESIS_HASH
        }
    }
}

/// Joins the ranges' results in order: the link into each range, the
/// checkpoints' hashes against the chain, and the first failure (the
/// ranges after it are not counted). Returns the records checked.
fn stitch(
    chunks: &[(u64, u64)],
    results: Vec<Result<ChunkResult, JournalError>>,
    anchor: [u8; 32],
    ckpts: &BTreeMap<u64, Checkpoint>,
    failures: &mut Vec<VerifyFailure>,
) -> Result<u64, JournalError> {
    let mut running = anchor;
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
    Ok(records)
}

impl Store {
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
        let mut failures: Vec<VerifyFailure> = Vec::new();
        let ckpts = self.signed_checkpoints(verifier, &mut failures)?;
        let anchor = anchor_hash(base, &ckpts, &mut failures);
        // The records present now; ones appended during the check are left
        // for the next run.
        let last_seq = match self.t()?.segments.last()? {
            Some((k, v)) => {
                let first = seq_of(&k).unwrap_or(base);
                // Damaged: the chunk that reads it reports it.
                segment::last_seq_of(first, &v).unwrap_or(first)
            }
            None => base,
        };
        let ck_seqs: Vec<u64> = ckpts.range(base + 1..).map(|(s, _)| *s).collect();
        let chunks = chunk_ranges(base + 1, last_seq, parts);
        let results = self.verify_chunks(&chunks, &ck_seqs);
        let records = stitch(&chunks, results, anchor, &ckpts, &mut failures)?;
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

    /// Every stored checkpoint whose signature verifies, by seq; the others
    /// go to `failures`.
    fn signed_checkpoints(
        &self,
        verifier: &Verifier,
        failures: &mut Vec<VerifyFailure>,
    ) -> Result<BTreeMap<u64, Checkpoint>, JournalError> {
        let mut ckpts = BTreeMap::new();
        for kv in self.t()?.checkpoints.iter() {
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
        Ok(ckpts)
    }

    /// Runs [`Store::verify_chunk`] on each range, one thread each.
    fn verify_chunks(
        &self,
        chunks: &[(u64, u64)],
        ck_seqs: &[u64],
    ) -> Vec<Result<ChunkResult, JournalError>> {
        std::thread::scope(|scope| {
            let handles: Vec<_> = chunks
                .iter()
                .map(|&(lo, hi)| scope.spawn(move || self.verify_chunk(lo, hi, ck_seqs)))
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(JournalError::Message("a verify thread panicked".into()))
                    })
                })
                .collect()
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
        let t = self.t()?;
        // The segment holding `lo` may start before it.
        let start = match self.segment_of(lo)? {
            Some((first, v)) if segment::last_seq_of(first, &v).is_ok_and(|l| l >= lo) => first,
            _ => lo,
        };
        for kv in t.segments.range(be(start)..=be(hi)) {
            let (k, v) = kv?;
            let first = seq_of(&k).unwrap_or(0);
            if first > expected {
                out.failure = Some(VerifyFailure {
                    seq: expected,
                    reason: format!(
                        "record {expected} is missing (the next record present is {first}): records were deleted"
                    ),
                });
                return Ok(out);
            }
            let parsed = Plain::of(&v);
            let seg = match parsed
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|p| Segment::parse(first, p))
            {
                Ok(s) => s,
                Err(e) => {
                    out.failure = Some(VerifyFailure {
                        seq: first.max(expected),
                        reason: format!("record {first} is truncated (its segment: {e})"),
                    });
                    return Ok(out);
                }
            };
            for r in seg.records.iter().filter(|r| r.seq >= lo && r.seq <= hi) {
                let seq = r.seq;
                let fail = |reason: String| Some(VerifyFailure { seq, reason });
                if seq != expected {
                    // Overlapping segments: a record stored twice.
                    out.failure = fail(format!(
                        "record {seq} is stored twice (segments overlap): the storage was altered"
                    ));
                    return Ok(out);
                }
                if record::canonical_seq(r.canonical) != Some(seq) {
                    out.failure = fail(format!(
                        "record {seq} carries another sequence number or format version (moved or altered)"
                    ));
                    return Ok(out);
                }
                match running {
                    None => out.first_prev = Some(r.prev),
                    Some(h) if h != r.prev => {
                        out.failure = fail(format!(
                            "record {seq}: prev_hash does not match the hash of record {}",
                            seq - 1
                        ));
                        return Ok(out);
                    }
                    Some(_) => {}
                }
                if record::chain_hash(&r.prev, r.canonical) != r.hash {
                    out.failure = fail(format!(
                        "record {seq}: hash does not match its contents (record altered)"
                    ));
                    return Ok(out);
                }
                while ck.next_if(|s| *s < seq).is_some() {}
                if ck.next_if(|s| *s == seq).is_some() {
                    out.checkpoint_hashes.push((seq, r.hash));
                }
                running = Some(r.hash);
                out.last_hash = r.hash;
                out.count += 1;
                expected = seq + 1;
            }
        }
        if expected <= hi {
            out.failure = Some(VerifyFailure {
                seq: expected,
                reason: format!("record {expected} is missing: records were deleted"),
            });
        }
        Ok(out)
    }
}
