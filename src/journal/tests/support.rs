//! The library-level tests' own fixture: a bare home with only the journal
//! key pair (faster than `init`). The rest comes from
//! `journal::test_support`, which the end-to-end tests share.

pub use crate::journal::test_support::*;

use crate::home::Home;

/// A bare home with only the journal key pair.
pub fn key_home() -> (tempfile::TempDir, Home) {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::new(dir.path());
    write_journal_keys(&home);
    (dir, home)
}
