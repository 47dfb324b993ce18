//! gatehouse: a mutual-TLS broker for business-to-business APIs.
//!
//! The folders follow the data path (docs/architecture.md): `tls` verifies
//! the partner's certificate, `identity` names the partner, `gateway` runs
//! each connection and request through its phases (admit, frame, authorize,
//! limit, relay, respond), `policy` decides, `guard` watches (limits,
//! anomaly baselines, metrics, alerts), `journal` records, `ca` issues and
//! revokes, `config` reads the operator's files, `control` serves the
//! operator (admin listener, admin socket, file watcher), `cli` is the
//! command line. `server` is the composition root that wires them.

pub mod agent;
pub mod ca;
pub mod check;
pub mod cli;
pub mod config;
pub mod control;
pub mod durable_file;
pub mod enrolment;
pub mod event;
pub mod fleet;
pub mod gateway;
pub mod guard;
pub mod home;
pub mod identity;
pub mod identity_token;
pub mod journal;
pub mod partners;
pub mod policy;
pub mod reason;
pub mod refusal;
pub mod risk;
pub mod rlimit;
pub mod sd_notify;
pub mod server;
pub mod stop_signals;
pub mod timefmt;
pub mod tls;
pub mod upstream;
pub mod watched_body;
