//! `gatehouse log ...`: read, export, verify and prune the exchange journal.
//! Goes through the running broker's admin socket when one answers, else
//! opens the database directly (the broker is stopped).

use std::error::Error;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use time::OffsetDateTime;

use crate::control::socket::{self, Backend, Reply, Request};
use crate::event::{Decision, EventKind};
use crate::home::Home;
use crate::journal::{JournalError, Query, Signer, Store, Verifier, export, fmt_time_ms};
use crate::timefmt::parse_instant;

type CliResult = Result<ExitCode, Box<dyn Error>>;

#[derive(Subcommand, Debug)]
pub enum LogCmd {
    /// Show the newest records; -f keeps following new ones.
    Tail {
        /// How many records.
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        n: usize,
        /// Keep following: print new records as they are written.
        #[arg(short = 'f', long)]
        follow: bool,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Find records by partner, kind, time, decision and status. Lists the
    /// oldest matches first (at most --limit); --reverse lists the newest first.
    Query {
        /// Only this partner's records.
        #[arg(long)]
        partner: Option<String>,
        /// From this time (RFC 3339, or a duration ago: 1h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Before this time (RFC 3339, or a duration ago).
        #[arg(long)]
        until: Option<String>,
        /// Only allowed, or only denied, exchanges.
        #[arg(long, value_enum)]
        decision: Option<DecisionArg>,
        /// HTTP status.
        #[arg(long)]
        status: Option<u16>,
        /// Only records of this kind: exchanges, refused TLS handshakes
        /// (and their per-address summaries), alerts, or admin events
        /// (reloads, certificate changes).
        #[arg(long, value_enum)]
        kind: Option<KindArg>,
        /// Newest first: with --limit, the last N matches, not the first N.
        #[arg(long)]
        reverse: bool,
        /// At most this many records.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Query these `log export` files (several nodes of a fleet,
        /// merged in time order) instead of this node's journal.
        #[arg(long = "export", num_args = 1..)]
        exports: Vec<std::path::PathBuf>,
    },
    /// Export records and signed checkpoints, one JSON object per line.
    Export {
        /// Output format: JSON lines, one record or checkpoint per line.
        #[arg(long, value_enum, default_value_t = ExportFormat::Jsonl)]
        format: ExportFormat,
        /// Resume after this sequence number.
        #[arg(long, default_value_t = 0)]
        after_seq: u64,
        /// Keep streaming new records.
        #[arg(long)]
        follow: bool,
        /// A cursor file for a resumable shipper: start after the sequence
        /// number it holds (else after --after-seq), and keep it updated as
        /// lines are written (at most once a second, and at the end). After
        /// a crash or restart at most the last second's lines come again;
        /// none is skipped.
        #[arg(long, value_name = "FILE")]
        cursor: Option<std::path::PathBuf>,
    },
    /// Evidence of one signed call for a third party: the record, the
    /// partner's signature and signature base, its key, the hash chain to
    /// the covering signed checkpoint, and a README of openssl checks.
    Evidence {
        /// The record's sequence number.
        seq: u64,
        /// The folder to write (created; files in it are replaced).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Check the hash chain and every checkpoint signature (exit 0 only if all hold).
    Verify {
        /// The verification report as one JSON object.
        #[arg(long)]
        json: bool,
        /// Verify these `log export` files (each node's chain and signed
        /// checkpoints) instead of this node's journal.
        #[arg(long = "export", num_args = 1..)]
        exports: Vec<std::path::PathBuf>,
    },
    /// Fault drill on the running broker: make journal writes fail or recover.
    #[command(hide = true)]
    FaultDrill {
        #[arg(value_enum)]
        mode: DrillArg,
    },
    /// Retention: drop records older than T, keeping a signed checkpoint at the cut.
    Prune {
        /// RFC 3339 time, or a duration ago (90d).
        #[arg(long)]
        before: String,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum DrillArg {
    /// Journal writes fail: the broker must answer 503 and relay nothing.
    Fail,
    /// Journal writes work again.
    Recover,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum DecisionArg {
    Allowed,
    Denied,
}

impl DecisionArg {
    fn decision(self) -> Decision {
        match self {
            DecisionArg::Allowed => Decision::Allowed,
            DecisionArg::Denied => Decision::Denied,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum KindArg {
    Exchange,
    Handshake,
    Alert,
    Admin,
    /// A mirrored request answered otherwise by the candidate.
    #[value(name = "mirror_diff", alias = "mirror-diff")]
    MirrorDiff,
}

impl KindArg {
    fn kind(self) -> EventKind {
        match self {
            KindArg::Exchange => EventKind::Exchange,
            KindArg::Handshake => EventKind::Handshake,
            KindArg::Alert => EventKind::Alert,
            KindArg::Admin => EventKind::Admin,
            KindArg::MirrorDiff => EventKind::MirrorDiff,
        }
    }
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ExportFormat {
    Jsonl,
}

/// Runs `req` through the broker when it answers, else on the database.
fn run_request(
    home: &Home,
    req: Request,
    on_reply: &mut dyn FnMut(Reply) -> Result<bool, JournalError>,
) -> Result<(), JournalError> {
    let path = home.admin_socket();
    if let Ok(stream) = UnixStream::connect(&path) {
        return socket::request(stream, &path, &req, on_reply);
    }
    if let Request::Export {
        after_seq,
        follow: true,
    } = req
    {
        return follow_direct(home, after_seq, on_reply);
    }
    let store = match req {
        Request::Prune { .. } => Store::open_existing(&home.journal_db())?,
        _ => Store::open_read_only(&home.journal_db())?,
    };
    let verifier = Verifier::load(&home.journal_pub())?;
    let signer = match req {
        Request::Prune { .. } => Some(Signer::load(&home.journal_key())?),
        _ => None,
    };
    let backend = Backend {
        store: &store,
        verifier: &verifier,
        signer: signer.as_ref(),
        writer: None,
    };
    let mut failure = None;
    socket::execute(&backend, req, &|| false, &mut |reply| match reply {
        Reply::End => false,
        Reply::Error { message } => {
            failure = Some(JournalError::Remote(message));
            false
        }
        other => match on_reply(other) {
            Ok(more) => more,
            Err(e) => {
                failure = Some(e);
                false
            }
        },
    });
    match failure {
        Some(JournalError::Remote(m)) => Err(JournalError::Message(m)),
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `export --follow` on a stopped broker. Holding the database open would
/// keep the broker from starting (sled allows one process), so this polls:
/// open, export what is new, close, wait. When the broker comes up (its
/// socket answers, or the database is locked by it), it goes on through
/// the socket from the last record seen.
fn follow_direct(
    home: &Home,
    after_seq: u64,
    on_reply: &mut dyn FnMut(Reply) -> Result<bool, JournalError>,
) -> Result<(), JournalError> {
    let path = home.admin_socket();
    let last = std::cell::Cell::new(after_seq);
    let stopped = std::cell::Cell::new(false);
    let mut track = |r: Reply| {
        if let Reply::Record(rec) = &r {
            last.set(rec.seq);
        }
        let more = on_reply(r)?;
        stopped.set(!more);
        Ok(more)
    };
    loop {
        if let Ok(stream) = UnixStream::connect(&path) {
            let req = Request::Export {
                after_seq: last.get(),
                follow: true,
            };
            return socket::request(stream, &path, &req, &mut track);
        }
        match run_request(
            home,
            Request::Export {
                after_seq: last.get(),
                follow: false,
            },
            &mut track,
        ) {
            Ok(()) | Err(JournalError::Locked { .. }) => {}
            Err(e) => return Err(e),
        }
        if stopped.get() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

fn time_arg(s: &Option<String>) -> Result<Option<i64>, String> {
    s.as_deref()
        .map(|t| {
            parse_instant(t, OffsetDateTime::now_utc())
                .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
        })
        .transpose()
        .map_err(|e| e.to_string())
}

fn dash(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("-")
}

fn print_line(reply: &Reply, json: bool) -> Result<(), JournalError> {
    let mut out = std::io::stdout().lock();
    let r = if json {
        serde_json::to_string(reply)
            .map_err(|e| JournalError::Storage(e.to_string()))
            .map(|s| writeln!(out, "{s}"))
    } else {
        Ok(match reply {
            Reply::Record(r) => {
                let e = &r.event;
                let kind = serde_json::to_value(e.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                let decision = match e.decision {
                    Decision::Allowed => "allowed",
                    Decision::Denied => "denied",
                };
                writeln!(
                    out,
                    "{:>8} {} {:<9} {:<7} {:>3} {:<16} {} {} {} route={} upstream={} reason={} {}us client={}{}",
                    r.seq,
                    r.time,
                    kind,
                    decision,
                    e.status
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into()),
                    dash(&e.partner),
                    dash(&e.method),
                    dash(&e.path),
                    dash(&e.tls_version),
                    dash(&e.route),
                    dash(&e.upstream),
                    dash(&e.reason),
                    e.duration_us,
                    dash(&e.client_addr),
                    e.detail
                        .as_deref()
                        .map(|d| format!(" detail={d:?}"))
                        .unwrap_or_default(),
                )
            }
            Reply::Checkpoint(c) => writeln!(
                out,
                "{:>8} {} checkpoint ({:?}) hash={}",
                c.seq, c.time, c.kind, c.hash
            ),
            _ => Ok(()),
        })
    };
    match r {
        Ok(Ok(())) => Ok(()),
        // stdout closed (e.g. piped into `head`): stop quietly.
        Ok(Err(_)) => Err(JournalError::Closed),
        Err(e) => Err(e),
    }
}

fn print_ok(reply: Reply, json: bool) -> Result<bool, JournalError> {
    match print_line(&reply, json) {
        Ok(()) => Ok(true),
        Err(JournalError::Closed) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs one `gatehouse log` command.
pub fn run(home: &Home, cmd: LogCmd) -> CliResult {
    match cmd {
        LogCmd::FaultDrill { mode } => fault_drill(home, mode)?,
        LogCmd::Tail { n, follow, json } => tail(home, n, follow, json)?,
        LogCmd::Query {
            partner,
            since,
            until,
            decision,
            status,
            kind,
            reverse,
            limit,
            json,
            exports,
        } => {
            let query = Query {
                partner,
                since_ms: time_arg(&since)?,
                until_ms: time_arg(&until)?,
                decision: decision.map(DecisionArg::decision),
                status,
                kind: kind.map(KindArg::kind),
                limit,
                reverse,
            };
            if !exports.is_empty() {
                return query_exports(&exports, &query, json);
            }
            run_request(home, Request::Query { query }, &mut |r| print_ok(r, json))?;
        }
        LogCmd::Export {
            format: ExportFormat::Jsonl,
            after_seq,
            follow,
            cursor,
        } => export(home, after_seq, follow, cursor)?,
        LogCmd::Verify { json, exports } if !exports.is_empty() => {
            return verify_exports(home, &exports, json);
        }
        LogCmd::Verify { json, .. } => return verify(home, json),
        LogCmd::Prune { before } => prune(home, &before)?,
        LogCmd::Evidence { seq, out } => evidence(home, seq, &out)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Records after the evidence's own read before giving up on a checkpoint.
const MAX_EVIDENCE_CHAIN: usize = 100_000;

/// `log evidence SEQ --out DIR`.
fn evidence(home: &Home, seq: u64, out: &std::path::Path) -> Result<(), Box<dyn Error>> {
    use crate::journal::checkpoint::CheckpointLine;
    use crate::journal::record::RecordLine;
    if seq == 0 {
        return Err("sequence numbers start at 1".into());
    }
    let mut record: Option<RecordLine> = None;
    let mut following: Vec<RecordLine> = Vec::new();
    let mut checkpoint: Option<CheckpointLine> = None;
    let mut too_long = false;
    run_request(
        home,
        Request::Export {
            after_seq: seq - 1,
            follow: false,
        },
        &mut |r| {
            match r {
                Reply::Record(rec) if rec.seq == seq => record = Some(*rec),
                Reply::Record(rec) if record.is_some() => {
                    if following.len() >= MAX_EVIDENCE_CHAIN {
                        too_long = true;
                        return Ok(false);
                    }
                    following.push(*rec)
                }
                Reply::Checkpoint(c) if record.is_some() && c.seq >= seq => {
                    checkpoint = Some(c);
                    return Ok(false);
                }
                _ => {}
            }
            Ok(true)
        },
    )?;
    let record = record.ok_or_else(|| format!("no record {seq} in the journal"))?;
    if too_long {
        return Err(format!(
            "no signed checkpoint within {MAX_EVIDENCE_CHAIN} records after record {seq}"
        )
        .into());
    }
    let checkpoint = checkpoint.ok_or_else(|| {
        format!(
            "no signed checkpoint covers record {seq} yet: one is written within [journal] checkpoint_interval while records come in, and at shutdown; try again then"
        )
    })?;
    following.retain(|f| f.seq <= checkpoint.seq);
    let keyid = record
        .event
        .signature_keyid
        .clone()
        .ok_or_else(|| format!("record {seq} is not a signed call (it has no signature)"))?;
    let (chain, public) = signer_key(home, &record, &keyid)?;
    let journal_public = std::fs::read_to_string(home.journal_pub())
        .map_err(|e| format!("cannot read {}: {e}", home.journal_pub().display()))?;
    std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    crate::journal::evidence::write_evidence(
        out,
        &crate::journal::evidence::Evidence {
            record: &record,
            following: &following,
            checkpoint: &checkpoint,
            signer_chain_pem: chain.as_deref(),
            signer_public_pem: &public,
            journal_public_pem: &journal_public,
        },
    )?;
    println!(
        "evidence of record {seq} (covered by checkpoint {}) written to {}; see its README.md",
        checkpoint.seq,
        out.display()
    );
    Ok(())
}

/// The signer's certificate chain (when it signed with its certificate's
/// key) and its public key, PEM.
fn signer_key(
    home: &Home,
    record: &crate::journal::record::RecordLine,
    keyid: &str,
) -> Result<(Option<String>, String), Box<dyn Error>> {
    let spki_pem = |der: &[u8]| crate::ca::pem_block("PUBLIC KEY", der);
    if record.event.cert_fingerprint.as_deref() == Some(keyid) {
        let serial = record
            .event
            .cert_serial
            .as_deref()
            .ok_or("the record names no certificate serial")?;
        let leaf_path = home.issued_dir().join(format!("{serial}.pem"));
        let leaf = std::fs::read_to_string(&leaf_path).map_err(|e| {
            format!(
                "cannot read the signer's certificate {}: {e}",
                leaf_path.display()
            )
        })?;
        let der = pem::parse(&leaf)
            .map_err(|e| format!("{}: {e}", leaf_path.display()))?
            .into_contents();
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| format!("{}: {e}", leaf_path.display()))?;
        let public = spki_pem(cert.public_key().raw);
        let mut chain = leaf.clone();
        if let Ok(ca) = std::fs::read_to_string(home.certs_dir().join("ca.pem")) {
            chain.push_str(&ca);
        }
        return Ok((Some(chain), public));
    }
    let partner = record
        .event
        .partner
        .as_deref()
        .ok_or("the record names no partner")?;
    let gateway = crate::config::load_gateway(home)?;
    let partners = crate::config::load_partners(home, &gateway)?;
    let key = partners
        .iter()
        .find(|p| p.id == partner)
        .and_then(|p| p.signing_keys.iter().find(|k| k.id == keyid))
        .ok_or_else(|| {
            format!("partner `{partner}` has no [[signing_keys]] entry `{keyid}` any more")
        })?;
    Ok((None, spki_pem(&key.spki)))
}

/// `log fault-drill fail|recover`: only a running broker can do it.
fn fault_drill(home: &Home, mode: DrillArg) -> Result<(), Box<dyn Error>> {
    let path = home.admin_socket();
    let stream = UnixStream::connect(&path)
        .map_err(|e| format!("no running broker answers on {}: {e}", path.display()))?;
    let on = matches!(mode, DrillArg::Fail);
    socket::request(
        stream,
        &path,
        &Request::FaultDrill {
            journal_write_failure: on,
        },
        &mut |_| Ok(true),
    )?;
    println!(
        "journal fault drill: writes {}",
        if on {
            "now fail (the broker answers 503)"
        } else {
            "work again"
        }
    );
    Ok(())
}

/// `log tail [-n N] [-f]`: the newest records, then (with -f) new ones.
fn tail(home: &Home, n: usize, follow: bool, json: bool) -> Result<(), JournalError> {
    let mut last = 0;
    run_request(home, Request::Tail { n }, &mut |r| {
        if let Reply::Record(rec) = &r {
            last = rec.seq;
        }
        print_ok(r, json)
    })?;
    if follow {
        if last == 0 {
            last = current_last(home)?;
        }
        run_request(
            home,
            Request::Export {
                after_seq: last,
                follow: true,
            },
            &mut |r| match r {
                Reply::Record(_) => print_ok(r, json),
                _ => Ok(true),
            },
        )?;
    }
    Ok(())
}

/// `log export --format jsonl`, with an optional resumable cursor file.
fn export(
    home: &Home,
    after_seq: u64,
    follow: bool,
    cursor: Option<std::path::PathBuf>,
) -> Result<(), JournalError> {
    let Some(path) = cursor else {
        return run_request(home, Request::Export { after_seq, follow }, &mut |r| {
            print_ok(r, true)
        });
    };
    let mut cursor = Cursor::open(path, after_seq)?;
    let after_seq = cursor.seq;
    let mut complete = true;
    run_request(home, Request::Export { after_seq, follow }, &mut |r| {
        let done = match &r {
            // Everything before this record (its checkpoint included) is out.
            Reply::Record(rec) => Some(rec.seq.saturating_sub(1)),
            Reply::Checkpoint(c) => Some(c.seq),
            _ => None,
        };
        let last = match &r {
            Reply::Record(rec) => Some(rec.seq),
            _ => None,
        };
        if !print_ok(r, true)? {
            // stdout is closed: this line did not go out.
            complete = false;
            return Ok(false);
        }
        if let Some(done) = done {
            cursor.advance(done, last)?;
        }
        Ok(true)
    })?;
    cursor.finish(complete)
}

/// `log verify [--json]` on this node's journal: exit 0 only if it holds.
fn verify(home: &Home, json: bool) -> CliResult {
    let mut report = None;
    run_request(home, Request::Verify, &mut |r| {
        if let Reply::Verify(v) = r {
            report = Some(v);
        }
        Ok(true)
    })?;
    let report = report.ok_or("the verify request returned no report")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(match &report.failure {
        None => {
            if !json {
                println!(
                    "ok: the journal verifies: records {}..={} ({} records) chain from {}; {} signed checkpoint(s), the last at seq {}; {} record(s) after it not yet covered by a signature",
                    report.base_seq + 1,
                    report.last_seq,
                    report.records,
                    if report.base_seq == 0 {
                        "genesis".to_string()
                    } else {
                        format!("the prune checkpoint at seq {}", report.base_seq)
                    },
                    report.checkpoints,
                    report
                        .last_checkpoint_seq
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into()),
                    report.unsigned_tail,
                );
            }
            ExitCode::SUCCESS
        }
        Some(f) => {
            eprintln!(
                "gatehouse: journal verification FAILED at seq {}: {}",
                f.seq, f.reason
            );
            ExitCode::FAILURE
        }
    })
}

/// `log prune --before T`.
fn prune(home: &Home, before: &str) -> Result<(), Box<dyn Error>> {
    let before_ms = time_arg(&Some(before.to_string()))?.unwrap_or(0);
    let mut report = None;
    run_request(home, Request::Prune { before_ms }, &mut |r| {
        if let Reply::Prune(p) = r {
            report = Some(p);
        }
        Ok(true)
    })?;
    let report = report.ok_or("the prune request returned no report")?;
    if report.removed == 0 {
        println!(
            "nothing to prune before {}: the oldest record is newer (verification starts after seq {})",
            fmt_time_ms(before_ms),
            report.base_seq
        );
    } else {
        println!(
            "pruned {} record(s) older than {}; verification now starts from the signed checkpoint at seq {}",
            report.removed,
            fmt_time_ms(before_ms),
            report.base_seq
        );
    }
    Ok(())
}

/// `log export --cursor FILE`: the sequence number after which a shipper
/// resumes. It only ever names lines already written to stdout (flushed
/// first), so a restart may repeat lines but never skips one.
struct Cursor {
    path: std::path::PathBuf,
    /// The sequence number the file holds (or will, at the next save).
    seq: u64,
    /// The last record written, for the end of the stream.
    last_record: Option<u64>,
    saved: std::time::Instant,
    dirty: bool,
}

impl Cursor {
    fn open(path: std::path::PathBuf, default: u64) -> Result<Cursor, JournalError> {
        let seq = match std::fs::read_to_string(&path) {
            Ok(text) => text.trim().parse::<u64>().map_err(|_| {
                JournalError::Message(format!(
                    "cursor file {} does not hold a sequence number (got {:?}); fix or remove it",
                    path.display(),
                    text.trim()
                ))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => default,
            Err(e) => {
                return Err(JournalError::Message(format!(
                    "cannot read cursor file {}: {e}",
                    path.display()
                )));
            }
        };
        Ok(Cursor {
            path,
            seq,
            last_record: None,
            saved: std::time::Instant::now(),
            dirty: false,
        })
    }

    fn advance(&mut self, done: u64, last_record: Option<u64>) -> Result<(), JournalError> {
        if last_record.is_some() {
            self.last_record = last_record;
        }
        if done > self.seq {
            self.seq = done;
            self.dirty = true;
        }
        if self.dirty && self.saved.elapsed() >= std::time::Duration::from_secs(1) {
            self.save()?;
        }
        Ok(())
    }

    /// Saves at the end; a `complete` stream also vouches for its last
    /// record (no checkpoint line can follow it any more).
    fn finish(&mut self, complete: bool) -> Result<(), JournalError> {
        if let Some(last) = self.last_record.filter(|l| complete && *l > self.seq) {
            self.seq = last;
            self.dirty = true;
        }
        if self.dirty { self.save() } else { Ok(()) }
    }

    fn save(&mut self) -> Result<(), JournalError> {
        // The lines the cursor vouches for must have left the process.
        std::io::stdout()
            .flush()
            .map_err(|_| JournalError::Closed)?;
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, format!("{}\n", self.seq))
            .and_then(|()| std::fs::rename(&tmp, &self.path))
            .map_err(|e| {
                JournalError::Message(format!(
                    "cannot write cursor file {}: {e}",
                    self.path.display()
                ))
            })?;
        self.saved = std::time::Instant::now();
        self.dirty = false;
        Ok(())
    }
}

fn current_last(home: &Home) -> Result<u64, JournalError> {
    let mut last = 0;
    run_request(home, Request::Status, &mut |r| {
        if let Reply::Status(s) = r {
            last = s.store.last_seq;
        }
        Ok(true)
    })?;
    Ok(last)
}

/// `log verify --export FILE...`: exit 0 only if every file verifies.
fn verify_exports(home: &Home, paths: &[PathBuf], json: bool) -> CliResult {
    let verifier = Verifier::load(&home.journal_pub())?;
    let mut reports = Vec::with_capacity(paths.len());
    for p in paths {
        reports.push(export::verify(&export::read(p)?, &verifier));
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
fn query_exports(paths: &[PathBuf], query: &Query, json: bool) -> CliResult {
    let exports = paths
        .iter()
        .map(|p| export::read(p))
        .collect::<Result<Vec<_>, _>>()?;
    for r in export::query(&exports, query) {
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
