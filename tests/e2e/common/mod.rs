//! Shared test harness: `broker` makes a home and runs the real binary;
//! `upstream` is an in-process echo upstream (TLS, mTLS, plain, wrong CA);
//! `clients` runs the real client stacks (curl, Python, Node, Java, Go).
pub mod broker;
pub mod clients;
pub mod upstream;
