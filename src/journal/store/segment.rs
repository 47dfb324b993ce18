//! Record segments: the sled value that holds the records of one group
//! commit (or a slice of it), keyed by the sequence number of its first
//! record. Two layouts, told apart by the first byte (docs/journal.md,
//! "Storage layout"):
//!
//! ```text
//! plain (1):      1 ‖ count u32 BE ‖ prev_hash (32)
//!                 then per record: hash (32) ‖ len u32 BE ‖ canonical bytes (len)
//! compressed (2): 2 ‖ count u32 BE ‖ plain_len u32 BE ‖ LZ4 block of the plain value
//! ```
//!
//! Record `i` has seq `first + i`; its `prev_hash` is the segment's
//! `prev_hash` for the first record and the hash of record `i - 1` after
//! that. The canonical bytes are stored as they are (any format version).
//! A segment is written compressed when that is smaller; both layouts
//! are read, so journals written before compression read as they are.
//! The chain hashes cover the canonical bytes, never the stored ones.

use std::borrow::Cow;

use crate::journal::record::{self, Record};

/// The first byte of a plain segment value.
const LAYOUT: u8 = 1;
/// The first byte of a compressed segment value.
const LAYOUT_LZ4: u8 = 2;
/// The header of a compressed value: layout, count, plain length.
const LZ4_HEADER: usize = 1 + 4 + 4;
/// LZ4 expands at most ~255×: a stored value claiming more is damaged (and
/// is not allowed to make us allocate its claim).
const LZ4_MAX_RATIO: usize = 255;
/// The largest value written compressed (a larger one, a single huge
/// record, is stored plain), so reading never allocates more than this
/// for a compressed value.
const MAX_PLAIN: usize = 64 * 1024 * 1024;
const HEADER: usize = 1 + 4 + 32;
const PER_RECORD: usize = 32 + 4;

/// A segment is closed once it holds this many plain bytes, in a journal
/// on 8 MiB sled log segments: sled turns a log message over a quarter of
/// its log segment (2 MiB) into a separate blob file, and a leaf holds up
/// to 17 values (544 KiB at most, uncompressible). Larger segments mean
/// fewer sled values and leaves: a smaller page table to load at every
/// open, fewer leaves for a query to read, fewer inserts per commit.
pub(in crate::journal) const SEGMENT_BYTES: usize = 32 * 1024;

/// The same in a journal on sled's 512 KiB log segments (created before
/// 8 MiB became the size): values stay under ~7 KiB, leaves under the
/// 128 KiB blob threshold.
pub(in crate::journal) const SMALL_SEGMENT_BYTES: usize = 6 * 1024;

/// Most records in one segment: a record's position in its segment fits
/// the partner index's one byte (255 means unknown).
const MAX_RECORDS: u32 = 255;

/// The segment size for a journal on sled log segments of `sled_segment_size`.
pub(in crate::journal) fn max_bytes_for(sled_segment_size: usize) -> usize {
    if sled_segment_size >= 8 * 1024 * 1024 {
        SEGMENT_BYTES
    } else {
        SMALL_SEGMENT_BYTES
    }
}

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
    #[error("the segment's layout byte is {0}, not {LAYOUT} or {LAYOUT_LZ4}")]
    Layout(u8),
    #[error("the compressed segment does not decompress: {0}")]
    Compressed(String),
    #[error("the segment value is truncated")]
    Truncated,
    #[error("{0} trailing bytes after the segment's records")]
    Trailing(usize),
}

/// A segment value in the plain layout: the stored value itself, or the
/// stored value decompressed. What [`Segment::parse`] reads.
pub(in crate::journal) struct Plain<'a>(Cow<'a, [u8]>);

impl<'a> Plain<'a> {
    /// The plain form of a stored segment value (decompressed if it is
    /// compressed).
    pub(in crate::journal) fn of(v: &'a [u8]) -> Result<Plain<'a>, SegmentError> {
        match v.first() {
            None => Err(SegmentError::Truncated),
            Some(&LAYOUT) => Ok(Plain(Cow::Borrowed(v))),
            Some(&LAYOUT_LZ4) => {
                let head = v.get(..LZ4_HEADER).ok_or(SegmentError::Truncated)?;
                let plain_len = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) as usize;
                let body = &v[LZ4_HEADER..];
                if plain_len > MAX_PLAIN || plain_len > body.len().saturating_mul(LZ4_MAX_RATIO) {
                    return Err(SegmentError::Compressed(format!(
                        "it claims {plain_len} bytes from {} compressed",
                        body.len()
                    )));
                }
                let plain = lz4_flex::block::decompress(body, plain_len)
                    .map_err(|e| SegmentError::Compressed(e.to_string()))?;
                if plain.len() != plain_len {
                    return Err(SegmentError::Compressed(format!(
                        "{} bytes, not the {plain_len} its header says",
                        plain.len()
                    )));
                }
                // A compressed value holds a plain one, never another
                // compressed one, with the count its header repeats.
                match plain.first() {
                    Some(&LAYOUT) if plain.get(1..5) == v.get(1..5) => Ok(Plain(Cow::Owned(plain))),
                    Some(&LAYOUT) => Err(SegmentError::Compressed(
                        "its header's record count is not the segment's".into(),
                    )),
                    Some(&b) => Err(SegmentError::Layout(b)),
                    None => Err(SegmentError::Truncated),
                }
            }
            Some(&b) => Err(SegmentError::Layout(b)),
        }
    }

    /// The same, owning its bytes.
    pub(in crate::journal) fn into_owned(self) -> Plain<'static> {
        Plain(Cow::Owned(self.0.into_owned()))
    }

    /// The plain value's bytes (what a build before compression stored).
    #[cfg(test)]
    pub(in crate::journal) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The seq of the last record of the stored segment value keyed `first`,
/// from its header (nothing decompressed or checked: for finding a
/// segment, not for trusting it).
pub(in crate::journal) fn last_seq_of(first: u64, v: &[u8]) -> Result<u64, SegmentError> {
    let count = match v.get(..5) {
        Some([LAYOUT | LAYOUT_LZ4, c @ ..]) => u32::from_be_bytes([c[0], c[1], c[2], c[3]]),
        Some([b, ..]) => return Err(SegmentError::Layout(*b)),
        _ => return Err(SegmentError::Truncated),
    };
    Ok(first.saturating_add(u64::from(count).saturating_sub(1)))
}

/// The stored form of a plain segment value: compressed when that saves
/// bytes, else as it is.
fn store_form(plain: Vec<u8>) -> Vec<u8> {
    let Ok(plain_len) = u32::try_from(plain.len()) else {
        return plain;
    };
    if plain.len() > MAX_PLAIN {
        return plain;
    }
    let body = lz4_flex::block::compress(&plain);
    if LZ4_HEADER + body.len() >= plain.len() {
        return plain;
    }
    let mut out = Vec::with_capacity(LZ4_HEADER + body.len());
    out.push(LAYOUT_LZ4);
    out.extend_from_slice(&plain[1..5]);
    out.extend_from_slice(&plain_len.to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The records of one segment value, parsed (borrowing its plain form).
pub(in crate::journal) struct Segment<'a> {
    pub first: u64,
    pub records: Vec<StoredRef<'a>>,
}

impl<'a> Segment<'a> {
    pub(in crate::journal) fn parse(
        first: u64,
        plain: &'a Plain<'_>,
    ) -> Result<Segment<'a>, SegmentError> {
        let v: &'a [u8] = &plain.0;
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
    max_bytes: usize,
}

impl SegmentBuf {
    /// A segment closed at `max_bytes` plain bytes (or 255 records).
    pub(in crate::journal) fn new(prev: &[u8; 32], max_bytes: usize) -> SegmentBuf {
        let mut buf = Vec::with_capacity(max_bytes.min(SEGMENT_BYTES) + 512);
        buf.push(LAYOUT);
        buf.extend_from_slice(&0u32.to_be_bytes());
        buf.extend_from_slice(prev);
        SegmentBuf {
            buf,
            count: 0,
            max_bytes,
        }
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
        self.count >= MAX_RECORDS
            || (self.count > 0 && self.buf.len() + PER_RECORD + canonical_len > self.max_bytes)
    }

    /// The value to store (compressed when that is smaller).
    pub(in crate::journal) fn finish(self) -> Vec<u8> {
        store_form(self.finish_plain())
    }

    /// The value in the plain layout.
    fn finish_plain(mut self) -> Vec<u8> {
        self.buf[1..5].copy_from_slice(&self.count.to_be_bytes());
        self.buf
    }
}

/// A record as `pack` takes it: `(seq, prev_hash, hash, canonical)`.
pub(in crate::journal) type Link<'a> = (u64, [u8; 32], [u8; 32], &'a [u8]);

/// Packs consecutive records into segment values of at most `max_bytes`
/// plain bytes and 255 records (a larger record alone); returns `(first
/// seq, value)`.
/// `records` are `(seq, prev_hash, hash, canonical)` in order; a record
/// whose seq or prev_hash does not follow its predecessor starts a new
/// segment, so what is stored is exactly what was given.
pub(in crate::journal) fn pack<'a>(
    records: impl IntoIterator<Item = Link<'a>>,
    max_bytes: usize,
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
            cur = Some((seq, SegmentBuf::new(&prev, max_bytes)));
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
        let packed = pack(recs.iter().copied(), SEGMENT_BYTES);
        assert_eq!(packed.len(), 1);
        let (first, v) = &packed[0];
        assert_eq!(v[0], LAYOUT_LZ4, "repetitive records are stored compressed");
        let p = Plain::of(v).unwrap();
        let seg = Segment::parse(*first, &p).unwrap();
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
        let packed = pack(recs, SEGMENT_BYTES);
        let firsts: Vec<u64> = packed.iter().map(|(f, _)| *f).collect();
        assert_eq!(firsts, vec![1, 3, 5]);
        let p = Plain::of(&packed[1].1).unwrap();
        let seg = Segment::parse(3, &p).unwrap();
        assert_eq!(seg.records[0].prev, h(9));
    }

    #[test]
    fn segments_close_at_the_size_limit_and_at_255_records() {
        let c = vec![1u8; 1000];
        for limit in [SMALL_SEGMENT_BYTES, SEGMENT_BYTES] {
            let packed = pack(
                (0..100u64).map(|i| (i + 1, h(i as u8), h(i as u8 + 1), c.as_slice())),
                limit,
            );
            assert!(packed.len() >= 100 * 1036 / limit, "{}", packed.len());
            let mut total = 0;
            for (f, v) in &packed {
                let p = Plain::of(v).unwrap();
                assert!(p.0.len() <= limit, "{}", p.0.len());
                total += Segment::parse(*f, &p).unwrap().records.len();
            }
            assert_eq!(total, 100);
        }
        // Small records: the count closes a segment (a position in it
        // fits the index's one byte).
        let c = vec![1u8; 10];
        let packed = pack(
            (0..600u64).map(|i| (i + 1, h(0), h(0), c.as_slice())),
            SEGMENT_BYTES,
        );
        let firsts: Vec<u64> = packed.iter().map(|(f, _)| *f).collect();
        assert_eq!(firsts, vec![1, 256, 511]);
        assert_eq!(max_bytes_for(8 * 1024 * 1024), SEGMENT_BYTES);
        assert_eq!(max_bytes_for(512 * 1024), SMALL_SEGMENT_BYTES);
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

    /// A plain value of one record.
    fn plain_value(c: &[u8]) -> Vec<u8> {
        let mut b = SegmentBuf::new(&h(0), SEGMENT_BYTES);
        b.push(&h(1), c);
        b.finish_plain()
    }

    fn parse_stored(first: u64, v: &[u8]) -> Result<usize, SegmentError> {
        let p = Plain::of(v)?;
        Ok(Segment::parse(first, &p)?.records.len())
    }

    #[test]
    fn damaged_values_are_refused_not_misread() {
        let v = plain_value(&[1u8; 40]);
        assert_eq!(parse_stored(1, &v), Ok(1));
        assert_eq!(
            parse_stored(1, &v[..v.len() - 1]),
            Err(SegmentError::Truncated)
        );
        let mut longer = v.clone();
        longer.push(0);
        assert_eq!(parse_stored(1, &longer), Err(SegmentError::Trailing(1)));
        let mut other = v.clone();
        other[0] = 9;
        assert_eq!(parse_stored(1, &other), Err(SegmentError::Layout(9)));
        let mut lying = v;
        lying[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(parse_stored(1, &lying), Err(SegmentError::Truncated));
        assert_eq!(parse_stored(1, &[]), Err(SegmentError::Truncated));
    }

    #[test]
    fn a_plain_value_as_written_before_compression_reads_as_it_is() {
        let c = b"a record written by an older build".repeat(20);
        let plain = plain_value(&c);
        assert_eq!(plain[0], LAYOUT);
        let stored = store_form(plain.clone());
        assert_eq!(stored[0], LAYOUT_LZ4);
        assert!(
            stored.len() < plain.len() / 4,
            "{} of {}",
            stored.len(),
            plain.len()
        );
        for v in [&plain, &stored] {
            let p = Plain::of(v).unwrap();
            assert_eq!(p.0.as_ref(), plain.as_slice());
            let seg = Segment::parse(7, &p).unwrap();
            assert_eq!(seg.records[0].canonical, c.as_slice());
            assert_eq!(last_seq_of(7, v), Ok(7));
        }
    }

    #[test]
    fn an_incompressible_segment_is_stored_plain() {
        // Bytes of a simple generator (no repeats for LZ4 to find), for
        // the hashes and the record alike.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        let (prev, hash, c) = (noise(32), noise(32), noise(3000));
        let mut b = SegmentBuf::new(&prev.try_into().unwrap(), SEGMENT_BYTES);
        b.push(&hash.try_into().unwrap(), &c);
        let plain = b.finish_plain();
        assert_eq!(store_form(plain.clone()), plain);
    }

    #[test]
    fn damaged_compressed_values_are_refused_without_allocating_their_claim() {
        let c = b"partner-001 POST /v1/orders 201 ".repeat(30);
        let stored = store_form(plain_value(&c));
        assert_eq!(stored[0], LAYOUT_LZ4);
        assert!(matches!(
            parse_stored(1, &stored[..stored.len() - 3]),
            Err(SegmentError::Compressed(_))
        ));
        assert_eq!(parse_stored(1, &stored[..4]), Err(SegmentError::Truncated));
        // A length claim past what LZ4 can expand to (or past the cap).
        for claim in [u32::MAX, (stored.len() * LZ4_MAX_RATIO) as u32 + 1] {
            let mut lying = stored.clone();
            lying[5..9].copy_from_slice(&claim.to_be_bytes());
            let e = parse_stored(1, &lying).unwrap_err();
            assert!(
                matches!(&e, SegmentError::Compressed(m) if m.contains("claims")),
                "{e}"
            );
        }
        // A length claim that does not match what the block decompresses to.
        let mut short = stored.clone();
        let real = u32::from_be_bytes([short[5], short[6], short[7], short[8]]);
        short[5..9].copy_from_slice(&(real + 1).to_be_bytes());
        assert!(matches!(
            parse_stored(1, &short),
            Err(SegmentError::Compressed(_))
        ));
        // A header whose record count is not the segment's.
        let mut count = stored.clone();
        count[1..5].copy_from_slice(&7u32.to_be_bytes());
        assert!(
            matches!(parse_stored(1, &count), Err(SegmentError::Compressed(m)) if m.contains("count")),
            "{:?}",
            parse_stored(1, &count)
        );
        // A compressed value holding another compressed value.
        let body = lz4_flex::block::compress(&stored);
        let mut nested = vec![LAYOUT_LZ4];
        nested.extend_from_slice(&stored[1..5]);
        nested.extend_from_slice(&(stored.len() as u32).to_be_bytes());
        nested.extend_from_slice(&body);
        assert_eq!(
            parse_stored(1, &nested),
            Err(SegmentError::Layout(LAYOUT_LZ4))
        );
    }
}
