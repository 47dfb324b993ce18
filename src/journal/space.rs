//! Disk space under the journal: the `[journal] min_free` margin (the
//! setting itself is `config::min_free`), `statvfs` of the database folder, and the guard the
//! writer consults before each group commit, so the journal fails closed
//! before the file system is full) and the clean-up of what sled leaves in
//! its folder when a write fails for lack of space.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use crate::config::min_free::{DEFAULT_MIN_FREE, MinFree, MinFreeError, SMALLEST_MIN_FREE};

/// Free space on the file system holding `path`: (bytes available to
/// this process, file system size in bytes).
pub fn free_space(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("path contains a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated path and `st` a plain C struct
    // that statvfs fills in.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = if st.f_frsize > 0 {
        st.f_frsize
    } else {
        st.f_bsize
    };
    Ok((
        (st.f_bavail as u64).saturating_mul(frsize as u64),
        (st.f_blocks as u64).saturating_mul(frsize as u64),
    ))
}

/// Longest time between two measurements while records are written: what
/// other writers on the file system may consume unseen.
const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Bytes sled may put on disk per byte of record it is given: the log
/// message, the index entry, leaf rewrites when fragments are consolidated.
/// An over-estimate; it only decides when to measure again.
pub(super) const WRITE_AMPLIFICATION: u64 = 4;

/// The writer's view of free space: measures with `statvfs` when the last
/// measurement is older than [`CHECK_INTERVAL`] or when the journal may
/// have written a quarter of the margin since (estimated generously), so
/// that a burst of group commits cannot cross the margin unseen.
pub(super) struct SpaceGuard {
    dir: PathBuf,
    min_free: MinFree,
    last_check: Option<Instant>,
    written_since: u64,
    /// Under the margin at the last measurement (measured again each time).
    low: bool,
    /// The file system reports no size (some FUSE file systems): told once.
    unmeasurable_told: bool,
    /// Free bytes and margin at the last measurement.
    pub(super) free: u64,
    pub(super) margin: u64,
}

/// Why the journal refuses a group commit for lack of space.
#[derive(Debug, thiserror::Error)]
pub enum SpaceError {
    /// Free space is under `[journal] min_free`.
    #[error(
        "disk_low: {} has {free} bytes free, under [journal] min_free = \"{min_free}\" ({margin} bytes); free space on that file system",
        dir.display()
    )]
    Low {
        dir: PathBuf,
        free: u64,
        min_free: String,
        margin: u64,
    },
    /// `statvfs` failed on the journal's folder.
    #[error("cannot measure free space of {} for [journal] min_free: {source}", dir.display())]
    Unmeasurable {
        dir: PathBuf,
        source: std::io::Error,
    },
}

impl SpaceGuard {
    pub(super) fn new(dir: &Path, min_free: MinFree) -> SpaceGuard {
        SpaceGuard {
            dir: dir.to_path_buf(),
            min_free,
            last_check: None,
            written_since: 0,
            low: false,
            unmeasurable_told: false,
            free: 0,
            margin: 0,
        }
    }

    /// A reload's `[journal] min_free`: measured against at the next write
    /// or probe.
    pub(super) fn set_min_free(&mut self, min_free: MinFree) {
        if self.min_free != min_free {
            self.min_free = min_free;
            self.last_check = None;
        }
    }

    /// Before a group commit that may write about `upcoming` bytes (after
    /// amplification): `Err(why)` when free space is under the margin.
    pub(super) fn admit(&mut self, upcoming: u64) -> Result<(), SpaceError> {
        if self.min_free.is_off() {
            return Ok(());
        }
        let stale = self
            .last_check
            .is_none_or(|t| t.elapsed() >= CHECK_INTERVAL);
        let quarter = self.margin / 4;
        if self.low || stale || self.written_since.saturating_add(upcoming) >= quarter {
            self.measure()?;
        }
        self.written_since = self.written_since.saturating_add(upcoming);
        Ok(())
    }

    /// Measures now: `Err(why)` when free space is under the margin (or
    /// cannot be measured).
    pub(super) fn measure(&mut self) -> Result<(), SpaceError> {
        if self.min_free.is_off() {
            return Ok(());
        }
        let (free, total) = free_space(&self.dir).map_err(|e| SpaceError::Unmeasurable {
            dir: self.dir.clone(),
            source: e,
        })?;
        self.written_since = 0;
        self.last_check = Some(Instant::now());
        if total == 0 {
            // No size, no free space to speak of (FUSE file systems that
            // do not implement statfs): the margin cannot be measured, so
            // it is not enforced; a full disk is still survived.
            if !self.unmeasurable_told {
                self.unmeasurable_told = true;
                tracing::warn!(
                    dir = %self.dir.display(),
                    "the file system reports no size: [journal] min_free cannot be enforced there"
                );
            }
            self.low = false;
            return Ok(());
        }
        self.free = free;
        self.margin = self.min_free.bytes(total);
        self.low = free < self.margin;
        if self.low {
            return Err(SpaceError::Low {
                dir: self.dir.clone(),
                free,
                min_free: self.min_free.to_string(),
                margin: self.margin,
            });
        }
        Ok(())
    }
}

/// Removes what sled leaves in its folder when a snapshot write fails
/// (`snap.<lsn>.generating`, possibly empty; sled 0.34 as released reads it
/// as the newest snapshot and refuses to open) and empty `snap.*` files.
/// Neither holds anything the log does not: the snapshot is rebuilt from
/// the log. Returns the files removed; each is logged. Call it only while
/// no process has the database open (sled holds a lock while it does; a
/// snapshot being written at that moment would be taken away from it).
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
    fn min_free_parses_sizes_and_percents() {
        assert_eq!(MinFree::parse("256MiB"), Ok(MinFree::Bytes(256 << 20)));
        assert_eq!(MinFree::parse("1GB"), Ok(MinFree::Bytes(1_000_000_000)));
        assert_eq!(MinFree::parse("0"), Ok(MinFree::Bytes(0)));
        assert_eq!(MinFree::parse("4096"), Ok(MinFree::Bytes(4096)));
        assert_eq!(MinFree::parse(" 2% "), Ok(MinFree::Percent(2.0)));
        assert_eq!(MinFree::parse("1.5GiB"), Ok(MinFree::Bytes(3 << 29)));
        for bad in ["", "%", "-1MiB", "2 parsecs", "0%", "60%", "abc", "1e400"] {
            assert!(MinFree::parse(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(MinFree::Bytes(256 << 20).to_string(), "256MiB");
        assert_eq!(MinFree::Percent(2.0).bytes(1000), 20);
        assert!(MinFree::Bytes(4096).problem().is_some());
        assert!(MinFree::Bytes(0).problem().is_none());
        assert!(DEFAULT_MIN_FREE.problem().is_none());
    }

    #[test]
    fn free_space_reads_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let (free, total) = free_space(dir.path()).unwrap();
        assert!(total > 0 && free <= total, "{free} of {total}");
        assert!(free_space(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn the_guard_refuses_under_the_margin_and_measures_again() {
        let dir = tempfile::tempdir().unwrap();
        let (free, _) = free_space(dir.path()).unwrap();
        let mut ok = SpaceGuard::new(dir.path(), MinFree::Bytes(SMALLEST_MIN_FREE));
        assert!(ok.admit(10).is_ok());
        let mut low = SpaceGuard::new(dir.path(), MinFree::Bytes(free.saturating_mul(2) + 1));
        let err = low.admit(10).unwrap_err();
        assert!(matches!(err, SpaceError::Low { .. }), "{err}");
        assert!(err.to_string().starts_with("disk_low:"), "{err}");
        // Each call measures again while under the margin.
        assert!(low.admit(10).is_err());
        let mut off = SpaceGuard::new(&dir.path().join("missing"), MinFree::Bytes(0));
        assert!(off.admit(u64::MAX).is_ok());
    }

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
