//! The command line (README, "Operator's guide"): the top-level clap
//! definition (`Cli`, `Command`), opening the home, the dispatch to one module
//! per command family, and announcing a change to the fleet afterwards. Each
//! family's flags live beside the code that runs it. Output for people by
//! default, `--json` for scripts; exit 0 on success, non-zero with one clear
//! line on stderr.

pub mod agent;
mod announce;
mod ca;
mod cert;
mod check;
mod init;
mod invite;
pub mod log;
mod partner;
mod serve;
pub mod shell;
pub mod status;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::home::Home;

pub use ca::CaCmd;
pub use cert::CertCmd;
pub use init::InitArgs;
pub use partner::PartnerCmd;
pub use serve::{LogFormat, ServeArgs};

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

#[derive(Parser, Debug)]
#[command(
    name = "gatehouse",
    version,
    about = "A mutual-TLS broker for B2B APIs: CA, gateway, policy, relay, journal"
)]
pub struct Cli {
    /// The gatehouse home folder (config, partners, certs, data).
    #[arg(long, global = true, env = "GATEHOUSE_HOME", default_value = ".")]
    pub home: PathBuf,
    /// This node's data folder (journal, admin socket); default HOME/data.
    /// In a fleet each node has its own while the home is shared.
    #[arg(long, global = true, env = "GATEHOUSE_DATA")]
    pub data: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the CA, the broker's certificates, gatehouse.toml and the folders.
    Init(InitArgs),
    /// Validate gatehouse.toml, every partner file and the CA material, offline;
    /// with a broker running on the home, also tell which changed settings a
    /// reload would apply and which need a restart.
    Check,
    /// Onboard and manage partner companies.
    #[command(subcommand)]
    Partner(PartnerCmd),
    /// Issue, renew, revoke and list partner certificates.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Run the broker: terminate mTLS, authorize, relay, record.
    Serve(ServeArgs),
    /// Read, export, verify and prune the exchange journal.
    #[command(subcommand)]
    Log(log::LogCmd),
    /// The running broker's view per partner: traffic, limits, certificates, alerts.
    Status(status::StatusArgs),
    /// CA rollover: rotate the issuing CA, the root or the upstream-client CA; migrate; retire.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Partner side: renew this partner's certificate at the broker (no home needed).
    #[command(subcommand)]
    Agent(agent::AgentCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(shell::CompletionsArgs),
    /// Print the man page gatehouse(1), or write every command's page with --dir.
    Man(shell::ManArgs),
}

/// Entry point for the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatehouse: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn existing(home: &std::path::Path) -> Result<Home, Box<dyn std::error::Error>> {
    Ok(Home::existing(home)?)
}

pub fn run(cli: Cli) -> CliResult {
    let data = cli.data.clone();
    let existing = |home: &std::path::Path| existing(home).map(|h| h.with_data(data.clone()));
    // A fleet hears of partner and certificate changes made here (after the
    // files are written; nothing to do without `[cluster]`).
    let announce = announce::of_command(&cli.command);
    let result = match cli.command {
        Command::Init(a) => init::run(Home::new(&cli.home), a),
        Command::Check => check::run(&existing(&cli.home)?),
        Command::Partner(p) => partner::run(&existing(&cli.home)?, p),
        Command::Cert(c) => cert::run(&existing(&cli.home)?, c),
        Command::Serve(a) => serve::run(existing(&cli.home)?, a),
        Command::Log(c) => log::run(&existing(&cli.home)?, c),
        Command::Status(a) => status::run(&existing(&cli.home)?, a),
        Command::Ca(c) => ca::run(&existing(&cli.home)?, c),
        Command::Agent(c) => agent::run(c),
        Command::Completions(a) => shell::completions(a),
        Command::Man(a) => shell::man(a),
    };
    if let (Ok(code), Some(change)) = (&result, announce)
        && *code == ExitCode::SUCCESS
        && let Ok(home) = existing(&cli.home)
    {
        crate::fleet::announce::publish_from_cli(&home, &change);
    }
    result
}
