//! The operator's side of a running broker: the admin HTTP listener
//! (`http`: health, readiness, metrics, status, JWKS), the operator console
//! it serves at `/` (`console`: the page, its JSON, the admin token), the
//! admin socket
//! (`socket`: `gatehouse log` and `partner resume` while serving), the
//! watcher that reloads the operator's changes (`watch`) and the periodic
//! upkeep: CRL re-signing and expiry alerts (`upkeep`), and the `disk_low`
//! alert when the journal's file system runs short (`disk_watch`).

pub mod console;
pub mod disk_watch;
pub mod http;
pub mod socket;
pub mod upkeep;
pub mod view;
pub mod watch;
