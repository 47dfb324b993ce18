//! Journal exports read back: `gatehouse log verify --export FILE...` and
//! `gatehouse log query --export FILE...`, for one node's export or
//! several nodes' together. `log export` writes JSON lines
//! (`"type":"record"` / `"type":"checkpoint"`). Verification re-computes
//! each file's hash chain from the records' canonical bytes (the chain
//! check of `record`) and checks every checkpoint's signature with the
//! journal's public key; a query filters with the journal's own [`Query`]
//! and merges the files' records in time order.

use std::collections::HashMap;
use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::journal::Query;
use crate::journal::checkpoint::{Checkpoint, CheckpointLine, Verifier};
use crate::journal::record::{RecordLine, check_link, encode};

/// Longest line read from an export (a record is far smaller).
const MAX_LINE: usize = 1 << 20;

/// One export file, parsed.
pub struct Export {
    pub path: PathBuf,
    pub records: Vec<RecordLine>,
    pub checkpoints: Vec<CheckpointLine>,
}

/// Why an export file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: line longer than {MAX_LINE} bytes")]
    LineTooLong { path: String, line: usize },
    #[error("{path}:{line}: {what}")]
    Malformed {
        path: String,
        line: usize,
        what: String,
    },
}

/// Reads an export (JSON lines; other line types are skipped).
pub fn read(path: &Path) -> Result<Export, ExportError> {
    let shown = || path.display().to_string();
    let io = |source| ExportError::Io {
        path: shown(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut reader = std::io::BufReader::new(file);
    let mut out = Export {
        path: path.to_path_buf(),
        records: Vec::new(),
        checkpoints: Vec::new(),
    };
    let mut line = String::new();
    let mut n = 0usize;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_line(&mut line)
            .map_err(io)?;
        if read == 0 {
            break;
        }
        n += 1;
        if line.len() > MAX_LINE {
            return Err(ExportError::LineTooLong {
                path: shown(),
                line: n,
            });
        }
        let malformed = |what: String| ExportError::Malformed {
            path: shown(),
            line: n,
            what,
        };
        let v: serde_json::Value = match serde_json::from_str(line.trim_end()) {
            Ok(v) => v,
            Err(_) if line.trim().is_empty() => continue,
            Err(e) => return Err(malformed(format!("not JSON: {e}"))),
        };
        let bad = |e: serde_json::Error| malformed(e.to_string());
        match v["type"].as_str() {
            Some("record") => out.records.push(serde_json::from_value(v).map_err(bad)?),
            Some("checkpoint") => out
                .checkpoints
                .push(serde_json::from_value(v).map_err(bad)?),
            _ => {}
        }
    }
    Ok(out)
}

/// What verifying one export found.
#[derive(Debug, Serialize)]
pub struct FileReport {
    pub path: String,
    /// Node ids found in the file's records (one, for a node's own export).
    pub nodes: Vec<String>,
    pub records: usize,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub checkpoints: usize,
    /// Records after the last checkpoint (not covered by a signature).
    pub unsigned_tail: usize,
    pub failure: Option<String>,
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok()?.try_into().ok()
}

/// Verifies one export: the chain links and hashes, and every checkpoint.
pub fn verify(export: &Export, verifier: &Verifier) -> FileReport {
    let mut nodes: Vec<String> = export
        .records
        .iter()
        .map(|r| r.event.node.clone())
        .collect();
    nodes.sort();
    nodes.dedup();
    let last_cp = export.checkpoints.iter().map(|c| c.seq).max().unwrap_or(0);
    FileReport {
        path: export.path.display().to_string(),
        nodes,
        records: export.records.len(),
        first_seq: export.records.first().map(|r| r.seq),
        last_seq: export.records.last().map(|r| r.seq),
        checkpoints: export.checkpoints.len(),
        unsigned_tail: export.records.iter().filter(|r| r.seq > last_cp).count(),
        failure: check(export, verifier).err().map(|e| e.to_string()),
    }
}

/// Where an export's chain or checkpoints fail.
#[derive(Debug, thiserror::Error)]
enum ExportFault {
    #[error("seq {seq}: {what}")]
    Record { seq: u64, what: String },
    #[error("checkpoint {seq}: {what}")]
    Checkpoint { seq: u64, what: String },
}

/// The first failure of an export's chain or checkpoints.
fn check(export: &Export, verifier: &Verifier) -> Result<(), ExportFault> {
    let mut hashes = HashMap::with_capacity(export.records.len());
    let mut prev: Option<(u64, [u8; 32])> = None;
    for r in &export.records {
        let at = |m: &str| ExportFault::Record {
            seq: r.seq,
            what: m.to_string(),
        };
        let prev_hash = unhex32(&r.prev_hash).ok_or_else(|| at("prev_hash is not 32 bytes hex"))?;
        let hash = unhex32(&r.hash).ok_or_else(|| at("hash is not 32 bytes hex"))?;
        if let Some((seq, _)) = prev
            && r.seq != seq + 1
        {
            return Err(at(&format!("records {}..{} are missing", seq + 1, r.seq)));
        }
        check_link(
            prev.as_ref().map(|(_, h)| h),
            &prev_hash,
            &encode(r.seq, &r.event),
            &hash,
        )
        .map_err(|e| at(&e.to_string()))?;
        hashes.insert(r.seq, hash);
        prev = Some((r.seq, hash));
    }
    for c in &export.checkpoints {
        let fault = |what: &str| ExportFault::Checkpoint {
            seq: c.seq,
            what: what.to_string(),
        };
        let hash = unhex32(&c.hash).ok_or_else(|| fault("hash is not 32 bytes hex"))?;
        let cp = Checkpoint {
            seq: c.seq,
            hash,
            time_ms: c.time_ms,
            kind: c.kind,
            signature: hex::decode(&c.signature).map_err(|_| fault("signature is not hex"))?,
        };
        if !verifier.verify(&cp) {
            return Err(fault("bad signature"));
        }
        if let Some(h) = hashes.get(&c.seq)
            && *h != hash
        {
            return Err(fault("signs a hash the record at that seq does not have"));
        }
    }
    Ok(())
}

/// The records of all `exports` that `query` selects, in time order (then
/// node, then seq), at most `query.limit`.
pub fn query<'a>(exports: &'a [Export], query: &Query) -> Vec<&'a RecordLine> {
    let mut out: Vec<&RecordLine> = exports
        .iter()
        .flat_map(|e| e.records.iter())
        .filter(|r| query.selects(&r.event))
        .collect();
    out.sort_by(|a, b| {
        (a.event.time_ms, &a.event.node, a.seq).cmp(&(b.event.time_ms, &b.event.node, b.seq))
    });
    if query.reverse {
        out.reverse();
    }
    out.truncate(query.limit);
    out
}
