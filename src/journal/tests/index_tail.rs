//! The partner index's unwritten tail: the writer keeps entries open
//! across group commits and stores them every `INDEX_LAG` records and at
//! shutdown; the records after the `indexed` mark are found by reading
//! their segments — by queries, and by the writer after a crash.

use super::support::*;
use crate::event::Event;
use crate::journal::store::INDEX_LAG;
use crate::journal::{Journal, Query, Store};

const T0: i64 = 1_800_000_000_000;

/// `n` records from `from` (seq `from + 1` on), acme and globex by
/// turns, one a second.
fn events(from: usize, n: usize) -> Vec<Event> {
    (from..from + n)
        .map(|i| exchange(Some(["acme", "globex"][i % 2]), T0 + i as i64 * 1000, 200))
        .collect()
}

fn acme_all() -> Query {
    Query {
        partner: Some("acme".into()),
        limit: 100_000,
        ..Query::default()
    }
}

fn seqs(rs: &[crate::journal::Record]) -> Vec<u64> {
    rs.iter().map(|r| r.seq).collect()
}

/// acme's seqs among 1..=n (acme has the odd seqs).
fn acme_seqs(n: u64) -> Vec<u64> {
    (1..=n).step_by(2).collect()
}

#[test]
fn records_not_yet_indexed_are_found_while_running_and_after_a_lost_tail() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(1000)).unwrap();
    fill(&j, events(0, 300));
    // Most of these are in the writer's open entries, not in the tree.
    assert!(j.store().index_seqs().len() < 300);
    assert_eq!(seqs(&j.store().query(&acme_all()).unwrap()), acme_seqs(300));
    j.shutdown().unwrap();
    drop(j);

    // What a crash can leave: entries of the last records never stored and
    // the mark behind them. Here: no entry at all, the mark at 0.
    {
        let db = raw_db(&home);
        let idx = db.open_tree(crate::journal::store::PARTNER_INDEX).unwrap();
        idx.clear().unwrap();
        let meta = db.open_tree("meta").unwrap();
        meta.insert(b"indexed", &be(0)).unwrap();
        db.flush().unwrap();
    }
    // A read-only open (the CLI on a stopped broker) reads the tail.
    {
        let store = Store::open_read_only(&home.journal_db()).unwrap();
        assert!(store.index_seqs().is_empty());
        assert_eq!(seqs(&store.query(&acme_all()).unwrap()), acme_seqs(300));
        let reversed = Query {
            reverse: true,
            limit: 3,
            ..acme_all()
        };
        assert_eq!(seqs(&store.query(&reversed).unwrap()), vec![299, 297, 295]);
    }
    // The writer takes the tail back into its open entries: after more
    // records and a shutdown every partner record is listed exactly once.
    let j = Journal::open(&home, &settings(1000)).unwrap();
    fill(&j, events(300, 10));
    assert_eq!(seqs(&j.store().query(&acme_all()).unwrap()), acme_seqs(310));
    j.shutdown().unwrap();
    drop(j);
    let store = Store::open_read_only(&home.journal_db()).unwrap();
    let mut listed = store.index_seqs();
    listed.sort_unstable();
    assert_eq!(listed, (1..=310).collect::<Vec<u64>>());
    assert_eq!(seqs(&store.query(&acme_all()).unwrap()), acme_seqs(310));
}

#[test]
fn the_index_is_stored_every_index_lag_records_not_every_commit() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(100_000)).unwrap();
    let n = (INDEX_LAG as usize / 500 + 3) * 500;
    // Partner records one second apart: an entry closes after a minute of
    // records, so the tree gets closed entries as they fill, and every
    // open one once `INDEX_LAG` records are not indexed.
    for chunk in 0..n / 500 {
        fill_together(&j, events(chunk * 500, 500));
    }
    let listed = j.store().index_seqs();
    let n = n as u64;
    assert!(
        listed.len() as u64 >= INDEX_LAG && (listed.len() as u64) < n,
        "{} of {n} listed",
        listed.len()
    );
    // Far fewer entries than commits: a minute of one partner's records
    // (30) per entry.
    let entries = j.store().index_len() as u64;
    assert!(entries * 20 < n, "{entries} entries for {n} records");
    let found = seqs(&j.store().query(&acme_all()).unwrap());
    assert!(
        found == acme_seqs(n),
        "indexed and not yet indexed records, each once: {} found",
        found.len()
    );
    j.shutdown().unwrap();
    drop(j);
    let store = Store::open_read_only(&home.journal_db()).unwrap();
    let mut listed = store.index_seqs();
    listed.sort_unstable();
    assert!(
        listed == (1..=n).collect::<Vec<u64>>(),
        "{} listed for {n} records",
        listed.len()
    );
}
