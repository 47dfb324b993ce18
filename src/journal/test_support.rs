//! Fixtures for the journal's tests, shared by the library's own tests
//! (`src/journal/tests/`) and the end-to-end tests (`tests/e2e/`): journal
//! settings, exchange events, a runtime, strict appends, and raw sled
//! access for tamper tests. Not part of the API: test code only, and it
//! panics on failure as a test should.

use std::time::Duration;

use crate::config::{Durability, JournalSettings};
use crate::event::{Decision, Event, EventKind};
use crate::home::Home;
use crate::journal::Journal;

/// Writes a fresh journal signing key pair into `home` (what `init` makes
/// for the journal, without the rest of a home).
pub fn write_journal_keys(home: &Home) {
    std::fs::create_dir_all(home.certs_dir()).expect("create the certs folder");
    let kp = rcgen::KeyPair::generate().expect("generate a key pair");
    std::fs::write(home.journal_key(), kp.serialize_pem()).expect("write the journal key");
    std::fs::write(home.journal_pub(), kp.public_key_pem()).expect("write the journal public key");
}

/// Strict journal settings with a checkpoint every `checkpoint_every` records.
pub fn settings(checkpoint_every: u64) -> JournalSettings {
    JournalSettings {
        durability: Durability::Strict,
        flush_interval: Duration::from_millis(10),
        checkpoint_every,
        checkpoint_interval: Duration::from_secs(60),
        handshake_refusals_per_interval: 10,
        handshake_aggregate_interval: Duration::from_secs(60),
        min_free: crate::journal::space::DEFAULT_MIN_FREE,
    }
}

/// A two-worker runtime, like the broker's on this machine.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

/// An exchange record of `partner` at `time_ms` answered with `status`
/// (denied with `route_not_granted` from 400 up).
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
        e.reason = Some(crate::reason::Reason::RouteNotGranted.code().into());
    }
    e
}

/// Appends events one by one (strict acks), returning their seqs.
pub fn fill(j: &Journal, events: Vec<Event>) -> Vec<u64> {
    let rt = rt();
    events
        .into_iter()
        .map(|e| {
            rt.block_on(j.append(e))
                .expect("append a record")
                .expect("a sequence number")
        })
        .collect()
}

/// Opens the journal's sled database directly (the journal must be closed).
/// sled drops its file lock from a background thread, so retry briefly.
pub fn raw_db(home: &Home) -> sled::Db {
    let mut tries = 0;
    loop {
        match sled::open(home.journal_db()) {
            Ok(db) => return db,
            Err(_) if tries < 40 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("cannot open the journal db: {e}"),
        }
    }
}

/// A sequence number as the journal's trees key it.
pub fn be(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}
