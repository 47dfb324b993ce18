//! External tools the tests drive (curl, python3): present, or the test is
//! skipped with a printed line, except in CI (`CI=true`), where a missing
//! tool fails the test (`.ci/run` installs them).

use std::process::Command;

/// Whether `tool --version` runs. In CI a missing tool panics.
pub fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is required in CI (.ci/run installs it)"
        );
        eprintln!("{tool} not installed: skipping");
    }
    ok
}
