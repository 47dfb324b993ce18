//! A real `redis-server` for the fleet tests: started on a free loopback
//! port in a temp dir with persistence off, stopped (and restarted on the
//! same port) on demand, killed on drop. Where redis-server is not
//! installed the tests skip with a note; in CI (`CI=true`) they fail.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct RedisServer {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// TLS and password settings (`start_tls`): the port is a TLS port.
    tls: Option<Vec<String>>,
}

/// Whether redis-server can run here; panics in CI when it cannot.
pub fn available() -> bool {
    let ok = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "redis-server is not installed, and CI must run the fleet tests (.ci/run installs it)"
            );
        }
        eprintln!("redis-server not installed: skipping the fleet test");
    }
    ok
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().unwrap().port()
}

impl RedisServer {
    /// Starts redis-server (None: not installed here, see [`available`]).
    pub fn start() -> Option<RedisServer> {
        if !available() {
            return None;
        }
        let mut r = RedisServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
            child: None,
            tls: None,
        };
        r.restart();
        Some(r)
    }

    /// Starts redis-server serving TLS only (certificate and key PEM) and
    /// asking for `password`.
    pub fn start_tls(cert_pem: &str, key_pem: &str, password: &str) -> Option<RedisServer> {
        RedisServer::start_tls_with(cert_pem, key_pem, password, &[])
    }

    /// [`RedisServer::start_tls`] with more configuration directives
    /// (`--user NAME on >PASSWORD ~* &* +@all` for an ACL user).
    pub fn start_tls_with(
        cert_pem: &str,
        key_pem: &str,
        password: &str,
        extra: &[&str],
    ) -> Option<RedisServer> {
        if !available() {
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let cert = dir.path().join("server.pem");
        let key = dir.path().join("server.key");
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        let mut r = RedisServer {
            port: free_port(),
            child: None,
            tls: Some(
                vec![
                    "--tls-cert-file".into(),
                    cert.display().to_string(),
                    "--tls-key-file".into(),
                    key.display().to_string(),
                    "--tls-auth-clients".into(),
                    "no".into(),
                    "--requirepass".into(),
                    password.into(),
                ]
                .into_iter()
                .chain(extra.iter().map(|a| a.to_string()))
                .collect(),
            ),
            dir,
        };
        r.restart();
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Starts (again) on the same port, and waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "redis-server already running");
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some(tls) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .args(tls),
        };
        let child = cmd
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(self.log())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        for _ in 0..100 {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "redis-server did not answer on port {}: {}",
            self.port,
            std::fs::read_to_string(self.log()).unwrap_or_default()
        );
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        if self.tls.is_some() {
            // Listening is enough; the test's own client proves TLS.
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"PING\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 16];
        matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    /// A synchronous client connection for the test's own checks.
    pub fn conn(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_connection_with_timeout(Duration::from_secs(2))
            .expect("connect to the test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
