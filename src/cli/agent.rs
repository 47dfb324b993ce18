//! `gatehouse agent renew`: the partner-side renewal agent's command line.
//! It needs no gatehouse home; the work is in `crate::agent`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::agent::{self, AgentOptions, Outcome};
use crate::timefmt::rfc3339;

#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Renew this partner's certificate at the broker (once, or as a daemon).
    Renew(RenewArgs),
}

#[derive(Args, Debug)]
pub struct RenewArgs {
    /// The current certificate chain (PEM); replaced on success.
    #[arg(long)]
    cert: PathBuf,
    /// The current private key (PEM); replaced on success (mode 0600).
    #[arg(long)]
    key: PathBuf,
    /// CA certificate(s) that verify the broker (its CA bundle during a CA rollover).
    #[arg(long)]
    ca: PathBuf,
    /// The broker's partner listener, e.g. https://broker.example.com:8443.
    #[arg(long)]
    broker: String,
    /// Keep running: renew at about 2/3 of each certificate's lifetime.
    #[arg(long)]
    daemon: bool,
    /// Command run with `sh -c` after each renewal (e.g. reload your client).
    #[arg(long)]
    exec: Option<String>,
    /// Broker log format on stderr (daemon).
    #[arg(long, value_enum, default_value = "text")]
    log_format: super::serve::LogFormat,
}

pub fn run(cmd: AgentCmd) -> super::CliResult {
    let AgentCmd::Renew(a) = cmd;
    let opts = AgentOptions {
        cert: a.cert,
        key: a.key,
        ca: a.ca,
        broker: a.broker,
        exec: a.exec,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if a.daemon {
        super::serve::init_tracing(a.log_format);
        runtime.block_on(agent::run_daemon(&opts))?;
        return Ok(ExitCode::SUCCESS);
    }
    match runtime.block_on(agent::renew_once(&opts))? {
        Outcome::Renewed { serial, not_after } => {
            println!(
                "renewed: certificate {serial} valid until {}; written to {} and {}",
                rfc3339(not_after),
                opts.cert.display(),
                opts.key.display()
            );
        }
        Outcome::NotYet { opens_at } => {
            println!(
                "not renewed: the broker's renewal window for this certificate opens at {}; nothing changed",
                opens_at.as_deref().unwrap_or("(not given)")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
