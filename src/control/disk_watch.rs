//! The `disk_low` alert: watches the journal's free-space state (the
//! journal's writer measures it against `[journal] min_free`) and raises an
//! alert (log line, metrics, `gatehouse status`, webhook) when free space
//! falls under the margin, and logs when it is back.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::guard::EventSink;
use crate::guard::alerts::AlertNotice;
use crate::journal::Journal;

/// How often the journal's state is looked at (an atomic load).
const POLL: Duration = Duration::from_millis(250);

/// Runs until shutdown: one `disk_low` alert each time free space falls
/// under the margin.
pub async fn run(journal: Journal, events: Arc<EventSink>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut low = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let now_low = journal.disk_low();
        if now_low && !low {
            let why = journal
                .stats()
                .last_error
                .unwrap_or_else(|| "free space under [journal] min_free".into());
            events.raise_notice(AlertNotice {
                kind: "disk_low".into(),
                partner: None,
                addr: None,
                message: format!(
                    "the journal refuses records (partners get 503) until free space is back: {why}"
                ),
                time_ms: crate::event::now_ms(),
                details: serde_json::json!({ "error": why }),
            });
        } else if low && !now_low {
            tracing::info!(
                "free space is back above [journal] min_free; the journal takes records again"
            );
        }
        low = now_low;
    }
}
