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
//! Only leaf-only chains are remembered (gatehouse issues partner
//! certificates straight from its CA); a chain with intermediates is
//! verified every time. Memory is bounded: past `CAPACITY` entries the
//! cache starts over.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Most certificates remembered (~64 bytes each).
pub const CAPACITY: usize = 16_384;

/// SHA-256 of a certificate's DER: the cache key.
pub type CertDigest = [u8; 32];

/// The SHA-256 of `der`.
pub fn digest(der: &[u8]) -> CertDigest {
    Sha256::digest(der).into()
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
    fn an_entry_holds_only_within_its_validity_period() {
        let c = VerifiedCerts::new();
        let k = digest(b"certificate");
        assert!(!c.holds(&k, 150), "nothing remembered yet");
        c.insert(k, 100, 200);
        assert!(c.holds(&k, 100));
        assert!(c.holds(&k, 200));
        assert!(!c.holds(&k, 99), "not yet valid");
        assert!(!c.holds(&k, 201), "expired");
        assert!(!c.holds(&digest(b"another certificate"), 150));
    }

    #[test]
    fn memory_is_bounded() {
        let c = VerifiedCerts::new();
        for i in 0..(CAPACITY + 10) {
            c.insert(digest(&i.to_be_bytes()), 0, 10);
        }
        assert!(c.len() <= CAPACITY, "{}", c.len());
        assert!(c.holds(&digest(&(CAPACITY + 9).to_be_bytes()), 5));
    }
}
