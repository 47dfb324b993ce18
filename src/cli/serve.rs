//! `gatehouse serve`: its flags, the broker log format and the tracing set-up
//! (shared with `agent renew --daemon`), the runtime that runs
//! `server::serve`, and the journal's final checkpoint on the way out.

use std::process::ExitCode;

use clap::Args;

use super::CliResult;
use crate::config;
use crate::home::Home;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Partner listener (default from gatehouse.toml). Port 0 picks a free port.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Admin listener for health and metrics (default from gatehouse.toml).
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// This node's name in records, heartbeats and alerts (default: `[server] node_id`).
    #[arg(long, env = "GATEHOUSE_NODE_ID")]
    node_id: Option<String>,
    /// Broker log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum LogFormat {
    Text,
    Json,
}

pub(super) fn run(home: Home, a: ServeArgs) -> CliResult {
    init_tracing(a.log_format);
    let gateway = config::load_gateway(&home)?;
    let journal = crate::journal::Journal::open(&home, &gateway.journal)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(crate::server::serve(
        home,
        crate::server::ServeOptions {
            listen: a.listen,
            admin: a.admin,
            node_id: a.node_id,
        },
        journal.clone(),
    ));
    drop(runtime);
    // Final signed checkpoint and flush, whatever happened above.
    let closed = journal.shutdown();
    result?;
    closed?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: a log file or a journald
    // pipe gets no ANSI escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
