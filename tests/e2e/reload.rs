//! Live reload: a new route applies without a restart; a broken partner file
//! is refused with its file and line, and the old routes keep serving; SIGHUP
//! reloads at once; SIGTERM drains and exits 0.

use crate::common;

use std::time::Duration;

use common::broker::{Conn, TestHome, home_with_echo, start_slow_upstream};

#[tokio::test]
async fn a_broken_partner_file_keeps_the_old_routes_serving() {
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let broker = h.start();
    let ca = h.ca_pem();
    let mut c = Conn::open(broker.addr, &ca, &acme, false).await.unwrap();
    assert_eq!(c.get("/v1/invoices").await.unwrap().status, 403);

    // A valid change: grant /v1/invoices; it applies within a second.
    let p = h.path().join("partners/acme.toml");
    let good = std::fs::read_to_string(&p).unwrap();
    let granted = format!(
        "{good}\n[[routes]]\nmethods = [\"GET\"]\npath = \"/v1/invoices\"\nupstream = \"orders\"\n"
    );
    std::fs::write(&p, &granted).unwrap();
    let mut ok = false;
    for _ in 0..30 {
        if c.get("/v1/invoices").await.unwrap().status == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "new route not applied");

    // A broken change: refused, named with file and line; old routes stay.
    std::fs::write(
        &p,
        format!(
            "{granted}\n[[routes]]\nmethods = [\"GET\"]\npath = \"/v2\"\nupstream = \"nowhere\"\n"
        ),
    )
    .unwrap();
    assert!(broker.wait_log("acme.toml:", 5).await, "{}", broker.log());
    assert!(broker.log().contains("nowhere"));
    assert_eq!(c.get("/v1/orders").await.unwrap().status, 200);
    assert_eq!(c.get("/v1/invoices").await.unwrap().status, 200);
    assert_eq!(c.get("/v2").await.unwrap().status, 403);

    // Malformed TOML: same.
    std::fs::write(&p, "id = \"acme\"\nroutes = [[[\n").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(c.get("/v1/orders").await.unwrap().status, 200);
}

#[tokio::test]
async fn sighup_reloads_and_sigterm_drains_then_exits_zero() {
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let mut broker = h.start();
    broker.signal("HUP");
    assert!(
        broker.wait_log("configuration reloaded", 5).await,
        "{}",
        broker.log()
    );
    let mut c = Conn::open(broker.addr, &h.ca_pem(), &acme, false)
        .await
        .unwrap();
    assert_eq!(c.get("/v1/orders").await.unwrap().status, 200);
    broker.signal("TERM");
    let st = tokio::task::spawn_blocking(move || {
        let st = broker.wait_exit(15);
        (st, broker)
    })
    .await
    .unwrap();
    let status = st.0.expect("broker did not exit after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_before_exiting() {
    let h = TestHome::new();
    let slow_addr = start_slow_upstream(Duration::from_millis(1500), "done").await;
    h.add_upstream("slow", &format!("http://{slow_addr}"), None);
    h.add_partner("acme", &["GET /slow -> slow"]);
    let acme = h.issue("acme");
    let broker = h.start();
    let (addr, ca) = (broker.addr, h.ca_pem());
    let mut c = Conn::open(addr, &ca, &acme, false).await.unwrap();
    let inflight = tokio::spawn(async move { c.get("/slow").await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    broker.signal("TERM");
    let r = inflight
        .await
        .unwrap()
        .expect("the in-flight request was cut");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, "done");
    let mut broker = broker;
    let t = std::time::Instant::now();
    let (status, broker) = tokio::task::spawn_blocking(move || (broker.wait_exit(15), broker))
        .await
        .unwrap();
    assert!(status.expect("no exit").success());
    // Nothing else holds the drain up to its 10 s limit.
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "exit took {:?}: {}",
        t.elapsed(),
        broker.log()
    );
    // It no longer accepts.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
