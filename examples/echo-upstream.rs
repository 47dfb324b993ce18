//! `echo-upstream`: the HTTPS upstream of the quick start and of the
//! end-to-end tests. Answers every request with 200 and a JSON description
//! of what it received (method, path, headers, client certificate CN and URI
//! SAN, body size).
//!
//! ```text
//! cargo run --example echo-upstream -- [--listen 127.0.0.1:9443]
//!     [--client-ca certs/upstream-client-ca.pem] [--write-ca certs/upstream-ca.pem] [--plain]
//! ```
//!
//! It mints its own CA and a server certificate for `localhost` and
//! `127.0.0.1` at every start; `--write-ca` writes that CA (atomically) where
//! the broker's `[upstreams.*] ca` expects it. With `--client-ca`, client
//! certificates are required and verified against that CA — give it the
//! home's `certs/upstream-client-ca.pem`, the CA that signs only the
//! broker's upstream-leg certificate, so the broker gets in and no partner
//! certificate does (never `ca.pem` or `ca-bundle.pem`: those are what
//! partner certificates chain to). Once bound it prints
//! `echo-upstream listening on https://ADDR` on stdout. SIGINT / SIGTERM stop
//! it cleanly.
//!
//! The server itself lives in `tests/e2e/common/upstream.rs`, shared with the
//! in-process test helper so the two cannot drift apart.

#[path = "../tests/e2e/common/upstream.rs"]
mod upstream;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use upstream::{EchoOptions, EchoPki, try_start_with_pki};

#[derive(Debug, Parser)]
#[command(
    name = "echo-upstream",
    about = "An HTTPS echo server to put behind gatehouse"
)]
struct Args {
    /// Address to listen on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:9443")]
    listen: SocketAddr,
    /// Require client certificates signed by this CA (PEM): the gatehouse
    /// `certs/upstream-client-ca.pem`, so only the broker gets in. Without it
    /// no client certificate is asked for.
    #[arg(long, value_name = "FILE")]
    client_ca: Option<PathBuf>,
    /// Write the PEM of the CA that signed this server's certificate here,
    /// for the broker to trust (e.g. `certs/upstream-ca.pem`).
    #[arg(long, value_name = "FILE")]
    write_ca: Option<PathBuf>,
    /// Serve plain HTTP instead of HTTPS (legacy-upstream demos).
    #[arg(long)]
    plain: bool,
}

/// Writes `contents` to `path` via a temporary file in the same folder and a
/// rename, so a reader never sees half a file.
fn write_atomically(path: &Path, contents: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ca.pem".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

async fn run(args: Args) -> Result<(), String> {
    let client_ca_pem = match &args.client_ca {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read --client-ca {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let pki = EchoPki::generate(false).map_err(|e| e.to_string())?;
    if let Some(path) = &args.write_ca {
        write_atomically(path, &pki.ca_pem)
            .map_err(|e| format!("cannot write --write-ca {}: {e}", path.display()))?;
    }
    let opts = EchoOptions {
        listen: args.listen,
        client_ca_pem,
        plain: args.plain,
        wrong_ca: false,
    };
    let server = try_start_with_pki(opts, pki)
        .await
        .map_err(|e| e.to_string())?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "echo-upstream listening on {}", server.url())
            .and_then(|()| out.flush())
            .map_err(|e| format!("cannot write to stdout: {e}"))?;
    }
    wait_for_signal().await?;
    server.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    let mut int =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot watch SIGINT: {e}"))?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

#[cfg(not(unix))]
async fn wait_for_signal() -> Result<(), String> {
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| format!("cannot watch Ctrl-C: {e}"))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("echo-upstream: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo-upstream: {e}");
            ExitCode::FAILURE
        }
    }
}
