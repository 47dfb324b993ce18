//! A real backend process for pool tests: a small Python HTTP/1.1 server
//! (keep-alive) that logs every request it reads to a file (the proof of
//! how often a request reached it) and behaves by mode: `ok` answers 200
//! with its name, `reset` reads the request body and resets the
//! connection, `hang` reads the request and never answers, `sleep:<ms>`
//! answers after sleeping and records the most requests it held at once,
//! `json:<variant>` answers an order as JSON: `legacy` (the reference),
//! `same` (the same document with keys in another order and numbers
//! spelled otherwise), `total11` (one field differs: `/total`), `big` and
//! `big11` (the same with 2000 items, about 110 KB), `noisy`
//! (the reference plus `/generated_at`, which changes on every call). Beside
//! the request log, a second log notes each request's `X-Gatehouse-Mirror`
//! and `X-Gatehouse-Partner` headers. The JSON modes set `TCP_NODELAY`, so
//! their head and body are not held apart by a delayed ACK (about 40 ms).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const SERVER: &str = r#"
import json, socket, struct, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
mode, name, log, port, host = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
lock = threading.Lock()
state = {"now": 0, "max": 0, "n": 0}
def note(line):
    with lock, open(log, "a") as f:
        f.write(line + "\n")
def note_headers(line):
    with lock, open(log + ".headers", "a") as f:
        f.write(line + "\n")
def order(variant, path):
    with lock:
        state["n"] += 1
        n = state["n"]
    if variant == "same":
        return '{"items":[{"qty":1.0,"sku":"a"},{"sku":"b","qty":2e0}],"total":1e1,"order":%s}' % json.dumps(path)
    doc = {"order": path, "total": 11 if variant in ("total11", "big11") else 10,
           "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}]}
    if variant.startswith("big"):
        doc["items"] = [{"sku": "s%d" % i, "qty": i, "note": "x" * 30} for i in range(2000)]
    if variant == "noisy":
        doc["generated_at"] = "%s-%d" % (name, n)
    return json.dumps(doc)
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def handle_any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        note("%s %s %d" % (self.command, self.path, len(body)))
        note_headers("%s %s %s" % (self.path, self.headers.get("X-Gatehouse-Mirror", "-"), self.headers.get("X-Gatehouse-Partner", "-")))
        if mode == "reset" and self.path != "/healthz":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        if mode == "hang":
            time.sleep(3600)
            return
        if mode.startswith("sleep:") and self.path != "/healthz":
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
                open(log + ".max", "w").write(str(state["max"]))
            time.sleep(int(mode[6:]) / 1000.0)
            with lock:
                state["now"] -= 1
        out = name.encode()
        ctype = "text/plain"
        if mode.startswith("json:"):
            # Head and body without Nagle's wait for a delayed ACK.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            out = order(mode[5:], self.path).encode()
            ctype = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = do_PUT = do_DELETE = handle_any
class S(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128
s = S((host, port), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// One backend process (killed with SIGKILL when dropped).
pub struct PoolBackend {
    pub addr: SocketAddr,
    pub name: String,
    mode: String,
    log: PathBuf,
    child: Option<Child>,
}

impl PoolBackend {
    /// Starts `mode` named `name` on an OS-assigned port, logging under `dir`.
    pub fn start(dir: &Path, name: &str, mode: &str) -> PoolBackend {
        Self::start_on(dir, name, mode, 0)
    }

    /// Starts it on `port` (0: any).
    pub fn start_on(dir: &Path, name: &str, mode: &str, port: u16) -> PoolBackend {
        Self::start_at(dir, name, mode, [127, 0, 0, 1], port)
    }

    /// Starts it on `ip:port` (port 0: any).
    pub fn start_at(dir: &Path, name: &str, mode: &str, ip: [u8; 4], port: u16) -> PoolBackend {
        let log = dir.join(format!("{name}.log"));
        let mut child = Command::new("python3")
            .args(["-c", SERVER, mode, name])
            .arg(&log)
            .arg(port.to_string())
            .arg(std::net::Ipv4Addr::from(ip).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("backend prints its port");
        let port: u16 = line.trim().parse().expect("a port number");
        PoolBackend {
            addr: SocketAddr::from((ip, port)),
            name: name.to_string(),
            mode: mode.to_string(),
            log,
            child: Some(child),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests it read, one `METHOD PATH BODYLEN` line each
    /// (health checks left out).
    pub fn requests(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.contains("/healthz"))
            .map(str::to_string)
            .collect()
    }

    /// Each request's `PATH MIRROR PARTNER` (`-` for a header not sent),
    /// health checks left out.
    pub fn request_headers(&self) -> Vec<String> {
        std::fs::read_to_string(self.log.with_extension("log.headers"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with("/healthz"))
            .map(str::to_string)
            .collect()
    }

    /// The most requests it held at once (`sleep` mode).
    pub fn max_concurrent(&self) -> usize {
        std::fs::read_to_string(self.log.with_extension("log.max"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port, same mode, same log.
    pub fn restart(&mut self, dir: &Path) {
        self.kill();
        let ip = match self.addr.ip() {
            std::net::IpAddr::V4(v4) => v4.octets(),
            std::net::IpAddr::V6(_) => [127, 0, 0, 1],
        };
        let again = PoolBackend::start_at(dir, &self.name, &self.mode, ip, self.addr.port());
        self.child = Some(again.into_child());
    }

    fn into_child(mut self) -> Child {
        self.child.take().expect("running")
    }
}

impl Drop for PoolBackend {
    fn drop(&mut self) {
        self.kill();
    }
}
