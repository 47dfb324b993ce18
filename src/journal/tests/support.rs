//! Shared helpers for the journal's library-level tests: a home with a journal
//! signing key, events, a runtime, and raw sled access for tamper tests.

use std::time::Duration;

use crate::config::{Durability, JournalSettings};
use crate::event::{Decision, Event, EventKind};
use crate::home::Home;
use crate::journal::Journal;

/// A bare home with only the journal key pair (faster than `init`).
pub fn key_home() -> (tempfile::TempDir, Home) {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::new(dir.path());
    std::fs::create_dir_all(home.certs_dir()).unwrap();
    let kp = rcgen::KeyPair::generate().unwrap();
    std::fs::write(home.journal_key(), kp.serialize_pem()).unwrap();
    std::fs::write(home.journal_pub(), kp.public_key_pem()).unwrap();
    (dir, home)
}

pub fn settings(checkpoint_every: u64) -> JournalSettings {
    JournalSettings {
        durability: Durability::Strict,
        flush_interval: Duration::from_millis(10),
        checkpoint_every,
        handshake_refusals_per_interval: 10,
        handshake_aggregate_interval: Duration::from_secs(60),
    }
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn exchange(partner: Option<&str>, time_ms: i64, status: u16) -> Event {
    let mut e = Event::new(
        EventKind::Exchange,
        "gatehouse-1",
        if status < 400 {
            Decision::Allowed
        } else {
            Decision::Denied
        },
    );
    e.time_ms = time_ms;
    e.partner = partner.map(str::to_string);
    e.method = Some("GET".into());
    e.path = Some(format!("/v1/orders/{time_ms}"));
    e.status = Some(status);
    if status >= 400 {
        e.reason = Some("route_not_granted".into());
    }
    e
}

/// Appends events one by one (strict acks), returning their seqs.
pub fn fill(j: &Journal, events: Vec<Event>) -> Vec<u64> {
    let rt = rt();
    events
        .into_iter()
        .map(|e| rt.block_on(j.append(e)).unwrap().unwrap())
        .collect()
}

/// Opens the journal's sled database directly (the journal must be closed).
/// sled drops its file lock from a background thread, so retry briefly.
pub fn raw_db(home: &Home) -> sled::Db {
    let mut tries = 0;
    loop {
        match sled::open(home.journal_db()) {
            Ok(db) => return db,
            Err(e) if tries < 40 => {
                tries += 1;
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot open the journal db: {e}"),
        }
    }
}

pub fn be(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}
