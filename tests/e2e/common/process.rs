//! The real `gatehouse serve` binary, started on ports the OS assigns and
//! killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A running broker process; killed on drop.
pub struct Broker {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub stderr_path: PathBuf,
}

impl Broker {
    pub fn start(home: &Path) -> Broker {
        Broker::start_with(home, Command::new(BIN))
    }

    /// Starts the broker with extra environment variables.
    pub fn start_with_env(home: &Path, env: &[(&str, &str)]) -> Broker {
        let mut cmd = Command::new(BIN);
        cmd.envs(env.iter().copied());
        Broker::start_with(home, cmd)
    }

    /// Starts `gatehouse serve` with `cmd` as the program (the binary, or a
    /// wrapper such as `sh -c '...; exec "$0" "$@"' BIN`); the arguments are
    /// added here.
    pub fn start_with(home: &Path, cmd: Command) -> Broker {
        Broker::spawn(home, cmd, &[])
    }

    /// Starts `gatehouse serve` with extra arguments (`--node-id`, `--data`, ...).
    pub fn start_args(home: &Path, extra: &[&str]) -> Broker {
        Broker::spawn(home, Command::new(BIN), extra)
    }

    /// Starts `gatehouse serve` on the addresses `gatehouse.toml` names
    /// (`[server] listen` and `admin`), with no command-line override.
    pub fn start_on_configured_addresses(home: &Path) -> Broker {
        Broker::spawn_serve(home, Command::new(BIN), &[])
    }

    fn spawn(home: &Path, cmd: Command, extra: &[&str]) -> Broker {
        let mut args = vec!["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        Broker::spawn_serve(home, cmd, &args)
    }

    fn spawn_serve(home: &Path, mut cmd: Command, serve_args: &[&str]) -> Broker {
        let stderr_path = home.join(format!("serve-{}.log", rand_suffix()));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = cmd
            .arg("--home")
            .arg(home)
            .arg("serve")
            .args(serve_args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn gatehouse serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        let mut admin = None;
        for _ in 0..10 {
            match lines.next() {
                Some(Ok(line)) => {
                    if let Some(a) = line.strip_prefix("gatehouse listening on ") {
                        addr = a.trim().parse().ok();
                    }
                    if let Some(a) = line.strip_prefix("gatehouse admin on ") {
                        admin = a.trim().parse().ok();
                    }
                    if addr.is_some() && admin.is_some() {
                        break;
                    }
                }
                _ => break,
            }
        }
        // Keep draining stdout so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        let (Some(addr), Some(admin)) = (addr, admin) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "broker did not start: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        };
        Broker {
            child,
            addr,
            admin,
            stderr_path,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends a signal to the broker process.
    pub fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }

    /// Waits up to `secs` for the process to exit; returns its status.
    pub fn wait_exit(&mut self, secs: u64) -> Option<std::process::ExitStatus> {
        for _ in 0..secs * 20 {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Waits until the broker's log contains `needle` (bounded).
    pub async fn wait_log(&self, needle: &str, secs: u64) -> bool {
        for _ in 0..secs * 20 {
            if self.log().contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
