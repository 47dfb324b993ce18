//! The operator's side of a running broker: the admin HTTP listener
//! (`http`: health, readiness, metrics, status, JWKS) and the admin socket
//! (`socket`: `gatehouse log` and `partner resume` while serving).

pub mod http;
pub mod socket;
