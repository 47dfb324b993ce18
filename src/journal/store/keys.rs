//! The byte layout of the journal's sled keys: sequence numbers as u64
//! big-endian (key order is sequence order), times sign-flipped so they
//! sort as unsigned big-endian, and the `len u16 ‖ partner` prefix of the
//! partner index's keys.

/// A sequence number as a key: big-endian, so key order is sequence order.
pub(in crate::journal) fn be(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

/// The sequence number of an 8-byte key.
pub(in crate::journal) fn seq_of(key: &[u8]) -> Option<u64> {
    let a: [u8; 8] = key.try_into().ok()?;
    Some(u64::from_be_bytes(a))
}

/// Times sort correctly as unsigned big-endian after flipping the sign bit.
pub(in crate::journal) fn time_key(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// `len u16 ‖ partner`: the start of every index key of `partner`.
pub(in crate::journal) fn partner_prefix(partner: &str) -> Option<Vec<u8>> {
    let len = u16::try_from(partner.len()).ok()?;
    let mut k = Vec::with_capacity(2 + partner.len() + 16);
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(partner.as_bytes());
    Some(k)
}
