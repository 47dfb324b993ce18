//! The byte layout of the journal's sled keys: sequence numbers as u64
//! big-endian (key order is sequence order), and the partner index key
//! `len u16 || partner || time (sign-flipped u64 BE) || seq BE`. Also reads
//! a stored record's time without decoding it.

/// A sequence number as a key: big-endian, so key order is sequence order.
pub(in crate::journal) fn be(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The sequence number of an 8-byte key.
pub(super) fn seq_of(key: &[u8]) -> Option<u64> {
    let a: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(a))
}

/// Times sort correctly as unsigned big-endian after flipping the sign bit.
pub(super) fn time_key(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// `len u16 || partner`: the start of every index key of `partner`.
pub(super) fn partner_prefix(partner: &str) -> Option<Vec<u8>> {
    let len = u16::try_from(partner.len()).ok()?;
    let mut k = Vec::with_capacity(2 + partner.len() + 16);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(partner.as_bytes());
    Some(k)
}

/// Index key of a record: `len u16 || partner || time BE (sign flipped) || seq BE`.
pub(in crate::journal) fn index_key(partner: &str, time_ms: i64, seq: u64) -> Option<Vec<u8>> {
    let mut k = partner_prefix(partner)?;
    k.extend_from_slice(&time_key(time_ms));
    k.extend_from_slice(&be(seq));
    Some(k)
}

/// `time_ms` of a stored record without a full decode.
pub(super) fn stored_time(v: &[u8]) -> Option<i64> {
    let c = v.get(64 + 9..64 + 17)?;
    Some(i64::from_be_bytes(c.try_into().ok()?))
}
