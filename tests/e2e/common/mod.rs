//! Shared test harness: `broker` makes a home and runs the real binary;
//! `upstream` is an in-process echo upstream (TLS, mTLS, plain, wrong CA).
pub mod broker;
pub mod redis_server;
pub mod upstream;
