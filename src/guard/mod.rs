//! Watching the traffic: rate, quota and concurrency limits (`limits`),
//! per-partner baselines and spike detection (`anomaly`), metrics and the
//! operator view (`monitor`), alert delivery (`alerts`), the baselines kept across restarts
//! (`baselines`), and the one sink every event goes through (`sink`).

pub mod alerts;
pub mod anomaly;
pub mod baselines;
pub mod limits;
pub mod monitor;
pub mod sink;

pub use sink::{EventSink, Throttles};
