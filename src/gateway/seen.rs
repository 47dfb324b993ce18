//! Which certificates have completed a handshake: an in-memory set (one
//! lock per connection, nothing per request) backed by an empty marker file
//! per serial, `certs/issued/<serial>.seen`, written once in a blocking task
//! the first time this process sees the certificate. Self-service renewal
//! reads it: an issued successor that was never seen may be replaced by a
//! retry with another key; one that was seen may not.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::sync::Mutex;

use crate::home::Home;

/// Serials seen at a handshake (see the module doc).
#[derive(Default)]
pub struct Seen {
    /// Serials whose marker this process wrote or found. Bounded by the
    /// inventory: only certificates the broker issued pass the handshake.
    serials: Mutex<HashSet<String>>,
}

impl Seen {
    /// Notes that `serial` completed a handshake; the first time, writes its
    /// marker in a blocking task (a failure is logged and tried again at
    /// the next connection).
    pub fn handshake(self: &std::sync::Arc<Self>, home: &Home, serial: &str) {
        if !valid_serial(serial) {
            return;
        }
        let first = self
            .serials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(serial.to_string());
        if !first {
            return;
        }
        let (path, seen, serial) = (home.seen_marker(serial), self.clone(), serial.to_string());
        tokio::task::spawn_blocking(move || {
            let created = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path);
            match created {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => {
                    tracing::warn!(
                        "cannot write {}: {e}; certificate {serial} will count as never used for renewal until it is written",
                        path.display()
                    );
                    seen.serials
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&serial);
                }
            }
        });
    }

    /// Whether `serial` ever completed a handshake (this process's set, then
    /// the marker on disk: blocking).
    pub fn was_seen(&self, home: &Home, serial: &str) -> bool {
        let in_memory = self
            .serials
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(serial);
        in_memory || (valid_serial(serial) && home.seen_marker(serial).exists())
    }
}

/// A serial as the inventory names files: lowercase hex, at most 40 digits
/// (so it cannot name anything outside `certs/issued/`).
fn valid_serial(serial: &str) -> bool {
    !serial.is_empty()
        && serial.len() <= 40
        && serial
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_marker_is_written_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        std::fs::create_dir_all(home.issued_dir()).unwrap();
        let seen = Arc::new(Seen::default());
        assert!(!seen.was_seen(&home, "0a1b"));
        seen.handshake(&home, "0a1b");
        assert!(seen.was_seen(&home, "0a1b"));
        for _ in 0..100 {
            if home.seen_marker("0a1b").exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(home.seen_marker("0a1b").exists());
        // A new process finds it on disk.
        assert!(Seen::default().was_seen(&home, "0a1b"));
        // Names that are not serials are never written nor read.
        seen.handshake(&home, "../x");
        assert!(!seen.was_seen(&home, "../x"));
    }
}
