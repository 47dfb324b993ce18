//! Writes that survive a crash or a power cut: the one place that knows how
//! a file or folder is made durable. A file is written to a temporary file
//! in the same folder (created with its final mode), `fsync`ed, renamed
//! over the target, and the folder `fsync`ed, so after a crash the path
//! holds the old content or the new, never a mix or nothing. New folders
//! get their parent synced too.
//!
//! `home::write_atomic`, `write_key` and `write_public` are the home's
//! names for these; the journal uses [`sync_dir`] and [`create_dir_all`].

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `fsync` of a folder: makes the entries created, renamed or removed in
/// it durable. File systems that cannot sync a folder (`EINVAL`, e.g. some
/// network and FUSE file systems) are taken as done: there is nothing more
/// a program can ask of them.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let d = fs::File::open(dir)?;
    match d.sync_all() {
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => Ok(()),
        other => other,
    }
}

fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates `dir` and any missing parents with `mode` (umask applies), and
/// syncs the parent of each folder it created, so the folders exist after
/// a power cut. Existing folders are left as they are.
pub fn create_dir_all(dir: &Path, mode: u32) -> io::Result<()> {
    let mut missing: Vec<&Path> = Vec::new();
    let mut p = Some(dir);
    while let Some(d) = p {
        if d.as_os_str().is_empty() || d.is_dir() {
            break;
        }
        missing.push(d);
        p = d.parent();
    }
    for d in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(mode).create(d) {
            Ok(()) => sync_dir(parent_of(d))?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates `dir` (and missing parents) closed to other users: mode 0700,
/// durably. An existing folder keeps its mode (`gatehouse check` flags a
/// loose one).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    create_dir_all(dir, 0o700)
}

/// Whether a folder is open to other users (any group or other bit).
pub fn is_loose(dir: &Path) -> io::Result<bool> {
    Ok(fs::metadata(dir)?.permissions().mode() & 0o077 != 0)
}

/// One file of [`write_atomic_many`]: where, what, and the mode it is
/// created with.
pub type FileWrite<'a> = (&'a Path, &'a [u8], u32);

/// Writes several files so they change together as closely as a file
/// system allows: every temporary file is created (with its mode), written
/// and synced first; then they are renamed over their targets back to back,
/// in order; then their folders are synced. On an error before the renames
/// nothing changed (the temporary files are removed). The error names the
/// file that failed.
pub fn write_atomic_many(files: &[FileWrite<'_>]) -> Result<(), (PathBuf, io::Error)> {
    let mut temps: Vec<PathBuf> = Vec::with_capacity(files.len());
    let cleanup = |temps: &[PathBuf]| {
        for t in temps {
            let _ = fs::remove_file(t);
        }
    };
    for (path, bytes, mode) in files {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = parent_of(path).join(format!(
            ".{name}.tmp-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let written = (|| -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(*mode)
                .open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()
        })();
        temps.push(tmp);
        if let Err(e) = written {
            cleanup(&temps);
            return Err((path.to_path_buf(), e));
        }
    }
    for (i, ((path, _, _), tmp)) in files.iter().zip(&temps).enumerate() {
        if let Err(e) = fs::rename(tmp, path) {
            cleanup(&temps[i..]);
            return Err((path.to_path_buf(), e));
        }
    }
    let mut synced: Vec<&Path> = Vec::new();
    for (path, _, _) in files {
        let dir = parent_of(path);
        if !synced.contains(&dir) {
            sync_dir(dir).map_err(|e| (dir.to_path_buf(), e))?;
            synced.push(dir);
        }
    }
    Ok(())
}

/// [`write_atomic_many`] for one file.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), (PathBuf, io::Error)> {
    write_atomic_many(&[(path, bytes, mode)])
}

/// Renames `from` to `to` and syncs both folders (a move that must not be
/// undone by a power cut).
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    sync_dir(parent_of(to))?;
    if parent_of(from) != parent_of(to) {
        sync_dir(parent_of(from))?;
    }
    Ok(())
}

/// Removes a file and syncs its folder (a removal that must not come back
/// after a power cut). A file already gone is not an error.
pub fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(parent_of(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_with_its_mode_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "a temporary file was left behind");
    }

    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        write_atomic(&p, b"old", 0o644).unwrap();
        let missing = dir.path().join("no-such-folder").join("b.txt");
        let err = write_atomic_many(&[(&p, b"new", 0o644), (&missing, b"x", 0o644)]).unwrap_err();
        assert_eq!(err.0, missing);
        assert_eq!(fs::read(&p).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn private_dirs_are_created_0700_and_loose_ones_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("x").join("data");
        create_private_dir(&d).unwrap();
        assert_eq!(
            fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert!(!is_loose(&d).unwrap());
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(is_loose(&d).unwrap());
    }
}
