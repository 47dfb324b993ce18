//! Disk space under the journal: the clean-up of what sled leaves in its
//! folder when a write fails for lack of space.

use std::path::{Path, PathBuf};

/// Removes what sled leaves in its folder when a snapshot write fails
/// (`snap.<lsn>.generating`, possibly empty; sled 0.34 as released reads it
/// as the newest snapshot and refuses to open) and empty `snap.*` files.
/// Neither holds anything the log does not: the snapshot is rebuilt from
/// the log. Returns the files removed; each is logged.
pub fn remove_sled_leftovers(db: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(db) else {
        return removed;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !name.starts_with("snap.") {
            continue;
        }
        let empty = entry.metadata().is_ok_and(|m| m.is_file() && m.len() == 0);
        if !(name.ends_with(".generating") || empty) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::warn!(
                    file = %path.display(),
                    "removed an unfinished sled snapshot left by a failed write (a full disk?); the snapshot is rebuilt from the log, no record is lost"
                );
                removed.push(path);
            }
            Err(e) => tracing::warn!(
                file = %path.display(),
                "cannot remove an unfinished sled snapshot: {e}; the journal may not open until it is removed"
            ),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_leftovers_are_removed_and_snapshots_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        std::fs::write(p.join("snap.0000000000001000.generating"), b"").unwrap();
        std::fs::write(p.join("snap.0000000000002000.generating"), b"partial").unwrap();
        std::fs::write(p.join("snap.0000000000000800"), b"").unwrap();
        std::fs::write(p.join("snap.0000000000000400"), b"a snapshot").unwrap();
        std::fs::write(p.join("db"), b"").unwrap();
        let mut removed = remove_sled_leftovers(p);
        removed.sort();
        assert_eq!(removed.len(), 3, "{removed:?}");
        assert!(p.join("snap.0000000000000400").exists());
        assert!(p.join("db").exists(), "only snapshot files are touched");
    }
}
