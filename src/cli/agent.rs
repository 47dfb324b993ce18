//! `gatehouse agent renew` and `agent enroll`: the partner side's command
//! line. It needs no gatehouse home; the work is in `crate::agent` and
//! `crate::agent::enrol`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::agent::enrol::EnrolOptions;
use crate::agent::{self, AgentOptions, Outcome};
use crate::timefmt::rfc3339;

#[derive(Subcommand, Debug)]
pub enum AgentCmd {
    /// Renew this partner's certificate at the broker (once, or as a daemon).
    Renew(RenewArgs),
    /// Enrol with a one-time invitation (EST): makes the key here, gets the
    /// certificate, writes ID.key, ID.pem and ca.pem to --out.
    Enroll(EnrollArgs),
}

#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// The broker's partner listener, e.g. https://broker.example.com:8443.
    #[arg(long)]
    url: String,
    /// This partner's id (from the invitation).
    #[arg(long)]
    id: String,
    /// The invitation's secret (single use).
    #[arg(long, env = "GATEHOUSE_ENROL_SECRET", hide_env_values = true)]
    secret: String,
    /// Folder for ID.key (0600), ID.pem and ca.pem.
    #[arg(long)]
    out: PathBuf,
    /// SHA-256 of the broker's root (from the invitation).
    #[arg(long, required_unless_present = "ca")]
    root_fingerprint: Option<String>,
    /// The broker's root as a PEM file, instead of --root-fingerprint.
    #[arg(long)]
    ca: Option<PathBuf>,
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
    let a = match cmd {
        AgentCmd::Renew(a) => a,
        AgentCmd::Enroll(e) => return enroll(e),
    };
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

fn enroll(a: EnrollArgs) -> super::CliResult {
    let opts = EnrolOptions {
        url: a.url.trim_end_matches('/').to_string(),
        id: a.id,
        secret: a.secret,
        out: a.out,
        ca: a.ca,
        root_fingerprint: a.root_fingerprint,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let done = runtime.block_on(crate::agent::enrol::enrol(&opts))?;
    println!(
        "enrolled: certificate {} valid until {}; key {} (never sent), chain {}, root {}",
        done.serial,
        rfc3339(done.not_after),
        done.key.display(),
        done.cert.display(),
        done.ca.display()
    );
    println!(
        "renew with: gatehouse agent renew --cert {} --key {} --ca {} --broker {} --daemon",
        done.cert.display(),
        done.key.display(),
        done.ca.display(),
        opts.url
    );
    Ok(ExitCode::SUCCESS)
}
