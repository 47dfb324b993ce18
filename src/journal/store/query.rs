//! `log query`: records by partner, time window, decision, status and
//! kind. With a partner, the partner index is read (never the whole
//! journal) and its entries merged into time order, with the few records
//! not yet indexed (`index_tail`); without one, the records are scanned in
//! seq order up to the limit.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::index::{AT_UNKNOWN, Entry, SPREAD_MS};
use super::keys::{be, partner_prefix, time_key};
use super::segment::{self, Plain, Segment};
use super::{JournalError, Store, corrupt, plain};
use crate::event::{Decision, EventKind};
use crate::journal::record::Record;

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
    /// Whether the query selects this event: one rule for the store's
    /// queries and for reading exports.
    pub fn selects(&self, e: &crate::event::Event) -> bool {
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

/// A record read through the partner index, ordered by (time, seq).
type Keyed = ((i64, u64), Record);

/// The last segment decoded by a partner query (consecutive entries'
/// records usually share one), in its plain form, with its last seq.
struct SegmentCache {
    first: u64,
    last: u64,
    value: Option<Plain<'static>>,
}

impl SegmentCache {
    /// Record `seq`; `at` is its position in its segment as the index
    /// has it (one point lookup), or `AT_UNKNOWN` (a search).
    fn get(&mut self, store: &Store, seq: u64, at: u8) -> Result<Option<Record>, JournalError> {
        let hit = self.value.is_some() && seq >= self.first && seq <= self.last;
        let direct = if hit || at == AT_UNKNOWN {
            None
        } else {
            let first = seq.saturating_sub(u64::from(at));
            store
                .t()?
                .segments
                .get(be(first))?
                .filter(|v| segment::last_seq_of(first, v).is_ok_and(|last| seq <= last))
                .map(|v| (first, v))
        };
        let found = match direct {
            Some(d) => Some(d),
            None if hit => None,
            None => match store.segment_of(seq)? {
                None => return Ok(None),
                Some(d) => Some(d),
            },
        };
        if let Some((first, v)) = found {
            self.value = None;
            self.last =
                segment::last_seq_of(first, &v).map_err(|e| corrupt(first, e.to_string()))?;
            self.first = first;
            self.value = Some(plain(first, &v)?.into_owned());
        }
        let Some(v) = &self.value else {
            return Ok(None);
        };
        let s = Segment::parse(self.first, v).map_err(|e| corrupt(self.first, e.to_string()))?;
        match s.get(seq) {
            None => Ok(None),
            Some(r) => Store::decode(r).map(Some),
        }
    }
}

impl Store {
    /// Records matching `q`, oldest first. With a partner, only that
    /// partner's slice of the index is read (never the whole journal).
    pub fn query(&self, q: &Query) -> Result<Vec<Record>, JournalError> {
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        if let Some(partner) = &q.partner {
            return self.query_partner(q, partner);
        }
        let mut out = Vec::new();
        self.scan(0, q.reverse, &mut |r| {
            let r = Self::decode(r)?;
            if q.selects(&r.event) {
                out.push(r);
            }
            Ok(out.len() < q.limit)
        })?;
        Ok(out)
    }

    /// The partner's index entries in key order (min time, first seq),
    /// merged into (time, seq) order: an entry's records are not older
    /// than its key, and none is more than `SPREAD_MS` newer, so a record
    /// read is returned once no entry still to read can hold an earlier
    /// (or, reversed, a later) one.
    fn query_partner(&self, q: &Query, partner: &str) -> Result<Vec<Record>, JournalError> {
        let mut out = Vec::new();
        let Some(prefix) = partner_prefix(partner) else {
            return Ok(out);
        };
        let since = q.since_ms.unwrap_or(i64::MIN);
        let until = q.until_ms.unwrap_or(i64::MAX);
        let mut lo = prefix.clone();
        lo.extend_from_slice(&time_key(since.saturating_sub(SPREAD_MS)));
        let mut hi = prefix.clone();
        hi.extend_from_slice(&time_key(until));
        let mark = self.indexed_mark()?;
        let range = self.t()?.index.range(lo..hi);
        let entries: Box<dyn Iterator<Item = _>> = if q.reverse {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        let mut ready: BTreeMap<(i64, u64), Record> = BTreeMap::new();
        let mut seen: HashSet<u64> = HashSet::new();
        let mut cache = SegmentCache {
            first: 0,
            last: 0,
            value: None,
        };
        let emit = |ready: &mut BTreeMap<(i64, u64), Record>,
                    out: &mut Vec<Record>,
                    bound: Option<(i64, u64)>| {
            loop {
                let next: Option<Keyed> = if q.reverse {
                    match ready.last_key_value() {
                        Some((k, _)) if bound.is_none_or(|b| k.0 > b.0) => ready.pop_last(),
                        _ => None,
                    }
                } else {
                    match ready.first_key_value() {
                        Some((k, _)) if bound.is_none_or(|b| *k < b) => ready.pop_first(),
                        _ => None,
                    }
                };
                match next {
                    Some((_, r)) if out.len() < q.limit => out.push(r),
                    _ => return,
                }
            }
        };
        // The records after the index mark are in no entry yet (at most
        // `INDEX_LAG` and a commit): read from their segments. The mark is
        // read before the entries, so a record indexed meanwhile is found
        // once or twice, never missed.
        if let Some(mark) = mark {
            self.each_unindexed(mark, &mut |_, r| {
                let r = Self::decode(r)?;
                if r.event.partner.as_deref() == Some(partner) && q.selects(&r.event) {
                    seen.insert(r.seq);
                    ready.insert((r.event.time_ms, r.seq), r);
                }
                Ok(true)
            })?;
        }
        for kv in entries {
            let (k, v) = kv?;
            let Some(e) = Entry::parse(prefix.len(), &k, &v) else {
                continue;
            };
            // Forward: nothing later can sort before (min time, first seq).
            // Reversed: nothing later is newer than min time + spread.
            let bound = if q.reverse {
                (e.min_t.saturating_add(SPREAD_MS), u64::MAX)
            } else {
                (e.min_t, e.first)
            };
            emit(&mut ready, &mut out, Some(bound));
            if out.len() >= q.limit {
                return Ok(out);
            }
            if q.reverse && bound.0 < since {
                break;
            }
            if e.max_t < since || e.min_t >= until {
                continue;
            }
            for (i, seq) in e.seqs.iter().copied().enumerate() {
                // An entry may outlive its records (pruned, or a crash
                // between the index insert and the segment's): every record
                // is checked, and each is returned once.
                if !seen.insert(seq) {
                    continue;
                }
                let at = e.at.get(i).copied().unwrap_or(AT_UNKNOWN);
                if let Some(r) = cache.get(self, seq, at)?
                    && q.selects(&r.event)
                {
                    ready.insert((r.event.time_ms, r.seq), r);
                }
            }
        }
        emit(&mut ready, &mut out, None);
        Ok(out)
    }
}
