//! The broker's log as a file: no ANSI colour codes when stderr is not a
//! terminal (`--log-format json` stays JSON).

use crate::common;

use common::broker::TestHome;

#[tokio::test]
async fn a_log_file_holds_no_ansi_escape_codes() {
    let h = TestHome::new();
    h.add_partner("acme", &[]);
    // Broker::start sends stderr to a file; warnings and info lines are
    // where the colours were.
    let broker = h.start();
    assert!(broker.wait_log("gatehouse serving", 5).await);
    broker.signal("HUP");
    assert!(broker.wait_log("configuration reloaded", 5).await);
    let log = std::fs::read(&broker.stderr_path).unwrap();
    assert!(!log.is_empty());
    assert!(
        !log.contains(&0x1b),
        "ESC in the log file: {}",
        String::from_utf8_lossy(&log)
    );
    // A CLI error to a pipe has none either.
    let out = h.run(&["cert", "revoke", "nobody-here"]);
    assert!(
        !out.stderr.contains(&0x1b),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
