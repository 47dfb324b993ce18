//! Picks up the operator's changes while the broker runs: file-change
//! notifications on the home's configuration folders (with a slow safety
//! poll for file systems that do not notify) and SIGHUP reload the live
//! state and the upstream identity key; a refused change is reported once
//! and the running configuration stays in force. Each reload and each
//! audited change (certificate issued, revoked, partner suspended, ...)
//! becomes an admin record.
//!
//! A reload never claims more than it did: the settings it changed and put
//! in force are named (log line and record), the journal writer, anomaly
//! detector and alert webhook are retuned to the new values, and each
//! changed setting that only a restart applies (`config::settings`) gets a
//! WARN line saying it takes effect at restart, and stays listed as
//! pending in the record, the status view and the metrics until then.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::event::{Decision, EventKind, truncated};
use crate::gateway::live::{Live, ReloadError, WATCH_INTERVAL};
use crate::guard::EventSink;
use crate::identity_token::LiveIdentity;
use crate::journal::Journal;

/// How often the watcher looks at every file even without a notification.
const SAFETY_POLL: Duration = Duration::from_secs(10);

/// What the watcher reloads and where it reports.
pub struct Watched {
    pub live: Arc<Live>,
    pub identity: Arc<LiveIdentity>,
    pub events: Arc<EventSink>,
    /// Asks for a look now (a fleet's announced change).
    pub trigger: Arc<ReloadTrigger>,
    /// The journal writer, retuned when `[journal]` changes.
    pub journal: Journal,
}

/// A request to look at the files now, from outside the watcher (a fleet
/// invalidation), and how many looks the watcher has made.
#[derive(Default)]
pub struct ReloadTrigger {
    notify: tokio::sync::Notify,
    force: AtomicBool,
    looks: std::sync::atomic::AtomicU64,
}

impl ReloadTrigger {
    /// Asks for a look; `force` re-reads every file as SIGHUP does.
    pub fn poke(&self, force: bool) {
        if force {
            self.force.store(true, Ordering::Release);
        }
        self.notify.notify_one();
    }

    /// Looks made so far (a look after a poke counts once it is done).
    pub fn looks(&self) -> u64 {
        self.looks.load(Ordering::Acquire)
    }
}

impl Watched {
    /// Applies each partner's `on_anomaly` to the detector.
    pub fn apply_anomaly_modes(&self) {
        for (id, entry) in &self.live.snapshot().partners {
            self.events
                .detector()
                .set_on_anomaly(id, entry.partner.on_anomaly);
        }
    }

    /// Puts the reloaded settings that live outside the snapshot in force:
    /// the journal writer's periods, the detector's thresholds, the alert
    /// webhook. Returns what could not be applied (the old value stays).
    async fn apply_settings(&self, applied: &[String]) -> Vec<String> {
        let snapshot = self.live.snapshot();
        let gw = &snapshot.gateway;
        let mut failed = Vec::new();
        if applied.iter().any(|k| k.starts_with("journal.")) {
            let journal = self.journal.clone();
            let settings = gw.journal.clone();
            match tokio::task::spawn_blocking(move || journal.retune(&settings)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => failed.push(format!("[journal]: {e}")),
                Err(e) => failed.push(format!("[journal]: {e}")),
            }
        }
        let m = &gw.monitor;
        self.events.detector().retune(
            m.anomaly_factor,
            m.anomaly_floor_per_minute,
            m.anomaly_warmup_minutes,
        );
        if applied.iter().any(|k| k.starts_with("monitor.webhook_"))
            && let Err(e) = self.events.alerts().set_webhook(m, &self.live.home)
        {
            failed.push(format!("[monitor] webhook: {e}"));
        }
        failed
    }
}

/// Watches the home's configuration folders (not `data/`) and raises
/// `changed` on any change in them.
fn file_notifier(
    live: &Live,
    changed: Arc<AtomicBool>,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    use notify::{EventKind as FsEvent, RecursiveMode, Watcher};
    // Only configuration material counts (not logs that may sit in the home).
    let relevant = |p: &std::path::Path| {
        !matches!(
            p.extension().and_then(|x| x.to_str()),
            Some("log" | "out" | "sock" | "tmp")
        )
    };
    let mut watcher =
        notify::recommended_watcher(move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if matches!(ev.kind, FsEvent::Access(_)) => {}
            Ok(ev) if !ev.paths.is_empty() && !ev.paths.iter().any(|p| relevant(p)) => {}
            _ => changed.store(true, Ordering::Release),
        })?;
    for dir in live.watched_dirs() {
        if dir.is_dir() {
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|e| e.add_path(dir.clone()))?;
        }
    }
    Ok(watcher)
}

/// Adds the folders a reload newly names (a partner's own CA or CRL kept
/// elsewhere) to the notifier; `known` holds those already watched.
fn watch_new_dirs(
    watcher: &mut notify::RecommendedWatcher,
    live: &Live,
    known: &mut std::collections::BTreeSet<std::path::PathBuf>,
) {
    use notify::{RecursiveMode, Watcher};
    for dir in live.watched_dirs() {
        if known.contains(&dir) || !dir.is_dir() {
            continue;
        }
        match watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                known.insert(dir);
            }
            Err(e) => tracing::warn!(
                "{} is not watched for changes ({e}); the safety poll picks them up within {SAFETY_POLL:?}",
                dir.display()
            ),
        }
    }
}

/// Picks up file changes (notifications, with a slow safety poll) and
/// SIGHUP until shutdown.
pub async fn watch_files(
    w: Arc<Watched>,
    mut hup: tokio::signal::unix::Signal,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // File-change notifications (inotify) say when to look; a full look at
    // every file's stamp then happens only on a change, on SIGHUP, and every
    // SAFETY_POLL for file systems that do not notify. Without
    // notifications, every tick looks.
    let changed = Arc::new(AtomicBool::new(true));
    let mut notifier = match file_notifier(&w.live, changed.clone()) {
        Ok(n) => Some(n),
        Err(e) => {
            tracing::warn!(
                "file-change notifications unavailable ({e}); polling every {WATCH_INTERVAL:?}"
            );
            None
        }
    };
    let mut watched_dirs: std::collections::BTreeSet<_> = w
        .live
        .watched_dirs()
        .into_iter()
        .filter(|d| d.is_dir())
        .collect();
    let mut last_full_look = Instant::now();
    let mut last_error: Option<String> = None;
    loop {
        let (force, poked) = tokio::select! {
            _ = tick.tick() => (false, false),
            Some(_) = hup.recv() => (true, true),
            _ = w.trigger.notify.notified() => (w.trigger.force.swap(false, Ordering::AcqRel), true),
            _ = shutdown.changed() => return,
        };
        if force {
            crate::sd_notify::reloading();
        }
        let look = poked
            || force
            || notifier.is_none()
            || changed.swap(false, Ordering::AcqRel)
            || w.live.tls_retry_pending()
            || last_full_look.elapsed() >= SAFETY_POLL;
        if !look {
            continue;
        }
        last_full_look = Instant::now();
        reload_identity(&w).await;
        reload(&w, force, &mut last_error).await;
        if let Some(n) = notifier.as_mut() {
            watch_new_dirs(n, &w.live, &mut watched_dirs);
        }
        w.trigger.looks.fetch_add(1, Ordering::AcqRel);
        if force {
            let pending = w.live.restart_pending();
            if pending.is_empty() {
                crate::sd_notify::reloaded("serving (reload done)");
            } else {
                crate::sd_notify::reloaded(&format!(
                    "serving (reload done; restart pending: {})",
                    pending.join(", ")
                ));
            }
        }
    }
}

/// Reloads the upstream identity key if its files changed.
async fn reload_identity(w: &Arc<Watched>) {
    let identity = w.identity.clone();
    match tokio::task::spawn_blocking(move || identity.refresh()).await {
        Ok(Ok(true)) => tracing::info!(
            kid = w.identity.current().signer.kid(),
            "upstream identity key reloaded"
        ),
        Ok(Ok(false)) => {}
        Ok(Err(e)) => tracing::error!(
            "upstream identity key not reloaded; the running key stays in force: {e}"
        ),
        Err(e) => tracing::error!("identity reload task failed: {e}"),
    }
}

/// Reloads the live state and records what changed, or reports a refusal
/// once per distinct error.
async fn reload(w: &Arc<Watched>, force: bool, last_error: &mut Option<String>) {
    let live = w.live.clone();
    let result = tokio::task::spawn_blocking(move || live.reload(force)).await;
    match result {
        Ok(Ok(outcome)) if outcome.changed => {
            *last_error = None;
            w.apply_anomaly_modes();
            let mut failed = outcome.not_applied.clone();
            failed.extend(w.apply_settings(&outcome.applied).await);
            for key in &outcome.restart_now {
                tracing::warn!(
                    setting = %key,
                    "{key} changed: takes effect at restart; the running value stays in force until then"
                );
            }
            for f in &failed {
                tracing::error!("setting not applied; the previous value stays in force: {f}");
            }
            let summary = reload_summary(&outcome, &failed);
            if outcome.restart_pending.is_empty() && failed.is_empty() {
                tracing::info!(
                    partners = outcome.partners,
                    tls_rebuilt = outcome.tls_rebuilt,
                    "configuration reloaded; {summary}"
                );
            } else {
                tracing::warn!(
                    partners = outcome.partners,
                    tls_rebuilt = outcome.tls_rebuilt,
                    "configuration reloaded, but not all of it is in force; {summary}"
                );
            }
            let mut ev = w.events.event(EventKind::Admin, Decision::Allowed);
            ev.reason = Some("config_reloaded".into());
            ev.detail = Some(truncated(
                &format!(
                    "partners: {}; tls rebuilt: {}; {summary}",
                    outcome.partners, outcome.tls_rebuilt
                ),
                4096,
            ));
            drop(w.events.record(ev, None));
            for change in &outcome.changes {
                let mut ev = w.events.event(EventKind::Admin, Decision::Allowed);
                ev.reason = Some(change.kind.to_string());
                ev.partner = Some(change.partner.clone());
                ev.cert_serial = change.serial.clone();
                drop(w.events.record(ev, None));
            }
        }
        Ok(Ok(_)) | Ok(Err(ReloadError::RefusedAgain)) => {}
        Ok(Err(ReloadError::Refused(e))) => {
            let e = e.to_string();
            if last_error.as_deref() != Some(e.as_str()) {
                tracing::error!(
                    "configuration change refused; the running configuration stays in force:\n{e}"
                );
                let mut ev = w.events.event(EventKind::Admin, Decision::Denied);
                ev.reason = Some("config_reload_refused".into());
                ev.detail = Some(truncated(&e, 4096));
                drop(w.events.record(ev, None));
                *last_error = Some(e);
            }
        }
        Err(e) => tracing::error!("reload task failed: {e}"),
    }
}

/// `applied: a, b; restart pending: c; not applied: ...` (each part only
/// when it has something to say; `applied: no setting changed` otherwise).
fn reload_summary(outcome: &crate::gateway::live::ReloadOutcome, failed: &[String]) -> String {
    let mut parts = Vec::new();
    /// Keys named in full; past this, how many more.
    const NAMED: usize = 40;
    if outcome.applied.is_empty() {
        parts.push("applied: no setting changed".to_string());
    } else {
        let mut named = outcome.applied[..outcome.applied.len().min(NAMED)].join(", ");
        if outcome.applied.len() > NAMED {
            named.push_str(&format!(" and {} more", outcome.applied.len() - NAMED));
        }
        parts.push(format!("applied: {named}"));
    }
    if !outcome.restart_pending.is_empty() {
        parts.push(format!(
            "restart pending (takes effect at restart): {}",
            outcome.restart_pending.join(", ")
        ));
    }
    if !failed.is_empty() {
        parts.push(format!("not applied: {}", failed.join("; ")));
    }
    parts.join("; ")
}
