//! The single writer: a dedicated std thread that assigns sequence numbers,
//! chains hashes, writes group commits (every record that arrived together
//! is inserted, then one flush makes them durable), signs periodic checkpoints,
//! aggregates handshake floods, and fails closed on I/O errors, probing
//! with backoff until the disk takes writes again.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::JournalError;
use super::aggregate::Aggregator;
use super::checkpoint::{CheckpointKind, Signer};
use super::record;
use super::space::{SpaceGuard, WRITE_AMPLIFICATION};
use super::store::{CommitRecord, IndexTail, Store, be};
use crate::event::{Event, EventKind, RecordError, now_ms};

/// Most records in one group commit.
pub const MAX_BATCH: usize = 4096;
const FIRST_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Strict mode: how long a group commit waits for more records, per record
/// of the previous batch beyond the first (see `run` and `strict_linger`).
const STRICT_LINGER_PER_RECORD: Duration = Duration::from_micros(100);
/// Strict mode: the longest a group commit waits for more records.
const STRICT_LINGER_MAX: Duration = Duration::from_millis(1);

/// How long a strict group commit lingers for records on their way, given
/// the size of the previous batch and the records announced as coming
/// (requests and handshakes in progress): nothing for a lone caller, more
/// the more concurrent the traffic (each flush costs a write, a sync and
/// wake-ups; measured: 250 us gave batches of ~18 and ~8,600 responses per
/// CPU-second under 64 keep-alive connections, 1 ms batches of ~32 and
/// ~10,000).
fn strict_linger(last_batch: usize, expected: usize) -> Duration {
    let extra = last_batch.saturating_sub(1).max(expected);
    let extra = u32::try_from(extra).unwrap_or(u32::MAX);
    STRICT_LINGER_PER_RECORD
        .saturating_mul(extra)
        .min(STRICT_LINGER_MAX)
}

/// Why the writer could not close the journal cleanly.
#[derive(Debug, thiserror::Error)]
pub(super) enum ShutdownError {
    #[error(
        "the journal is not writable at shutdown ({0}); records since the last flush may be lost"
    )]
    NotWritable(String),
    #[error("cannot read the chain head at shutdown: {0}")]
    Read(JournalError),
    #[error("cannot sign the shutdown checkpoint: {0}")]
    Sign(JournalError),
    #[error("cannot write the shutdown checkpoint: {0}")]
    Checkpoint(JournalError),
    #[error("the journal flush at shutdown failed: {0}")]
    Flush(JournalError),
    #[error("cannot store the open partner index entries at shutdown: {0}")]
    Index(JournalError),
}

/// The ack channel of one record: `Some(seq)` once written, `None` when
/// the record was folded into a handshake aggregate.
pub(super) type AckTx = oneshot::Sender<Result<Option<u64>, RecordError>>;

pub(super) enum Msg {
    Append(Box<Event>, AckTx),
    Shutdown(std::sync::mpsc::Sender<Result<(), ShutdownError>>),
    /// A reload's `[journal]` settings (all but durability).
    Retune(Tuning),
}

/// The writer's settings a reload may change.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    pub flush_interval: Duration,
    pub checkpoint_every: u64,
    pub checkpoint_interval: Duration,
    pub handshake_refusals_per_interval: u32,
    pub handshake_aggregate_interval: Duration,
    pub min_free: super::space::MinFree,
}

/// State shared between the handle and the writer thread.
#[derive(Default)]
pub(super) struct Shared {
    pub healthy: AtomicBool,
    pub inject_failure: AtomicBool,
    pub closed: AtomicBool,
    pub last_seq: AtomicU64,
    /// Records handed to the channel and not yet taken by the writer.
    pub queued: AtomicU64,
    /// Records announced and not yet handed over (requests and handshakes
    /// in progress: `Recorder::expect_record`).
    pub expected: Arc<AtomicUsize>,
    pub durable_seq: AtomicU64,
    /// Free space is under `[journal] min_free` (see `space`).
    pub disk_low: AtomicBool,
    pub flushes: AtomicU64,
    pub write_failures: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    /// Told of every group commit: records, seconds, failed (for metrics).
    pub batch_observer: Mutex<Option<BatchObserver>>,
}

/// Receives (records in the batch, seconds the commit took, whether it failed).
pub type BatchObserver = std::sync::Arc<dyn Fn(usize, f64, bool) + Send + Sync>;

impl Shared {
    fn observe_batch(&self, records: usize, seconds: f64, failed: bool) {
        let observer = self.batch_observer.lock().ok().and_then(|g| g.clone());
        if let Some(f) = observer {
            f(records, seconds, failed);
        }
    }

    fn set_error(&self, e: Option<String>) {
        if let Ok(mut g) = self.last_error.lock() {
            *g = e;
        }
    }
}

pub(super) struct Writer {
    pub store: Store,
    pub shared: Arc<Shared>,
    pub signer: Arc<Signer>,
    pub strict: bool,
    pub flush_interval: Duration,
    pub checkpoint_every: u64,
    /// A signed checkpoint at least this often while records come in.
    pub checkpoint_interval: Duration,
    /// When the oldest record not yet covered by a checkpoint was written
    /// (None: every record is covered).
    pub unsigned_since: Option<Instant>,
    pub agg: Aggregator,
    pub last_seq: u64,
    pub last_hash: [u8; 32],
    pub last_ckpt: u64,
    /// Highest sequence number acknowledged to a strict caller (flushed).
    /// After a failed flush, records beyond it were answered 503 and are
    /// removed at recovery, whatever of them reached the disk.
    pub acked_seq: u64,
    pub dirty: bool,
    pub last_flush: Instant,
    pub retry_at: Option<Instant>,
    pub backoff: Duration,
    pub space: SpaceGuard,
    /// The partner index entries kept open across group commits.
    pub index: IndexTail,
}

type Pending = Vec<(Event, Option<AckTx>)>;

impl Writer {
    fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::SeqCst)
    }

    fn deadline(&self) -> Option<Instant> {
        let flush = (self.dirty && !self.strict).then(|| self.last_flush + self.flush_interval);
        let checkpoint = self
            .unsigned_since
            .filter(|_| self.healthy())
            .map(|t| t + self.checkpoint_interval);
        [self.agg.deadline(), flush, self.retry_at, checkpoint]
            .into_iter()
            .flatten()
            .min()
    }

    fn take(
        &mut self,
        m: Msg,
        pending: &mut Pending,
        shutdown: &mut Option<std::sync::mpsc::Sender<Result<(), ShutdownError>>>,
    ) {
        match m {
            Msg::Shutdown(tx) => *shutdown = Some(tx),
            Msg::Retune(t) => {
                self.flush_interval = t.flush_interval;
                self.checkpoint_every = t.checkpoint_every.max(1);
                self.checkpoint_interval = t.checkpoint_interval;
                self.agg.retune(
                    t.handshake_refusals_per_interval,
                    t.handshake_aggregate_interval,
                );
                self.space.set_min_free(t.min_free);
            }
            Msg::Append(e, ack) => {
                self.shared.queued.fetch_sub(1, Ordering::SeqCst);
                if !self.healthy() {
                    let _ = ack.send(Err(self.unavailable()));
                } else if e.kind == EventKind::Handshake && !self.agg.admit(&e, Instant::now()) {
                    let _ = ack.send(Ok(None));
                } else {
                    pending.push((*e, Some(ack)));
                }
            }
        }
    }

    fn unavailable(&self) -> RecordError {
        let why = self
            .shared
            .last_error
            .lock()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_else(|| "write failed".into());
        RecordError(format!("{why}; the journal retries by itself"))
    }

    pub fn run(mut self, rx: Receiver<Msg>) {
        // Records in the previous group commit.
        let mut last_batch = 0usize;
        loop {
            let first = match self.deadline() {
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(d) => rx.recv_timeout(d.saturating_duration_since(Instant::now())),
            };
            let mut pending: Pending = Vec::new();
            let mut shutdown = None;
            let mut disconnected = false;
            match first {
                Ok(m) => self.take(m, &mut pending, &mut shutdown),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => disconnected = true,
            }
            while shutdown.is_none() && !disconnected && pending.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(m) => self.take(m, &mut pending, &mut shutdown),
                    Err(_) => break,
                }
            }
            // Strict group commit: one flush (a write, a sync and the
            // wake-ups of every waiting caller) costs far more than a record,
            // and without waiting, batches under concurrent traffic were ~1.6
            // records. When the previous batch had company, or requests and
            // handshakes in progress have announced records, let those join
            // this one; a lone caller (previous batch of one, nothing
            // announced) never waits.
            let expected = self.shared.expected.load(Ordering::Relaxed);
            let linger = strict_linger(last_batch, expected);
            if self.strict && !linger.is_zero() && !pending.is_empty() && !disconnected {
                std::thread::sleep(linger);
                while shutdown.is_none() && pending.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(m) => self.take(m, &mut pending, &mut shutdown),
                        Err(_) => break,
                    }
                }
            }
            last_batch = pending.len();
            let now = Instant::now();
            if !self.healthy() && self.retry_at.is_some_and(|t| t <= now) {
                self.try_recover();
            }
            let ending = shutdown.is_some() || disconnected;
            for e in self.agg.take_due(now, ending) {
                pending.push((e, None));
            }
            if !pending.is_empty() {
                if self.healthy() {
                    self.commit(pending);
                } else {
                    let err = self.unavailable();
                    for (_, ack) in pending {
                        if let Some(ack) = ack {
                            let _ = ack.send(Err(err.clone()));
                        }
                    }
                }
            }
            // Relaxed: flush on schedule, also while records keep coming.
            if self.dirty && !self.strict && now >= self.last_flush + self.flush_interval {
                if let Err(e) = self.store.flush() {
                    self.fail(Vec::new(), format!("journal flush failed: {e}"));
                } else {
                    self.flushed(now);
                }
            }
            // A signed checkpoint at least every `checkpoint_interval` while
            // records come in, so the unsigned tail stays short in time.
            if self.healthy()
                && self
                    .unsigned_since
                    .is_some_and(|t| Instant::now() >= t + self.checkpoint_interval)
                && !ending
            {
                self.checkpoint_now(CheckpointKind::Periodic);
            }
            if ending {
                let r = self.finish();
                if let Some(tx) = shutdown {
                    let _ = tx.send(r);
                }
                return;
            }
        }
    }

    fn flushed(&mut self, now: Instant) {
        self.dirty = false;
        self.last_flush = now;
        self.shared.flushes.fetch_add(1, Ordering::SeqCst);
        self.shared
            .durable_seq
            .store(self.last_seq, Ordering::SeqCst);
    }

    fn commit(&mut self, pending: Pending) {
        let started = Instant::now();
        let records = pending.len();
        let injected = self.shared.inject_failure.load(Ordering::SeqCst);
        if injected && !self.strict {
            return self.fail(
                pending,
                "journal write failed: injected failure (test hook / fault drill)".into(),
            );
        }
        let mut made: Vec<(u64, [u8; 32], Vec<u8>)> = Vec::with_capacity(pending.len());
        let mut ckpts = Vec::new();
        let mut seq = self.last_seq;
        let mut hash = self.last_hash;
        let now = now_ms();
        for (e, _) in &pending {
            seq += 1;
            let canonical = record::encode(seq, e);
            let h = record::chain_hash(&hash, &canonical);
            if seq.is_multiple_of(self.checkpoint_every) {
                match self
                    .signer
                    .checkpoint(seq, h, now, CheckpointKind::Periodic)
                {
                    Ok(c) => ckpts.push(c),
                    Err(e) => {
                        return self
                            .fail(pending, format!("journal checkpoint signing failed: {e}"));
                    }
                }
            }
            made.push((seq, h, canonical));
            hash = h;
        }
        // Free space first: under `[journal] min_free`, fail closed before
        // the file system is full (see `space`). Per record: its canonical
        // bytes, its hash and length in the segment, and at most one index
        // entry.
        let upcoming = made
            .iter()
            .map(|(_, _, c)| c.len() as u64 + 36 + 40)
            .sum::<u64>()
            .saturating_mul(WRITE_AMPLIFICATION);
        if let Err(low) = self.space.admit(upcoming) {
            self.shared.disk_low.store(true, Ordering::SeqCst);
            return self.fail(pending, low.to_string());
        }
        self.shared.disk_low.store(false, Ordering::SeqCst);
        let t = match self.store.t() {
            Ok(t) => t,
            Err(e) => return self.fail(pending, format!("journal write failed: {e}")),
        };
        let commit: Vec<CommitRecord<'_>> = made
            .iter()
            .zip(&pending)
            .map(|((seq, h, canonical), (e, _))| CommitRecord {
                seq: *seq,
                hash: *h,
                canonical,
                partner: e.partner.as_deref(),
                time_ms: e.time_ms,
            })
            .collect();
        // The whole commit goes in as one value per segment (a group commit
        // of up to 32 KiB of records is one sled value); the partner index
        // entries are stored every few thousand records (`index_tail`).
        let inserted = Store::insert_commit(&t, &self.last_hash, &commit, &mut self.index);
        drop(commit);
        if let Err(e) = inserted {
            return self.fail(pending, format!("journal write failed: {e}"));
        }
        let seqs: Vec<u64> = made.iter().map(|(s, _, _)| *s).collect();
        drop(made);
        self.last_seq = seq;
        self.last_hash = hash;
        self.shared.last_seq.store(seq, Ordering::SeqCst);
        for c in ckpts {
            if let Err(e) = t.checkpoints.insert(be(c.seq), c.to_stored()) {
                return self.fail(pending, format!("journal checkpoint write failed: {e}"));
            }
            self.last_ckpt = c.seq;
        }
        if self.strict {
            // Strict: the injected failure strikes at the flush, after the
            // records were inserted — the hardest case for recovery.
            if injected {
                return self.fail(
                    pending,
                    "journal flush failed: injected failure (test hook / fault drill)".into(),
                );
            }
            if let Err(e) = t.db.flush() {
                return self.fail(pending, format!("journal flush failed: {e}"));
            }
            self.flushed(Instant::now());
            self.acked_seq = seq;
        } else {
            self.dirty = true;
        }
        if self.last_ckpt == seq {
            self.unsigned_since = None;
        } else if self.unsigned_since.is_none() {
            self.unsigned_since = Some(started);
        }
        for ((_, ack), s) in pending.into_iter().zip(seqs) {
            if let Some(ack) = ack {
                let _ = ack.send(Ok(Some(s)));
            }
        }
        self.shared
            .observe_batch(records, started.elapsed().as_secs_f64(), false);
    }

    fn fail(&mut self, pending: Pending, msg: String) {
        tracing::error!("{msg}; failing closed until writes succeed again");
        self.shared.observe_batch(pending.len(), 0.0, true);
        self.shared.write_failures.fetch_add(1, Ordering::SeqCst);
        self.shared.set_error(Some(msg.clone()));
        self.shared.healthy.store(false, Ordering::SeqCst);
        self.retry_at = Some(Instant::now() + self.backoff);
        let err = RecordError(format!("{msg}; the journal retries by itself"));
        for (_, ack) in pending {
            if let Some(ack) = ack {
                let _ = ack.send(Err(err.clone()));
            }
        }
    }

    /// Probes the disk; on success re-reads the tail (a failed batch may
    /// have been partly applied) and accepts records again.
    fn try_recover(&mut self) {
        let result = if self.shared.inject_failure.load(Ordering::SeqCst) {
            Err(JournalError::Storage(
                "injected failure still on (test hook / fault drill)".into(),
            ))
        } else if let Err(low) = self.space.measure() {
            let msg = low.to_string();
            self.shared.disk_low.store(true, Ordering::SeqCst);
            self.shared.set_error(Some(msg.clone()));
            Err(JournalError::Storage(msg))
        } else {
            self.shared.disk_low.store(false, Ordering::SeqCst);
            (|| {
                // sled's write errors are sticky: open the database anew
                // from what is on disk.
                self.store.reopen()?;
                if self.strict {
                    // Records past the last acknowledged one were answered
                    // 503 (their flush failed): whatever of them reached
                    // the disk goes, so none reads as an exchange that
                    // happened.
                    let removed = self.store.truncate_after(self.acked_seq)?;
                    if removed > 0 {
                        tracing::warn!(
                            removed,
                            acked = self.acked_seq,
                            "removed journal records whose flush had failed (their callers got 503)"
                        );
                    }
                }
                self.store.probe()?;
                let (seq, hash) = self.store.last()?;
                // The open entries may hold records that went: start
                // again from what the index and the segments hold.
                Ok((seq, hash, self.store.index_tail()?))
            })()
        };
        match result {
            Ok((seq, hash, index)) => {
                self.index = index;
                self.last_seq = seq;
                self.last_hash = hash;
                self.acked_seq = seq;
                self.last_ckpt = self
                    .store
                    .last_checkpoint_seq()
                    .ok()
                    .flatten()
                    .unwrap_or(0)
                    .min(seq);
                self.unsigned_since = (self.last_ckpt < seq).then(Instant::now);
                self.shared.last_seq.store(seq, Ordering::SeqCst);
                self.flushed(Instant::now());
                self.retry_at = None;
                self.backoff = FIRST_BACKOFF;
                self.shared.set_error(None);
                self.shared.healthy.store(true, Ordering::SeqCst);
                tracing::info!("journal writes work again (last seq {seq})");
            }
            Err(e) => {
                tracing::debug!("journal still not writable: {e}");
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                self.retry_at = Some(Instant::now() + self.backoff);
            }
        }
    }

    /// Signs the chain head now (the periodic checkpoint by time) and
    /// flushes it. A failure fails the journal closed like a failed commit.
    fn checkpoint_now(&mut self, kind: CheckpointKind) {
        if self.last_seq == 0 || self.last_ckpt >= self.last_seq {
            self.unsigned_since = None;
            return;
        }
        let c = match self
            .signer
            .checkpoint(self.last_seq, self.last_hash, now_ms(), kind)
        {
            Ok(c) => c,
            Err(e) => {
                return self.fail(
                    Vec::new(),
                    format!("journal checkpoint signing failed: {e}"),
                );
            }
        };
        if let Err(e) = self
            .store
            .put_checkpoint(&c)
            .and_then(|_| self.store.flush())
        {
            return self.fail(Vec::new(), format!("journal checkpoint write failed: {e}"));
        }
        self.last_ckpt = c.seq;
        self.unsigned_since = None;
        // The flush made every record before the checkpoint durable too.
        self.flushed(Instant::now());
    }

    /// Final checkpoint and flush.
    fn finish(&mut self) -> Result<(), ShutdownError> {
        if !self.healthy() {
            self.try_recover();
            if !self.healthy() {
                return Err(ShutdownError::NotWritable(self.unavailable().0));
            }
        }
        let have = self
            .store
            .checkpoint(self.last_seq)
            .map_err(ShutdownError::Read)?;
        if self.last_seq > 0 && self.last_ckpt != self.last_seq && have.is_none() {
            let c = self
                .signer
                .checkpoint(
                    self.last_seq,
                    self.last_hash,
                    now_ms(),
                    CheckpointKind::Shutdown,
                )
                .map_err(ShutdownError::Sign)?;
            self.store
                .put_checkpoint(&c)
                .map_err(ShutdownError::Checkpoint)?;
            self.last_ckpt = c.seq;
            self.unsigned_since = None;
        }
        self.store
            .store_index_tail(&mut self.index, self.last_seq)
            .map_err(ShutdownError::Index)?;
        self.store.flush().map_err(ShutdownError::Flush)?;
        self.flushed(Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod linger_tests {
    use super::*;

    #[test]
    fn strict_linger_grows_with_the_previous_batch_and_is_capped() {
        assert_eq!(strict_linger(0, 0), Duration::ZERO);
        assert_eq!(
            strict_linger(1, 0),
            Duration::ZERO,
            "a lone caller never waits"
        );
        assert_eq!(strict_linger(2, 0), Duration::from_micros(100));
        assert_eq!(strict_linger(6, 0), Duration::from_micros(500));
        assert_eq!(strict_linger(11, 0), STRICT_LINGER_MAX);
        assert_eq!(strict_linger(MAX_BATCH, 0), STRICT_LINGER_MAX);
        assert_eq!(strict_linger(usize::MAX, 0), STRICT_LINGER_MAX);
    }

    #[test]
    fn strict_linger_waits_for_announced_records() {
        assert_eq!(strict_linger(1, 1), Duration::from_micros(100));
        assert_eq!(strict_linger(1, 4), Duration::from_micros(400));
        assert_eq!(strict_linger(3, 4), Duration::from_micros(400));
        assert_eq!(strict_linger(6, 2), Duration::from_micros(500));
        assert_eq!(strict_linger(1, usize::MAX), STRICT_LINGER_MAX);
    }
}
