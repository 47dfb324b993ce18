//! The broker driven by plain `curl`, as a partner would (skipped, with a
//! note, where curl is not installed).

use crate::common;

use std::process::Command;

use common::broker::TestHome;
use common::upstream::{EchoOptions, start_echo_upstream};

fn curl_available() -> bool {
    Command::new("curl")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_partner_certificate() {
    if !curl_available() {
        eprintln!("curl not installed: skipping");
        return;
    }
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("orders", &up);
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    let out = h.path().join("acme-files");
    h.ok(&["cert", "issue", "acme", "--out", out.to_str().unwrap()]);
    let broker = h.start();
    let url = format!("https://localhost:{}", broker.addr.port());
    let cert = out.join("acme.pem");
    let key = out.join("acme.key");
    let auth = [
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ];
    // curl blocks this worker; the echo upstream runs on the other one.
    let o = Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "10", "--cacert"])
        .arg(out.join("ca.pem"))
        .args(auth)
        .arg(format!("{url}/v1/orders/1"))
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["headers"]["x-gatehouse-partner"], "acme");
    // Over HTTP/2 too.
    let o = Command::new("curl")
        .args([
            "--silent",
            "--http2",
            "-w",
            "%{http_version} %{http_code}",
            "-o",
            "/dev/null",
            "--cacert",
        ])
        .arg(out.join("ca.pem"))
        .args(auth)
        .arg(format!("{url}/v1/other"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "2 403");
    // Without a certificate: 403 before any route, the upstream never asked.
    let calls = up.calls();
    let o = Command::new("curl")
        .args([
            "--silent",
            "--max-time",
            "10",
            "-w",
            "%{http_code}",
            "-o",
            "/dev/null",
            "--cacert",
        ])
        .arg(out.join("ca.pem"))
        .arg(format!("{url}/v1/orders/1"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "403");
    assert_eq!(up.calls(), calls);
}
