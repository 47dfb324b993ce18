//! Evidence of one signed call, for a third party who has neither
//! gatehouse nor its database: the partner's signature over the signature
//! base, the record that keeps them (its canonical bytes and hash), the
//! hash chain from it to a signed checkpoint, the checkpoint and its
//! signature, the keys, and a README whose `openssl` commands check each.

use std::path::Path;

use base64::Engine;

use super::checkpoint::CheckpointLine;
use super::record::{RecordLine, encode};

/// What the evidence is made of.
pub struct Evidence<'a> {
    /// The signed call's record.
    pub record: &'a RecordLine,
    /// The records after it, up to the checkpoint's (in order).
    pub following: &'a [RecordLine],
    /// The first signed checkpoint at or after the record.
    pub checkpoint: &'a CheckpointLine,
    /// The signer's certificate chain (PEM), when it signed with its
    /// certificate's key.
    pub signer_chain_pem: Option<&'a str>,
    /// The signer's public key (PEM `PUBLIC KEY`).
    pub signer_public_pem: &'a str,
    /// The journal's checkpoint verification key (PEM).
    pub journal_public_pem: &'a str,
}

/// Why the evidence cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    #[error("record {0} is not a signed call (it has no signature base)")]
    NotSigned(u64),
    #[error("record {seq}: {what}")]
    Malformed { seq: u64, what: String },
    #[error("the chain from record {0} to the checkpoint is not whole (a record is missing)")]
    Gap(u64),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn hex32(seq: u64, s: &str) -> Result<[u8; 32], EvidenceError> {
    let v = hex::decode(s).map_err(|_| EvidenceError::Malformed {
        seq,
        what: "a hash is not hex".into(),
    })?;
    v.try_into().map_err(|_| EvidenceError::Malformed {
        seq,
        what: "a hash is not 32 bytes".into(),
    })
}

/// `prev_hash || canonical`: the bytes whose SHA-256 is the record's hash.
fn linked_bytes(r: &RecordLine) -> Result<Vec<u8>, EvidenceError> {
    let mut out = hex32(r.seq, &r.prev_hash)?.to_vec();
    out.extend_from_slice(&encode(r.seq, &r.event));
    Ok(out)
}

/// An ECDSA signature in the raw `r || s` form RFC 9421 uses, as the DER
/// `SEQUENCE { INTEGER r, INTEGER s }` that `openssl dgst -verify` reads.
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() != 64 {
        return None;
    }
    let int = |b: &[u8]| {
        let mut b = b;
        while b.len() > 1 && b[0] == 0 {
            b = &b[1..];
        }
        let mut out = vec![0x02];
        if b[0] & 0x80 != 0 {
            out.push((b.len() + 1) as u8);
            out.push(0);
        } else {
            out.push(b.len() as u8);
        }
        out.extend_from_slice(b);
        out
    };
    let (r, s) = (int(&raw[..32]), int(&raw[32..]));
    let mut der = vec![0x30, (r.len() + s.len()) as u8];
    der.extend(r);
    der.extend(s);
    Some(der)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), EvidenceError> {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| EvidenceError::Write {
            path: parent.display().to_string(),
            source,
        })?;
    }
    std::fs::write(&path, bytes).map_err(|source| EvidenceError::Write {
        path: path.display().to_string(),
        source,
    })
}

/// Writes the evidence into `dir` (see the module doc).
pub fn write_evidence(dir: &Path, e: &Evidence<'_>) -> Result<(), EvidenceError> {
    let r = e.record;
    let seq = r.seq;
    let base = r
        .event
        .signature_base
        .as_deref()
        .ok_or(EvidenceError::NotSigned(seq))?;
    let (alg, sig_b64) = r
        .event
        .signature
        .as_deref()
        .and_then(|s| s.split_once(':'))
        .ok_or(EvidenceError::NotSigned(seq))?;
    let signature = base64::engine::general_purpose::STANDARD
        .decode(sig_b64)
        .map_err(|_| EvidenceError::Malformed {
            seq,
            what: "the signature is not base64".into(),
        })?;
    let keyid = r.event.signature_keyid.as_deref().unwrap_or("");

    // The record, its canonical bytes inside (what the chain hashes).
    let linked = linked_bytes(r)?;
    let mut json = serde_json::to_value(r).map_err(|e| EvidenceError::Malformed {
        seq,
        what: e.to_string(),
    })?;
    json["canonical_b64"] = base64::engine::general_purpose::STANDARD
        .encode(&linked[32..])
        .into();
    let json = serde_json::to_string_pretty(&json).unwrap_or_default();
    write(dir, "record.json", format!("{json}\n").as_bytes())?;
    write(dir, "prev_hash.bin", &linked[..32])?;
    write(dir, "signature-base.txt", base.as_bytes())?;
    write(dir, "signature.bin", &signature)?;
    write(dir, "signer-pub.pem", e.signer_public_pem.as_bytes())?;
    if let Some(chain) = e.signer_chain_pem {
        write(dir, "signer.pem", chain.as_bytes())?;
    }

    // The chain from the record to the checkpoint.
    let mut expected_prev = r.hash.clone();
    let mut next = seq + 1;
    for f in e.following {
        if f.seq != next || f.prev_hash != expected_prev {
            return Err(EvidenceError::Gap(next));
        }
        write(dir, &format!("chain/{:020}.bin", f.seq), &linked_bytes(f)?)?;
        expected_prev = f.hash.clone();
        next += 1;
    }
    let cp = e.checkpoint;
    if cp.seq + 1 != next || cp.hash != expected_prev {
        return Err(EvidenceError::Gap(next));
    }
    let message = hex::decode(&cp.message).map_err(|_| EvidenceError::Malformed {
        seq: cp.seq,
        what: "the checkpoint message is not hex".into(),
    })?;
    let cp_sig = hex::decode(&cp.signature).map_err(|_| EvidenceError::Malformed {
        seq: cp.seq,
        what: "the checkpoint signature is not hex".into(),
    })?;
    write(dir, "checkpoint.msg", &message)?;
    write(dir, "checkpoint.sig", &cp_sig)?;
    let cp_json = serde_json::to_string_pretty(cp).unwrap_or_default();
    write(dir, "checkpoint.json", format!("{cp_json}\n").as_bytes())?;
    write(
        dir,
        "journal-signing.pub.pem",
        e.journal_public_pem.as_bytes(),
    )?;

    // Step 1 depends on the algorithm.
    let verify_signature = match alg {
        "ecdsa-p256-sha256" => {
            let der = ecdsa_raw_to_der(&signature).ok_or(EvidenceError::Malformed {
                seq,
                what: "an ECDSA P-256 signature is 64 bytes".into(),
            })?;
            write(dir, "signature.der", &der)?;
            "openssl dgst -sha256 -verify signer-pub.pem -signature signature.der signature-base.txt".to_string()
        }
        "ed25519" => "openssl pkeyutl -verify -pubin -inkey signer-pub.pem -rawin -in signature-base.txt -sigfile signature.bin".to_string(),
        "rsa-pss-sha512" => "openssl dgst -sha512 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:64 -verify signer-pub.pem -signature signature.bin signature-base.txt".to_string(),
        other => {
            return Err(EvidenceError::Malformed {
                seq,
                what: format!("unknown signature algorithm `{other}`"),
            });
        }
    };
    let key_step = if e.signer_chain_pem.is_some() {
        format!(
            "The key is the one in the partner's certificate (`signer.pem`, its chain; keyid = the certificate's SHA-256 fingerprint `{keyid}`):\n\n```sh\nopenssl x509 -in signer.pem -noout -pubkey | cmp - signer-pub.pem\ntest \"$(openssl x509 -in signer.pem -noout -fingerprint -sha256 | cut -d= -f2 | tr -d : | tr A-F a-f)\" = \"{keyid}\"\n```\n"
        )
    } else {
        format!(
            "The key is the partner's registered signing key `{keyid}` (`signer-pub.pem`, from its `[[signing_keys]]`).\n"
        )
    };
    let readme = format!(
        r#"# Evidence: record {seq}

Partner `{partner}` sent `{method} {path}` at {time} (node `{node}`), signed
with RFC 9421 ({alg}, keyid `{keyid}`). The broker answered {status}.
Each step below is a shell block run in this folder with `sh -e`; each needs
only `openssl` and POSIX tools. Every step exits 0 when what it checks holds.

| file | what |
| --- | --- |
| `record.json` | the journal record; `canonical_b64` is its canonical encoding (the bytes the hash chain covers; the other fields are their reading) |
| `prev_hash.bin` | the hash of the record before it (32 bytes) |
| `signature-base.txt` | the RFC 9421 signature base, byte for byte as the partner signed it |
| `signature.bin` | the partner's signature as sent (`signature.der`: the same ECDSA signature in DER, for openssl) |
| `signer-pub.pem` | the partner's public key{signer_note} |
| `chain/*.bin` | each later record up to the checkpoint: its previous hash (32 bytes) then its canonical encoding |
| `checkpoint.msg`, `checkpoint.sig`, `checkpoint.json` | the signed checkpoint covering record {seq}: the signed bytes (`GHJCKPT1`, seq, hash, time), the journal key's DER ECDSA signature |
| `journal-signing.pub.pem` | the broker's journal key (compare it with the one the operator published) |

## 1. The partner's signature over the signature base

```sh
{verify_signature}
```

{key_step}
## 2. The record's hash (the record holds the signature base and signature above)

```sh
sed -n 's/.*"canonical_b64": *"\([^"]*\)".*/\1/p' record.json | openssl base64 -d -A > record.bin
cat prev_hash.bin record.bin | openssl dgst -sha256 -r | cut -c1-64 > record.hash
test "$(cat record.hash)" = "{hash}"
grep -q "\"hash\": \"$(cat record.hash)\"" record.json
```

## 3. The chain from the record to the checkpoint

```sh
h=$(cat prev_hash.bin record.bin | openssl dgst -sha256 -r | cut -c1-64)
for f in chain/*.bin; do
  [ -e "$f" ] || continue
  test "$(head -c 32 "$f" | od -An -v -tx1 | tr -d ' \n')" = "$h"
  h=$(openssl dgst -sha256 -r "$f" | cut -c1-64)
done
test "$h" = "{cp_hash}"
```

## 4. The checkpoint's signature (and that it names that hash)

```sh
openssl dgst -sha256 -verify journal-signing.pub.pem -signature checkpoint.sig checkpoint.msg
test "$(head -c 48 checkpoint.msg | tail -c 32 | od -An -v -tx1 | tr -d ' \n')" = "{cp_hash}"
```
"#,
        partner = r.event.partner.as_deref().unwrap_or("-"),
        method = r.event.method.as_deref().unwrap_or("-"),
        path = r.event.path.as_deref().unwrap_or("-"),
        time = r.time,
        node = r.event.node,
        status = r
            .event
            .status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "-".into()),
        signer_note = if e.signer_chain_pem.is_some() {
            "; `signer.pem`: its certificate chain"
        } else {
            ""
        },
        hash = r.hash,
        cp_hash = cp.hash,
    );
    write(dir, "README.md", readme.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_of_raw_ecdsa() {
        let mut raw = [0u8; 64];
        raw[0] = 0x80; // r needs a leading zero
        raw[63] = 1; // s is 1
        let der = ecdsa_raw_to_der(&raw).unwrap();
        assert_eq!(&der[..4], &[0x30, 2 + 33 + 3, 0x02, 33]);
        assert_eq!(&der[der.len() - 3..], &[0x02, 1, 1]);
        assert!(ecdsa_raw_to_der(&[0; 63]).is_none());
    }
}
