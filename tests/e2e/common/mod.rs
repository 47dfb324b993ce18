//! Shared test harness: `broker` makes a home and runs the real binary;
//! `upstream` is an in-process echo upstream (TLS, mTLS, plain, wrong CA);
//! `tools` finds the external tools a test drives.
pub mod broker;
pub mod tools;
pub mod upstream;
