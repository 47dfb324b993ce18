//! Reading the database file ahead of a pass over the whole journal
//! (`log verify`): the file is read front to back in large sequential
//! reads, in as many streams as the pass has threads, while the pass runs,
//! so that sled's own page loads — small reads scattered over the file,
//! ~80 records each — find their bytes in the OS page cache instead of
//! waiting for the disk one by one. On a cold 1.4 GB journal the
//! sequential streams read the file in a third of the time the scattered
//! reads took. Only when the file fits in half of the memory the system
//! reports available (else the pages read ahead would push each other
//! out before the pass reaches them); the bytes are read and dropped, only
//! the page cache keeps them.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// One read of a stream.
const READ: usize = 1024 * 1024;

/// Files smaller than this are not worth extra threads.
const MIN_FILE: u64 = 32 * 1024 * 1024;

/// Runs `pass` while `streams` threads read the file at `path` ahead (see
/// the module doc); returns what `pass` returned and how many bytes were
/// read ahead. The readers stop when `pass` returns. `pass` is given the
/// count of bytes read ahead so far.
pub(super) fn beside<R>(
    path: &Path,
    streams: usize,
    pass: impl FnOnce(&AtomicU64) -> R,
) -> (R, u64) {
    let file = File::open(path).ok();
    let len = file
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .map_or(0, |m| m.len());
    let worth = len >= MIN_FILE && mem_available().is_some_and(|m| len <= m / 2);
    match file {
        Some(f) if worth => read_ahead(&f, len, streams.max(1), pass),
        _ => (pass(&AtomicU64::new(0)), 0),
    }
}

fn read_ahead<R>(
    f: &File,
    len: u64,
    streams: usize,
    pass: impl FnOnce(&AtomicU64) -> R,
) -> (R, u64) {
    let stop = AtomicBool::new(false);
    let read = AtomicU64::new(0);
    let per = len.div_ceil(streams as u64);
    let r = std::thread::scope(|scope| {
        for i in 0..streams as u64 {
            let (stop, read) = (&stop, &read);
            let (from, to) = (i * per, ((i + 1) * per).min(len));
            scope.spawn(move || {
                let mut buf = vec![0u8; READ];
                let mut at = from;
                while at < to && !stop.load(Ordering::Relaxed) {
                    let n = (to - at).min(READ as u64) as usize;
                    match f.read_at(&mut buf[..n], at) {
                        Ok(0) | Err(_) => break,
                        Ok(got) => {
                            at += got as u64;
                            read.fetch_add(got as u64, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        let r = pass(&read);
        stop.store(true, Ordering::Relaxed);
        r
    });
    (r, read.into_inner())
}

/// `MemAvailable` from /proc/meminfo, in bytes (None where there is none).
fn mem_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    fn file_of(dir: &Path, mib: usize) -> std::path::PathBuf {
        let p = dir.join("db");
        let mut f = File::create(&p).unwrap();
        let chunk = vec![7u8; 1024 * 1024];
        for _ in 0..mib {
            f.write_all(&chunk).unwrap();
        }
        p
    }

    #[test]
    fn the_whole_file_is_read_ahead_while_the_pass_runs() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_of(dir.path(), 40);
        let len = 40 * 1024 * 1024;
        let (r, read) = beside(&p, 3, |ahead| {
            // A pass that lasts until the readers are done (bounded).
            let t0 = Instant::now();
            while ahead.load(Ordering::Relaxed) < len && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(5));
            }
            42
        });
        assert_eq!(r, 42);
        assert_eq!(read, len, "the three streams cover the file once");
    }

    #[test]
    fn small_or_missing_files_are_not_read_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let p = file_of(dir.path(), 1);
        assert_eq!(beside(&p, 4, |_| 1), (1, 0));
        assert_eq!(beside(&dir.path().join("none"), 4, |_| 2), (2, 0));
    }

    #[test]
    fn available_memory_is_read_from_the_system() {
        if Path::new("/proc/meminfo").exists() {
            assert!(mem_available().is_some_and(|m| m > 0));
        }
    }
}
