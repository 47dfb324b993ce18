//! gatehouse's end-to-end tests, one module per concern, compiled into one
//! test binary (one link of the dependency tree instead of one per file keeps
//! a clean CI build small and quick).
//!
//! Every test starts its own broker (the real `gatehouse` binary, or the
//! library's server) on ports the OS assigns, with a PKI minted at test time,
//! real TLS over loopback, a real HTTP upstream and a real sled journal in a
//! temporary directory, so the tests run in parallel. `common` holds the
//! broker, PKI and client helpers; `journal_support` the journal fixtures.

mod common;
mod journal_support;

mod broker_certs;
mod ca_cli;
mod ca_lock;
mod ca_rollover;
mod cli_docs;
mod console;
mod contrib;
mod curl;
mod disk_full;
mod echo_upstream;
mod enrolment;
mod first_run;
mod fleet;
mod fleet_bench;
mod handshake;
mod header_spoofing;
mod hostile_input;
mod interop;
mod journal_cli;
mod journal_durability;
mod journal_e2e;
mod log_output;
mod metrics;
mod mirror;
mod partner_ca;
mod pools;
mod power_loss;
mod relay;
mod reload;
mod reload_pools;
mod reload_race;
mod reload_restart;
mod reload_settings;
mod renewal;
mod renewal_retry;
mod resource_limits;
mod resumption;
mod revocation;
mod servlet_paths;
mod signed_requests;
mod split;
mod systemd;
mod traffic_guard;
mod upstream_identity;
mod value_limits;
