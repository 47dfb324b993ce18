//! Paths that servlet containers (Tomcat, Jetty, Spring) and lenient
//! decoders normalise differently: `..;/`, double-encoded and overlong
//! dots, fullwidth dots. Sent byte for byte over a raw TLS connection and by
//! curl with `--path-as-is`; each gets 400 and the upstream sees nothing.

use crate::common;

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::broker::{Conn, home_with_echo, raw_exchange};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_in_servlet_spellings_get_400_and_never_reach_the_upstream() {
    let (h, up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let broker = h.start();
    let ca = h.ca_pem();
    let targets = [
        "/v1/orders/..;/admin",
        "/v1/orders/.;/admin",
        "/v1/orders/..;jsessionid=1/admin",
        "/v1/orders/%2e%2e;x/admin",
        "/v1/orders/%2E.;/admin",
        "/v1/orders/..%3b/admin",
        "/v1/orders/%252e%252e/admin",
        "/v1/orders/%c0%ae%c0%ae/admin",
        "/v1/orders/%e0%80%ae./admin",
        "/v1/orders/%ef%bc%8e%ef%bc%8e/admin",
        "/v1/orders/%252fadmin",
        "/v1/orders/;/admin",
    ];
    for t in targets {
        let req = format!("GET {t} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
        let resp = raw_exchange(
            broker.addr,
            &ca,
            &acme,
            req.as_bytes(),
            Duration::from_secs(5),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{t}: {resp}");
    }
    // The fullwidth dot sent raw (UTF-8 bytes on the wire): hyper or the
    // target check refuses it.
    let raw =
        "GET /v1/orders/\u{ff0e}\u{ff0e}/admin HTTP/1.1\r\nhost: l\r\nconnection: close\r\n\r\n";
    let resp = raw_exchange(
        broker.addr,
        &ca,
        &acme,
        raw.as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "raw U+FF0E: {resp}");

    // curl, as a partner's script would send it.
    if common::tools::have("curl") {
        let dir = h.path().join("acme-curl");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("acme.pem"), &acme.cert_pem).unwrap();
        std::fs::write(dir.join("acme.key"), &acme.key_pem).unwrap();
        std::fs::write(dir.join("ca.pem"), &ca).unwrap();
        for t in ["/v1/orders/..;/admin", "/v1/orders/%2e%2e;x/admin"] {
            let url = format!("https://localhost:{}{t}", broker.addr.port());
            let dir = dir.clone();
            let out = tokio::task::spawn_blocking(move || {
                Command::new("curl")
                    .args(["--silent", "--path-as-is", "--max-time", "10"])
                    .args(["-w", "%{http_code}", "-o", "/dev/null", "--cacert"])
                    .arg(dir.join("ca.pem"))
                    .arg("--cert")
                    .arg(dir.join("acme.pem"))
                    .arg("--key")
                    .arg(dir.join("acme.key"))
                    .arg(url)
                    .output()
                    .unwrap()
            })
            .await
            .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), "400", "curl {t}");
        }
    }
    assert_eq!(
        up.calls.load(Ordering::SeqCst),
        0,
        "a dot-segment spelling reached the upstream: {:?}",
        up.seen()
    );
    // The refusals are on record with their reason.
    let refused = h
        .journal()
        .into_iter()
        .filter(|r| r["reason"] == "dot_segment" && r["status"] == 400)
        .count();
    assert!(refused >= 10, "{refused} dot_segment records");
    // Legitimate parameters and dotted names still pass.
    let mut c = Conn::open(broker.addr, &ca, &acme, false).await.unwrap();
    for ok in ["/v1/orders/7;v=2", "/v1/orders/a.b", "/v1/orders/..."] {
        let r = c.get(ok).await.unwrap();
        assert_eq!(r.status, 200, "{ok}: {}", r.body);
        assert_eq!(r.json()["path"], ok);
    }
}
