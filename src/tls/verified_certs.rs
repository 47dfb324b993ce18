//! Remembers partner certificates that passed WebPKI chain verification,
//! so a partner that reconnects with the same certificate skips the chain's
//! signature check (an ECDSA P-256 verification: about a tenth of the CPU
//! of a full mTLS handshake). What is skipped depends only on the
//! certificate's bytes and on the verifier's trust anchors and CRLs, which
//! never change for the verifier that owns this cache (a new trust store
//! or CRL builds a new verifier, with an empty cache). What depends on time
//! or on live state is still checked at every handshake: the validity
//! period (an entry only counts between the certificate's not-before and
//! not-after) and the inventory's revocation state. The handshake's own
//! proof of key possession (CertificateVerify) is never cached.
//!
//! The key is the whole chain the partner presented (the leaf and every
//! intermediate, e.g. the issuing CA of the two-tier PKI that partners send
//! with their certificate), and an entry counts only while every
//! certificate of that chain is within its validity period, so that an
//! intermediate that expires ends the shortcut too. Memory is bounded: past
//! `CAPACITY` entries the cache starts over.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Most certificates remembered (~64 bytes each).
pub const CAPACITY: usize = 16_384;

/// SHA-256 of a presented chain (see [`chain_digest`]): the cache key.
pub type CertDigest = [u8; 32];

/// The SHA-256 of a presented chain: each certificate's DER, in order,
/// behind its length (so that no two chains share a digest by moving bytes
/// from one certificate to the next).
pub fn chain_digest<'a>(chain: impl IntoIterator<Item = &'a [u8]>) -> CertDigest {
    let mut h = Sha256::new();
    for der in chain {
        h.update((der.len() as u64).to_be_bytes());
        h.update(der);
    }
    h.finalize().into()
}

/// The validity window (unix seconds) shared by every certificate of
/// `chain` (the latest not-before, the earliest not-after); `None` when one
/// of them does not parse.
pub fn chain_window<'a>(chain: impl IntoIterator<Item = &'a [u8]>) -> Option<(i64, i64)> {
    let mut window = (i64::MIN, i64::MAX);
    for der in chain {
        let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
        let v = cert.validity();
        window.0 = window.0.max(v.not_before.timestamp());
        window.1 = window.1.min(v.not_after.timestamp());
    }
    Some(window)
}

/// Validity window (unix seconds, inclusive) of a verified certificate.
#[derive(Debug, Clone, Copy)]
struct Window {
    not_before: i64,
    not_after: i64,
}

/// Certificates that passed chain verification, by digest.
#[derive(Debug, Default)]
pub struct VerifiedCerts {
    map: Mutex<HashMap<CertDigest, Window>>,
}

impl VerifiedCerts {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the certificate with this digest passed chain verification
    /// and `now` lies within its validity period.
    pub fn holds(&self, key: &CertDigest, now_unix: i64) -> bool {
        let Ok(map) = self.map.lock() else {
            return false;
        };
        map.get(key)
            .is_some_and(|w| w.not_before <= now_unix && now_unix <= w.not_after)
    }

    /// Remembers a certificate that just passed chain verification.
    pub fn insert(&self, key: CertDigest, not_before_unix: i64, not_after_unix: i64) {
        let Ok(mut map) = self.map.lock() else {
            return;
        };
        if map.len() >= CAPACITY && !map.contains_key(&key) {
            map.clear();
        }
        map.insert(
            key,
            Window {
                not_before: not_before_unix,
                not_after: not_after_unix,
            },
        );
    }

    /// Certificates remembered now.
    pub fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_bytes_between_certificates_makes_another_chain() {
        assert_ne!(
            chain_digest([b"ab".as_slice(), b"c".as_slice()]),
            chain_digest([b"a".as_slice(), b"bc".as_slice()])
        );
        assert_ne!(
            chain_digest([b"leaf".as_slice()]),
            chain_digest([b"leaf".as_slice(), b"ca".as_slice()])
        );
    }

    #[test]
    fn an_entry_holds_only_within_its_validity_period() {
        let c = VerifiedCerts::new();
        let k = chain_digest([b"certificate".as_slice()]);
        assert!(!c.holds(&k, 150), "nothing remembered yet");
        c.insert(k, 100, 200);
        assert!(c.holds(&k, 100));
        assert!(c.holds(&k, 200));
        assert!(!c.holds(&k, 99), "not yet valid");
        assert!(!c.holds(&k, 201), "expired");
        assert!(!c.holds(&chain_digest([b"another certificate".as_slice()]), 150));
    }

    #[test]
    fn memory_is_bounded() {
        let c = VerifiedCerts::new();
        for i in 0..(CAPACITY + 10) {
            c.insert(chain_digest([i.to_be_bytes().as_slice()]), 0, 10);
        }
        assert!(c.len() <= CAPACITY, "{}", c.len());
        assert!(c.holds(&chain_digest([(CAPACITY + 9).to_be_bytes().as_slice()]), 5));
    }
}
