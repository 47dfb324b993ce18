//! Upstream pools with real backend processes: an endpoint killed under
//! keep-alive load, the retry rules for POST (never twice without
//! `Idempotency-Key`), a hanging endpoint, `max_in_flight` with its queue,
//! every endpoint down, and a reload that removes an endpoint while a
//! request is in flight on it.

use std::time::{Duration, Instant};

use http::Method;

use crate::common::client::{Conn, admin_get, get_once};
use crate::common::home::TestHome;
use crate::common::pool_backend::PoolBackend;

/// `[upstreams.<name>]` as a pool of `endpoints` with extra `keys` (TOML).
pub(crate) fn add_pool(h: &TestHome, name: &str, endpoints: &[String], keys: &str) {
    let list: Vec<String> = endpoints.iter().map(|e| format!("\"{e}\"")).collect();
    let table = format!(
        "[upstreams.{name}]\nendpoints = [{}]\nresponse_timeout = \"5s\"\nconnect_timeout = \"1s\"\nsigned_identity = false\n{keys}\n",
        list.join(", ")
    );
    let path = h.path().join("gatehouse.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push('\n');
    text.push_str(&table);
    std::fs::write(&path, text).unwrap();
}

/// The JSON `status` of the broker's admin listener.
pub(crate) async fn status(admin: std::net::SocketAddr) -> serde_json::Value {
    let (code, body) = admin_get(admin, "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// The state of `endpoint` of `upstream` in `status`.
pub(crate) async fn endpoint_state(
    admin: std::net::SocketAddr,
    upstream: &str,
    endpoint: &str,
) -> String {
    let s = status(admin).await;
    s["upstreams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|u| u["name"] == upstream)
        .flat_map(|u| u["endpoints"].as_array().cloned().unwrap_or_default())
        .find(|e| e["address"] == endpoint)
        .and_then(|e| e["state"].as_str().map(str::to_string))
        .unwrap_or_else(|| "absent".to_string())
}

pub(crate) async fn wait_state(
    admin: std::net::SocketAddr,
    upstream: &str,
    endpoint: &str,
    want: &str,
) -> bool {
    for _ in 0..100 {
        if endpoint_state(admin, upstream, endpoint).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn one_of_three_killed_under_keep_alive_load_is_ejected_retried_and_back_by_health_checks() {
    let h = TestHome::new();
    let dir = h.path().join("backends");
    std::fs::create_dir_all(&dir).unwrap();
    let mut b: Vec<PoolBackend> = (0..3)
        .map(|i| PoolBackend::start(&dir, &format!("b{i}"), "ok"))
        .collect();
    add_pool(
        &h,
        "orders",
        &b.iter().map(|x| x.url()).collect::<Vec<_>>(),
        // Round robin: the first request after the kill meets the dead
        // endpoint whatever the machine's speed (health checks would take
        // it out within about 3 s by themselves).
        "balance = \"round_robin\"\nretries = 2\nhealth = { path = \"/healthz\", interval = \"1s\", timeout = \"500ms\", healthy = 2, unhealthy = 3 }\noutlier = { consecutive_failures = 2, base_ejection = \"30s\", max_ejected_percent = 50 }",
    );
    h.add_partner("acme", &["GET /v1 -> orders"]);
    let acme = h.issue("acme");
    let broker = h.start();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(
            Conn::open(broker.addr, &h.ca_pem(), &acme, false)
                .await
                .unwrap(),
        );
    }
    let mut errors = 0;
    let mut served = 0;
    for round in 0..120 {
        if round == 30 {
            b[1].kill();
        }
        for c in clients.iter_mut() {
            let r = c.get("/v1/x").await.unwrap();
            if r.status == 200 {
                served += 1;
            } else {
                errors += 1;
            }
        }
    }
    assert_eq!(
        errors,
        0,
        "every request answered 200 ({served} served)\n{}",
        broker.log()
    );
    let killed = b[1].addr.to_string();
    let state = endpoint_state(broker.admin, "orders", &killed).await;
    assert!(state == "ejected" || state == "unhealthy", "{state}");
    // The retries are on record: some exchange took two attempts.
    let journal = h.journal();
    let retried = journal
        .iter()
        .filter(|r| r["attempts"].as_u64() == Some(2))
        .count();
    let attempts: Vec<String> = journal
        .iter()
        .filter(|r| r["attempts"].as_u64() != Some(1))
        .map(|r| {
            format!(
                "{} {} {}",
                r["attempts"], r["status"], r["upstream_endpoint"]
            )
        })
        .collect();
    assert!(
        retried >= 1,
        "some request was retried after the kill: {attempts:?} of {}\n{}",
        journal.len(),
        broker.log()
    );
    assert!(b[0].requests().len() > 40 && b[2].requests().len() > 40);
    let before = b[1].requests().len();
    b[1].restart(&dir);
    assert!(
        wait_state(broker.admin, "orders", &killed, "up").await,
        "back after health checks"
    );
    for _ in 0..30 {
        assert_eq!(clients[0].get("/v1/x").await.unwrap().status, 200);
    }
    assert!(b[1].requests().len() > before, "traffic goes to it again");
    let (_, metrics) = admin_get(broker.admin, "/metrics").await;
    assert!(
        metrics
            .contains("gatehouse_upstream_retries_total{upstream=\"orders\",reason=\"not_sent\"}")
            || metrics
                .contains("gatehouse_upstream_retries_total{upstream=\"orders\",reason=\"reset\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "gatehouse_upstream_endpoint_healthy{{upstream=\"orders\",endpoint=\"{killed}\"}} 1"
        )),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_post_is_never_sent_twice_without_an_idempotency_key() {
    let h = TestHome::new();
    let dir = h.path().join("backends");
    std::fs::create_dir_all(&dir).unwrap();
    let resets = PoolBackend::start(&dir, "resets", "reset");
    let ok = PoolBackend::start(&dir, "ok", "ok");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let keys = "balance = \"round_robin\"\nretries = 2\noutlier = { consecutive_failures = 100 }";
    add_pool(&h, "pay-plain", &[resets.url(), ok.url()], keys);
    add_pool(&h, "pay-keyed", &[resets.url(), ok.url()], keys);
    add_pool(
        &h,
        "pay-refused",
        &[format!("http://{closed}"), ok.url()],
        keys,
    );
    h.add_partner(
        "acme",
        &[
            "POST /plain -> pay-plain",
            "POST /keyed -> pay-keyed",
            "POST /refused -> pay-refused",
        ],
    );
    let acme = h.issue("acme");
    let broker = h.start();
    let mut c = Conn::open(broker.addr, &h.ca_pem(), &acme, false)
        .await
        .unwrap();
    let body = br#"{"amount":"10.00"}"#;

    let r = c.send(Method::POST, "/plain/pay", &[], body).await.unwrap();
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(resets.requests().len(), 1, "reached the upstreams once");
    assert_eq!(ok.requests().len(), 0, "and never a second endpoint");

    let mut c = Conn::open(broker.addr, &h.ca_pem(), &acme, false)
        .await
        .unwrap();
    let r = c
        .send(
            Method::POST,
            "/keyed/pay",
            &[("idempotency-key", "k-1")],
            body,
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body, "ok");
    assert_eq!(resets.requests().len(), 2);
    assert_eq!(
        ok.requests(),
        vec![format!("POST /keyed/pay {}", body.len())]
    );

    let r = c
        .send(Method::POST, "/refused/pay", &[], body)
        .await
        .unwrap();
    assert_eq!(
        r.status, 200,
        "refused at connect: retried on the other endpoint"
    );
    assert_eq!(ok.requests().len(), 2);
    let rec = h
        .wait_journal(5, |r| r["path"] == "/refused/pay")
        .await
        .expect("on record");
    assert_eq!(rec["attempts"], 2);
    assert_eq!(rec["upstream_endpoint"], ok.addr.to_string());
    assert_eq!(rec["v"], 2);
    docs_reference_checks_every_record(&h);
}

/// The Python reference in docs/journal.md recomputes the hash of every
/// exported record, version 1 and version 2 alike.
fn docs_reference_checks_every_record(h: &TestHome) {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/journal.md")).unwrap();
    let start = doc
        .find("```python\nimport hashlib")
        .expect("the reference is in the docs")
        + "```python\n".len();
    let code = &doc[start..start + doc[start..].find("```").unwrap()];
    let export = h.ok(&["log", "export", "--format", "jsonl"]);
    let v2 = export.lines().filter(|l| l.contains("\"v\":2")).count();
    assert!(v2 >= 3, "version 2 records are exported");
    let script = format!(
        "{code}\nimport sys\nn = 0\nfor line in sys.stdin:\n    r = json.loads(line)\n    if r.get('type') != 'record': continue\n    assert check(r), r\n    n += 1\nprint(n)\n"
    );
    let mut child = std::process::Command::new("python3")
        .args(["-c", &script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(export.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let checked: usize = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(checked >= 3, "{checked} records checked");
}

#[tokio::test]
async fn a_hanging_endpoint_times_out_per_try_is_retried_elsewhere_and_ejected() {
    let h = TestHome::new();
    let dir = h.path().join("backends");
    std::fs::create_dir_all(&dir).unwrap();
    let hang = PoolBackend::start(&dir, "hang", "hang");
    let ok = PoolBackend::start(&dir, "ok", "ok");
    add_pool(
        &h,
        "orders",
        &[hang.url(), ok.url()],
        "balance = \"round_robin\"\nretries = 1\nper_try_timeout = \"500ms\"\noutlier = { consecutive_failures = 1, base_ejection = \"30s\", max_ejected_percent = 50 }",
    );
    h.add_partner("acme", &["GET /v1 -> orders"]);
    let acme = h.issue("acme");
    let broker = h.start();
    let r = get_once(broker.addr, &h.ca_pem(), &acme, "/v1/a")
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(hang.requests().len(), 1);
    assert_eq!(ok.requests().len(), 1);
    assert_eq!(
        endpoint_state(broker.admin, "orders", &hang.addr.to_string()).await,
        "ejected"
    );
    for _ in 0..4 {
        let t = Instant::now();
        let r = get_once(broker.addr, &h.ca_pem(), &acme, "/v1/b")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert!(
            t.elapsed() < Duration::from_millis(450),
            "no wait on the ejected endpoint"
        );
    }
    assert_eq!(hang.requests().len(), 1, "ejected: no new request");
}

#[tokio::test]
async fn max_in_flight_caps_what_the_backend_sees_queues_the_rest_and_refuses_overflow() {
    let h = TestHome::new();
    let dir = h.path().join("backends");
    std::fs::create_dir_all(&dir).unwrap();
    let slow = PoolBackend::start(&dir, "slow", "sleep:2000");
    add_pool(
        &h,
        "legacy",
        &[slow.url()],
        "max_in_flight = 5\nqueue = { size = 5, timeout = \"4s\" }",
    );
    h.add_partner("acme", &["GET /v1 -> legacy"]);
    let acme = h.issue("acme");
    let broker = h.start();
    let spawn = |tasks: &mut Vec<_>| {
        let (addr, ca, cert) = (broker.addr, h.ca_pem(), acme.clone());
        tasks.push(tokio::spawn(async move {
            get_once(addr, &ca, &cert, "/v1/x").await
        }));
    };
    let mut tasks = Vec::new();
    for _ in 0..10 {
        spawn(&mut tasks);
    }
    // The overflow is sent once the broker holds five in flight and five
    // queued (its own gauges), however slowly the first ten got in.
    let mut gauges = String::new();
    let mut held = false;
    for _ in 0..250 {
        let (_, metrics) = admin_get(broker.admin, "/metrics").await;
        gauges = metrics
            .lines()
            .filter(|l| {
                l.starts_with("gatehouse_upstream_in_flight{")
                    || l.starts_with("gatehouse_upstream_queue_depth{")
            })
            .collect::<Vec<_>>()
            .join("\n");
        if gauges
            .lines()
            .filter(|l| l.contains("legacy"))
            .all(|l| l.ends_with(" 5"))
            && gauges.lines().filter(|l| l.contains("legacy")).count() == 2
        {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(held, "five in flight and five queued: {gauges}");
    for _ in 0..4 {
        spawn(&mut tasks);
    }
    let mut ok = 0;
    let mut saturated = 0;
    for t in tasks {
        let r = t.await.unwrap().unwrap();
        match r.status.as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(r.json()["error"], "upstream_saturated");
                assert!(r.headers.contains_key("retry-after"));
                saturated += 1;
            }
            s => panic!("unexpected {s}: {}", r.body),
        }
    }
    assert_eq!(
        slow.max_concurrent(),
        5,
        "the backend never saw more than 5 at once"
    );
    assert_eq!(ok, 10, "five at once, five from the queue");
    assert_eq!(saturated, 4, "the queue holds five: the rest is refused");
}

#[tokio::test]
async fn every_endpoint_down_is_a_fast_503_with_retry_after() {
    let h = TestHome::new();
    let closed: Vec<String> = (0..2)
        .map(|_| {
            let a = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap();
            format!("http://{a}")
        })
        .collect();
    add_pool(&h, "orders", &closed, "retries = 2");
    h.add_partner("acme", &["GET /v1 -> orders"]);
    let acme = h.issue("acme");
    let broker = h.start();
    let t = Instant::now();
    let r = get_once(broker.addr, &h.ca_pem(), &acme, "/v1/x")
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "within connect_timeout (1s), not a hang"
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "upstream_unavailable");
    assert!(r.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn a_reload_that_removes_an_endpoint_lets_its_request_finish_and_sends_no_new_one() {
    let h = TestHome::new();
    let dir = h.path().join("backends");
    std::fs::create_dir_all(&dir).unwrap();
    let slow = PoolBackend::start(&dir, "slow", "sleep:2000");
    let ok = PoolBackend::start(&dir, "ok", "ok");
    add_pool(
        &h,
        "orders",
        &[slow.url(), ok.url()],
        "balance = \"round_robin\"",
    );
    h.add_partner("acme", &["GET /v1 -> orders"]);
    let acme = h.issue("acme");
    let broker = h.start();
    let inflight = {
        let (addr, ca, cert) = (broker.addr, h.ca_pem(), acme.clone());
        tokio::spawn(async move { get_once(addr, &ca, &cert, "/v1/slow").await })
    };
    for _ in 0..50 {
        if !slow.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        slow.requests().len(),
        1,
        "the slow request is on the slow endpoint"
    );
    let ok_url = ok.url();
    h.edit_config(|d| {
        let mut a = toml_edit::Array::new();
        a.push(ok_url.as_str());
        d["upstreams"]["orders"]["endpoints"] = toml_edit::value(a);
    });
    crate::common::reload::reload_applies(&broker, &h, "upstreams.orders.endpoints").await;
    for _ in 0..6 {
        let r = get_once(broker.addr, &h.ca_pem(), &acme, "/v1/new")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "ok");
    }
    let r = inflight.await.unwrap().unwrap();
    assert_eq!(r.status, 200, "the in-flight request completed");
    assert_eq!(r.body, "slow");
    assert_eq!(
        slow.requests().len(),
        1,
        "no new request went to the removed endpoint"
    );
}

/// Names appended to `/etc/hosts` for one test; the file is cut back to
/// its length before them when dropped (a single truncate, so a reader sees
/// the file with or without them, never half of it).
pub(crate) struct HostsEntries {
    original_len: u64,
}

impl HostsEntries {
    /// Appends `lines`; `None` when `/etc/hosts` cannot be written here.
    pub(crate) fn add(lines: &[String]) -> Option<HostsEntries> {
        use std::io::Write;
        let original_len = std::fs::metadata("/etc/hosts").ok()?.len();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open("/etc/hosts")
            .ok()?;
        let mut text = String::new();
        // The file may not end with a newline.
        text.push('\n');
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        f.write_all(text.as_bytes()).ok()?;
        Some(HostsEntries { original_len })
    }

    /// Keeps only the first `n` of the appended lines.
    pub(crate) fn keep_first(&self, lines: &[String], n: usize) {
        let kept: usize = 1 + lines[..n].iter().map(|l| l.len() + 1).sum::<usize>();
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/etc/hosts") {
            let _ = f.set_len(self.original_len + kept as u64);
        }
    }
}

impl Drop for HostsEntries {
    fn drop(&mut self) {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open("/etc/hosts") {
            let _ = f.set_len(self.original_len);
        }
    }
}

/// A host name that resolves to two addresses (two `/etc/hosts` lines for
/// one name, 127.0.0.1 and 127.0.0.2) is two endpoints, both served; when
/// one address goes away, a DNS refresh drains it.
#[tokio::test]
async fn a_host_name_with_two_addresses_is_two_endpoints_and_a_vanished_address_drains() {
    let h = TestHome::new();
    let dir = h.path().join("backends");
    std::fs::create_dir_all(&dir).unwrap();
    let one = PoolBackend::start_at(&dir, "one", "ok", [127, 0, 0, 1], 0);
    let port = one.addr.port();
    let Ok(two) =
        std::panic::catch_unwind(|| PoolBackend::start_at(&dir, "two", "ok", [127, 0, 0, 2], port))
    else {
        eprintln!("skipped: 127.0.0.2 cannot be bound here");
        return;
    };
    let name = format!("gh-pool-{}.test", crate::common::process::rand_suffix());
    let lines = vec![format!("127.0.0.1 {name}"), format!("127.0.0.2 {name}")];
    let Some(hosts) = HostsEntries::add(&lines) else {
        eprintln!("skipped: /etc/hosts is not writable here");
        return;
    };
    add_pool(
        &h,
        "orders",
        &[format!("http://{name}:{port}")],
        "balance = \"round_robin\"\ndns_refresh = \"1s\"",
    );
    h.add_partner("acme", &["GET /v1 -> orders"]);
    let acme = h.issue("acme");
    let broker = h.start();
    let s = status(broker.admin).await;
    let eps = s["upstreams"][0]["endpoints"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(eps.len(), 2, "{s}");
    for _ in 0..6 {
        let r = get_once(broker.addr, &h.ca_pem(), &acme, "/v1/x")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(one.requests().len(), 3);
    assert_eq!(two.requests().len(), 3);
    hosts.keep_first(&lines, 1);
    let gone = two.addr.to_string();
    assert!(
        wait_state(broker.admin, "orders", &gone, "absent").await,
        "drained after a refresh"
    );
    for _ in 0..4 {
        let r = get_once(broker.addr, &h.ca_pem(), &acme, "/v1/y")
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        two.requests().len(),
        3,
        "no new request to the vanished address"
    );
    drop(hosts);
}

/// `gatehouse check` explains a pool written wrong, with file and line.
#[test]
fn check_explains_a_pool_written_wrong() {
    let h = TestHome::new();
    let path = h.path().join("gatehouse.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(
        "\n[upstreams.both]\nurl = \"http://127.0.0.1:1\"\nendpoints = [\"http://127.0.0.1:2\"]\n\n[upstreams.neither]\nbalance = \"round_robin\"\n\n[upstreams.mixed]\nendpoints = [\"http://127.0.0.1:3\", \"https://127.0.0.1:4\"]\nca = \"certs/x.pem\"\n\n[upstreams.bad]\nendpoints = [\"ftp://127.0.0.1:5\"]\nretries = 50\n",
    );
    std::fs::write(&path, text).unwrap();
    let out = h.run(&["check"]);
    assert!(!out.status.success());
    let err =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    for needle in [
        "[upstreams.both] has both `url` and `endpoints`",
        "[upstreams.neither] has no `url` and no `endpoints`",
        "[upstreams.mixed] mixes http:// and https://",
        "[upstreams.bad] endpoint `ftp://127.0.0.1:5` must start with http:// or https://",
        "[upstreams.bad] retries = 50 is more than 10",
    ] {
        assert!(err.contains(needle), "{needle}:\n{err}");
    }
    assert!(
        err.contains("gatehouse.toml:"),
        "with the file and line: {err}"
    );
}
