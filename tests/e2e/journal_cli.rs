//! `gatehouse log ...` as an operator runs it: the built binary against a
//! home made by `gatehouse init`, first with the broker stopped (the CLI
//! opens the database), then with a journal serving the admin socket (the
//! database is locked, so every answer must come through the socket).

use crate::journal_support;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::home::{ok_in, run_in};
use gatehouse::control::socket::serve_admin_socket;
use gatehouse::home::Home;
use gatehouse::journal::Journal;
use journal_support::*;

const T0: i64 = 1_800_000_000_000;

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// 40 records (acme, globex, none by turns; one per second from T0),
/// checkpoints every 15 and at shutdown.
fn fill_journal(home: &Home) -> Journal {
    let j = Journal::open(home, &settings(15)).unwrap();
    fill(
        &j,
        (0..40)
            .map(|i| {
                let p = [Some("acme"), Some("globex"), None][i % 3];
                exchange(p, T0 + i as i64 * 1000, if i % 4 == 0 { 403 } else { 200 })
            })
            .collect(),
    );
    j
}

/// The checks both modes must pass; `base` is the home's state.
fn check_reads(home: &Home) {
    let tail = json_lines(&ok_in(home.root(), &["log", "tail", "-n", "3", "--json"]));
    let seqs: Vec<u64> = tail.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![38, 39, 40]);
    assert_eq!(tail[0]["type"], "record");

    let human = ok_in(home.root(), &["log", "tail", "-n", "2"]);
    assert_eq!(human.lines().count(), 2, "{human}");
    assert!(human.contains("/v1/orders/"), "{human}");

    let since = gatehouse::journal::fmt_time_ms(T0 + 9_000);
    let until = gatehouse::journal::fmt_time_ms(T0 + 21_000);
    let q = json_lines(&ok_in(
        home.root(),
        &[
            "log",
            "query",
            "--partner",
            "acme",
            "--since",
            &since,
            "--until",
            &until,
            "--json",
        ],
    ));
    let seqs: Vec<u64> = q.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        vec![10, 13, 16, 19],
        "acme is i % 3 == 0, seq = i + 1"
    );
    let denied = json_lines(&ok_in(
        home.root(),
        &[
            "log",
            "query",
            "--partner",
            "acme",
            "--decision",
            "denied",
            "--json",
        ],
    ));
    assert!(
        denied
            .iter()
            .all(|v| v["decision"] == "denied" && v["partner"] == "acme")
    );
    assert_eq!(denied.len(), 4, "i in 0,12,24,36");
    let limited = json_lines(&ok_in(
        home.root(),
        &["log", "query", "--status", "200", "--limit", "5", "--json"],
    ));
    assert_eq!(limited.len(), 5);
    // Newest first, by partner (the index) and over everything (a scan).
    let newest = json_lines(&ok_in(
        home.root(),
        &[
            "log",
            "query",
            "--partner",
            "acme",
            "--reverse",
            "--limit",
            "2",
            "--json",
        ],
    ));
    let seqs: Vec<u64> = newest.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![40, 37]);
    let newest = json_lines(&ok_in(
        home.root(),
        &[
            "log",
            "query",
            "--kind",
            "exchange",
            "--reverse",
            "--limit",
            "1",
            "--json",
        ],
    ));
    assert_eq!(newest[0]["seq"], 40);
    let alerts = ok_in(home.root(), &["log", "query", "--kind", "alert", "--json"]);
    assert!(alerts.trim().is_empty(), "no alert was recorded: {alerts}");

    let export = json_lines(&ok_in(home.root(), &["log", "export", "--format", "jsonl"]));
    let records = export.iter().filter(|v| v["type"] == "record").count();
    let ckpts: Vec<u64> = export
        .iter()
        .filter(|v| v["type"] == "checkpoint")
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(records, 40);
    assert_eq!(&ckpts[..2], &[15, 30]);
    // A checkpoint line follows the record it covers.
    let pos = export
        .iter()
        .position(|v| v["type"] == "checkpoint")
        .unwrap();
    assert_eq!(export[pos - 1]["seq"], 15);
    let resumed = json_lines(&ok_in(
        home.root(),
        &["log", "export", "--format", "jsonl", "--after-seq", "35"],
    ));
    assert_eq!(resumed[0]["seq"], 36);
    assert_eq!(resumed.iter().filter(|v| v["type"] == "record").count(), 5);

    let v = ok_in(home.root(), &["log", "verify"]);
    assert!(v.starts_with("ok:"), "{v}");
}

/// The 40 events of `fill_journal`, for a journal written another way.
fn journal_events() -> Vec<gatehouse::event::Event> {
    (0..40)
        .map(|i| {
            let p = [Some("acme"), Some("globex"), None][i % 3];
            exchange(p, T0 + i as i64 * 1000, if i % 4 == 0 { 403 } else { 200 })
        })
        .collect()
}

#[test]
fn a_journal_of_the_older_layout_is_migrated_and_reads_verify_and_export_as_before() {
    let (_d, home) = init_home();
    // One sled value per record, as the journal stored it before segments.
    let hashes = write_records_layout(&home, &journal_events(), 15);
    check_reads(&home);
    let export = json_lines(&ok_in(home.root(), &["log", "export", "--format", "jsonl"]));
    let got: Vec<String> = export
        .iter()
        .filter(|v| v["type"] == "record")
        .map(|v| v["hash"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = hashes.iter().map(hex::encode).collect();
    assert_eq!(got, want, "every record keeps its hash");
    assert_eq!(export.last().unwrap()["seq"], 40);
    // The broker's journal opens it and chains on.
    let j = Journal::open(&home, &settings(15)).unwrap();
    assert_eq!(
        fill(&j, vec![exchange(Some("acme"), T0 + 50_000, 200)]),
        vec![41]
    );
    j.shutdown().unwrap();
    drop(j);
    let v = ok_in(home.root(), &["log", "verify"]);
    assert!(v.starts_with("ok:") && v.contains("41"), "{v}");
}

/// Every file in the journal's sled folder: name → bytes.
fn sled_files(home: &Home) -> std::collections::BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(home.journal_db())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn log_commands_work_on_a_stopped_broker() {
    let (_d, home) = init_home();
    let j = fill_journal(&home);
    j.shutdown().unwrap();
    drop(j);
    // The reading commands open the database read-only: not one byte of
    // sled's folder changes (a read-write open writes a snapshot and
    // zeroes sled's free log space).
    let files_before = sled_files(&home);
    check_reads(&home);
    let export = json_lines(&ok_in(home.root(), &["log", "export", "--format", "jsonl"]));
    assert_eq!(export.last().unwrap()["kind"], "shutdown");
    ok_in(home.root(), &["log", "verify"]);
    assert!(
        sled_files(&home) == files_before,
        "a reading log command changed the journal's files"
    );

    // Prune, then verify still passes.
    let before = gatehouse::journal::fmt_time_ms(T0 + 20_000);
    let p = ok_in(home.root(), &["log", "prune", "--before", &before]);
    assert!(p.contains("pruned 20 record(s)"), "{p}");
    let v = ok_in(home.root(), &["log", "verify"]);
    assert!(v.contains("records 21..=40"), "{v}");

    // Tamper through sled: verify exits non-zero naming the seq.
    tamper_record(&home, 27, |val| {
        let n = val.len();
        val[n - 4] ^= 2;
    });
    let out = run_in(home.root(), &["log", "verify"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FAILED at seq 27"), "{err}");
}

#[test]
fn log_on_a_home_without_a_journal_says_so() {
    let (_d, home) = init_home();
    let out = run_in(home.root(), &["log", "tail"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no journal"));
}

#[test]
fn log_commands_go_through_the_admin_socket_of_a_running_broker() {
    let (_d, home) = init_home();
    let j = fill_journal(&home);
    let rt = rt();
    // A stale socket file from a crashed broker is replaced.
    drop(std::os::unix::net::UnixListener::bind(home.admin_socket()).unwrap());
    assert!(home.admin_socket().exists());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(serve_admin_socket(
        home.admin_socket(),
        j.clone(),
        Default::default(),
        async {
            let _ = stop_rx.await;
        },
    ));
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(home.admin_socket()).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "socket never came up"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let mode = std::fs::metadata(home.admin_socket())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");
    // The database is locked by this process: direct access would fail,
    // so these answers came through the socket.
    assert!(gatehouse::journal::Store::open(&home.journal_db()).is_err());
    check_reads(&home);

    // export --follow streams records written after it started.
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("--home")
        .arg(home.root())
        .args([
            "log",
            "export",
            "--format",
            "jsonl",
            "--after-seq",
            "40",
            "--follow",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    std::thread::sleep(Duration::from_millis(200));
    fill(&j, vec![exchange(Some("acme"), T0 + 99_000, 201)]);
    let line: serde_json::Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (line["seq"].as_u64(), line["status"].as_u64()),
        (Some(41), Some(201))
    );
    child.kill().unwrap();
    child.wait().unwrap();

    // Prune through the socket (the broker signs the anchor).
    let before = gatehouse::journal::fmt_time_ms(T0 + 10_000);
    let p = ok_in(home.root(), &["log", "prune", "--before", &before]);
    assert!(p.contains("pruned 10 record(s)"), "{p}");
    let v = ok_in(home.root(), &["log", "verify", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&v).unwrap();
    assert_eq!(
        (
            v["ok"].as_bool(),
            v["base_seq"].as_u64(),
            v["last_seq"].as_u64()
        ),
        (Some(true), Some(10), Some(41))
    );

    // A broken request gets an error line, not a hang.
    {
        use std::io::Write;
        let mut s = std::os::unix::net::UnixStream::connect(home.admin_socket()).unwrap();
        s.write_all(b"{\"op\":\"drop_table\"}\n").unwrap();
        let mut l = String::new();
        BufReader::new(&s).read_line(&mut l).unwrap();
        assert!(l.contains("\"type\":\"error\""), "{l}");
    }

    stop_tx.send(()).unwrap();
    rt.block_on(server).unwrap().unwrap();
    assert!(!home.admin_socket().exists(), "socket removed at shutdown");
    j.shutdown().unwrap();
}

#[test]
fn following_a_stopped_broker_does_not_keep_it_from_starting() {
    let (_d, home) = init_home();
    let j = fill_journal(&home);
    j.shutdown().unwrap();
    drop(j);
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("--home")
        .arg(home.root())
        .args([
            "log",
            "export",
            "--format",
            "jsonl",
            "--after-seq",
            "38",
            "--follow",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next =
        || -> serde_json::Value { serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap() };
    assert_eq!(next()["seq"], 39);
    assert_eq!(next()["seq"], 40);
    assert_eq!(next()["kind"], "shutdown", "checkpoint at 40");
    // The broker starts while the follower runs: it can open the database.
    let j = Journal::open(&home, &settings(15)).unwrap();
    let rt = rt();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(serve_admin_socket(
        home.admin_socket(),
        j.clone(),
        Default::default(),
        async {
            let _ = stop_rx.await;
        },
    ));
    fill(&j, vec![exchange(Some("acme"), T0 + 77_000, 202)]);
    let v = next();
    assert_eq!(
        (v["seq"].as_u64(), v["status"].as_u64()),
        (Some(41), Some(202))
    );
    fill(&j, vec![exchange(Some("acme"), T0 + 78_000, 204)]);
    assert_eq!(next()["seq"], 42);
    child.kill().unwrap();
    child.wait().unwrap();
    stop_tx.send(()).unwrap();
    rt.block_on(server).unwrap().unwrap();
    j.shutdown().unwrap();
}

#[test]
fn export_with_a_cursor_resumes_where_it_stopped() {
    let (_d, home) = init_home();
    let j = fill_journal(&home);
    j.shutdown().unwrap();
    drop(j);
    let cursor = home.root().join("ship.cursor");
    let c = cursor.to_str().unwrap();
    let export = &["log", "export", "--format", "jsonl", "--cursor", c];
    let first = json_lines(&ok_in(home.root(), export));
    let records: Vec<u64> = first
        .iter()
        .filter(|v| v["type"] == "record")
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(records, (1..=40).collect::<Vec<_>>());
    assert_eq!(std::fs::read_to_string(&cursor).unwrap(), "40\n");
    // Nothing new: nothing again.
    assert_eq!(ok_in(home.root(), export), "");

    // New records: only they come, checkpoint included.
    let j = Journal::open(&home, &settings(15)).unwrap();
    fill(
        &j,
        (0..5)
            .map(|i| exchange(Some("acme"), T0 + 100_000 + i * 1000, 200))
            .collect(),
    );
    j.shutdown().unwrap();
    drop(j);
    let next = json_lines(&ok_in(home.root(), export));
    let records: Vec<u64> = next
        .iter()
        .filter(|v| v["type"] == "record")
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(records, vec![41, 42, 43, 44, 45]);
    assert_eq!(next.last().unwrap()["type"], "checkpoint");
    assert_eq!(std::fs::read_to_string(&cursor).unwrap(), "45\n");

    // A cursor file that holds something else is refused, naming it.
    std::fs::write(&cursor, "forty\n").unwrap();
    let out = run_in(home.root(), export);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ship.cursor") && err.contains("forty"),
        "{err}"
    );
}
