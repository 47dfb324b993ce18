//! gatehouse: a mutual-TLS broker for business-to-business APIs.
//!
//! Modules follow the data path (DESIGN.md): `ca` issues, `config` reads the
//! operator's files, `tls` verifies, `identity` names the partner, `policy`
//! decides, `relay` forwards, `journal` records, `server` wires them.

pub mod admin;
pub mod agent;
pub mod alerts;
pub mod anomaly;
pub mod ca;
pub mod check;
pub mod cli;
pub mod config;
pub mod console;
pub mod event;
pub mod exchange;
pub mod home;
pub mod identity;
pub mod journal;
pub mod limits;
pub mod live;
pub mod monitor;
pub mod partners;
pub mod policy;
pub mod relay;
pub mod renewal;
pub mod sd_notify;
pub mod server;
pub mod timefmt;
pub mod tls;
pub mod upstream_identity;
pub mod verified_certs;
