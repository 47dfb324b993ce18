//! A read-only open (`Store::open_read_only`, what `log query`, `export`,
//! `verify` and `tail` use on a stopped broker) reads everything
//! a read-write open reads, changes no byte of sled's folder, refuses every
//! write, and leaves the database to the next read-write open as it was.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::support::*;
use crate::journal::store::sled_config;
use crate::journal::{Journal, JournalError, Query, Store, Verifier};

const T0: i64 = 1_800_000_000_000;

/// Every file under `dir` (relative name → bytes).
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let name = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(name, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A journal of `n` records (acme / globex by turns), closed.
fn closed_journal(n: i64) -> (tempfile::TempDir, crate::home::Home) {
    let (d, home) = key_home();
    let j = Journal::open(&home, &settings(100)).unwrap();
    fill(
        &j,
        (0..n)
            .map(|i| exchange(Some(["acme", "globex"][i as usize % 2]), T0 + i, 200))
            .collect(),
    );
    j.shutdown().unwrap();
    (d, home)
}

fn seqs(rs: &[crate::journal::Record]) -> Vec<u64> {
    rs.iter().map(|r| r.seq).collect()
}

fn acme() -> Query {
    Query {
        partner: Some("acme".into()),
        limit: 1000,
        ..Query::default()
    }
}

#[test]
fn a_read_only_open_reads_everything_and_changes_no_byte() {
    let (_d, home) = closed_journal(300);
    let db_dir = home.journal_db();
    let verifier = Verifier::load(&home.journal_pub()).unwrap();
    let before = files(&db_dir);
    assert!(before.contains_key("db") && before.contains_key("conf"));

    let store = Store::open_read_only(&db_dir).unwrap();
    let got = seqs(&store.query(&acme()).unwrap());
    assert_eq!(got, (1..=300).step_by(2).collect::<Vec<u64>>());
    assert_eq!(
        seqs(&store.after(0, usize::MAX).unwrap()),
        (1..=300).collect::<Vec<u64>>()
    );
    assert_eq!(seqs(&store.tail(3).unwrap()), vec![298, 299, 300]);
    let report = store.verify(&verifier).unwrap();
    assert!(report.ok && report.records == 300, "{report:?}");
    assert_eq!(store.stats().unwrap().last_seq, 300);
    // Every write is refused, and refused without touching the files.
    let refused = store.put_state("k", b"v");
    assert!(
        matches!(refused, Err(JournalError::Storage(ref m)) if m.contains("read-only")),
        "{refused:?}"
    );
    drop(store);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        files(&db_dir) == before,
        "a read-only open changed sled's files"
    );

    // The next read-write open recovers as before and appends on.
    let j = Journal::open(&home, &settings(100)).unwrap();
    fill(&j, vec![exchange(Some("acme"), T0 + 1000, 200)]);
    j.shutdown().unwrap();
    drop(j);
    let store = Store::open(&db_dir).unwrap();
    let report = store.verify(&verifier).unwrap();
    assert!(report.ok && report.records == 301, "{report:?}");
    assert_eq!(seqs(&store.query(&acme()).unwrap()).last(), Some(&301));
}

#[test]
fn a_read_only_open_without_a_snapshot_replays_the_log_in_memory() {
    let (_d, home) = closed_journal(200);
    let db_dir = home.journal_db();
    for (name, _) in files(&db_dir) {
        if name.starts_with("snap.") {
            std::fs::remove_file(db_dir.join(name)).unwrap();
        }
    }
    let before = files(&db_dir);
    let store = Store::open_read_only(&db_dir).unwrap();
    assert_eq!(seqs(&store.query(&acme()).unwrap()).len(), 100);
    drop(store);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        files(&db_dir) == before,
        "a read-only open wrote a snapshot"
    );
}

#[test]
fn a_read_only_open_of_a_missing_journal_creates_nothing() {
    let (_d, home) = key_home();
    let db_dir = home.journal_db();
    assert!(matches!(
        Store::open_read_only(&db_dir),
        Err(JournalError::NoJournal(_))
    ));
    assert!(!db_dir.exists());
}

/// sled splits an oversized tree node lazily, on a later traversal; a
/// read-only handle reads such a node as it is instead of splitting it.
#[test]
fn a_read_only_sled_handle_reads_nodes_it_may_not_split() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let n: u32 = 20_000;
    {
        let db = sled_config::config(&path).open().unwrap();
        let t = db.open_tree("bulk").unwrap();
        let mut batch = sled::Batch::default();
        for i in 0..n {
            batch.insert(&i.to_be_bytes(), vec![i as u8; 100]);
        }
        t.apply_batch(batch).unwrap();
        db.flush().unwrap();
    }
    let before = files(&path);
    let db = (0..100)
        .find_map(|_| match sled_config::read_only(&path).open() {
            Ok(db) => Some(db),
            Err(_) => {
                std::thread::sleep(Duration::from_millis(50));
                None
            }
        })
        .expect("the database stayed locked");
    let t = db.open_tree("bulk").unwrap();
    assert_eq!(t.iter().count(), n as usize);
    for i in (0..n).step_by(97) {
        assert_eq!(
            t.get(i.to_be_bytes()).unwrap().unwrap().as_ref(),
            &[i as u8; 100][..]
        );
    }
    assert!(t.insert(b"x", b"y").is_err());
    assert!(db.open_tree("new").is_err());
    drop(t);
    drop(db);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        files(&path) == before,
        "a read-only handle changed sled's files"
    );
}
