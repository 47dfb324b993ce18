//! systemd integration: the broker's `Type=notify` messages, read from a
//! fake `NOTIFY_SOCKET` (a unixgram socket bound by the test), in the order
//! systemd needs them: READY=1 once it listens, WATCHDOG=1 pings when
//! `WATCHDOG_USEC` is set, RELOADING=1 with MONOTONIC_USEC then READY=1
//! around a SIGHUP reload, STOPPING=1 on SIGTERM. And the units in
//! contrib/systemd pass `systemd-analyze verify`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common;

use common::broker::{Broker, TestHome};

/// Reads notification datagrams until one contains `needle` (bounded);
/// returns every message read on the way, that one last.
fn wait_for(sock: &UnixDatagram, needle: &str, secs: u64) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match sock.recv(&mut buf) {
            Ok(n) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let hit = msg.lines().any(|l| l == needle);
                seen.push(msg);
                if hit {
                    return seen;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("notify socket: {e}"),
        }
    }
    panic!("no {needle} within {secs}s; saw {seen:?}");
}

#[test]
fn notify_socket_gets_ready_watchdog_reloading_and_stopping() {
    let h = TestHome::new();
    let sock_path = h.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut broker = Broker::start_with_env(
        h.path(),
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().unwrap()),
            // 400 ms: a ping every 200 ms.
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let seen = wait_for(&sock, "READY=1", 10);
    let ready = seen.last().unwrap();
    assert!(
        ready.contains(&format!("STATUS=serving on {}", broker.addr)),
        "{ready}"
    );
    // Watchdog pings keep coming, every half interval.
    let started = Instant::now();
    for _ in 0..3 {
        wait_for(&sock, "WATCHDOG=1", 5);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    // SIGHUP: RELOADING=1 with the monotonic clock, then READY=1 again.
    broker.signal("HUP");
    let seen = wait_for(&sock, "RELOADING=1", 10);
    let reloading = seen.last().unwrap();
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"))
        .parse()
        .unwrap();
    assert!(usec > 0);
    let after = wait_for(&sock, "READY=1", 10);
    assert!(!after.iter().any(|m| m.contains("STOPPING=1")), "{after:?}");

    // SIGTERM: STOPPING=1, then the process exits cleanly.
    broker.signal("TERM");
    wait_for(&sock, "STOPPING=1", 10);
    let status = broker
        .wait_exit(20)
        .expect("the broker exits after SIGTERM");
    assert!(status.success(), "{status:?}\n{}", broker.log());
}

#[test]
fn without_watchdog_usec_there_is_no_ping() {
    let h = TestHome::new();
    let sock_path = h.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let _broker =
        Broker::start_with_env(h.path(), &[("NOTIFY_SOCKET", sock_path.to_str().unwrap())]);
    wait_for(&sock, "READY=1", 10);
    let mut buf = [0u8; 4096];
    let quiet_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < quiet_until {
        if let Ok(n) = sock.recv(&mut buf) {
            panic!("unexpected: {}", String::from_utf8_lossy(&buf[..n]));
        }
    }
}

fn verify_unit(dir: &Path, name: &str) {
    // The units name the installed binary; point them at the one built here.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("contrib/systemd")
            .join(name),
    )
    .unwrap()
    .replace("/usr/local/bin/gatehouse", common::broker::BIN);
    let unit = dir.join(name);
    std::fs::write(&unit, text).unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{name}: {err}");
    // Unknown keys and bad values are only warnings: refuse them too.
    let about_it: Vec<&str> = err.lines().filter(|l| l.contains(name)).collect();
    assert!(about_it.is_empty(), "{name}: {about_it:?}");
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    if !common::tools::have("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    verify_unit(dir.path(), "gatehouse.service");
    verify_unit(dir.path(), "gatehouse-log-export.service");
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd/gatehouse.service"),
    )
    .unwrap();
    for line in [
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/gatehouse/data /var/lib/gatehouse/certs",
        "NoNewPrivileges=true",
        "PrivateTmp=true",
        "CapabilityBoundingSet=\n",
    ] {
        assert!(unit.contains(line), "{line}");
    }
}
