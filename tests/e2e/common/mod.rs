//! Shared test harness: `broker` makes a home and runs the real binary;
//! `upstream` is an in-process echo upstream (TLS, mTLS, plain, wrong CA);
//! `faultfs` puts a folder on LazyFS or a small tmpfs (power cuts, full disks).
pub mod broker;
pub mod faultfs;
pub mod upstream;
