//! The strict group commit's second half: a thread that makes the writer's
//! inserted records durable (one `flush`, i.e. a log write and an
//! `fdatasync`, for every job waiting) and only then acknowledges them.
//!
//! The writer inserts a group commit's records and hands the acks over as
//! a [`SyncJob`]; while this thread waits for the disk, the writer already
//! takes and inserts the next records, so the sync's latency and the
//! writer's CPU overlap instead of adding up. A failed flush fails every
//! job it covered and every later job of the same epoch, turns the journal
//! unwritable and wakes the writer, whose recovery (under [`Shared::gate`])
//! removes the unacknowledged records and starts a new epoch.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Instant;

use super::store::Store;
use super::writer::{AckTx, Msg, Shared};
use crate::event::RecordError;

/// One group commit whose records are inserted and wait for a flush.
pub(super) struct SyncJob {
    /// The writer's recovery epoch when the records were inserted.
    pub epoch: u64,
    /// The last sequence number the job holds (checkpoints included).
    pub upto: u64,
    /// Each record's ack and sequence number.
    pub acks: Vec<(AckTx, u64)>,
    pub records: usize,
    pub started: Instant,
}

/// Handle on the syncer thread (the writer owns it).
pub(super) struct Syncer {
    tx: Option<std::sync::mpsc::Sender<SyncJob>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    /// Starts the thread. `wake` is the writer's own queue: a failed flush
    /// sends [`Msg::SyncFailed`] there so the writer starts its recovery.
    pub fn spawn(
        store: Store,
        shared: Arc<Shared>,
        wake: SyncSender<Msg>,
    ) -> std::io::Result<Syncer> {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("gatehouse-journal-sync".into())
            .spawn(move || run(store, shared, wake, rx))?;
        Ok(Syncer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hands a job over. A job the thread can no longer take is failed.
    pub fn submit(&self, job: SyncJob) {
        let Some(tx) = &self.tx else {
            return fail_jobs(vec![job], "the journal is shutting down");
        };
        if let Err(e) = tx.send(job) {
            fail_jobs(vec![e.0], "the journal's sync thread stopped");
        }
    }

    /// Lets the thread finish every job handed over, and stops it.
    pub fn finish(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.finish();
    }
}

fn fail_jobs(jobs: Vec<SyncJob>, why: &str) {
    let err = RecordError(format!("{why}; the journal retries by itself"));
    for job in jobs {
        for (ack, _) in job.acks {
            let _ = ack.send(Err(err.clone()));
        }
    }
}

fn run(store: Store, shared: Arc<Shared>, wake: SyncSender<Msg>, rx: Receiver<SyncJob>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        // Held from the flush until the acked sequence number is published,
        // so a recovery never removes records this flush acknowledges.
        let gate = shared.gate.lock().unwrap_or_else(|p| p.into_inner());
        let epoch = shared.epoch.load(Ordering::SeqCst);
        let (current, stale): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|j| j.epoch == epoch);
        fail_jobs(stale, "journal write failed before this record's flush");
        if current.is_empty() {
            continue;
        }
        if !shared.healthy.load(Ordering::SeqCst) {
            drop(gate);
            fail_jobs(current, &shared.error_or("write failed"));
            continue;
        }
        let result = if shared.inject_failure.load(Ordering::SeqCst) {
            // The injected failure strikes at the flush, after the records
            // were inserted: the hardest case for recovery.
            Err("journal flush failed: injected failure (test hook / fault drill)".to_string())
        } else {
            store
                .flush()
                .map_err(|e| format!("journal flush failed: {e}"))
        };
        let records: usize = current.iter().map(|j| j.records).sum();
        let started = current.iter().map(|j| j.started).min();
        let seconds = started.map_or(0.0, |s| s.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                let upto = current.iter().map(|j| j.upto).max().unwrap_or(0);
                shared.wait_indexed(upto);
                shared.acked_seq.fetch_max(upto, Ordering::SeqCst);
                shared.durable_seq.fetch_max(upto, Ordering::SeqCst);
                shared.flushes.fetch_add(1, Ordering::SeqCst);
                drop(gate);
                for job in current {
                    for (ack, seq) in job.acks {
                        let _ = ack.send(Ok(Some(seq)));
                    }
                }
                shared.observe_batch(records, seconds, false);
            }
            Err(msg) => {
                shared.mark_failed(&msg);
                drop(gate);
                tracing::error!("{msg}; failing closed until writes succeed again");
                shared.observe_batch(records, 0.0, true);
                fail_jobs(current, &msg);
                let _ = wake.try_send(Msg::SyncFailed);
            }
        }
    }
}
