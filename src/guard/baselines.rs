//! The anomaly detector's baselines across restarts: restored from the
//! journal database's state tree at start, saved there every
//! [`SAVE_INTERVAL`] while serving and once more at shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::anomaly::Detector;
use crate::journal::Journal;

/// Key of the anomaly baselines in the journal database's state tree.
const STATE_KEY: &str = "anomaly-baselines";
/// How often the baselines are saved while serving.
const SAVE_INTERVAL: Duration = Duration::from_secs(60);

/// Restores the baselines a previous run saved (a missing or unreadable
/// copy is logged and the detector starts afresh).
pub fn restore(detector: &Detector, journal: &Journal) {
    match journal.store().get_state(STATE_KEY) {
        Ok(Some(bytes)) => match detector.import(&bytes) {
            Ok(n) => tracing::info!(partners = n, "anomaly baselines restored"),
            Err(e) => tracing::warn!("anomaly baselines not restored: {e}"),
        },
        Ok(None) => {}
        Err(e) => tracing::warn!("cannot read the anomaly baselines: {e}"),
    }
}

/// Saves the baselines now.
pub fn save(detector: &Detector, journal: &Journal) {
    if let Err(e) = journal.store().put_state(STATE_KEY, &detector.export()) {
        tracing::warn!("cannot save the anomaly baselines: {e}");
    }
}

/// Saves the baselines every [`SAVE_INTERVAL`] until `shutdown`.
pub fn spawn_saver(
    detector: Arc<Detector>,
    journal: Journal,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(SAVE_INTERVAL);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let (d, j) = (detector.clone(), journal.clone());
                    let _ = tokio::task::spawn_blocking(move || save(&d, &j)).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    })
}
