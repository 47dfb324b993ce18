//! Per-partner time-range queries go through the (partner, time, seq)
//! index and return exactly the matching records; `reverse` lists the
//! newest matches first; `kind` keeps one kind of record.

use super::support::*;
use crate::event::{Decision, EventKind};
use crate::journal::{Journal, Query};

const T0: i64 = 1_800_000_000_000;

/// 300 records: partner = acme / globex / none by turns, one per second,
/// every fifth one denied with 403.
fn filled() -> (tempfile::TempDir, crate::home::Home, Journal) {
    let (d, home) = key_home();
    let j = Journal::open(&home, &settings(100)).unwrap();
    let evs = (0..300)
        .map(|i| {
            let p = [Some("acme"), Some("globex"), None][i % 3];
            exchange(p, T0 + i as i64 * 1000, if i % 5 == 0 { 403 } else { 200 })
        })
        .collect();
    fill(&j, evs);
    (d, home, j)
}

fn seqs(rs: &[crate::journal::Record]) -> Vec<u64> {
    rs.iter().map(|r| r.seq).collect()
}

#[test]
fn partner_and_time_range_return_exactly_the_right_records() {
    let (_d, _home, j) = filled();
    // seq = i + 1; acme has i % 3 == 0; window [T0+30s, T0+60s) = i in 30..60.
    let q = Query {
        partner: Some("acme".into()),
        since_ms: Some(T0 + 30_000),
        until_ms: Some(T0 + 60_000),
        limit: 1000,
        ..Query::default()
    };
    let got = j.store().query(&q).unwrap();
    let want: Vec<u64> = (30..60).filter(|i| i % 3 == 0).map(|i| i + 1).collect();
    assert_eq!(seqs(&got), want);
    assert!(
        got.iter()
            .all(|r| r.event.partner.as_deref() == Some("acme"))
    );

    let denied = Query {
        decision: Some(Decision::Denied),
        ..q.clone()
    };
    let want: Vec<u64> = (30..60)
        .filter(|i| i % 3 == 0 && i % 5 == 0)
        .map(|i| i + 1)
        .collect();
    assert_eq!(seqs(&j.store().query(&denied).unwrap()), want);

    let status = Query {
        status: Some(200),
        limit: 3,
        ..q.clone()
    };
    let want: Vec<u64> = (30..60)
        .filter(|i| i % 3 == 0 && i % 5 != 0)
        .map(|i| i + 1)
        .take(3)
        .collect();
    assert_eq!(seqs(&j.store().query(&status).unwrap()), want);

    // Unknown partner: nothing; no partner filter: the time range for everyone.
    let none = Query {
        partner: Some("initech".into()),
        limit: 10,
        ..Query::default()
    };
    assert!(j.store().query(&none).unwrap().is_empty());
    let all = Query {
        since_ms: Some(T0 + 10_000),
        until_ms: Some(T0 + 15_000),
        limit: 100,
        ..Query::default()
    };
    assert_eq!(
        seqs(&j.store().query(&all).unwrap()),
        vec![11, 12, 13, 14, 15]
    );
}

#[test]
fn partner_queries_read_the_index_not_the_journal() {
    let (_d, home, j) = filled();
    let q = Query {
        partner: Some("globex".into()),
        since_ms: Some(T0),
        until_ms: Some(T0 + 10_000),
        limit: 100,
        ..Query::default()
    };
    assert_eq!(seqs(&j.store().query(&q).unwrap()), vec![2, 5, 8]);
    j.shutdown().unwrap();
    drop(j);
    // Stored at shutdown: every partner record listed once, in entries of
    // up to a minute of records each (100 records a partner, one a
    // second), not one entry per record.
    {
        let store = crate::journal::Store::open_read_only(&home.journal_db()).unwrap();
        let mut listed = store.index_seqs();
        listed.sort_unstable();
        let want: Vec<u64> = (1..=300u64).filter(|s| (s - 1) % 3 != 2).collect();
        assert_eq!(listed, want);
        let entries = store.index_len();
        assert!((4..=12).contains(&entries), "{entries} entries");
    }
    // Remove globex's first index entry (seqs 2, 5, 8, ...) behind the
    // journal's back: a query that uses the index no longer sees them; one
    // that scans does.
    {
        let db = raw_db(&home);
        let idx = db.open_tree(crate::journal::store::PARTNER_INDEX).unwrap();
        let key = idx
            .iter()
            .keys()
            .map(|k| k.unwrap())
            .find(|k| k[2..].starts_with(b"globex") && k.ends_with(&be(2)))
            .unwrap();
        idx.remove(key).unwrap();
        db.flush().unwrap();
    }
    let store = crate::journal::Store::open(&home.journal_db()).unwrap();
    assert_eq!(seqs(&store.query(&q).unwrap()), Vec::<u64>::new());
    let scan = Query {
        partner: None,
        ..q.clone()
    };
    let scanned = seqs(&store.query(&scan).unwrap());
    assert!([2, 5, 8].iter().all(|s| scanned.contains(s)), "{scanned:?}");
}

#[test]
fn reverse_lists_the_newest_matches_first() {
    let (_d, _home, j) = filled();
    // Through the partner index: acme is i % 3 == 0, seq = i + 1.
    let q = Query {
        partner: Some("acme".into()),
        limit: 3,
        reverse: true,
        ..Query::default()
    };
    assert_eq!(seqs(&j.store().query(&q).unwrap()), vec![298, 295, 292]);
    let windowed = Query {
        since_ms: Some(T0 + 30_000),
        until_ms: Some(T0 + 60_000),
        ..q.clone()
    };
    assert_eq!(seqs(&j.store().query(&windowed).unwrap()), vec![58, 55, 52]);
    // A scan of the whole journal, with a filter.
    let denied = Query {
        decision: Some(Decision::Denied),
        limit: 2,
        reverse: true,
        ..Query::default()
    };
    assert_eq!(seqs(&j.store().query(&denied).unwrap()), vec![296, 291]);
    let oldest = Query {
        reverse: false,
        ..denied.clone()
    };
    assert_eq!(seqs(&j.store().query(&oldest).unwrap()), vec![1, 6]);
}

#[test]
fn kind_keeps_one_kind_of_record() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(100)).unwrap();
    let mut evs: Vec<_> = (0..6)
        .map(|i| exchange(Some("acme"), T0 + i * 1000, 200))
        .collect();
    for (i, kind) in [
        EventKind::Alert,
        EventKind::Handshake,
        EventKind::HandshakeAggregate,
        EventKind::Admin,
    ]
    .into_iter()
    .enumerate()
    {
        let mut e = exchange(None, T0 + 10_000 + i as i64, 0);
        e.kind = kind;
        e.status = None;
        evs.push(e);
    }
    fill(&j, evs);
    let of = |kind| {
        let q = Query {
            kind: Some(kind),
            limit: 100,
            ..Query::default()
        };
        seqs(&j.store().query(&q).unwrap())
    };
    assert_eq!(of(EventKind::Exchange), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(of(EventKind::Alert), vec![7]);
    // Refused handshakes come with their per-address summaries.
    assert_eq!(of(EventKind::Handshake), vec![8, 9]);
    assert_eq!(of(EventKind::Admin), vec![10]);
}
