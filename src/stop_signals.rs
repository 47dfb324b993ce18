//! The stop signals of `gatehouse serve` (SIGTERM, SIGINT), registered
//! before the broker says it is listening: a signal that arrives early must
//! not take the default action (killing the process without a drain).

use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGTERM and SIGINT, caught.
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    pub fn register() -> Result<StopSignals, String> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())
                .map_err(|e| format!("cannot handle SIGTERM: {e}"))?,
            int: signal(SignalKind::interrupt())
                .map_err(|e| format!("cannot handle SIGINT: {e}"))?,
        })
    }

    /// Resolves at the first of the two.
    pub async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {},
            _ = self.int.recv() => {},
        }
    }
}
