//! Fixtures for the journal's tests, shared by the library's own tests
//! (`src/journal/tests/`) and the end-to-end tests (`tests/e2e/`): journal
//! settings, exchange events, a runtime, strict appends, raw sled access
//! for tamper tests (records are edited and deleted inside their
//! segments), and a journal in the older one-value-per-record layout for
//! the migration tests. Not part of the API: test code only, and it
//! panics on failure as a test should.

use std::time::Duration;

use crate::config::{Durability, JournalSettings};
use crate::event::{Decision, Event, EventKind};
use crate::home::Home;
use crate::journal::Journal;
use crate::journal::checkpoint::{CheckpointKind, Signer};
use crate::journal::record;
use crate::journal::store::SEGMENTS;
use crate::journal::store::segment::{self, Segment};

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

/// Appends events all at once (they share group commits), returning their
/// seqs.
pub fn fill_together(j: &Journal, events: Vec<Event>) -> Vec<u64> {
    let rt = rt();
    rt.block_on(async {
        let acks: Vec<_> = events.into_iter().map(|e| j.append(e)).collect();
        futures_util::future::join_all(acks)
            .await
            .into_iter()
            .map(|r| r.expect("append a record").expect("a sequence number"))
            .collect()
    })
}

/// Opens the journal's sled database directly (the journal must be closed).
/// sled drops its file lock from a background thread, so retry briefly.
pub fn raw_db(home: &Home) -> sled::Db {
    let mut tries = 0;
    loop {
        match crate::journal::store::sled_config::config(&home.journal_db()).open() {
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

/// The stored records of a closed journal's segment holding `seq`, as
/// `(seq, prev_hash ‖ hash ‖ canonical)`, and that segment's key.
fn segment_records(segments: &sled::Tree, seq: u64) -> (sled::IVec, Vec<(u64, Vec<u8>)>) {
    let (k, v) = segments
        .range(..=be(seq))
        .next_back()
        .expect("a segment holding the record")
        .expect("read the segment");
    let first = u64::from_be_bytes(k.as_ref().try_into().expect("an 8-byte key"));
    let plain = segment::Plain::of(&v).expect("a readable segment");
    let seg = Segment::parse(first, &plain).expect("a readable segment");
    let recs = seg.records.iter().map(|r| (r.seq, r.to_stored())).collect();
    (k, recs)
}

/// Stores records (`seq, prev_hash ‖ hash ‖ canonical`) as segments: a
/// record that does not link to its predecessor starts a new one, so each
/// is stored exactly as given.
fn store_records(segments: &sled::Tree, recs: &[(u64, Vec<u8>)]) {
    let parts: Vec<segment::Link<'_>> = recs
        .iter()
        .map(|(s, v)| {
            let (p, h, c) = record::split_stored(v).expect("a stored record of 73 bytes or more");
            (*s, p, h, c)
        })
        .collect();
    for (first, v) in segment::pack(parts, segment::SEGMENT_BYTES) {
        segments.insert(be(first), v).expect("write a segment");
    }
}

/// Changes record `seq` of a closed journal behind its back: `f` gets its
/// stored form `prev_hash ‖ hash ‖ canonical` and may change any byte.
pub fn tamper_record(home: &Home, seq: u64, f: impl FnOnce(&mut Vec<u8>)) {
    let db = raw_db(home);
    let segments = db.open_tree(SEGMENTS).expect("the segments tree");
    let (k, mut recs) = segment_records(&segments, seq);
    let at = recs
        .iter()
        .position(|(s, _)| *s == seq)
        .expect("the record to tamper with");
    f(&mut recs[at].1);
    segments.remove(k).expect("remove the segment");
    store_records(&segments, &recs);
    db.flush().expect("flush");
}

/// Deletes record `seq` of a closed journal behind its back.
pub fn delete_record(home: &Home, seq: u64) {
    let db = raw_db(home);
    let segments = db.open_tree(SEGMENTS).expect("the segments tree");
    let (k, mut recs) = segment_records(&segments, seq);
    recs.retain(|(s, _)| *s != seq);
    segments.remove(k).expect("remove the segment");
    store_records(&segments, &recs);
    db.flush().expect("flush");
}

/// The stored form (`prev_hash ‖ hash ‖ canonical`) of record `seq` of a
/// closed journal.
pub fn stored_record(home: &Home, seq: u64) -> Vec<u8> {
    let db = raw_db(home);
    let segments = db.open_tree(SEGMENTS).expect("the segments tree");
    let (_, recs) = segment_records(&segments, seq);
    recs.into_iter()
        .find(|(s, _)| *s == seq)
        .map(|(_, v)| v)
        .expect("the record")
}

/// Number of segment values in a closed journal.
pub fn segment_count(home: &Home) -> usize {
    raw_db(home)
        .open_tree(SEGMENTS)
        .expect("the segments tree")
        .len()
}

/// Writes `events` as a journal of the older layout, the way its writer
/// did: one `records` value per record (`prev_hash ‖ hash ‖ canonical`
/// under seq BE), one `by_partner` entry per record with a partner
/// (`len u16 ‖ partner ‖ time ‖ seq` → empty) and a signed checkpoint
/// every `checkpoint_every` records and at the end. Returns the records'
/// hashes by seq (index 0 is seq 1).
pub fn write_records_layout(home: &Home, events: &[Event], checkpoint_every: u64) -> Vec<[u8; 32]> {
    std::fs::create_dir_all(home.data_dir()).expect("create data/");
    let signer = Signer::load(&home.journal_key()).expect("the journal key");
    let db = sled::open(home.journal_db()).expect("create the journal db");
    let records = db.open_tree("records").expect("records tree");
    let index = db.open_tree("by_partner").expect("by_partner tree");
    let checkpoints = db.open_tree("checkpoints").expect("checkpoints tree");
    let mut prev = record::GENESIS_HASH;
    let mut hashes = Vec::with_capacity(events.len());
    let last = events.len() as u64;
    for (i, e) in events.iter().enumerate() {
        let seq = i as u64 + 1;
        let canonical = record::encode(seq, e);
        let hash = record::chain_hash(&prev, &canonical);
        records
            .insert(be(seq), record::stored_value(&prev, &hash, &canonical))
            .expect("insert a record");
        if let Some(p) = &e.partner {
            let mut k = (p.len() as u16).to_be_bytes().to_vec();
            k.extend_from_slice(p.as_bytes());
            k.extend_from_slice(&((e.time_ms as u64) ^ (1 << 63)).to_be_bytes());
            k.extend_from_slice(&be(seq));
            index
                .insert(k, &[] as &[u8])
                .expect("insert an index entry");
        }
        if seq.is_multiple_of(checkpoint_every) || seq == last {
            let kind = if seq == last {
                CheckpointKind::Shutdown
            } else {
                CheckpointKind::Periodic
            };
            let c = signer
                .checkpoint(seq, hash, e.time_ms, kind)
                .expect("sign a checkpoint");
            checkpoints
                .insert(be(seq), c.to_stored())
                .expect("insert a checkpoint");
        }
        hashes.push(hash);
        prev = hash;
    }
    db.flush().expect("flush");
    hashes
}
