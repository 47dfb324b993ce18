//! The journal fixtures of the end-to-end tests: the library's
//! `journal::test_support` (settings, events, strict appends, raw sled
//! access), plus a home made by the real `gatehouse init`.

pub use gatehouse::journal::test_support::*;

use gatehouse::home::Home;

/// A home made by `gatehouse init` (the real binary) in a temp dir.
pub fn init_home() -> (tempfile::TempDir, Home) {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .arg("--home")
        .arg(dir.path())
        .arg("init")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let home = Home::new(dir.path());
    (dir, home)
}
