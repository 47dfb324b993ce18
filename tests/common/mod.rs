//! Shared test support: `upstream` starts an in-process echo upstream (the
//! same code as `examples/echo-upstream.rs`) on a free port with its own PKI.

pub mod upstream;
