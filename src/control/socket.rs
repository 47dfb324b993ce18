//! The journal's admin socket (`data/admin.sock`, mode 0600): sled allows
//! one process per database, so while the broker runs, `gatehouse log ...`
//! asks it over this Unix socket instead of opening the database.
//!
//! Protocol (line-delimited JSON, one request per connection): the client
//! writes one line, e.g. `{"op":"tail","n":20}`; the server answers with
//! zero or more lines (`{"type":"record",...}`, `{"type":"checkpoint",...}`,
//! `{"type":"verify",...}`, `{"type":"prune",...}`, `{"type":"status",...}`)
//! and ends with `{"type":"end"}` or `{"type":"error","message":...}`.
//! `export` with `follow` streams until the client closes the connection.
//! The same [`execute`] runs requests against a directly opened database.

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::journal::checkpoint::{CheckpointLine, Signer, Verifier};
use crate::journal::record::RecordLine;
use crate::journal::store::{ExportItem, PruneReport, Query, Store, StoreStats, VerifyReport};
use crate::journal::{Journal, JournalError, JournalStats};

/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// One request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The last `n` records, oldest first.
    Tail {
        n: usize,
    },
    Query {
        query: Query,
    },
    /// Records with seq > `after_seq` and their checkpoints.
    Export {
        after_seq: u64,
        follow: bool,
    },
    Verify,
    /// Drop records older than `before_ms` (ms since the epoch).
    Prune {
        before_ms: i64,
    },
    Status,
    /// Operator's `partner resume` (running broker only): clear the
    /// partner's anomaly throttle.
    ClearAnomaly {
        partner: String,
    },
    /// Fault drill (running broker only): make journal writes fail, or
    /// stop doing so, to rehearse the fail-closed path (503s, `/readyz`).
    FaultDrill {
        journal_write_failure: bool,
    },
    /// Where the running broker's admin HTTP listener is bound (for
    /// `gatehouse status`, whatever `--admin` `serve` was given).
    AdminAddress,
    /// The settings the running broker started with and those in force
    /// (for `gatehouse check`; secrets digested).
    RunningSettings,
}

/// One response line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply {
    Record(Box<RecordLine>),
    Checkpoint(CheckpointLine),
    Verify(VerifyReport),
    Prune(PruneReport),
    Status(StatusReport),
    AdminAddress { addr: std::net::SocketAddr },
    RunningSettings(RunningSettings),
    End,
    Error { message: String },
}

/// Answer to `running_settings`: key to value, as
/// `config::settings::Flat::public` shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningSettings {
    /// `gatehouse.toml` as read at start.
    pub started: std::collections::BTreeMap<String, String>,
    /// Every setting in force now (partner files too).
    pub applied: std::collections::BTreeMap<String, String>,
}

/// Answer to `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Writer counters (absent when the database was opened directly).
    pub writer: Option<JournalStats>,
    pub store: StoreStats,
}

impl From<ExportItem> for Reply {
    fn from(i: ExportItem) -> Self {
        match i {
            ExportItem::Record(r) => Reply::Record(Box::new(r.to_line())),
            ExportItem::Checkpoint(c) => Reply::Checkpoint(c.to_line()),
        }
    }
}

/// What a request runs against: the broker's own journal, or a database
/// the CLI opened directly.
pub struct Backend<'a> {
    pub store: &'a Store,
    pub verifier: &'a Verifier,
    /// Needed only for `prune` (it signs the anchor checkpoint).
    pub signer: Option<&'a Signer>,
    pub writer: Option<JournalStats>,
}

/// Runs one request, handing each reply line to `send` (false: stop). Ends
/// with `End` or `Error`.
pub fn execute(
    b: &Backend<'_>,
    req: Request,
    stop: &dyn Fn() -> bool,
    send: &mut dyn FnMut(Reply) -> bool,
) {
    let result = (|| -> Result<bool, JournalError> {
        match req {
            Request::Tail { n } => {
                for r in b.store.tail(n)? {
                    if !send(Reply::Record(Box::new(r.to_line()))) {
                        return Ok(false);
                    }
                }
            }
            Request::Query { query } => {
                for r in b.store.query(&query)? {
                    if !send(Reply::Record(Box::new(r.to_line()))) {
                        return Ok(false);
                    }
                }
            }
            Request::Export { after_seq, follow } => {
                let mut open = true;
                b.store.export(after_seq, follow, stop, &mut |item| {
                    open = send(item.into());
                    open
                })?;
                return Ok(open);
            }
            Request::Verify => return Ok(send(Reply::Verify(b.store.verify(b.verifier)?))),
            Request::Prune { before_ms } => {
                let signer = b.signer.ok_or_else(|| {
                    JournalError::Remote("prune needs the journal signing key".into())
                })?;
                return Ok(send(Reply::Prune(b.store.prune(before_ms, signer)?)));
            }
            Request::FaultDrill { .. }
            | Request::ClearAnomaly { .. }
            | Request::AdminAddress
            | Request::RunningSettings => {
                return Err(JournalError::Remote(
                    "fault drills need a running broker".into(),
                ));
            }
            Request::Status => {
                return Ok(send(Reply::Status(StatusReport {
                    writer: b.writer.clone(),
                    store: b.store.stats()?,
                })));
            }
        }
        Ok(true)
    })();
    match result {
        Ok(true) => {
            send(Reply::End);
        }
        Ok(false) => {}
        Err(e) => {
            send(Reply::Error {
                message: e.to_string(),
            });
        }
    }
}

fn sock_err(path: &Path, e: impl std::fmt::Display) -> JournalError {
    JournalError::Socket {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// Binds `path` with mode 0600 from the start: the socket is created in a
/// fresh 0700 folder, restricted, then renamed into place.
fn bind_private(path: &Path) -> Result<tokio::net::UnixListener, JournalError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(sock_err(
                path,
                "another process is serving this socket (is a broker already running on this home?)",
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| sock_err(path, format!("cannot remove the stale socket: {e}")))?;
    }
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| sock_err(path, e))?;
    let tmp_dir = dir.join(format!(
        ".admin-sock-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp_dir)
        .map_err(|e| sock_err(path, e))?;
    let tmp = tmp_dir.join("s");
    let result = (|| {
        let l = tokio::net::UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)?;
        Ok::<_, std::io::Error>(l)
    })();
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&tmp_dir);
    result.map_err(|e| sock_err(path, e))
}

/// Serves the admin socket at `path` for `journal` until `shutdown`
/// resolves, then removes the socket file. Call from the server's runtime.
pub async fn serve_admin_socket(
    path: impl Into<PathBuf>,
    journal: Journal,
    hooks: AdminHooks,
    shutdown: impl Future<Output = ()>,
) -> Result<(), JournalError> {
    let path = path.into();
    let listener = bind_private(&path)?;
    let stopping = Arc::new(AtomicBool::new(false));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let j = journal.clone();
                    let stop = stopping.clone();
                    let hooks = hooks.clone();
                    tokio::spawn(async move {
                        if let Err(e) = handle(stream, j, hooks, stop).await {
                            tracing::debug!("admin socket connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!("admin socket accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
    stopping.store(true, Ordering::SeqCst);
    let _ = std::fs::remove_file(&path);
    Ok(())
}

/// Clears a partner's anomaly throttle; true when one was in force.
pub type ClearAnomalyHook = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Broker actions the admin socket can trigger beyond the journal's own.
#[derive(Clone, Default)]
pub struct AdminHooks {
    /// Clears a partner's anomaly throttle; true when one was in force.
    pub clear_anomaly: Option<ClearAnomalyHook>,
    /// The admin HTTP listener's bound address.
    pub admin_addr: Option<std::net::SocketAddr>,
    /// The settings the broker started with and those in force.
    pub running_settings: Option<RunningSettingsHook>,
}

/// Reads the running broker's settings.
pub type RunningSettingsHook = Arc<dyn Fn() -> RunningSettings + Send + Sync>;

async fn handle(
    stream: tokio::net::UnixStream,
    journal: Journal,
    hooks: AdminHooks,
    stopping: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let (rd, mut wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::new(rd.take(MAX_REQUEST));
    let mut line = String::new();
    if rd.read_line(&mut line).await? == 0 {
        return Ok(());
    }
    let req: Request = match serde_json::from_str(line.trim()) {
        Ok(r) => r,
        Err(e) => {
            let reply = Reply::Error {
                message: format!("bad request: {e}"),
            };
            let mut out = serde_json::to_vec(&reply).unwrap_or_default();
            out.push(b'\n');
            return wr.write_all(&out).await;
        }
    };
    if let Request::ClearAnomaly { partner } = &req {
        let reply = match &hooks.clear_anomaly {
            Some(clear) => {
                let was = clear(partner);
                tracing::info!(partner = %partner, throttled = was, "anomaly state cleared by the operator");
                Reply::End
            }
            None => Reply::Error {
                message: "this broker does not track anomalies".into(),
            },
        };
        let mut out = serde_json::to_vec(&reply).unwrap_or_default();
        out.push(b'\n');
        return wr.write_all(&out).await;
    }
    if let Request::AdminAddress = req {
        let reply = match hooks.admin_addr {
            Some(addr) => Reply::AdminAddress { addr },
            None => Reply::Error {
                message: "this process serves no admin listener".into(),
            },
        };
        let mut out = Vec::new();
        for r in [reply, Reply::End] {
            out.extend(serde_json::to_vec(&r).unwrap_or_default());
            out.push(b'\n');
        }
        return wr.write_all(&out).await;
    }
    if let Request::RunningSettings = req {
        let reply = match &hooks.running_settings {
            Some(read) => Reply::RunningSettings(read()),
            None => Reply::Error {
                message: "this process serves no configuration".into(),
            },
        };
        let mut out = Vec::new();
        for r in [reply, Reply::End] {
            out.extend(serde_json::to_vec(&r).unwrap_or_default());
            out.push(b'\n');
        }
        return wr.write_all(&out).await;
    }
    if let Request::FaultDrill {
        journal_write_failure,
    } = req
    {
        journal.inject_write_failure(journal_write_failure);
        tracing::warn!(journal_write_failure, "journal fault drill");
        let mut out = serde_json::to_vec(&Reply::End).unwrap_or_default();
        out.push(b'\n');
        return wr.write_all(&out).await;
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Reply>(256);
    let task = tokio::task::spawn_blocking(move || {
        let stop = || stopping.load(Ordering::SeqCst) || tx.is_closed();
        let backend = Backend {
            store: journal.store(),
            verifier: journal.verifier(),
            signer: Some(journal.signer()),
            writer: Some(journal.stats()),
        };
        execute(&backend, req, &stop, &mut |r| tx.blocking_send(r).is_ok());
    });
    let mut probe = [0u8; 1];
    loop {
        tokio::select! {
            reply = rx.recv() => {
                let Some(reply) = reply else { break };
                let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
                out.push(b'\n');
                wr.write_all(&out).await?;
            }
            // The client closed its end (e.g. Ctrl-C on `log export --follow`).
            n = rd.read(&mut probe) => {
                if matches!(n, Ok(0) | Err(_)) {
                    break;
                }
            }
        }
    }
    drop(rx);
    let _ = task.await;
    wr.shutdown().await
}

/// Client side (blocking, no runtime): sends `req` over an open connection
/// and hands each reply to `on_reply` (false: stop). A `Reply::Error` from
/// the broker becomes `Err(JournalError::Remote)`.
pub fn request(
    stream: std::os::unix::net::UnixStream,
    path: &Path,
    req: &Request,
    on_reply: &mut dyn FnMut(Reply) -> Result<bool, JournalError>,
) -> Result<(), JournalError> {
    let mut line = serde_json::to_vec(req).map_err(|e| sock_err(path, e))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(|e| sock_err(path, e))?;
    let reader = BufReader::new(&stream);
    for l in reader.lines() {
        let l = l.map_err(|e| sock_err(path, e))?;
        let reply: Reply = serde_json::from_str(&l)
            .map_err(|e| sock_err(path, format!("unreadable reply ({e}): {l}")))?;
        match reply {
            Reply::End => return Ok(()),
            Reply::Error { message } => return Err(JournalError::Remote(message)),
            other => {
                if !on_reply(other)? {
                    return Ok(());
                }
            }
        }
    }
    Err(sock_err(
        path,
        "the broker closed the connection before the end of the answer",
    ))
}

/// The running broker's admin listener address, asked over the admin
/// socket; `Ok(None)` when no broker answers there.
pub fn admin_address(
    home: &crate::home::Home,
) -> Result<Option<std::net::SocketAddr>, JournalError> {
    let path = home.admin_socket();
    let Ok(stream) = std::os::unix::net::UnixStream::connect(&path) else {
        return Ok(None);
    };
    let mut found = None;
    request(stream, &path, &Request::AdminAddress, &mut |reply| {
        if let Reply::AdminAddress { addr } = reply {
            found = Some(addr);
        }
        Ok(true)
    })?;
    Ok(found)
}

/// Asks the running broker (if any) to clear a partner's anomaly throttle.
/// `Ok(false)` when no broker answers on the socket.
pub fn clear_anomaly(home: &crate::home::Home, partner: &str) -> Result<bool, JournalError> {
    let path = home.admin_socket();
    let Ok(stream) = std::os::unix::net::UnixStream::connect(&path) else {
        return Ok(false);
    };
    request(
        stream,
        &path,
        &Request::ClearAnomaly {
            partner: partner.to_string(),
        },
        &mut |_| Ok(true),
    )?;
    Ok(true)
}

/// The running broker's settings, asked over the admin socket; `Ok(None)`
/// when no broker answers there.
pub fn running_settings(home: &crate::home::Home) -> Result<Option<RunningSettings>, JournalError> {
    let path = home.admin_socket();
    let Ok(stream) = std::os::unix::net::UnixStream::connect(&path) else {
        return Ok(None);
    };
    let mut found = None;
    request(stream, &path, &Request::RunningSettings, &mut |reply| {
        if let Reply::RunningSettings(r) = reply {
            found = Some(r);
        }
        Ok(true)
    })?;
    Ok(found)
}
