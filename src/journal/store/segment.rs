//! Record segments: the sled value that holds the records of one group
//! commit (or a slice of it), keyed by the sequence number of its first
//! record. Layout (docs/journal.md, "Storage layout"):
//!
//! ```text
//! layout u8 (= 1) ‖ count u32 BE ‖ prev_hash (32)
//! then per record: hash (32) ‖ len u32 BE ‖ canonical bytes (len)
//! ```
//!
//! Record `i` has seq `first + i`; its `prev_hash` is the segment's
//! `prev_hash` for the first record and the hash of record `i - 1` after
//! that. The canonical bytes are stored as they are (any format version).

use crate::journal::record::{self, Record};

/// The first byte of every segment value.
const LAYOUT: u8 = 1;
const HEADER: usize = 1 + 4 + 32;
const PER_RECORD: usize = 32 + 4;

/// A segment is closed once it holds this many bytes: sled turns a log
/// message over a quarter of its 512 KiB log segment into a separate blob
/// file, and a leaf holds up to 17 values, so values stay under ~7 KiB.
pub(in crate::journal) const SEGMENT_BYTES: usize = 6 * 1024;

/// One record read out of a segment.
#[derive(Debug, Clone, Copy)]
pub(in crate::journal) struct StoredRef<'a> {
    pub seq: u64,
    pub prev: [u8; 32],
    pub hash: [u8; 32],
    pub canonical: &'a [u8],
}

impl StoredRef<'_> {
    pub(in crate::journal) fn record(&self) -> Result<Record, record::DecodeError> {
        let (seq, event) = record::decode(self.canonical)?;
        Ok(Record {
            seq,
            prev_hash: self.prev,
            hash: self.hash,
            event,
        })
    }

    /// `prev_hash ‖ hash ‖ canonical`, the form a record is exported and
    /// tampered with in tests.
    #[cfg(any(test, feature = "test-support"))]
    pub(in crate::journal) fn to_stored(self) -> Vec<u8> {
        record::stored_value(&self.prev, &self.hash, self.canonical)
    }
}

/// Why a segment value cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(in crate::journal) enum SegmentError {
    #[error("the segment's layout byte is {0}, not {LAYOUT}")]
    Layout(u8),
    #[error("the segment value is truncated")]
    Truncated,
    #[error("{0} trailing bytes after the segment's records")]
    Trailing(usize),
}

/// The records of one segment value, parsed (borrowing the value).
pub(in crate::journal) struct Segment<'a> {
    pub first: u64,
    pub records: Vec<StoredRef<'a>>,
}

impl<'a> Segment<'a> {
    pub(in crate::journal) fn parse(first: u64, v: &'a [u8]) -> Result<Segment<'a>, SegmentError> {
        let head = v.get(..HEADER).ok_or(SegmentError::Truncated)?;
        if head[0] != LAYOUT {
            return Err(SegmentError::Layout(head[0]));
        }
        let count = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut prev = [0u8; 32];
        prev.copy_from_slice(&head[5..HEADER]);
        // Every record takes at least PER_RECORD bytes: a lying count cannot
        // make us allocate more than the value's size allows.
        let mut records = Vec::with_capacity(count.min(v.len() / PER_RECORD));
        let mut at = HEADER;
        for i in 0..count {
            let fixed = v.get(at..at + PER_RECORD).ok_or(SegmentError::Truncated)?;
            let mut hash = [0u8; 32];
            hash.copy_from_slice(&fixed[..32]);
            let len = u32::from_be_bytes([fixed[32], fixed[33], fixed[34], fixed[35]]) as usize;
            at += PER_RECORD;
            let canonical = v
                .get(at..at.checked_add(len).ok_or(SegmentError::Truncated)?)
                .ok_or(SegmentError::Truncated)?;
            at += len;
            records.push(StoredRef {
                seq: first.saturating_add(i as u64),
                prev,
                hash,
                canonical,
            });
            prev = hash;
        }
        if at != v.len() {
            return Err(SegmentError::Trailing(v.len() - at));
        }
        Ok(Segment { first, records })
    }

    /// The last record's seq (the first's when empty).
    pub(in crate::journal) fn last_seq(&self) -> u64 {
        self.first
            .saturating_add((self.records.len() as u64).saturating_sub(1))
    }

    pub(in crate::journal) fn get(&self, seq: u64) -> Option<&StoredRef<'a>> {
        let i = usize::try_from(seq.checked_sub(self.first)?).ok()?;
        self.records.get(i)
    }
}

/// Builds one segment value.
pub(in crate::journal) struct SegmentBuf {
    buf: Vec<u8>,
    count: u32,
}

impl SegmentBuf {
    pub(in crate::journal) fn new(prev: &[u8; 32]) -> SegmentBuf {
        let mut buf = Vec::with_capacity(SEGMENT_BYTES + 512);
        buf.push(LAYOUT);
        buf.extend_from_slice(&0u32.to_be_bytes());
        buf.extend_from_slice(prev);
        SegmentBuf { buf, count: 0 }
    }

    /// Appends a record (its prev_hash is the previous record's hash, or
    /// the segment's prev_hash for the first).
    pub(in crate::journal) fn push(&mut self, hash: &[u8; 32], canonical: &[u8]) {
        self.buf.extend_from_slice(hash);
        let len = u32::try_from(canonical.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf
            .extend_from_slice(&canonical[..canonical.len().min(u32::MAX as usize)]);
        self.count += 1;
    }

    /// Whether the next record of `canonical_len` bytes belongs in a new segment.
    pub(in crate::journal) fn full_for(&self, canonical_len: usize) -> bool {
        self.count > 0 && self.buf.len() + PER_RECORD + canonical_len > SEGMENT_BYTES
    }

    pub(in crate::journal) fn finish(mut self) -> Vec<u8> {
        self.buf[1..5].copy_from_slice(&self.count.to_be_bytes());
        self.buf
    }
}

/// A record as `pack` takes it: `(seq, prev_hash, hash, canonical)`.
pub(in crate::journal) type Link<'a> = (u64, [u8; 32], [u8; 32], &'a [u8]);

/// Packs consecutive records into segment values of at most
/// [`SEGMENT_BYTES`] (a larger record alone); returns `(first seq, value)`.
/// `records` are `(seq, prev_hash, hash, canonical)` in order; a record
/// whose seq or prev_hash does not follow its predecessor starts a new
/// segment, so what is stored is exactly what was given.
pub(in crate::journal) fn pack<'a>(
    records: impl IntoIterator<Item = Link<'a>>,
) -> Vec<(u64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut cur: Option<(u64, SegmentBuf)> = None;
    let mut next: Option<(u64, [u8; 32])> = None;
    for (seq, prev, hash, canonical) in records {
        let follows = next == Some((seq, prev));
        let start_new = match &cur {
            None => true,
            Some((_, b)) => !follows || b.full_for(canonical.len()),
        };
        if start_new {
            if let Some((first, b)) = cur.take() {
                out.push((first, b.finish()));
            }
            cur = Some((seq, SegmentBuf::new(&prev)));
        }
        if let Some((_, b)) = cur.as_mut() {
            b.push(&hash, canonical);
        }
        next = Some((seq.saturating_add(1), hash));
    }
    if let Some((first, b)) = cur.take() {
        out.push((first, b.finish()));
    }
    out
}

/// The position of each record in the segments `pack` made (`firsts`:
/// the segments' first seqs, ascending), for the partner index; 255 when
/// the record is further in than that.
pub(in crate::journal) fn position(firsts: &[u64], seq: u64) -> u8 {
    let i = firsts.partition_point(|f| *f <= seq);
    i.checked_sub(1)
        .and_then(|i| u8::try_from(seq - firsts[i]).ok())
        .unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u8) -> [u8; 32] {
        [i; 32]
    }

    #[test]
    fn a_packed_segment_reads_back_every_record_and_link() {
        let bodies: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 100 + i as usize]).collect();
        let recs: Vec<Link<'_>> = (0..5u8)
            .map(|i| (10 + i as u64, h(i), h(i + 1), bodies[i as usize].as_slice()))
            .collect();
        let packed = pack(recs.iter().copied());
        assert_eq!(packed.len(), 1);
        let (first, v) = &packed[0];
        let seg = Segment::parse(*first, v).unwrap();
        assert_eq!((seg.first, seg.last_seq()), (10, 14));
        for (r, (s, p, hh, c)) in seg.records.iter().zip(&recs) {
            assert_eq!((r.seq, r.prev, r.hash, r.canonical), (*s, *p, *hh, *c));
        }
        assert_eq!(seg.get(12).unwrap().seq, 12);
        assert!(seg.get(15).is_none() && seg.get(9).is_none());
    }

    #[test]
    fn a_broken_link_or_a_gap_starts_a_new_segment_so_nothing_is_laundered() {
        let c = vec![7u8; 50];
        let recs = [
            (1, h(0), h(1), c.as_slice()),
            (2, h(1), h(2), c.as_slice()),
            (3, h(9), h(3), c.as_slice()), // prev does not match
            (5, h(3), h(5), c.as_slice()), // gap
        ];
        let packed = pack(recs);
        let firsts: Vec<u64> = packed.iter().map(|(f, _)| *f).collect();
        assert_eq!(firsts, vec![1, 3, 5]);
        let seg = Segment::parse(3, &packed[1].1).unwrap();
        assert_eq!(seg.records[0].prev, h(9));
    }

    #[test]
    fn segments_close_at_the_size_limit() {
        let c = vec![1u8; 1000];
        let packed = pack((0..20u64).map(|i| (i + 1, h(i as u8), h(i as u8 + 1), c.as_slice())));
        assert!(packed.len() >= 4, "{}", packed.len());
        for (f, v) in &packed {
            assert!(v.len() <= SEGMENT_BYTES, "{}", v.len());
            Segment::parse(*f, v).unwrap();
        }
        let total: usize = packed
            .iter()
            .map(|(f, v)| Segment::parse(*f, v).unwrap().records.len())
            .sum();
        assert_eq!(total, 20);
    }

    #[test]
    fn a_records_position_in_its_segment_is_found_from_the_segment_starts() {
        let firsts = [1, 16, 30, 400];
        assert_eq!(position(&firsts, 1), 0);
        assert_eq!(position(&firsts, 15), 14);
        assert_eq!(position(&firsts, 16), 0);
        assert_eq!(position(&firsts, 29), 13);
        assert_eq!(position(&firsts, 399), u8::MAX, "too far in: unknown");
        assert_eq!(position(&firsts, 0), u8::MAX, "before every segment");
    }

    #[test]
    fn damaged_values_are_refused_not_misread() {
        let c = vec![1u8; 40];
        let (_, v) = pack([(1, h(0), h(1), c.as_slice())]).remove(0);
        assert_eq!(
            Segment::parse(1, &v[..v.len() - 1]).err(),
            Some(SegmentError::Truncated)
        );
        let mut longer = v.clone();
        longer.push(0);
        assert_eq!(
            Segment::parse(1, &longer).err(),
            Some(SegmentError::Trailing(1))
        );
        let mut other = v.clone();
        other[0] = 9;
        assert_eq!(
            Segment::parse(1, &other).err(),
            Some(SegmentError::Layout(9))
        );
        let mut lying = v;
        lying[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            Segment::parse(1, &lying).err(),
            Some(SegmentError::Truncated)
        );
    }
}
