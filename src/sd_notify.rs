//! systemd service notifications, for `Type=notify` units
//! (contrib/systemd/gatehouse.service): `READY=1` once the broker listens,
//! `RELOADING=1` (with `MONOTONIC_USEC`) and `READY=1` around a SIGHUP
//! reload, `STOPPING=1` when the drain starts, and `WATCHDOG=1` every half
//! `WATCHDOG_USEC` when the unit sets `WatchdogSec=`. Without
//! `NOTIFY_SOCKET` (not run by systemd) every call does nothing. A failed
//! notification is logged, never fatal: the broker serves either way.

use std::time::Duration;

use ::sd_notify::NotifyState;
use tokio::sync::watch;

fn send(states: &[NotifyState]) {
    if let Err(e) = ::sd_notify::notify(states) {
        tracing::warn!("systemd notification failed (NOTIFY_SOCKET): {e}");
    }
}

/// The broker listens and serves.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A SIGHUP reload starts (systemd waits for [`reloaded`]).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(e) => {
            tracing::warn!("cannot read the monotonic clock for RELOADING=1: {e}");
            send(&[NotifyState::Reloading]);
        }
    }
}

/// The reload is over (applied or refused: the broker serves either way).
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// The broker stopped accepting and drains.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining in-flight requests"),
    ]);
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`, for this
/// process), if any.
pub fn watchdog_interval() -> Option<Duration> {
    ::sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Pings the watchdog every half interval from the async runtime (so a
/// wedged runtime misses its pings) until shutdown. Nothing without
/// `WatchdogSec=`.
pub fn spawn_watchdog(mut shutdown: watch::Receiver<bool>) {
    let Some(interval) = watchdog_interval() else {
        return;
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => send(&[NotifyState::Watchdog]),
                _ = shutdown.changed() => return,
            }
        }
    });
}
