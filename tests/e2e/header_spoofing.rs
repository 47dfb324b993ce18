//! Header spellings upstream frameworks fold into identity or routing:
//! partner-sent `X_Gatehouse_Partner`, `X-Forwarded_Client_Cert`,
//! `Client-Cert`, `X-HTTP-Method-Override`, `X-Original-URL`, … never reach
//! an upstream, in headers or in trailers. Proven against a Python
//! `http.server` upstream (which shows header names exactly as sent, and
//! the CGI/WSGI environ key each would become) and the echo upstream over
//! HTTP/2 (request trailers). Also: Content-Length with Transfer-Encoding is
//! re-framed and the connection closed; differing Content-Length spellings
//! over HTTP/2 get 400 `ambiguous_framing`.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::broker::{TestHome, raw_exchange};
use common::upstream::{EchoOptions, start_echo_upstream};

/// The spoofs a partner tries, in the spellings frameworks fold together.
const SPOOFS: &[(&str, &str)] = &[
    ("X_Gatehouse_Partner", "globex"),
    ("X-Gatehouse_Cert_Serial", "00"),
    ("x-gatehouse-identity", "forged"),
    (
        "X-Forwarded_Client_Cert",
        "Hash=evil;URI=spiffe://x/partner/globex",
    ),
    ("X_Forwarded_For", "6.6.6.6"),
    ("X-Forwarded-Host", "admin.internal"),
    ("Forwarded", "for=6.6.6.6"),
    ("X_Real_IP", "6.6.6.6"),
    ("Client-Cert", ":AAAA:"),
    ("Client_Cert_Chain", ":AAAA:"),
    ("X-HTTP-Method-Override", "DELETE"),
    ("X_HTTP_Method", "DELETE"),
    ("X-Method-Override", "DELETE"),
    ("X-Original-URL", "/admin"),
    ("X_Rewrite_URL", "/admin"),
    ("X-Request_Id", "forged"),
];

/// A plain-HTTP Python upstream answering every request with the header
/// names and values exactly as received, and the CGI environ they make.
const PY_UPSTREAM: &str = r#"
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        if n: self.rfile.read(n)
        env = {}
        for k, v in self.headers.items():
            env.setdefault("HTTP_" + k.upper().replace("-", "_"), v)
        body = json.dumps({"method": self.command, "path": self.path,
                           "headers": list(self.headers.items()), "environ": env}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_DELETE = answer
    def log_message(self, *a): pass
s = HTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

struct PyUpstream {
    child: Child,
    port: u16,
}

impl Drop for PyUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_python_upstream() -> PyUpstream {
    let mut child = Command::new("python3")
        .args(["-c", PY_UPSTREAM])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("python upstream port");
    PyUpstream { child, port }
}

fn folded(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_identity_method_and_path_headers_never_reach_a_python_upstream() {
    if !common::tools::have("python3") {
        return;
    }
    let py = start_python_upstream();
    let h = TestHome::new();
    h.add_upstream("orders", &format!("http://127.0.0.1:{}", py.port), None);
    h.add_partner("acme", &["POST /v1/orders -> orders"]);
    let acme = h.issue("acme");
    let broker = h.start();
    let mut req = String::from("POST /v1/orders HTTP/1.1\r\nhost: l\r\nconnection: close\r\n");
    for (k, v) in SPOOFS {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("X_Partner_Note: kept\r\ncontent-length: 2\r\n\r\n{}");
    let resp = raw_exchange(
        broker.addr,
        &h.ca_pem(),
        &acme,
        req.as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
    let seen: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(seen["method"], "POST", "method overridden: {seen}");
    assert_eq!(seen["path"], "/v1/orders");
    let headers: Vec<(String, String)> = seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_string(),
                p[1].as_str().unwrap().to_string(),
            )
        })
        .collect();
    // Every spoof is gone, in every spelling; the broker's own headers are
    // there once each, with the broker's values.
    for (k, _) in SPOOFS {
        let spoof = folded(k);
        let from_partner: Vec<_> = headers
            .iter()
            .filter(|(n, v)| folded(n) == spoof && SPOOFS.iter().any(|(_, sv)| sv == v))
            .collect();
        assert!(
            from_partner.is_empty(),
            "{k} reached the upstream: {headers:?}"
        );
    }
    for (name, want) in [
        ("x-gatehouse-partner", "acme"),
        ("x-gatehouse-cert-serial", acme.serial.as_str()),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "https"),
    ] {
        let got: Vec<_> = headers.iter().filter(|(n, _)| folded(n) == name).collect();
        assert_eq!(got.len(), 1, "{name}: {headers:?}");
        assert_eq!(
            got[0].1.to_ascii_lowercase(),
            want.to_ascii_lowercase(),
            "{name}"
        );
    }
    // What a CGI/WSGI/PHP/Rack application reads.
    let env = &seen["environ"];
    assert_eq!(env["HTTP_X_GATEHOUSE_PARTNER"], "acme", "{env}");
    assert_eq!(env["HTTP_X_FORWARDED_FOR"], "127.0.0.1", "{env}");
    assert!(
        env["HTTP_X_FORWARDED_CLIENT_CERT"]
            .as_str()
            .is_some_and(|v| v.starts_with("Hash=") && !v.contains("evil")),
        "{env}"
    );
    for key in [
        "HTTP_X_HTTP_METHOD_OVERRIDE",
        "HTTP_X_HTTP_METHOD",
        "HTTP_X_METHOD_OVERRIDE",
        "HTTP_X_ORIGINAL_URL",
        "HTTP_X_REWRITE_URL",
        "HTTP_CLIENT_CERT",
        "HTTP_CLIENT_CERT_CHAIN",
        "HTTP_FORWARDED",
        "HTTP_X_REAL_IP",
        "HTTP_X_FORWARDED_HOST",
    ] {
        assert!(env.get(key).is_none(), "{key} reached the upstream: {env}");
    }
    assert_eq!(env["HTTP_X_PARTNER_NOTE"], "kept", "{env}");
}

#[tokio::test]
async fn spoofs_in_request_trailers_are_dropped() {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("orders", &up);
    h.add_partner("acme", &["POST /v1/orders -> orders"]);
    let acme = h.issue("acme");
    let broker = h.start();
    let mut req = String::from(
        "POST /v1/orders HTTP/1.1\r\nhost: l\r\nconnection: close\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n5\r\nhello\r\n0\r\n",
    );
    for (k, v) in SPOOFS {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("x-checksum: abc123\r\ncontent-length: 99\r\n\r\n");
    let resp = raw_exchange(
        broker.addr,
        &h.ca_pem(),
        &acme,
        req.as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["body_bytes"], 5);
    let trailers = seen[0]["trailers"].as_object().unwrap();
    // The legitimate trailer arrives (the broker speaks HTTP/2 to this
    // upstream, where trailers need no declaration); nothing else does.
    assert_eq!(
        trailers.get("x-checksum").and_then(|v| v.as_str()),
        Some("abc123"),
        "{trailers:?}"
    );
    assert_eq!(trailers.len(), 1, "{trailers:?}");
    assert_eq!(seen[0]["headers"]["x-gatehouse-partner"], "acme");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_reframed_and_the_connection_closed() {
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("orders", &up);
    h.add_partner(
        "acme",
        &["POST /v1/orders -> orders", "GET /v1/secret -> orders"],
    );
    let acme = h.issue("acme");
    let broker = h.start();
    // No `connection: close` from the partner: the broker closes by itself
    // (RFC 9112 §6.1), so a smuggled second request is never read.
    let smuggle = b"POST /v1/orders HTTP/1.1\r\nhost: l\r\ncontent-length: 30\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /v1/secret HTTP/1.1\r\nhost: l\r\n\r\n";
    let t = Instant::now();
    let resp = raw_exchange(
        broker.addr,
        &h.ca_pem(),
        &acme,
        smuggle,
        Duration::from_secs(8),
    )
    .await;
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the connection stayed open after the answer: {resp}"
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert_eq!(resp.matches("HTTP/1.1 ").count(), 1, "{resp}");
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["path"], "/v1/orders");
    assert_eq!(
        seen[0]["body_bytes"], 5,
        "re-framed by the chunked encoding"
    );
    assert!(
        seen[0]["headers"]
            .get("content-length")
            .is_none_or(|v| v == "5"),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differing_content_length_spellings_over_http2_get_400_ambiguous_framing() {
    if !common::tools::have("curl") {
        return;
    }
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("orders", &up);
    h.add_partner("acme", &["POST /v1/orders -> orders"]);
    let out = h.path().join("acme-files");
    h.ok(&["cert", "issue", "acme", "--out", out.to_str().unwrap()]);
    let broker = h.start();
    let url = format!("https://localhost:{}/v1/orders", broker.addr.port());
    let curl = |lengths: &'static [&'static str]| {
        let out = out.clone();
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = Command::new("curl");
            c.args(["--silent", "--http2", "--max-time", "10"])
                .args(["-w", "%{http_version} %{http_code}", "-o", "/dev/null"])
                .arg("--cacert")
                .arg(out.join("ca.pem"))
                .arg("--cert")
                .arg(out.join("acme.pem"))
                .arg("--key")
                .arg(out.join("acme.key"))
                .args(["--data-binary", "hello"]);
            for l in lengths {
                c.args(["-H", &format!("content-length: {l}")]);
            }
            let o = c.arg(url).output().unwrap();
            String::from_utf8_lossy(&o.stdout).into_owned()
        })
    };
    // `5` and `05`: HTTP/2 takes them as one length; the broker does not.
    assert_eq!(curl(&["5", "05"]).await.unwrap(), "2 400");
    assert_eq!(
        up.calls.load(Ordering::SeqCst),
        0,
        "relayed: {:?}",
        up.seen()
    );
    let rec = h
        .wait_journal(5, |r| r["reason"] == "ambiguous_framing")
        .await;
    assert!(rec.is_some(), "no ambiguous_framing record");
    // The same length twice is one length: relayed once, as one header.
    assert_eq!(curl(&["5", "5"]).await.unwrap(), "2 200");
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["headers"]["content-length"], "5", "{seen:?}");
    assert_eq!(seen[0]["body_bytes"], 5);
}
