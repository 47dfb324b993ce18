//! External tools a test drives (promtool, chromium, …): a test skips with
//! a printed line where the tool is missing, except in CI (`CI=true`),
//! where a missing tool fails the test (`.ci/run` installs them).

use std::process::Command;

/// Whether `program` runs (`program <probe>` exits 0). Missing in CI: panics.
pub fn available(program: &str, probe: &str) -> bool {
    let ok = Command::new(program)
        .arg(probe)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("{program} is not installed, and CI=true: .ci/run must install it");
        }
        eprintln!("{program} not installed: skipping (CI=true would fail here)");
    }
    ok
}
