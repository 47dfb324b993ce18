//! The exchange journal: an append-only, hash-chained, signed record of
//! every exchange, refused handshake, alert and admin action, in sled under
//! `data/journal`. It owns the database (no other module touches sled), the
//! writer thread, checkpoints, retention and the admin socket through which
//! `gatehouse log ...` reads a running broker's journal.
//!
//! The gateway sees only [`Recorder`]: `record(event)` returns an ack that
//! resolves once the record is as durable as `[journal] durability` asks,
//! and `writable()` turns false while writes fail (fail closed: 503).
//! Format and guarantees: `docs/journal.md`.

pub mod aggregate;
pub mod checkpoint;
pub mod evidence;
pub mod export;
pub mod record;
pub mod space;
pub mod store;
#[cfg(any(test, feature = "test-support"))]
#[doc(hidden)]
pub mod test_support;
mod writer;
pub use writer::BatchObserver;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use checkpoint::{Checkpoint, CheckpointKind, Signer, Verifier};
pub use record::Record;
pub use store::{ExportItem, PruneReport, Query, Store, VerifyFailure, VerifyReport};

use crate::config::{Durability, JournalSettings};
use crate::event::{Event, ExpectedRecord, RecordAck, RecordError, Recorder};
use crate::home::{Home, HomeError, ensure_private_dir};
use writer::{Msg, Shared, Writer};

/// Records waiting for the writer before `record` refuses more.
pub const QUEUE_CAPACITY: usize = 65_536;

/// What went wrong in the journal, and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error(
        "the journal database {path} is locked by another process (a running broker?); stop it, or let `gatehouse log` reach it through its admin socket"
    )]
    Locked { path: PathBuf },
    #[error(
        "cannot open the journal database {path}: {message}; check the folder's permissions and free space"
    )]
    Open { path: PathBuf, message: String },
    #[error(
        "no journal at {0} yet: the broker has not recorded anything (start `gatehouse serve`)"
    )]
    NoJournal(PathBuf),
    #[error("journal storage error: {0}; check free space and permissions of the data/ folder")]
    Storage(String),
    #[error("journal signing key {path}: {message}; `gatehouse init` creates it")]
    Key { path: PathBuf, message: String },
    #[error("cannot sign a journal checkpoint: {0}")]
    Sign(String),
    #[error("journal record {seq}: {message}")]
    Corrupt { seq: u64, message: String },
    #[error("the journal is shut down; no more records are accepted")]
    Closed,
    #[error("journal writer thread: {0}")]
    Writer(String),
    #[error("admin socket {path}: {message}")]
    Socket { path: PathBuf, message: String },
    #[error("the running broker answered: {0}")]
    Remote(String),
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error("{0}")]
    Message(String),
}

impl From<sled::Error> for JournalError {
    fn from(e: sled::Error) -> Self {
        JournalError::Storage(e.to_string())
    }
}

impl JournalError {
    fn open(path: &Path, e: sled::Error) -> Self {
        let message = e.to_string();
        let locked = matches!(&e, sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock)
            || message.contains("temporarily unavailable")
            || message.contains("lock");
        if locked {
            JournalError::Locked {
                path: path.to_path_buf(),
            }
        } else {
            JournalError::Open {
                path: path.to_path_buf(),
                message,
            }
        }
    }
}

/// `time_ms` as RFC 3339 with milliseconds, UTC.
pub fn fmt_time_ms(ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000) {
        Ok(t) => crate::timefmt::rfc3339_millis(t),
        Err(_) => ms.to_string(),
    }
}

/// The writer's counters (for `status`, metrics and tests).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalStats {
    pub writable: bool,
    pub last_seq: u64,
    /// Highest sequence number known flushed to disk.
    pub durable_seq: u64,
    pub flushes: u64,
    pub write_failures: u64,
    pub last_error: Option<String>,
    /// Records announced as on their way (`Recorder::expect_record`).
    #[serde(default)]
    pub expected_records: u64,
    /// Free space on the journal's file system is under `[journal] min_free`
    /// (the journal fails closed until it is back).
    #[serde(default)]
    pub disk_low: bool,
}

struct Inner {
    tx: SyncSender<Msg>,
    strict: bool,
    shared: Arc<Shared>,
    store: Store,
    signer: Arc<Signer>,
    verifier: Verifier,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Handle on the open journal (cheap to clone). Dropping the last handle
/// shuts the writer down like [`Journal::shutdown`].
#[derive(Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl Journal {
    /// Opens `data/journal`, recovers the last sequence number and hash, and
    /// starts the writer thread. Needs no async runtime.
    pub fn open(home: &Home, settings: &JournalSettings) -> Result<Journal, JournalError> {
        let signer = Signer::load(&home.journal_key())?;
        let verifier = Verifier::load(&home.journal_pub())?;
        let probe = signer.checkpoint(0, [0; 32], 0, CheckpointKind::Periodic)?;
        if !verifier.verify(&probe) {
            return Err(JournalError::Key {
                path: home.journal_pub(),
                message: format!(
                    "does not match the private key {}; restore the matching pair",
                    home.journal_key().display()
                ),
            });
        }
        ensure_private_dir(&home.data_dir())?;
        let store = Store::open(&home.journal_db())?;
        let (last_seq, last_hash) = store.last()?;
        let last_ckpt = store.last_checkpoint_seq()?.unwrap_or(0);
        let shared = Arc::new(Shared::default());
        shared.healthy.store(true, Ordering::SeqCst);
        shared.last_seq.store(last_seq, Ordering::SeqCst);
        shared.durable_seq.store(last_seq, Ordering::SeqCst);
        let signer = Arc::new(signer);
        let w = Writer {
            store: store.clone(),
            shared: shared.clone(),
            signer: signer.clone(),
            strict: settings.durability == Durability::Strict,
            flush_interval: settings.flush_interval,
            checkpoint_every: settings.checkpoint_every.max(1),
            checkpoint_interval: settings.checkpoint_interval,
            unsigned_since: (last_ckpt < last_seq).then(Instant::now),
            acked_seq: last_seq,
            agg: aggregate::Aggregator::new(
                settings.handshake_refusals_per_interval,
                settings.handshake_aggregate_interval,
            ),
            last_seq,
            last_hash,
            last_ckpt,
            dirty: false,
            last_flush: Instant::now(),
            retry_at: None,
            backoff: std::time::Duration::from_millis(20),
            space: space::SpaceGuard::new(&home.journal_db(), settings.min_free),
            index: store.index_tail()?,
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(QUEUE_CAPACITY);
        let thread = std::thread::Builder::new()
            .name("gatehouse-journal".into())
            .spawn(move || w.run(rx))
            .map_err(|e| JournalError::Writer(format!("cannot start: {e}")))?;
        Ok(Journal {
            inner: Arc::new(Inner {
                tx,
                strict: settings.durability == Durability::Strict,
                shared,
                store,
                signer,
                verifier,
                thread: Mutex::new(Some(thread)),
            }),
        })
    }

    /// Puts a reloaded `[journal]` table in force (flush and checkpoint
    /// periods, handshake aggregation, `min_free`; durability stays as
    /// opened). Blocks
    /// while the writer's queue is full: call it off the async runtime.
    pub fn retune(&self, settings: &JournalSettings) -> Result<(), JournalError> {
        let tuning = writer::Tuning {
            flush_interval: settings.flush_interval,
            checkpoint_every: settings.checkpoint_every,
            checkpoint_interval: settings.checkpoint_interval,
            handshake_refusals_per_interval: settings.handshake_refusals_per_interval,
            handshake_aggregate_interval: settings.handshake_aggregate_interval,
            min_free: settings.min_free,
        };
        self.inner
            .tx
            .send(Msg::Retune(tuning))
            .map_err(|_| JournalError::Writer("the writer has stopped".into()))
    }

    /// Writes a final signed checkpoint, flushes and stops the writer.
    /// Idempotent; records handed in afterwards are refused.
    pub fn shutdown(&self) -> Result<(), JournalError> {
        self.inner.shutdown()
    }

    /// For tests and fault drills: while `on`, every write fails as an I/O
    /// error would (`writable()` turns false, acks resolve to `Err`); after
    /// `false`, the writer's next probe recovers by itself.
    pub fn inject_write_failure(&self, on: bool) {
        self.inner.shared.inject_failure.store(on, Ordering::SeqCst);
    }

    /// Sets the function told of every group commit (records, seconds,
    /// failed); the broker feeds its metrics with it.
    pub fn set_batch_observer(&self, observer: BatchObserver) {
        if let Ok(mut g) = self.inner.shared.batch_observer.lock() {
            *g = Some(observer);
        }
    }

    /// Like [`Recorder::record`], but the ack carries the record's sequence
    /// number (`None`: folded into a handshake aggregate).
    pub fn append(
        &self,
        event: Event,
    ) -> impl std::future::Future<Output = Result<Option<u64>, RecordError>> + Send + 'static {
        let sent = self.send(event);
        async move {
            match sent {
                Err(e) => Err(e),
                Ok(rx) => rx
                    .await
                    .unwrap_or_else(|_| Err(RecordError("the journal writer stopped".into()))),
            }
        }
    }

    fn send(
        &self,
        event: Event,
    ) -> Result<oneshot::Receiver<Result<Option<u64>, RecordError>>, RecordError> {
        let shared = &self.inner.shared;
        if shared.closed.load(Ordering::SeqCst) {
            return Err(RecordError("the journal is shut down".into()));
        }
        if !shared.healthy.load(Ordering::SeqCst) {
            let why = shared
                .last_error
                .lock()
                .ok()
                .and_then(|g| g.clone())
                .unwrap_or_else(|| "write failed".into());
            return Err(RecordError(format!("{why}; the journal retries by itself")));
        }
        let (tx, rx) = oneshot::channel();
        shared.queued.fetch_add(1, Ordering::SeqCst);
        let sent = self.inner.tx.try_send(Msg::Append(Box::new(event), tx));
        if sent.is_err() {
            shared.queued.fetch_sub(1, Ordering::SeqCst);
        }
        match sent {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => Err(RecordError(format!(
                "journal queue full ({QUEUE_CAPACITY} records waiting): the disk cannot keep up"
            ))),
            Err(TrySendError::Disconnected(_)) => {
                Err(RecordError("the journal writer stopped".into()))
            }
        }
    }
    /// The key that verifies this journal's checkpoints.
    pub fn verifier(&self) -> &Verifier {
        &self.inner.verifier
    }

    /// The key that signs this journal's checkpoints.
    pub fn signer(&self) -> &Signer {
        &self.inner.signer
    }

    /// The database, for reads (tail, query, export).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Checks the chain and every checkpoint with the journal public key.
    pub fn verify(&self) -> Result<VerifyReport, JournalError> {
        self.inner.store.verify(&self.inner.verifier)
    }

    /// Retention: drops records older than `before_ms` (see [`Store::prune`]).
    pub fn prune(&self, before_ms: i64) -> Result<PruneReport, JournalError> {
        self.inner.store.prune(before_ms, &self.inner.signer)
    }

    pub fn stats(&self) -> JournalStats {
        let s = &self.inner.shared;
        JournalStats {
            writable: self.writable(),
            last_seq: s.last_seq.load(Ordering::SeqCst),
            durable_seq: s.durable_seq.load(Ordering::SeqCst),
            flushes: s.flushes.load(Ordering::SeqCst),
            write_failures: s.write_failures.load(Ordering::SeqCst),
            last_error: s.last_error.lock().ok().and_then(|g| g.clone()),
            expected_records: s.expected.load(Ordering::Relaxed) as u64,
            disk_low: self.disk_low(),
        }
    }

    /// Whether free space is under `[journal] min_free` (the journal fails
    /// closed meanwhile and resumes by itself once space is back).
    pub fn disk_low(&self) -> bool {
        self.inner.shared.disk_low.load(Ordering::SeqCst)
    }
}

impl Inner {
    fn shutdown(&self) -> Result<(), JournalError> {
        let Some(handle) = self.thread.lock().ok().and_then(|mut g| g.take()) else {
            return Ok(());
        };
        self.shared.closed.store(true, Ordering::SeqCst);
        let (tx, rx) = std::sync::mpsc::channel();
        // Blocking send: waits for queue room, so queued records go first.
        let result = match self.tx.send(Msg::Shutdown(tx)) {
            Ok(()) => rx
                .recv()
                .map_err(|_| JournalError::Writer("stopped without answering".into()))
                .and_then(|r| r.map_err(|e| JournalError::Writer(e.to_string()))),
            Err(_) => Err(JournalError::Writer("already stopped".into())),
        };
        let _ = handle.join();
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!("journal shutdown: {e}");
        }
    }
}

impl Recorder for Journal {
    /// Strict: resolves after the flush that holds the record. Relaxed:
    /// resolves as soon as the writer's queue has taken the record (it is
    /// written at once and flushed within `flush_interval`).
    fn record(&self, event: Event) -> RecordAck {
        if self.inner.strict {
            let ack = self.append(event);
            Box::pin(async move { ack.await.map(|_| ()) })
        } else {
            // Backpressure: past half the queue, wait for the writer too,
            // so producers slow down instead of meeting a full queue.
            let backlog = self.inner.shared.queued.load(Ordering::SeqCst);
            match self.send(event) {
                Ok(rx) if backlog >= (QUEUE_CAPACITY / 2) as u64 => Box::pin(async move {
                    rx.await
                        .unwrap_or_else(|_| Err(RecordError("the journal writer stopped".into())))
                        .map(drop)
                }),
                sent => Box::pin(std::future::ready(sent.map(drop))),
            }
        }
    }

    fn writable(&self) -> bool {
        let s = &self.inner.shared;
        s.healthy.load(Ordering::SeqCst) && !s.closed.load(Ordering::SeqCst)
    }

    fn expect_record(&self) -> ExpectedRecord {
        ExpectedRecord::counting(self.inner.shared.expected.clone())
    }
}

#[cfg(test)]
mod tests;
