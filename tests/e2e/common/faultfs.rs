//! Real storage faults for end-to-end tests: a folder on LazyFS (a FUSE
//! file system that loses everything not fsynced on command: a power cut
//! for one folder, plus torn writes) and a small tmpfs (a disk that fills
//! up). Both need root; LazyFS also `/dev/fuse` and the binary built by
//! `.ci/run` (`GATEHOUSE_LAZYFS` = the folder holding `lazyfs` and
//! `lib/libpcache.so`). Elsewhere the tests skip with a line saying why —
//! except in CI (`CI=true`), where a missing prerequisite fails the test.
#![allow(dead_code)] // not every helper is used by every test build

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Skips (returns false, printing why) or, in CI, panics.
pub fn require(ok: bool, why: &str) -> bool {
    if ok {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{why}: required in CI (CI=true)");
    }
    eprintln!("skipping: {why}");
    false
}

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn is_mounted(mnt: &Path) -> bool {
    let want = std::fs::canonicalize(mnt).unwrap_or_else(|_| mnt.to_path_buf());
    std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        m.lines()
            .any(|l| l.split_whitespace().nth(1) == Some(want.to_string_lossy().as_ref()))
    })
}

/// The LazyFS binary folder, when everything LazyFS needs is here.
pub fn lazyfs_bin() -> Option<PathBuf> {
    let bin = std::env::var_os("GATEHOUSE_LAZYFS").map(PathBuf::from);
    let checks = [
        (is_root(), "LazyFS tests need root (FUSE mounts)"),
        (
            Path::new("/dev/fuse").exists(),
            "LazyFS tests need /dev/fuse",
        ),
        (
            have("fusermount3"),
            "LazyFS tests need fusermount3 (Debian: fuse3)",
        ),
        (
            bin.as_ref().is_some_and(|b| b.join("lazyfs").is_file()),
            "LazyFS tests need GATEHOUSE_LAZYFS=<folder with the lazyfs binary> (built by .ci/run with ../shared/tools/lazyfs/build.sh)",
        ),
    ];
    for (ok, why) in checks {
        if !require(ok, why) {
            return None;
        }
    }
    bin
}

/// A folder on LazyFS. Data lives in `root` (the backing folder); `mnt` is
/// the mount point the program under test uses.
pub struct LazyFs {
    bin: PathBuf,
    pub root: PathBuf,
    pub mnt: PathBuf,
    fifo: PathBuf,
    config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    mounts: u32,
}

impl LazyFs {
    /// Prepares LazyFS over `mnt` (an empty folder), its backing store and
    /// control files in `work`. Call [`LazyFs::mount`].
    pub fn new(bin: &Path, work: &Path, mnt: &Path) -> LazyFs {
        let root = work.join("lazyfs-root");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(mnt).unwrap();
        let fifo = work.join("lazyfs.fifo");
        let config = work.join("lazyfs.toml");
        std::fs::write(
            &config,
            format!(
                "[faults]\nfifo_path=\"{}\"\n[cache]\napply_eviction=false\n[cache.simple]\ncustom_size=\"512mb\"\nblocks_per_page=1\n[filesystem]\nlog_all_operations=false\nlogfile=\"\"\n",
                fifo.display()
            ),
        )
        .unwrap();
        LazyFs {
            bin: bin.to_path_buf(),
            root,
            mnt: mnt.to_path_buf(),
            fifo,
            config,
            log: work.join("lazyfs.log"),
            child: None,
            mounts: 0,
        }
    }

    /// Mounts (in the foreground process we keep), waits until mounted.
    pub fn mount(&mut self) {
        assert!(self.child.is_none(), "already mounted");
        self.mounts += 1;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(self.bin.join("lazyfs"))
            .arg(&self.mnt)
            .arg("--config-path")
            .arg(&self.config)
            .arg("-o")
            .arg(format!(
                "allow_other,modules=subdir,subdir={}",
                self.root.display()
            ))
            .arg("-f")
            .env("LD_LIBRARY_PATH", self.bin.join("lib"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start lazyfs");
        self.child = Some(child);
        let t0 = Instant::now();
        while !is_mounted(&self.mnt) {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("lazyfs exited ({st}): {}", self.log_text());
            }
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "lazyfs did not mount: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // The fault fifo is served once the worker thread runs.
        let t0 = Instant::now();
        while !self.fifo.exists() && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The LazyFS process id (0 when not mounted).
    pub fn child_id(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends one fault command (`lazyfs::clear-cache`, `lazyfs::torn-op::...`).
    pub fn command(&self, cmd: &str) {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.fifo)
            .expect("open the lazyfs fault fifo");
        f.write_all(format!("{cmd}\n").as_bytes()).unwrap();
    }

    /// Sends a fault command and waits (bounded) until LazyFS logged
    /// `needle` as many times as it has been sent such commands.
    fn command_and_wait(&self, cmd: &str, needle: &str) {
        let before = self.log_text().matches(needle).count();
        self.command(cmd);
        let t0 = Instant::now();
        while self.log_text().matches(needle).count() <= before {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "lazyfs did not confirm `{cmd}`: {}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Configures a fault and waits for LazyFS to accept it.
    pub fn fault(&self, cmd: &str) {
        self.command_and_wait(cmd, "configured successfully");
    }

    /// Whether LazyFS is still running (a torn-write fault kills it right
    /// after the torn write, like a power cut in the middle of that write).
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// The power cut: every byte not fsynced is dropped, then the file
    /// system goes away. The program using it must be dead already.
    pub fn power_cut(&mut self) {
        if self.alive() {
            self.command_and_wait("lazyfs::clear-cache", "cache is cleared");
        }
        self.unmount();
    }

    /// Unmounts (lazily when LazyFS died) and reaps the process.
    pub fn unmount(&mut self) {
        let alive = self.alive();
        let mut args = vec!["-u"];
        if !alive {
            args.push("-z");
        }
        let st = Command::new("fusermount3")
            .args(&args)
            .arg(&self.mnt)
            .status();
        if !st.is_ok_and(|s| s.success()) {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mnt)
                .status();
        }
        if let Some(mut c) = self.child.take() {
            let t0 = Instant::now();
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    _ if t0.elapsed() > Duration::from_secs(10) => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                    _ => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        assert!(!is_mounted(&self.mnt), "still mounted");
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("fusermount3")
                .arg("-uz")
                .arg(&self.mnt)
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A small tmpfs mounted at `mnt` (root only): a disk that fills up.
pub struct SmallFs {
    pub mnt: PathBuf,
}

impl SmallFs {
    /// Mounts a tmpfs of `size` (e.g. "8m") at `mnt`; None (skipped) when not root.
    pub fn mount(mnt: &Path, size: &str) -> Option<SmallFs> {
        if !require(
            is_root(),
            "the disk-full test needs root (it mounts a small tmpfs)",
        ) {
            return None;
        }
        std::fs::create_dir_all(mnt).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("tmpfs")
            .arg(mnt)
            .status()
            .expect("run mount");
        if !require(st.success(), "cannot mount a tmpfs here") {
            return None;
        }
        Some(SmallFs {
            mnt: mnt.to_path_buf(),
        })
    }

    /// Fills the file system with `name` until writes fail (ENOSPC).
    pub fn fill(&self, name: &str) -> PathBuf {
        let p = self.mnt.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        loop {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        // Fill the last partial chunk too.
        let small = vec![0x5au8; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.sync_all();
        p
    }

    /// Fills the file system with `name` until about `leave` bytes are free.
    pub fn fill_until_free(&self, name: &str, leave: u64) -> PathBuf {
        let p = self.mnt.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        let chunk = vec![0x5au8; 64 * 1024];
        while self.free() > leave + chunk.len() as u64 {
            if f.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = f.sync_all();
        p
    }

    /// Bytes free on the file system (`df`'s "Avail").
    pub fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.mnt)
            .output()
            .expect("run df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df prints the free bytes")
    }

    /// Grows (or shrinks) the file system in place: `mount -o remount,size=`.
    pub fn resize(&self, size: &str) {
        let st = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.mnt)
            .status()
            .expect("run mount");
        assert!(
            st.success(),
            "cannot remount {} with size {size}",
            self.mnt.display()
        );
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
    }
}
