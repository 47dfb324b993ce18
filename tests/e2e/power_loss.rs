//! Power cuts under the journal, with LazyFS: a home's `data/` lives on a
//! file system that drops everything not fsynced on command. Over several
//! rounds, partners get answers from a real broker, the broker is killed
//! (`kill -9`), unsynced data is dropped, the file system is unmounted and
//! mounted again, and the journal is read back: every exchange a partner
//! saw complete is on record and `gatehouse log verify` passes. Torn writes
//! (LazyFS `torn-op`: one write of the journal's file half-persisted;
//! `torn-seq`: of consecutive writes, only a later one persisted) are
//! recovered the same way: the torn record is dropped, nothing answered is
//! lost.
//!
//! Needs root, `/dev/fuse` and LazyFS (`GATEHOUSE_LAZYFS`, built by
//! `.ci/run`); skipped with a line saying why elsewhere, failed in CI.

use crate::common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::broker::{Broker, ClientCert, Conn, TestHome, home_with_echo};
use common::faultfs::{LazyFs, lazyfs_bin};

/// Drives `conns` connections of GETs until `stop()` or `max` elapsed;
/// returns the request ids of the responses received complete with 200.
/// Each path carries `pad` extra bytes, which the journal records.
async fn drive(
    addr: SocketAddr,
    ca: &str,
    cert: &ClientCert,
    conns: usize,
    max: Duration,
    stop: Arc<dyn Fn() -> bool + Send + Sync>,
    pad: usize,
) -> Vec<String> {
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let until = Instant::now() + max;
    let mut tasks = Vec::new();
    for w in 0..conns {
        let (ca, cert, acked, stop) = (ca.to_string(), cert.clone(), acked.clone(), stop.clone());
        let padding = "p".repeat(pad);
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<Conn> = None;
            for i in 0..1_000_000u64 {
                if Instant::now() > until || stop() {
                    return;
                }
                if conn.is_none() {
                    conn = Conn::open(addr, &ca, &cert, w % 2 == 1).await.ok();
                }
                let Some(c) = conn.as_mut() else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let path = format!("/v1/orders/{w}-{i}{padding}");
                match tokio::time::timeout(Duration::from_secs(5), c.get(&path)).await {
                    Ok(Ok(r)) if r.status == 200 => {
                        let id = r.headers["x-request-id"].to_str().unwrap().to_string();
                        acked.lock().unwrap().push(id);
                    }
                    // 503 (journal failing), a cut-off response, a slow or a
                    // dead broker: not acknowledged; try again on a new
                    // connection until told to stop.
                    _ => {
                        conn = None;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = tokio::time::timeout(max + Duration::from_secs(10), t).await;
    }
    acked.lock().unwrap().clone()
}

/// After a cut: the journal read straight from the remounted files holds
/// every acknowledged request id, `log verify` passes, and sequence numbers
/// are dense.
fn check_journal(h: &TestHome, acked: &HashSet<String>, round: &str) {
    let verify = h.run(&["log", "verify", "--json"]);
    assert!(
        verify.status.success(),
        "{round}: log verify failed after the power cut: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    let records = h.journal();
    let ids: HashSet<&str> = records
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    let missing: Vec<&String> = acked
        .iter()
        .filter(|id| !ids.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{round}: {} of {} acknowledged exchanges missing after the power cut (e.g. {:?})",
        missing.len(),
        acked.len(),
        missing.first()
    );
    let seqs: Vec<u64> = records.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "{round}: sequence numbers not dense"
    );
    // The partner index (its entries are written behind the records, and
    // the records after its `indexed` mark are read from their segments)
    // finds every record of each partner that a scan finds, each once.
    let partners: HashSet<&str> = records
        .iter()
        .filter_map(|r| r["partner"].as_str())
        .collect();
    assert!(!partners.is_empty(), "{round}: no partner records");
    for p in partners {
        let want: Vec<u64> = records
            .iter()
            .filter(|r| r["partner"].as_str() == Some(p))
            .filter_map(|r| r["seq"].as_u64())
            .collect();
        let out = h.run(&[
            "log",
            "query",
            "--partner",
            p,
            "--limit",
            "1000000",
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{round}: log query --partner {p} failed"
        );
        let mut got: Vec<u64> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["seq"].as_u64())
            .collect();
        got.sort_unstable();
        assert!(
            got == want,
            "{round}: log query --partner {p} found {} records, the journal holds {}",
            got.len(),
            want.len()
        );
    }
}

fn kill_broker(mut b: Broker) {
    b.signal("KILL");
    assert!(b.wait_exit(10).is_some(), "broker did not die on SIGKILL");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_and_torn_writes_lose_no_acknowledged_exchange() {
    let Some(bin) = lazyfs_bin() else { return };
    let started = Instant::now();
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let ca = h.ca_pem();
    let work = tempfile::tempdir().unwrap();
    let data = h.path().join("data");
    let mut fs = LazyFs::new(&bin, work.path(), &data);
    fs.mount();
    let db = fs.root.join("journal").join("db");
    let mut acked: HashSet<String> = HashSet::new();
    let never: Arc<dyn Fn() -> bool + Send + Sync> = Arc::new(|| false);

    // Three plain power cuts under load.
    for round in 0..3 {
        let broker = h.start();
        let ids = drive(
            broker.addr,
            &ca,
            &acme,
            8,
            Duration::from_millis(1200),
            never.clone(),
            0,
        )
        .await;
        assert!(
            ids.len() > 20,
            "round {round}: too little load ({})",
            ids.len()
        );
        kill_broker(broker);
        fs.power_cut();
        fs.mount();
        acked.extend(ids);
        check_journal(&h, &acked, &format!("power cut {round}"));
    }

    // Torn writes: LazyFS persists part of the next write to the journal's
    // file (or, of consecutive writes, only a later one) and dies at once,
    // before that write returns: a power cut in the middle of a write.
    //
    // `torn-seq` counts the writes between two fsyncs. In strict mode each
    // group commit is one write and one fdatasync, so two writes in a row
    // come only when sled's 512 KiB log buffer fills mid-commit: that round
    // sends 4 KiB paths so the buffer fills every hundred-odd records, not
    // every thousand (which a slow machine may not reach in the 30 s).
    for (name, fault, pad) in [
        (
            "torn-op, first half persisted",
            format!("lazyfs::torn-op::file={}::parts=2::persist=1", db.display()),
            0,
        ),
        (
            "torn-op, second half persisted",
            format!("lazyfs::torn-op::file={}::parts=2::persist=2", db.display()),
            0,
        ),
        (
            "torn-seq, second of consecutive writes persisted",
            format!(
                "lazyfs::torn-seq::op=write::file={}::persist=2",
                db.display()
            ),
            4096,
        ),
    ] {
        let broker = h.start();
        // Some acknowledged traffic first, then arm the fault and keep going
        // until LazyFS dies (bounded).
        let ids = drive(
            broker.addr,
            &ca,
            &acme,
            4,
            Duration::from_millis(300),
            never.clone(),
            0,
        )
        .await;
        acked.extend(ids);
        let log_before = fs.log_text().len();
        fs.fault(&fault);
        let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let dead = dead.clone();
            let mut probe = LazyProbe(fs.child_id());
            std::thread::spawn(move || {
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(30) {
                    if !probe.alive() {
                        dead.store(true, std::sync::atomic::Ordering::SeqCst);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let d = dead.clone();
        let ids = drive(
            broker.addr,
            &ca,
            &acme,
            8,
            Duration::from_secs(30),
            Arc::new(move || d.load(std::sync::atomic::Ordering::SeqCst)),
            pad,
        )
        .await;
        let _ = watcher.join();
        assert!(
            !fs.alive(),
            "{name}: the fault never fired in 30 s: {}",
            fs.log_text()
        );
        let log = fs.log_text();
        let what: Vec<&str> = log[log_before.min(log.len())..]
            .lines()
            .filter(|l| l.contains("will persist") || l.contains("Going to persist"))
            .collect();
        eprintln!("power_loss: {name}: {} acknowledged; {what:?}", ids.len());
        kill_broker(broker);
        fs.power_cut();
        fs.mount();
        acked.extend(ids);
        check_journal(&h, &acked, name);
    }

    // And the broker carries on over the recovered journal.
    let mut broker = h.start();
    let ids = drive(
        broker.addr,
        &ca,
        &acme,
        2,
        Duration::from_millis(300),
        never.clone(),
        0,
    )
    .await;
    assert!(
        !ids.is_empty(),
        "no answer after recovery: {}",
        broker.log()
    );
    acked.extend(ids);
    broker.signal("TERM");
    assert!(broker.wait_exit(15).is_some_and(|s| s.success()));
    fs.power_cut();
    fs.mount();
    check_journal(&h, &acked, "after the last clean shutdown");
    fs.unmount();
    eprintln!(
        "power_loss: {} acknowledged exchanges over 6 cuts, none lost ({:.1} s)",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Watches a LazyFS process by pid (from another thread).
struct LazyProbe(u32);

impl LazyProbe {
    fn alive(&mut self) -> bool {
        // A zombie (dead, not yet reaped) counts as dead.
        std::fs::read_to_string(format!("/proc/{}/stat", self.0))
            .is_ok_and(|s| s.split_whitespace().nth(2).is_none_or(|st| st != "Z"))
    }
}

/// Runs the real binary on `home`; asserts success; returns stdout.
fn gatehouse(home: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new(common::broker::BIN)
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .expect("run gatehouse");
    assert!(
        out.status.success(),
        "gatehouse {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn what_the_cli_writes_survives_a_power_cut() {
    let Some(bin) = lazyfs_bin() else { return };
    // A whole home on LazyFS: keys, config, partner files, the inventory
    // and the CRL are all written by the CLI, each to a temporary file,
    // synced, renamed, folder synced.
    let work = tempfile::tempdir().unwrap();
    let mnt = work.path().join("mnt");
    let mut fs = LazyFs::new(&bin, work.path(), &mnt);
    fs.mount();
    let home = mnt.join("home");
    gatehouse(&home, &["init"]);
    // The operator's edit (an upstream for the route), synced by the test
    // itself: only what the CLI writes is under test.
    {
        use std::io::Write;
        let cfg = home.join("gatehouse.toml");
        let text = std::fs::read_to_string(&cfg).unwrap();
        let mut f = std::fs::File::create(&cfg).unwrap();
        f.write_all(
            format!("{text}\n[upstreams.orders]\nurl = \"http://127.0.0.1:9\"\n").as_bytes(),
        )
        .unwrap();
        f.sync_all().unwrap();
    }
    gatehouse(
        &home,
        &[
            "partner",
            "add",
            "acme",
            "--route",
            "GET /v1/orders -> orders",
        ],
    );
    let out = work.path().join("acme-files");
    gatehouse(
        &home,
        &["cert", "issue", "acme", "--out", out.to_str().unwrap()],
    );
    gatehouse(&home, &["cert", "revoke", "--partner", "acme"]);
    let crl_before = std::fs::read(home.join("certs/crl.pem")).unwrap();
    fs.power_cut();
    fs.mount();
    let show = gatehouse(&home, &["partner", "show", "acme"]);
    assert!(show.contains("/v1/orders"), "partner file lost: {show}");
    let list = gatehouse(&home, &["cert", "list", "--json"]);
    assert!(
        list.contains("revoked"),
        "the revocation was lost in the power cut: {list}"
    );
    assert_eq!(
        std::fs::read(home.join("certs/crl.pem")).unwrap(),
        crl_before,
        "the CRL was lost in the power cut"
    );
    for key in ["ca.key", "server.key", "journal-signing.key"] {
        let k = std::fs::read_to_string(home.join("certs").join(key)).unwrap();
        assert!(k.contains("PRIVATE KEY"), "{key} lost in the power cut");
    }
    fs.unmount();
}
