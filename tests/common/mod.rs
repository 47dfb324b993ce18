//! Shared test harness (see each submodule).
pub mod broker;
