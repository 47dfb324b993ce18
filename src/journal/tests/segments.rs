//! The storage layout: a group commit is one segment value, the partner
//! index has one entry per partner per run of records; partner queries merge those entries
//! into exact (time, seq) order whatever the records' times; prune cuts
//! inside a segment; plain segments of a build before compression read
//! beside compressed ones; a journal of the older one-value-per-record layout is
//! migrated on open with every seq, hash and checkpoint kept (tampering
//! included), also when a migration was interrupted.

use super::support::*;
use crate::event::Event;
use crate::home::Home;
use crate::journal::{ExportItem, Journal, Query, Record, Store, Verifier};

const T0: i64 = 1_800_000_000_000;

/// Appends `events` concurrently (so they share group commits).
/// A small deterministic generator (xorshift) for record times.
fn times(n: usize, seed: u64) -> Vec<i64> {
    let mut x = seed;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly rising, with jitter of up to ±90 s and a few far outliers.
            let jitter = (x % 180_000) as i64 - 90_000;
            let far = if x.is_multiple_of(97) { 3_600_000 } else { 0 };
            T0 + i as i64 * 1000 + jitter - far
        })
        .collect()
}

fn all_records(store: &Store) -> Vec<Record> {
    store.after(0, usize::MAX).unwrap()
}

/// What a query must return, computed from every record.
fn expected(all: &[Record], q: &Query) -> Vec<u64> {
    let mut m: Vec<&Record> = all
        .iter()
        .filter(|r| {
            let e = &r.event;
            q.partner
                .as_ref()
                .is_none_or(|p| e.partner.as_ref() == Some(p))
                && q.since_ms.is_none_or(|s| e.time_ms >= s)
                && q.until_ms.is_none_or(|u| e.time_ms < u)
                && q.status.is_none_or(|s| e.status == Some(s))
        })
        .collect();
    if q.partner.is_some() {
        m.sort_by_key(|r| (r.event.time_ms, r.seq));
    }
    if q.reverse {
        m.reverse();
    }
    m.into_iter().take(q.limit).map(|r| r.seq).collect()
}

fn seqs(rs: &[Record]) -> Vec<u64> {
    rs.iter().map(|r| r.seq).collect()
}

fn verify(home: &Home) -> crate::journal::VerifyReport {
    Store::open(&home.journal_db())
        .unwrap()
        .verify(&Verifier::load(&home.journal_pub()).unwrap())
        .unwrap()
}

#[test]
fn a_group_commit_is_one_segment_and_a_partners_records_share_an_entry() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(10_000)).unwrap();
    let mut total = 0;
    for round in 0..5 {
        let evs: Vec<Event> = (0..12)
            .map(|i| {
                exchange(
                    Some(["acme", "globex"][i % 2]),
                    T0 + round * 100 + i as i64,
                    200,
                )
            })
            .collect();
        total += fill_together(&j, evs).len();
    }
    assert_eq!(total, 60);
    j.shutdown().unwrap();
    drop(j);
    let segments = segment_count(&home);
    // The writer takes what arrived together: fewer segments than records;
    // each partner's 30 records (half a second apart at most) are one
    // index entry, stored at shutdown.
    assert!(segments < 60, "{segments} segments for 60 records");
    let entries = Store::open(&home.journal_db()).unwrap().index_len();
    assert_eq!(entries, 2, "{segments} segments");
    let r = verify(&home);
    assert!(r.ok && r.records == 60, "{r:?}");
}

/// The plain size of every stored segment of a closed journal.
fn plain_sizes(home: &Home) -> Vec<usize> {
    let db = raw_db(home);
    let segs = db.open_tree(crate::journal::store::SEGMENTS).unwrap();
    segs.iter()
        .map(|kv| {
            let v = kv.unwrap().1;
            crate::journal::store::segment::Plain::of(&v)
                .unwrap()
                .as_bytes()
                .len()
        })
        .collect()
}

#[test]
fn segments_are_32_kib_on_8_mib_sled_segments_and_6_kib_on_older_journals() {
    use crate::journal::store::segment::{SEGMENT_BYTES, SMALL_SEGMENT_BYTES};
    let evs = || -> Vec<Event> {
        (0..400)
            .map(|i| exchange(Some(["acme", "globex"][i % 2]), T0 + i as i64, 200))
            .collect()
    };
    // 400 records written together, then the plain sizes of the segments.
    let written = |home: &Home| -> Vec<usize> {
        let j = Journal::open(home, &settings(10_000)).unwrap();
        fill_together(&j, evs());
        j.shutdown().unwrap();
        drop(j);
        assert!(verify(home).ok);
        plain_sizes(home)
    };
    // A new journal.
    let (_d, home) = key_home();
    let sizes = written(&home);
    assert!(
        sizes.iter().any(|s| *s > SMALL_SEGMENT_BYTES) && sizes.iter().all(|s| *s <= SEGMENT_BYTES),
        "{sizes:?}"
    );

    // A journal created on sled's default 512 KiB log segments keeps
    // values small enough for its leaves to stay under sled's blob size.
    let (_d, home) = key_home();
    {
        let db = sled::Config::new().path(home.journal_db()).open().unwrap();
        db.insert(b"created", b"by an older build").unwrap();
        db.flush().unwrap();
    }
    let sizes = written(&home);
    assert!(
        sizes.len() > 1 && sizes.iter().all(|s| *s <= SMALL_SEGMENT_BYTES),
        "{sizes:?}"
    );
}

/// The layout byte of every stored segment of a closed journal.
fn layouts(home: &Home) -> Vec<u8> {
    let db = raw_db(home);
    let segs = db.open_tree(crate::journal::store::SEGMENTS).unwrap();
    segs.iter().map(|kv| kv.unwrap().1[0]).collect()
}

#[test]
fn plain_segments_of_a_build_before_compression_read_beside_compressed_ones() {
    use crate::journal::store::segment::Plain;
    let (_d, home) = key_home();
    let evs = |from: i64| -> Vec<Event> {
        (0..150)
            .map(|i| exchange(Some(["acme", "globex"][i as usize % 2]), T0 + from + i, 200))
            .collect()
    };
    {
        let j = Journal::open(&home, &settings(100)).unwrap();
        fill_together(&j, evs(0));
        j.shutdown().unwrap();
    }
    // Every stored segment rewritten in the plain layout, as a build
    // before compression stored it.
    {
        let db = raw_db(&home);
        let segs = db.open_tree(crate::journal::store::SEGMENTS).unwrap();
        let mut rewritten = 0;
        for kv in segs.iter() {
            let (k, v) = kv.unwrap();
            let plain = Plain::of(&v).unwrap().as_bytes().to_vec();
            if plain != v.as_ref() {
                segs.insert(k, plain).unwrap();
                rewritten += 1;
            }
        }
        assert!(rewritten > 0, "no segment was stored compressed");
        db.flush().unwrap();
    }
    assert!(layouts(&home).iter().all(|l| *l == 1));
    {
        let j = Journal::open(&home, &settings(100)).unwrap();
        fill_together(&j, evs(1000));
        j.shutdown().unwrap();
    }
    let l = layouts(&home);
    assert!(l.contains(&1) && l.contains(&2), "{l:?}");
    let r = verify(&home);
    assert!(r.ok && r.records == 300, "{r:?}");
    let store = Store::open(&home.journal_db()).unwrap();
    let all = all_records(&store);
    assert_eq!(seqs(&all), (1..=300).collect::<Vec<u64>>());
    let q = Query {
        partner: Some("globex".into()),
        limit: 1000,
        ..Query::default()
    };
    let got = seqs(&store.query(&q).unwrap());
    assert_eq!(got.len(), 150);
    assert_eq!(got, expected(&all, &q));
}

#[test]
fn partner_queries_return_exact_time_order_whatever_the_times() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(500)).unwrap();
    let ts = times(2000, 0x9e37_79b9_7f4a_7c15);
    for chunk in ts.chunks(100) {
        let evs: Vec<Event> = chunk
            .iter()
            .enumerate()
            .map(|(i, t)| {
                exchange(
                    Some(["acme", "globex", "initech"][(*t as usize + i) % 3]),
                    *t,
                    if i % 7 == 0 { 403 } else { 200 },
                )
            })
            .collect();
        fill_together(&j, evs);
    }
    let all = all_records(j.store());
    assert_eq!(all.len(), 2000);
    let mut checked = 0;
    for partner in ["acme", "initech"] {
        for (since, until) in [
            (None, None),
            (Some(T0 + 300_000), Some(T0 + 900_000)),
            (Some(T0 - 3_000_000), Some(T0 + 100_000)),
            (Some(T0 + 1_500_000), None),
        ] {
            for reverse in [false, true] {
                for limit in [1, 7, 100, 5000] {
                    for status in [None, Some(403)] {
                        let q = Query {
                            partner: Some(partner.into()),
                            since_ms: since,
                            until_ms: until,
                            status,
                            limit,
                            reverse,
                            ..Query::default()
                        };
                        assert_eq!(
                            seqs(&j.store().query(&q).unwrap()),
                            expected(&all, &q),
                            "{q:?}"
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    assert_eq!(checked, 128);
}

#[test]
fn prune_inside_a_segment_rewrites_only_its_tail_and_verify_passes() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(1000)).unwrap();
    let evs: Vec<Event> = (0..200)
        .map(|i| exchange(Some(["acme", "globex"][i % 2]), T0 + i as i64 * 1000, 200))
        .collect();
    for chunk in evs.chunks(50) {
        fill_together(&j, chunk.to_vec());
    }
    // Cut at 73: inside a commit (and a segment) of records 51..=100.
    let r = j.prune(T0 + 73_000).unwrap();
    assert_eq!((r.removed, r.base_seq), (73, 73));
    let v = j.verify().unwrap();
    assert!(v.ok && v.records == 127, "{v:?}");
    assert!(j.store().get(73).unwrap().is_none());
    assert_eq!(j.store().get(74).unwrap().unwrap().seq, 74);
    let q = Query {
        partner: Some("globex".into()),
        limit: 1000,
        ..Query::default()
    };
    let got = seqs(&j.store().query(&q).unwrap());
    assert_eq!(got, (74..=200).filter(|s| s % 2 == 0).collect::<Vec<_>>());
    // Appending and pruning again go on from the cut.
    assert_eq!(
        fill(&j, vec![exchange(Some("acme"), T0 + 300_000, 200)]),
        vec![201]
    );
    assert_eq!(j.prune(T0 + 150_000).unwrap().base_seq, 150);
    assert!(j.verify().unwrap().ok);
    j.shutdown().unwrap();
}

/// 5,000 records of three partners (and some without) in the older layout.
fn old_events() -> Vec<Event> {
    (0..5000)
        .map(|i| {
            let p = [Some("acme"), Some("globex"), Some("initech"), None][i % 4];
            exchange(p, T0 + i as i64 * 10, if i % 9 == 0 { 403 } else { 200 })
        })
        .collect()
}

#[test]
fn a_journal_of_the_older_layout_is_migrated_with_every_seq_hash_and_checkpoint() {
    let (_d, home) = key_home();
    let events = old_events();
    let hashes = write_records_layout(&home, &events, 1000);
    let j = Journal::open(&home, &settings(1000)).unwrap();
    let v = j.verify().unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!((v.records, v.last_seq, v.checkpoints), (5000, 5000, 5));
    let all = all_records(j.store());
    assert_eq!(all.len(), 5000);
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.hash, hashes[i], "seq {}", r.seq);
        assert_eq!(r.event, events[i], "seq {}", r.seq);
    }
    for q in [
        Query {
            partner: Some("globex".into()),
            limit: 100,
            ..Query::default()
        },
        Query {
            partner: Some("initech".into()),
            since_ms: Some(T0 + 20_000),
            until_ms: Some(T0 + 30_000),
            limit: 1000,
            reverse: true,
            ..Query::default()
        },
    ] {
        let got = seqs(&j.store().query(&q).unwrap());
        assert!(!got.is_empty());
        assert_eq!(got, expected(&all, &q), "{q:?}");
    }
    let mut exported = (0, 0);
    j.store()
        .export(0, false, &|| false, &mut |i| {
            match i {
                ExportItem::Record(_) => exported.0 += 1,
                ExportItem::Checkpoint(_) => exported.1 += 1,
            }
            true
        })
        .unwrap();
    assert_eq!(exported, (5000, 5));
    // New records chain on from the migrated ones.
    assert_eq!(
        fill(&j, vec![exchange(Some("acme"), T0 + 60_000, 200)]),
        vec![5001]
    );
    j.shutdown().unwrap();
    drop(j);
    let names = raw_db(&home).tree_names();
    assert!(
        !names
            .iter()
            .any(|n| n.as_ref() == b"records" || n.as_ref() == b"by_partner"),
        "the older trees are gone"
    );
    assert!(segment_count(&home) < 5000 / 10, "records are packed");
    let r = verify(&home);
    assert!(r.ok && r.records == 5001, "{r:?}");
}

#[test]
fn migration_carries_tampering_over_instead_of_laundering_it() {
    let (_d, home) = key_home();
    write_records_layout(&home, &old_events(), 1000);
    {
        let db = raw_db(&home);
        let t = db.open_tree("records").unwrap();
        let mut v = t.get(be(1234)).unwrap().unwrap().to_vec();
        let n = v.len();
        v[n - 2] ^= 1;
        t.insert(be(1234), v).unwrap();
        t.remove(be(3000)).unwrap();
        db.flush().unwrap();
    }
    let f = verify(&home).failure.expect("verify must fail");
    assert_eq!(f.seq, 1234, "{f:?}");
    assert!(f.reason.contains("altered"), "{f:?}");
    // The deletion is still there too, once the altered record is put back.
    tamper_record(&home, 1234, |v| {
        let n = v.len();
        v[n - 2] ^= 1;
    });
    let f = verify(&home).failure.expect("verify must fail");
    assert_eq!(f.seq, 3000, "{f:?}");
    assert!(f.reason.contains("missing"), "{f:?}");
}

#[test]
fn an_interrupted_migration_resumes_without_storing_a_record_twice() {
    let (_d, home) = key_home();
    write_records_layout(&home, &old_events(), 1000);
    {
        // What a crash after a slice's inserts and before its removals
        // leaves: the first 700 records in segments and in the old tree.
        let db = raw_db(&home);
        let old = db.open_tree("records").unwrap();
        let segs = db.open_tree(crate::journal::store::SEGMENTS).unwrap();
        let first: Vec<(u64, Vec<u8>)> = old
            .iter()
            .take(700)
            .map(|kv| {
                let (k, v) = kv.unwrap();
                (
                    u64::from_be_bytes(k.as_ref().try_into().unwrap()),
                    v.to_vec(),
                )
            })
            .collect();
        let parts: Vec<_> = first
            .iter()
            .map(|(s, v)| {
                let (p, h, c) = crate::journal::record::split_stored(v).unwrap();
                (*s, p, h, c)
            })
            .collect();
        for (f, v) in crate::journal::store::segment::pack(
            parts,
            crate::journal::store::segment::SEGMENT_BYTES,
        ) {
            segs.insert(be(f), v).unwrap();
        }
        db.flush().unwrap();
    }
    let r = verify(&home);
    assert!(r.ok, "{r:?}");
    assert_eq!((r.records, r.last_seq), (5000, 5000));
}
