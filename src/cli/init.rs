//! `gatehouse init`: its flags and the report of the home it created (the
//! work is `ca::lifecycle::init`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::CliResult;
use crate::ca::lifecycle::{self, InitOptions};
use crate::home::Home;

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Trust domain in partner identities (spiffe://<D>/partner/<id>).
    #[arg(long)]
    trust_domain: Option<String>,
    /// Name or IP for the broker's server certificate (repeatable).
    #[arg(long = "hostname")]
    hostnames: Vec<String>,
    /// Replace an existing CA (every certificate it issued stops working).
    #[arg(long)]
    force: bool,
    /// Adopt an existing CA certificate (e.g. an intermediate of your PKI)...
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// ...and its private key.
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
}

pub(super) fn run(home: Home, a: InitArgs) -> CliResult {
    let report = lifecycle::init(
        &home,
        &InitOptions {
            trust_domain: a.trust_domain,
            hostnames: a.hostnames,
            force: a.force,
            ca_cert: a.ca_cert,
            ca_key: a.ca_key,
        },
    )?;
    println!(
        "initialized gatehouse home {} (trust domain {})",
        home.root().display(),
        report.trust_domain
    );
    if report.adopted {
        println!(
            "  issuing CA: adopted {} (its chain's top, {}, is what partners trust)",
            home.ca_cert().display(),
            home.root_cert().display()
        );
    } else {
        println!(
            "  root CA: created {} (key {}: may be moved offline; only `ca rotate` needs it)",
            home.root_cert().display(),
            home.root_key().display()
        );
        println!(
            "  issuing CA: created {} (signs partner and server certificates)",
            home.ca_cert().display()
        );
    }
    println!(
        "  issuing CA fingerprint (SHA-256): {}",
        report.ca_fingerprint
    );
    println!(
        "  upstream-client CA: created {} (upstreams trust this, and only this, to admit the broker)",
        home.upstream_client_ca_cert().display()
    );
    if report.config_written {
        println!("  config: {}", home.config_file().display());
    }
    println!(
        "next: add your API as an [upstreams.NAME] table in gatehouse.toml (a commented example is there), then gatehouse partner add ID --route \"GET /v1/orders -> NAME\" and gatehouse cert issue ID"
    );
    Ok(ExitCode::SUCCESS)
}
