//! How sled is configured for a journal database: the page cache, and the
//! size of sled's log segments — 8 MiB for a new journal, and for an
//! existing one the size it was created with (sled records it in its
//! `conf` file and refuses to open with another).
//!
//! Why 8 MiB: every open of the database reads one header per log segment
//! (sled's segment accountant) before anything else; with sled's default
//! of 512 KiB that was ~10,000 reads on a 5 GB journal, most of a cold
//! `log query`'s time. Existing journals keep their size (sled cannot
//! change it in place).

use std::path::Path;

/// sled's page cache. Its default (1 GiB) let a busy broker's resident size
/// grow with the journal (531 MB after 45 s of keep-alive load; 154 MB with
/// this cap, same CPU);
/// appends touch only the tail, and queries and verification read on from
/// disk.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

/// The log segment size of a journal created now.
pub(in crate::journal) const NEW_SEGMENT_SIZE: usize = 8 * 1024 * 1024;

/// sled's default, the size of every journal created before
/// [`NEW_SEGMENT_SIZE`].
pub(in crate::journal) const SLED_DEFAULT_SEGMENT_SIZE: usize = 512 * 1024;

/// The sled configuration that opens the journal database at `path`.
pub(in crate::journal) fn config(path: &Path) -> sled::Config {
    sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_BYTES)
        .segment_size(segment_size(path))
}

/// The configuration that opens the journal database at `path` for
/// reading only: sled's file without write access, nothing written at open
/// (no snapshot, no zeroing of the log's tail and free segments — 2 × 8 MiB
/// and more, with `fsync`s), every write refused (vendor patch 9).
pub(in crate::journal) fn read_only(path: &Path) -> sled::Config {
    config(path).read_only(true)
}

/// The log segment size to open the database at `path` with: the one its
/// `conf` records; for a database without a readable `conf`, sled's old
/// default if its log holds anything (it was written by an older build),
/// else [`NEW_SEGMENT_SIZE`].
pub(in crate::journal) fn segment_size(path: &Path) -> usize {
    if let Some(size) = std::fs::read(path.join("conf"))
        .ok()
        .and_then(|b| recorded_segment_size(&b))
    {
        return size;
    }
    let log_written = std::fs::metadata(path.join("db")).is_ok_and(|m| m.len() > 0);
    if log_written {
        SLED_DEFAULT_SEGMENT_SIZE
    } else {
        NEW_SEGMENT_SIZE
    }
}

/// The `segment_size` line of sled's `conf` (text lines `key: value`,
/// then a 4-byte checksum), if it is there and a size sled accepts.
fn recorded_segment_size(conf: &[u8]) -> Option<usize> {
    let text = conf.get(..conf.len().checked_sub(4)?)?;
    let text = std::str::from_utf8(text).ok()?;
    let size: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("segment_size:"))?
        .trim()
        .parse()
        .ok()?;
    (size.is_power_of_two() && (256..=1 << 24).contains(&size)).then_some(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_size_is_read_from_sleds_conf() {
        let conf = b"segment_size: 524288\nuse_compression: false\nversion: 0.34\n\x01\x02\x03\x04";
        assert_eq!(recorded_segment_size(conf), Some(524_288));
        let conf = b"segment_size: 8388608\nuse_compression: false\nversion: 0.34\nabcd";
        assert_eq!(recorded_segment_size(conf), Some(NEW_SEGMENT_SIZE));
        for bad in [
            &b""[..],
            b"abc",
            b"segment_size: 1000\nabcd",
            b"segment_size: 33554432\nabcd",
            b"use_compression: false\nabcd",
        ] {
            assert_eq!(recorded_segment_size(bad), None, "{bad:?}");
        }
    }

    /// Opens with `c`, waiting (bounded) for the lock a just-closed handle
    /// releases from a background thread.
    fn open(c: sled::Config) -> sled::Db {
        for _ in 0..100 {
            match c.open() {
                Ok(db) => return db,
                Err(sled::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("the database stayed locked");
    }

    /// The log positions of the finished snapshots in the folder.
    fn snapshots(path: &Path) -> Vec<u64> {
        let mut out: Vec<u64> = std::fs::read_dir(path)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| u64::from_str_radix(n.strip_prefix("snap.")?, 16).ok())
            .collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn a_closed_database_leaves_a_snapshot_of_all_its_log() {
        // sled writes a snapshot at open; vendor patch 10 writes one at
        // close too, so the next open (read-only ones above all) replays
        // nothing instead of all that was written since the last open.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let db = open(config(&path));
        let at_open = snapshots(&path).last().copied().unwrap_or(0);
        for i in 0..3000u32 {
            db.insert(i.to_be_bytes(), vec![7u8; 1000]).unwrap();
        }
        db.flush().unwrap();
        drop(db);
        // Wait for the close (sled finishes it on a background thread)
        // with a read-only open, which writes no snapshot itself.
        let db = open(read_only(&path));
        let snaps = snapshots(&path);
        assert_eq!(snaps.len(), 1, "{snaps:?}");
        assert!(
            snaps[0] > at_open + 3_000_000,
            "snapshot at {:#x}, {:#x} at open: the log written since was not covered",
            snaps[0],
            at_open
        );
        assert_eq!(db.len(), 3000);
        assert_eq!(db.get(2999u32.to_be_bytes()).unwrap().unwrap().len(), 1000);
    }

    #[test]
    fn a_new_journal_gets_large_segments_and_an_existing_one_keeps_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("new");
        assert_eq!(segment_size(&new), NEW_SEGMENT_SIZE);
        drop(open(config(&new)));
        assert_eq!(segment_size(&new), NEW_SEGMENT_SIZE);

        // A journal created with sled's default (as older builds did)
        // opens with its own size, also without its `conf`.
        let old = dir.path().join("old");
        {
            let db = open(sled::Config::new().path(&old));
            db.insert(b"k", b"v").unwrap();
            db.flush().unwrap();
        }
        assert_eq!(segment_size(&old), SLED_DEFAULT_SEGMENT_SIZE);
        let db = open(config(&old));
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
        drop(db);
        std::fs::remove_file(old.join("conf")).unwrap();
        assert_eq!(segment_size(&old), SLED_DEFAULT_SEGMENT_SIZE);
    }
}
