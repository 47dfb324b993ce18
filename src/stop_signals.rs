//! The stop signals of `gatehouse serve` (SIGTERM, SIGINT), registered
//! before the broker says it is listening: a signal that arrives early must
//! not take the default action (killing the process without a drain).

use tokio::signal::unix::{Signal, SignalKind, signal};

/// A signal the broker could not catch.
#[derive(Debug, thiserror::Error)]
#[error("cannot handle {name}: {source}")]
pub struct SignalError {
    pub name: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// SIGTERM and SIGINT, caught.
pub struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    pub fn register() -> Result<StopSignals, SignalError> {
        let caught = |name: &'static str, kind: SignalKind| {
            signal(kind).map_err(|source| SignalError { name, source })
        };
        Ok(StopSignals {
            term: caught("SIGTERM", SignalKind::terminate())?,
            int: caught("SIGINT", SignalKind::interrupt())?,
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
