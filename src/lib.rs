//! gatehouse: a mutual-TLS broker for business-to-business APIs.
//!
//! Modules follow the data path (DESIGN.md): `ca` issues, `config` reads the
//! operator's files, `tls` verifies, `identity` names the partner, `policy`
//! decides, `relay` forwards, `journal` records, `server` wires them.

pub mod anomaly;
pub mod ca;
pub mod check;
pub mod cli;
pub mod config;
pub mod event;
pub mod home;
pub mod limits;
pub mod partners;
pub mod timefmt;
