//! The partner index (`partner_index` tree): one entry per partner per
//! run of records, not per record. The writer keeps each partner's entry
//! open across group commits and stores it when it is full or when the
//! unindexed tail grows too long (`index_tail`). Key `len u16 ‖ partner ‖ min time
//! (sign-flipped i64 BE) ‖ first seq BE`, value `max time i64 BE ‖ (seq -
//! first seq) u16 BE ‖ the record's position in its segment u8 (255:
//! unknown), for each of the partner's records in the entry`: a query
//! reads each record's segment with one point lookup.
//!
//! An entry never spans more than [`SPREAD_MS`] of record time, 65,535
//! sequence numbers or [`ENTRY_SEQS`] records, so a query can bound which
//! entries may hold a time and merge entries into time order.

use std::collections::HashMap;

use super::keys::{be, partner_prefix, seq_of, time_key};

/// Most record time (`max - min`) one entry covers.
pub(in crate::journal) const SPREAD_MS: i64 = 60_000;
/// Most records one entry lists.
const ENTRY_SEQS: usize = 1024;

/// One index entry, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(in crate::journal) struct Entry {
    pub min_t: i64,
    pub max_t: i64,
    pub first: u64,
    pub seqs: Vec<u64>,
    /// Per record: its position in its segment (the segment's key is
    /// `seq - position`); 255 when unknown.
    pub at: Vec<u8>,
}

/// Position in a segment meaning "unknown: search for the segment".
pub(in crate::journal) const AT_UNKNOWN: u8 = u8::MAX;

impl Entry {
    fn new(seq: u64, t: i64, at: u8) -> Entry {
        Entry {
            min_t: t,
            max_t: t,
            first: seq,
            seqs: vec![seq],
            at: vec![at],
        }
    }

    /// Whether record (seq, t) may join (seqs ascend).
    fn takes(&self, seq: u64, t: i64) -> bool {
        self.seqs.len() < ENTRY_SEQS
            && seq - self.first <= u64::from(u16::MAX)
            && t.max(self.max_t).saturating_sub(t.min(self.min_t)) <= SPREAD_MS
    }

    fn add(&mut self, seq: u64, t: i64, at: u8) {
        self.min_t = self.min_t.min(t);
        self.max_t = self.max_t.max(t);
        self.seqs.push(seq);
        self.at.push(at);
    }

    /// The stored key of this entry for `partner`.
    pub(in crate::journal) fn key(&self, partner: &str) -> Option<Vec<u8>> {
        let mut k = partner_prefix(partner)?;
        k.extend_from_slice(&time_key(self.min_t));
        k.extend_from_slice(&be(self.first));
        Some(k)
    }

    pub(in crate::journal) fn value(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + 3 * self.seqs.len());
        v.extend_from_slice(&self.max_t.to_be_bytes());
        for (i, s) in self.seqs.iter().enumerate() {
            let d = u16::try_from(s - self.first).unwrap_or(u16::MAX);
            v.extend_from_slice(&d.to_be_bytes());
            v.push(self.at.get(i).copied().unwrap_or(AT_UNKNOWN));
        }
        v
    }

    /// Decodes a stored entry (`prefix_len`: the length of `len ‖ partner`).
    pub(in crate::journal) fn parse(prefix_len: usize, k: &[u8], v: &[u8]) -> Option<Entry> {
        let rest = k.get(prefix_len..)?;
        if rest.len() != 16 || v.len() < 8 || !(v.len() - 8).is_multiple_of(3) {
            return None;
        }
        let min_t = (u64::from_be_bytes(rest[..8].try_into().ok()?) ^ (1 << 63)) as i64;
        let first = seq_of(&rest[8..])?;
        let max_t = i64::from_be_bytes(v[..8].try_into().ok()?);
        let seqs = v[8..]
            .chunks_exact(3)
            .map(|c| first + u64::from(u16::from_be_bytes([c[0], c[1]])))
            .collect();
        let at = v[8..].chunks_exact(3).map(|c| c[2]).collect();
        Some(Entry {
            min_t,
            max_t,
            first,
            seqs,
            at,
        })
    }
}

/// The length of the key prefix `len u16 ‖ partner` of a stored key.
pub(in crate::journal) fn prefix_len_of(k: &[u8]) -> Option<usize> {
    let len = u16::from_be_bytes(k.get(..2)?.try_into().ok()?) as usize;
    Some(2 + len)
}

/// Builds the index entries of a run of records (one group commit, or a
/// slice of an older journal being migrated), given as `(seq, partner,
/// time, position in its segment)` in seq order; records without a
/// partner are not indexed.
#[derive(Default)]
pub(in crate::journal) struct EntryBuilder {
    open: HashMap<String, Entry>,
    done: Vec<(Vec<u8>, Vec<u8>)>,
}

impl EntryBuilder {
    pub(in crate::journal) fn add(&mut self, seq: u64, partner: &str, t: i64, at: u8) {
        match self.open.get_mut(partner) {
            Some(e) if e.takes(seq, t) => e.add(seq, t, at),
            Some(e) => {
                let old = std::mem::replace(e, Entry::new(seq, t, at));
                if let Some(k) = old.key(partner) {
                    self.done.push((k, old.value()));
                }
            }
            None => {
                self.open
                    .insert(partner.to_string(), Entry::new(seq, t, at));
            }
        }
    }

    /// The `(key, value)` pairs to insert.
    pub(in crate::journal) fn finish(mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.take_all()
    }

    /// The entries closed so far (a record did not fit), to insert; the
    /// open ones stay.
    pub(in crate::journal) fn take_done(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        std::mem::take(&mut self.done)
    }

    /// Every entry, closed and open, to insert; the builder is left empty.
    pub(in crate::journal) fn take_all(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        for (p, e) in self.open.drain() {
            if let Some(k) = e.key(&p) {
                self.done.push((k, e.value()));
            }
        }
        std::mem::take(&mut self.done)
    }

    /// The lowest seq of any entry not yet taken (closed or open).
    pub(in crate::journal) fn oldest(&self) -> Option<u64> {
        let open = self.open.values().map(|e| e.first);
        let done = self
            .done
            .iter()
            .filter_map(|(k, _)| k.len().checked_sub(8).and_then(|i| seq_of(&k[i..])));
        open.chain(done).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_partner_per_commit_round_trips() {
        let mut b = EntryBuilder::default();
        for s in 100..164u64 {
            b.add(
                s,
                if s % 2 == 0 { "acme" } else { "globex" },
                5_000 + s as i64,
                3,
            );
        }
        let mut out = b.finish();
        out.sort();
        assert_eq!(out.len(), 2);
        let (k, v) = &out[0];
        let e = Entry::parse(prefix_len_of(k).unwrap(), k, v).unwrap();
        assert_eq!((e.first, e.min_t, e.max_t), (100, 5_100, 5_162));
        assert_eq!(e.seqs, (100..164).step_by(2).collect::<Vec<_>>());
        assert!(e.at.iter().all(|a| *a == 3) && e.at.len() == e.seqs.len());
        assert_eq!(k[..6], *partner_prefix("acme").unwrap());
    }

    #[test]
    fn an_entry_never_spans_more_than_the_spread() {
        let mut b = EntryBuilder::default();
        b.add(1, "acme", 0, AT_UNKNOWN);
        b.add(2, "acme", SPREAD_MS, AT_UNKNOWN);
        b.add(3, "acme", SPREAD_MS + 1, AT_UNKNOWN);
        b.add(4, "acme", -5, AT_UNKNOWN);
        let out = b.finish();
        assert_eq!(out.len(), 3);
        for (k, v) in &out {
            let e = Entry::parse(prefix_len_of(k).unwrap(), k, v).unwrap();
            assert!(e.max_t - e.min_t <= SPREAD_MS, "{e:?}");
            assert!(e.seqs.iter().all(|s| *s >= e.first));
        }
    }

    #[test]
    fn malformed_entries_are_refused() {
        let mut b = EntryBuilder::default();
        b.add(9, "acme", 1, AT_UNKNOWN);
        let (k, v) = b.finish().remove(0);
        let p = prefix_len_of(&k).unwrap();
        assert!(Entry::parse(p, &k[..k.len() - 1], &v).is_none());
        assert!(Entry::parse(p, &k, &v[..9]).is_none());
    }
}
