//! Signed checkpoints: `{seq, hash, time}` signed with the journal signing
//! key (ECDSA P-256, SHA-256, DER signature), so a verifier holding only
//! `certs/journal-signing.pub.pem` can tell the chain up to `seq` is the one
//! the broker wrote. Owns the signed message format and the key handling.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};

use super::JournalError;

/// Domain separation prefix of the signed message.
pub const MESSAGE_PREFIX: &[u8; 8] = b"GHJCKPT1";

/// Why a checkpoint was taken (informational; not signed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointKind {
    /// Every `checkpoint_every` records.
    Periodic,
    /// At shutdown.
    Shutdown,
    /// At a retention cut (`log prune`): verification starts here.
    Prune,
}

impl CheckpointKind {
    fn code(self) -> u8 {
        match self {
            CheckpointKind::Periodic => 1,
            CheckpointKind::Shutdown => 2,
            CheckpointKind::Prune => 3,
        }
    }
    fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            1 => CheckpointKind::Periodic,
            2 => CheckpointKind::Shutdown,
            3 => CheckpointKind::Prune,
            _ => return None,
        })
    }
}

/// One signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: [u8; 32],
    pub time_ms: i64,
    pub kind: CheckpointKind,
    /// ECDSA P-256 SHA-256 signature over [`message`], ASN.1 DER.
    pub signature: Vec<u8>,
}

/// The signed bytes: `"GHJCKPT1" || seq (u64 BE) || hash (32) || time_ms (i64 BE)` — 56 bytes.
pub fn message(seq: u64, hash: &[u8; 32], time_ms: i64) -> Vec<u8> {
    let mut m = Vec::with_capacity(56);
    m.extend_from_slice(MESSAGE_PREFIX);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&time_ms.to_be_bytes());
    m
}

impl Checkpoint {
    pub fn message(&self) -> Vec<u8> {
        message(self.seq, &self.hash, self.time_ms)
    }

    /// Stored value (key is `seq` BE): `time_ms || hash || kind || signature`.
    pub fn to_stored(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(41 + self.signature.len());
        v.extend_from_slice(&self.time_ms.to_be_bytes());
        v.extend_from_slice(&self.hash);
        v.push(self.kind.code());
        v.extend_from_slice(&self.signature);
        v
    }

    pub fn from_stored(seq: u64, v: &[u8]) -> Option<Checkpoint> {
        if v.len() < 41 {
            return None;
        }
        let mut t = [0u8; 8];
        t.copy_from_slice(&v[..8]);
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&v[8..40]);
        Some(Checkpoint {
            seq,
            hash,
            time_ms: i64::from_be_bytes(t),
            kind: CheckpointKind::from_code(v[40])?,
            signature: v[41..].to_vec(),
        })
    }

    pub fn to_line(&self) -> CheckpointLine {
        CheckpointLine {
            seq: self.seq,
            time: super::fmt_time_ms(self.time_ms),
            time_ms: self.time_ms,
            hash: hex::encode(self.hash),
            kind: self.kind,
            message: hex::encode(self.message()),
            signature: hex::encode(&self.signature),
        }
    }
}

/// A checkpoint as one JSON object (`"type":"checkpoint"` added by the line enum).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointLine {
    pub seq: u64,
    pub time: String,
    pub time_ms: i64,
    pub hash: String,
    pub kind: CheckpointKind,
    /// The exact signed bytes, hex (`xxd -r -p` gives msg.bin for openssl).
    pub message: String,
    /// DER signature, hex.
    pub signature: String,
}

/// The journal signing key.
pub struct Signer {
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Signer {
    /// Loads the PKCS#8 PEM key `init` wrote (`certs/journal-signing.key`).
    pub fn load(path: &Path) -> Result<Signer, JournalError> {
        let err = |message: String| JournalError::Key {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let pem = pem::parse(&text).map_err(|e| err(format!("not a PEM file: {e}")))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pem.contents())
            .map_err(|e| err(format!("not a PKCS#8 ECDSA P-256 key: {e}")))?;
        Ok(Signer {
            key,
            rng: SystemRandom::new(),
        })
    }

    /// Signs a checkpoint of `hash` at `seq`.
    pub fn checkpoint(
        &self,
        seq: u64,
        hash: [u8; 32],
        time_ms: i64,
        kind: CheckpointKind,
    ) -> Result<Checkpoint, JournalError> {
        let sig = self
            .key
            .sign(&self.rng, &message(seq, &hash, time_ms))
            .map_err(|e| JournalError::Sign(e.to_string()))?;
        Ok(Checkpoint {
            seq,
            hash,
            time_ms,
            kind,
            signature: sig.as_ref().to_vec(),
        })
    }

    /// The uncompressed public point (to build a [`Verifier`] without the file).
    pub fn verifier(&self) -> Verifier {
        use aws_lc_rs::signature::KeyPair;
        Verifier {
            point: self.key.public_key().as_ref().to_vec(),
        }
    }
}

/// Checks checkpoint signatures with the journal's public key.
#[derive(Clone)]
pub struct Verifier {
    point: Vec<u8>,
}

impl Verifier {
    /// Loads `certs/journal-signing.pub.pem` (SubjectPublicKeyInfo PEM).
    pub fn load(path: &Path) -> Result<Verifier, JournalError> {
        use x509_parser::prelude::FromDer;
        let err = |message: String| JournalError::Key {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
        let pem = pem::parse(&text).map_err(|e| err(format!("not a PEM file: {e}")))?;
        let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(pem.contents())
            .map_err(|e| err(format!("not a public key: {e}")))?;
        Ok(Verifier {
            point: spki.subject_public_key.data.to_vec(),
        })
    }

    pub fn verify(&self, c: &Checkpoint) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.point)
            .verify(&c.message(), &c.signature)
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> (tempfile::TempDir, Signer, Verifier) {
        let dir = tempfile::tempdir().unwrap();
        let kp = rcgen::KeyPair::generate().unwrap();
        let key = dir.path().join("k.pem");
        let public = dir.path().join("p.pem");
        std::fs::write(&key, kp.serialize_pem()).unwrap();
        std::fs::write(&public, kp.public_key_pem()).unwrap();
        let s = Signer::load(&key).unwrap();
        let v = Verifier::load(&public).unwrap();
        (dir, s, v)
    }

    #[test]
    fn signed_checkpoint_verifies_and_forgeries_do_not() {
        let (_d, s, v) = signer();
        let c = s
            .checkpoint(10, [7; 32], 1234, CheckpointKind::Periodic)
            .unwrap();
        assert!(v.verify(&c));
        assert!(s.verifier().verify(&c));
        let back = Checkpoint::from_stored(10, &c.to_stored()).unwrap();
        assert_eq!(back, c);
        let mut other_hash = c.clone();
        other_hash.hash[0] ^= 1;
        assert!(!v.verify(&other_hash));
        let mut other_seq = c.clone();
        other_seq.seq = 11;
        assert!(!v.verify(&other_seq));
        let (_d2, s2, _) = signer();
        let foreign = s2
            .checkpoint(10, [7; 32], 1234, CheckpointKind::Periodic)
            .unwrap();
        assert!(!v.verify(&foreign));
    }

    #[test]
    fn missing_key_names_the_file() {
        let e = Signer::load(Path::new("/nonexistent/journal.key"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("/nonexistent/journal.key"), "{e}");
    }
}
