//! Reading several nodes' journal exports together (`gatehouse log verify
//! --export FILE...`, `gatehouse log query --export FILE...`). Each node
//! of a fleet keeps its own chain and signed checkpoints; `log export`
//! writes them as JSON lines (`"type":"record"` / `"type":"checkpoint"`).
//! Verification re-computes each file's hash chain from the records'
//! canonical bytes and checks every checkpoint's signature with the
//! home's journal public key; a query merges the files' records in time
//! order, each line naming its node.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::event::{Decision, Event};
use crate::journal::checkpoint::{Checkpoint, CheckpointLine, Verifier};
use crate::journal::record::{RecordLine, chain_hash, encode};

/// Longest line read from an export (a record is far smaller).
const MAX_LINE: usize = 1 << 20;

/// One export file, parsed.
pub struct Export {
    pub path: PathBuf,
    pub records: Vec<RecordLine>,
    pub checkpoints: Vec<CheckpointLine>,
}

/// Reads an export (JSON lines; other line types are skipped).
pub fn read(path: &Path) -> Result<Export, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
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
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if read == 0 {
            break;
        }
        n += 1;
        if line.len() > MAX_LINE {
            return Err(format!(
                "{}:{n}: line longer than {MAX_LINE} bytes",
                path.display()
            ));
        }
        let v: serde_json::Value = match serde_json::from_str(line.trim_end()) {
            Ok(v) => v,
            Err(_) if line.trim().is_empty() => continue,
            Err(e) => return Err(format!("{}:{n}: not JSON: {e}", path.display())),
        };
        let bad = |e: serde_json::Error| format!("{}:{n}: {e}", path.display());
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
    let mut report = FileReport {
        path: export.path.display().to_string(),
        nodes,
        records: export.records.len(),
        first_seq: export.records.first().map(|r| r.seq),
        last_seq: export.records.last().map(|r| r.seq),
        checkpoints: export.checkpoints.len(),
        unsigned_tail: 0,
        failure: None,
    };
    report.failure = check(export, verifier).err();
    let last_cp = export.checkpoints.iter().map(|c| c.seq).max().unwrap_or(0);
    report.unsigned_tail = export.records.iter().filter(|r| r.seq > last_cp).count();
    report
}

fn check(export: &Export, verifier: &Verifier) -> Result<(), String> {
    let mut hashes = std::collections::HashMap::with_capacity(export.records.len());
    let mut prev: Option<(u64, [u8; 32])> = None;
    for r in &export.records {
        let at = |m: &str| format!("seq {}: {m}", r.seq);
        let prev_hash = unhex32(&r.prev_hash).ok_or_else(|| at("prev_hash is not 32 bytes hex"))?;
        let hash = unhex32(&r.hash).ok_or_else(|| at("hash is not 32 bytes hex"))?;
        if let Some((seq, h)) = prev {
            if r.seq != seq + 1 {
                return Err(at(&format!("records {}..{} are missing", seq + 1, r.seq)));
            }
            if prev_hash != h {
                return Err(at("prev_hash does not match the previous record's hash"));
            }
        }
        if chain_hash(&prev_hash, &encode(r.seq, &r.event)) != hash {
            return Err(at("the record's content does not match its hash (altered)"));
        }
        hashes.insert(r.seq, hash);
        prev = Some((r.seq, hash));
    }
    for c in &export.checkpoints {
        let hash = unhex32(&c.hash)
            .ok_or_else(|| format!("checkpoint {}: hash is not 32 bytes hex", c.seq))?;
        let cp = Checkpoint {
            seq: c.seq,
            hash,
            time_ms: c.time_ms,
            kind: c.kind,
            signature: hex::decode(&c.signature)
                .map_err(|_| format!("checkpoint {}: signature is not hex", c.seq))?,
        };
        if !verifier.verify(&cp) {
            return Err(format!("checkpoint {}: bad signature", c.seq));
        }
        if let Some(h) = hashes.get(&c.seq)
            && *h != hash
        {
            return Err(format!(
                "checkpoint {}: signs a hash the record at that seq does not have",
                c.seq
            ));
        }
    }
    Ok(())
}

/// Filters of a merged query.
pub struct Filter {
    pub partner: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub decision: Option<Decision>,
    pub status: Option<u16>,
    pub limit: usize,
}

impl Filter {
    fn matches(&self, e: &Event) -> bool {
        self.partner
            .as_ref()
            .is_none_or(|p| e.partner.as_ref() == Some(p))
            && self.since_ms.is_none_or(|s| e.time_ms >= s)
            && self.until_ms.is_none_or(|u| e.time_ms < u)
            && self.decision.is_none_or(|d| e.decision == d)
            && self.status.is_none_or(|s| e.status == Some(s))
    }
}

/// The records of all `exports` that match, in time order (then node,
/// then seq), at most `filter.limit`.
pub fn query<'a>(exports: &'a [Export], filter: &Filter) -> Vec<&'a RecordLine> {
    let mut out: Vec<&RecordLine> = exports
        .iter()
        .flat_map(|e| e.records.iter())
        .filter(|r| filter.matches(&r.event))
        .collect();
    out.sort_by(|a, b| {
        (a.event.time_ms, &a.event.node, a.seq).cmp(&(b.event.time_ms, &b.event.node, b.seq))
    });
    out.truncate(filter.limit);
    out
}

type CliResult = Result<std::process::ExitCode, Box<dyn std::error::Error>>;

/// `log verify --export FILE...`: exit 0 only if every file verifies.
pub fn cli_verify(home: &crate::home::Home, paths: &[PathBuf], json: bool) -> CliResult {
    let verifier = Verifier::load(&home.journal_pub())?;
    let mut reports = Vec::with_capacity(paths.len());
    for p in paths {
        reports.push(verify(&read(p)?, &verifier));
    }
    let failed = reports.iter().any(|r| r.failure.is_some());
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
    } else {
        for r in &reports {
            let range = match (r.first_seq, r.last_seq) {
                (Some(a), Some(b)) => format!("records {a}..={b}"),
                _ => "no records".into(),
            };
            match &r.failure {
                None => println!(
                    "ok: {} (node {}): {range} ({} records), {} signed checkpoint(s), {} record(s) after the last",
                    r.path,
                    r.nodes.join(","),
                    r.records,
                    r.checkpoints,
                    r.unsigned_tail
                ),
                Some(f) => eprintln!("gatehouse: {} FAILED verification: {f}", r.path),
            }
        }
    }
    Ok(if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}

/// `log query --export FILE...`: the matching records of all files, merged.
pub fn cli_query(paths: &[PathBuf], filter: Filter, json: bool) -> CliResult {
    let exports = paths
        .iter()
        .map(|p| read(p))
        .collect::<Result<Vec<_>, _>>()?;
    for r in query(&exports, &filter) {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            let e = &r.event;
            println!(
                "{} {:<12} #{:<6} {:<10} {:<8} {:<6} {} {} {}",
                r.time,
                e.node,
                r.seq,
                e.partner.as_deref().unwrap_or("-"),
                format!("{:?}", e.kind).to_lowercase(),
                e.status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into()),
                e.method.as_deref().unwrap_or("-"),
                e.path.as_deref().unwrap_or("-"),
                e.reason.as_deref().unwrap_or(""),
            );
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}
