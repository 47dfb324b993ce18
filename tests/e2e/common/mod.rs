//! Shared test harness: `broker` makes a home and runs the real binary;
//! `upstream` is an in-process echo upstream (TLS, mTLS, plain, wrong CA);
//! `stacks` runs the real client stacks (curl, Python, Node, Java, Go);
//! `tools` finds the other external tools a test drives (promtool, ...);
//! `faultfs` puts a folder on LazyFS or a small tmpfs (power cuts, full disks).
pub mod broker;
pub mod client;
pub mod faultfs;
pub mod home;
pub mod pki;
pub mod pool_backend;
pub mod process;
pub mod raw_upstream;
pub mod redis_server;
pub mod stacks;
pub mod tools;
pub mod upstream;
