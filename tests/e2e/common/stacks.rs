//! The client stacks partners actually use, driven as separate processes:
//! `curl` (OpenSSL), Python `ssl` + `urllib`, Node.js `https`, Java
//! `HttpClient` with a PKCS#12 keystore, and Go `net/http` (strict path
//! length and EKU checks). Each makes one GET with the partner's files and
//! reports the HTTP status and body, or the client's own error text.
//!
//! A client whose tool is missing is skipped with a printed line; with
//! `CI=true` a missing tool fails the test instead (`.ci/run` installs them).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// One client stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Client {
    Curl,
    Python,
    Node,
    Java,
    Go,
}

pub const ALL: [Client; 5] = [
    Client::Curl,
    Client::Python,
    Client::Node,
    Client::Java,
    Client::Go,
];

impl Client {
    pub fn name(self) -> &'static str {
        match self {
            Client::Curl => "curl (OpenSSL)",
            Client::Python => "Python ssl",
            Client::Node => "Node.js https",
            Client::Java => "Java HttpClient (PKCS#12)",
            Client::Go => "Go net/http",
        }
    }
    fn tool(self) -> &'static str {
        match self {
            Client::Curl => "curl",
            Client::Python => "python3",
            Client::Node => "node",
            Client::Java => "java",
            Client::Go => "go",
        }
    }
}

/// A partner's files as `cert issue --out DIR --p12` wrote them.
#[derive(Debug, Clone)]
pub struct PartnerFiles {
    /// The root(s) to trust.
    pub ca: PathBuf,
    /// Leaf + issuing CA.
    pub cert: PathBuf,
    pub key: PathBuf,
    pub p12: PathBuf,
    pub p12_pass: PathBuf,
}

impl PartnerFiles {
    /// The files of partner `id` in `dir`.
    pub fn in_dir(dir: &Path, id: &str) -> PartnerFiles {
        PartnerFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{id}.pem")),
            key: dir.join(format!("{id}.key")),
            p12: dir.join(format!("{id}.p12")),
            p12_pass: dir.join(format!("{id}.p12.pass")),
        }
    }
    /// The same credentials, trusting `ca` instead.
    pub fn trusting(&self, ca: &Path) -> PartnerFiles {
        PartnerFiles {
            ca: ca.to_path_buf(),
            ..self.clone()
        }
    }
}

/// Whether `tool` runs here. When it does not: `Err` in CI, else a printed
/// line and `Ok(false)`.
pub fn available(client: Client) -> bool {
    let ok = Command::new(client.tool())
        .arg(if client == Client::Go {
            "version"
        } else {
            "--version"
        })
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "{} is not installed, and CI must run every client stack (.ci/run installs it)",
                client.tool()
            );
        }
        println!(
            "interop: {} not installed: skipping the {} client",
            client.tool(),
            client.name()
        );
    }
    ok
}

/// A response: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("gatehouse-interop-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("interop scratch dir");
        d
    })
}

fn write_program(name: &str, text: &str) -> PathBuf {
    let p = scratch().join(name);
    if !p.exists() {
        let tmp = scratch().join(format!(".{name}.{:?}", std::thread::current().id()));
        std::fs::write(&tmp, text).expect("write client program");
        std::fs::rename(&tmp, &p).expect("rename client program");
    }
    p
}

const PYTHON: &str = r#"
import ssl, sys, urllib.request, urllib.error
ca, cert, key, url = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
ctx.load_cert_chain(cert, key)
try:
    r = urllib.request.urlopen(url, context=ctx, timeout=10)
    status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
print(status)
print(body.decode())
"#;

const NODE: &str = r#"
const https = require('https'), fs = require('fs');
const [ca, cert, key, url] = process.argv.slice(2);
const req = https.get(url, { ca: fs.readFileSync(ca), cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, res => {
  let b = '';
  res.setEncoding('utf8');
  res.on('data', d => b += d);
  res.on('end', () => { console.log(res.statusCode); console.log(b); });
});
req.setTimeout(10000, () => req.destroy(new Error('timeout')));
req.on('error', e => { console.error(e.code || '', e.message); process.exit(2); });
"#;

const JAVA: &str = r#"
import java.io.FileInputStream;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.time.Duration;
import javax.net.ssl.KeyManagerFactory;
import javax.net.ssl.SSLContext;
import javax.net.ssl.TrustManagerFactory;

public class Interop {
    public static void main(String[] a) throws Exception {
        String ca = a[0], p12 = a[1], url = a[3];
        char[] pass = Files.readString(Path.of(a[2])).trim().toCharArray();
        KeyStore ks = KeyStore.getInstance("PKCS12");
        try (var in = new FileInputStream(p12)) { ks.load(in, pass); }
        KeyManagerFactory kmf = KeyManagerFactory.getInstance(KeyManagerFactory.getDefaultAlgorithm());
        kmf.init(ks, pass);
        KeyStore ts = KeyStore.getInstance(KeyStore.getDefaultType());
        ts.load(null, null);
        int i = 0;
        try (var in = new FileInputStream(ca)) {
            for (Certificate c : CertificateFactory.getInstance("X.509").generateCertificates(in)) {
                ts.setCertificateEntry("root" + (i++), c);
            }
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance(TrustManagerFactory.getDefaultAlgorithm());
        tmf.init(ts);
        SSLContext ctx = SSLContext.getInstance("TLS");
        ctx.init(kmf.getKeyManagers(), tmf.getTrustManagers(), null);
        HttpClient client = HttpClient.newBuilder().sslContext(ctx).connectTimeout(Duration.ofSeconds(10)).build();
        HttpResponse<String> r = client.send(
            HttpRequest.newBuilder(URI.create(url)).timeout(Duration.ofSeconds(10)).GET().build(),
            HttpResponse.BodyHandlers.ofString());
        System.out.println(r.statusCode());
        System.out.println(r.body());
    }
}
"#;

const GO: &str = r#"
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	ca, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		fmt.Fprintln(os.Stderr, "no certificate in", os.Args[1])
		os.Exit(2)
	}
	cert, err := tls.LoadX509KeyPair(os.Args[2], os.Args[3])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}},
		ForceAttemptHTTP2: true,
	}}
	r, err := c.Get(os.Args[4])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	b, _ := io.ReadAll(r.Body)
	fmt.Println(r.StatusCode)
	fmt.Println(string(b))
}
"#;

/// The Go client, built once per test run (the module and build caches
/// live in a temp dir kept between runs, so only the first run compiles
/// the standard library).
fn go_binary() -> Result<PathBuf, String> {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| {
        let cache = std::env::temp_dir().join("gatehouse-interop-go");
        let src_dir = scratch().join("goclient");
        std::fs::create_dir_all(&src_dir).map_err(|e| e.to_string())?;
        std::fs::write(src_dir.join("main.go"), GO).map_err(|e| e.to_string())?;
        let bin = src_dir.join("goclient");
        let out = Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&bin)
            .arg("main.go")
            .current_dir(&src_dir)
            .env("GOCACHE", cache.join("cache"))
            .env("GOPATH", cache.join("gopath"))
            .env("GOTOOLCHAIN", "local")
            .env("GO111MODULE", "off")
            .env("CGO_ENABLED", "0")
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "go build failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(bin)
    })
    .clone()
}

/// Runs `client` for one GET of `url` with `files`; blocking (run it on a
/// blocking thread). `Err` carries the client's own words.
pub fn get(client: Client, files: &PartnerFiles, url: &str) -> Result<Answer, String> {
    let s = |p: &Path| p.to_string_lossy().into_owned();
    let mut cmd = match client {
        Client::Curl => {
            let mut c = Command::new("curl");
            c.args(["--silent", "--show-error", "--max-time", "10", "--cacert"])
                .arg(&files.ca)
                .arg("--cert")
                .arg(&files.cert)
                .arg("--key")
                .arg(&files.key)
                .args(["--write-out", "\n%{http_code}"])
                .arg(url);
            c
        }
        Client::Python => {
            let mut c = Command::new("python3");
            c.arg(write_program("client.py", PYTHON))
                .args([s(&files.ca), s(&files.cert), s(&files.key)])
                .arg(url);
            c
        }
        Client::Node => {
            let mut c = Command::new("node");
            c.arg(write_program("client.js", NODE))
                .args([s(&files.ca), s(&files.cert), s(&files.key)])
                .arg(url);
            c
        }
        Client::Java => {
            let mut c = Command::new("java");
            c.arg(write_program("Interop.java", JAVA))
                .args([s(&files.ca), s(&files.p12), s(&files.p12_pass)])
                .arg(url);
            c
        }
        Client::Go => {
            let mut c = Command::new(go_binary()?);
            c.args([s(&files.ca), s(&files.cert), s(&files.key)])
                .arg(url);
            c
        }
    };
    let out = run_bounded(&mut cmd, Duration::from_secs(60))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{} failed ({}): {}{}",
            client.name(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            stdout.trim()
        ));
    }
    let (status, body) = if client == Client::Curl {
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
        (code.trim().to_string(), body.to_string())
    } else {
        let (code, body) = stdout.split_once('\n').unwrap_or((&stdout, ""));
        (code.trim().to_string(), body.to_string())
    };
    let status = status
        .parse()
        .map_err(|_| format!("{}: no status in its output: {stdout}", client.name()))?;
    Ok(Answer { status, body })
}

/// Runs a command with a deadline (killed past it).
fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<std::process::Output, String> {
    use std::process::Stdio;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                let _ = child.kill();
                break;
            }
        }
    }
    child
        .wait_with_output()
        .map_err(|e| format!("waiting for {cmd:?}: {e}"))
}
