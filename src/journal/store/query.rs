//! `log query`: records by partner, time window, decision, status and
//! kind. With a partner, the `by_partner` index is read (never the whole
//! journal); without one, the records are scanned in order up to the limit.

use serde::{Deserialize, Serialize};

use super::keys::{partner_prefix, seq_of, stored_time, time_key};
use super::{JournalError, Store};
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
    fn matches(&self, r: &Record) -> bool {
        let e = &r.event;
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

impl Store {
    /// Records matching `q`, oldest first. With a partner, only that
    /// partner's slice of the index is read (never the whole journal).
    pub fn query(&self, q: &Query) -> Result<Vec<Record>, JournalError> {
        let mut out = Vec::new();
        if q.limit == 0 {
            return Ok(out);
        }
        if let Some(partner) = &q.partner {
            let Some(prefix) = partner_prefix(partner) else {
                return Ok(out);
            };
            let mut lo = prefix.clone();
            lo.extend_from_slice(&time_key(q.since_ms.unwrap_or(i64::MIN)));
            let mut hi = prefix.clone();
            hi.extend_from_slice(&time_key(q.until_ms.unwrap_or(i64::MAX)));
            let range = self.t()?.index.range(lo..hi);
            let keys: Box<dyn Iterator<Item = _>> = if q.reverse {
                Box::new(range.rev())
            } else {
                Box::new(range)
            };
            for kv in keys {
                let (k, _) = kv?;
                let Some(seq) = k.len().checked_sub(8).and_then(|at| seq_of(&k[at..])) else {
                    continue;
                };
                // An index entry whose record was pruned is skipped.
                if let Some(r) = self.get(seq)?
                    && q.matches(&r)
                {
                    out.push(r);
                    if out.len() >= q.limit {
                        break;
                    }
                }
            }
            return Ok(out);
        }
        let records = self.t()?.records.clone();
        let all: Box<dyn Iterator<Item = _>> = if q.reverse {
            Box::new(records.iter().rev())
        } else {
            Box::new(records.iter())
        };
        for kv in all {
            let (k, v) = kv?;
            if let Some(t) = stored_time(&v)
                && (q.since_ms.is_some_and(|s| t < s) || q.until_ms.is_some_and(|u| t >= u))
            {
                continue;
            }
            let r = Self::decode(&k, &v)?;
            if q.matches(&r) {
                out.push(r);
                if out.len() >= q.limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}
