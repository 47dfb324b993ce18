//! Retention (`log prune --before T`): re-checks the prefix to cut (chain
//! and checkpoints), signs a prune checkpoint at the cut, records the cut in
//! `meta/base`, then removes whole segments up to the cut (the one holding
//! the cut is rewritten from the next record on), trims the partner index
//! and drops older checkpoints.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::keys::be;
use super::{JournalError, META_BASE, Store, corrupt};
use crate::journal::checkpoint::{Checkpoint, CheckpointKind, Signer};
use crate::journal::record::{self, GENESIS_HASH};

/// What `prune` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    pub removed: u64,
    /// Verification now starts after this sequence number.
    pub base_seq: u64,
}

impl Store {
    /// Drops the oldest records whose time is before `before_ms` (a
    /// contiguous prefix), after checking that prefix's chain, and keeps a
    /// signed checkpoint at the cut so verification runs on from there.
    pub fn prune(&self, before_ms: i64, signer: &Signer) -> Result<PruneReport, JournalError> {
        let base = self.base_seq()?;
        let verifier = signer.verifier();
        let mut running = if base == 0 {
            GENESIS_HASH
        } else {
            let anchor = self.checkpoint(base)?.ok_or_else(|| {
                corrupt(
                    base,
                    "the prune anchor checkpoint is missing; run `gatehouse log verify`",
                )
            })?;
            if !verifier.verify(&anchor) {
                return Err(corrupt(
                    base,
                    "the prune anchor checkpoint's signature does not verify; not pruning (run `gatehouse log verify`)",
                ));
            }
            anchor.hash
        };
        // The checkpoints in the range that may be cut: each must verify and
        // sign the chain's hash at its seq, or nothing is pruned (a prune
        // removes them, and with them the evidence they were wrong).
        let ckpts: BTreeMap<u64, Checkpoint> = self
            .checkpoints_between(base, u64::MAX)?
            .into_iter()
            .map(|c| (c.seq, c))
            .collect();
        let mut cut = base;
        let mut failure: Option<JournalError> = None;
        self.scan(base + 1, false, &mut |r| {
            let seq = r.seq;
            let Ok((_, e)) = record::decode(r.canonical) else {
                failure = Some(corrupt(
                    seq,
                    "record does not decode; not pruning (run `gatehouse log verify`)",
                ));
                return Ok(false);
            };
            if e.time_ms >= before_ms {
                return Ok(false);
            }
            let ok = seq == cut + 1
                && r.prev == running
                && record::chain_hash(&r.prev, r.canonical) == r.hash;
            if !ok {
                failure = Some(corrupt(
                    seq,
                    "the chain does not verify here; not pruning, which would destroy the evidence (run `gatehouse log verify`)",
                ));
                return Ok(false);
            }
            running = r.hash;
            if let Some(c) = ckpts.get(&seq)
                && (!verifier.verify(c) || c.hash != running)
            {
                failure = Some(corrupt(
                    seq,
                    "the signed checkpoint here does not verify against the chain; not pruning, which would destroy the evidence (run `gatehouse log verify`)",
                ));
                return Ok(false);
            }
            cut = seq;
            Ok(true)
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        if cut == base {
            return Ok(PruneReport {
                removed: 0,
                base_seq: base,
            });
        }
        let anchor =
            signer.checkpoint(cut, running, crate::event::now_ms(), CheckpointKind::Prune)?;
        self.t()?.checkpoints.insert(be(cut), anchor.to_stored())?;
        self.t()?.meta.insert(META_BASE, &be(cut))?;
        self.t()?.db.flush()?;
        let removed = self.remove_records(base + 1, cut)?;
        self.trim_index(|s| s <= cut)?;
        let mut old = sled::Batch::default();
        for kv in self.t()?.checkpoints.range(..be(cut)) {
            old.remove(kv?.0);
        }
        self.t()?.checkpoints.apply_batch(old)?;
        self.t()?.db.flush()?;
        Ok(PruneReport {
            removed,
            base_seq: cut,
        })
    }
}
