//! The broker test harness, one job per file: `home` (a home made with the
//! real CLI), `process` (the real broker process), `client` (mTLS clients),
//! `pki` (certificates minted at test time), `raw_upstream` (odd upstreams).
//! Tests import everything from here.

pub use super::client::*;
pub use super::home::*;
pub use super::pki::*;
pub use super::process::*;
pub use super::raw_upstream::*;
