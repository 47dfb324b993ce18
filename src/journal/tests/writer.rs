//! Unit tests of the writer: durability modes, group commit, fail-closed
//! recovery, checkpoints and sequence recovery (real sled on temp dirs).

use std::time::Duration;

use super::support::{delete_record, key_home, rt, stored_record, tamper_record};
use crate::config::{Durability, JournalSettings};
use crate::event::{Decision, Event, EventKind, Recorder};
use crate::journal::*;

fn settings(d: Durability) -> JournalSettings {
    JournalSettings {
        durability: d,
        flush_interval: Duration::from_secs(3600),
        checkpoint_every: 100,
        ..JournalSettings::default()
    }
}

fn ev(i: usize) -> Event {
    let mut e = Event::new(EventKind::Exchange, "n1", Decision::Allowed);
    e.partner = Some(format!("p{}", i % 3));
    e.status = Some(200);
    e
}

#[test]
fn announced_records_are_counted_until_handed_over() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(Durability::Strict)).unwrap();
    rt().block_on(async {
        let a = j.expect_record();
        let b = j.expect_record();
        assert_eq!(j.stats().expected_records, 2);
        let ack = j.record(ev(1));
        a.release();
        ack.await.unwrap();
        assert_eq!(j.stats().expected_records, 1);
        drop(b);
        assert_eq!(j.stats().expected_records, 0);
        // With nothing announced, a lone record is written at once.
        assert_eq!(j.append(ev(2)).await.unwrap(), Some(2));
    });
}

#[test]
fn strict_ack_resolves_only_after_the_flush_that_holds_the_record() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(Durability::Strict)).unwrap();
    rt().block_on(async {
        for i in 0..20 {
            let seq = j.append(ev(i)).await.unwrap().unwrap();
            let s = j.stats();
            assert!(
                s.durable_seq >= seq,
                "acked {seq} but durable only {}",
                s.durable_seq
            );
        }
    });
    assert!(j.stats().flushes >= 1);
}

#[test]
fn relaxed_ack_does_not_wait_for_a_flush() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(Durability::Relaxed)).unwrap();
    let seq = rt().block_on(j.append(ev(0))).unwrap().unwrap();
    let s = j.stats();
    assert_eq!(seq, 1);
    assert_eq!(s.flushes, 0, "flush_interval is 1h: no flush yet");
    assert_eq!(s.durable_seq, 0);
    // The Recorder ack resolves once queued; the record follows as seq 2.
    rt().block_on(j.record(ev(1))).unwrap();
    j.shutdown().unwrap();
    assert_eq!(j.stats().durable_seq, 2, "shutdown flushes");
    assert_eq!(j.store().tail(10).unwrap().len(), 2);
}

#[test]
fn relaxed_mode_flushes_every_interval() {
    let (_d, home) = key_home();
    let mut s = settings(Durability::Relaxed);
    s.flush_interval = Duration::from_millis(20);
    let j = Journal::open(&home, &s).unwrap();
    rt().block_on(j.append(ev(0))).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(j.stats().durable_seq, 1);
    assert_eq!(j.stats().flushes, 1);
}

#[test]
fn relaxed_mode_flushes_on_schedule_under_continuous_load() {
    let (_d, home) = key_home();
    let mut s = settings(Durability::Relaxed);
    s.flush_interval = Duration::from_millis(20);
    let j = Journal::open(&home, &s).unwrap();
    let rt = rt();
    // Records never stop coming; flushes must still happen on the clock
    // (bounded: 10 s, enough on a loaded machine, where one flush can take
    // far longer than the 20 ms interval).
    let t0 = std::time::Instant::now();
    let mut i = 0;
    while j.stats().flushes < 5 && t0.elapsed() < Duration::from_secs(10) {
        rt.block_on(j.record(ev(i))).unwrap();
        i += 1;
    }
    let st = j.stats();
    assert!(
        st.flushes >= 5,
        "{} flushes in {:?} of continuous load ({i} records)",
        st.flushes,
        t0.elapsed()
    );
    assert!(st.durable_seq > 0);
}

#[test]
fn concurrent_records_share_group_commits() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(Durability::Strict)).unwrap();
    let n = 2000;
    rt().block_on(async {
        let acks: Vec<_> = (0..n).map(|i| j.append(ev(i))).collect();
        let mut seqs: Vec<u64> = futures_util::future::join_all(acks)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap())
            .collect();
        seqs.sort();
        assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>());
    });
    let flushes = j.stats().flushes;
    assert!(
        flushes < n as u64 / 4,
        "{flushes} flushes for {n} records: no group commit"
    );
}

#[test]
fn injected_failure_fails_closed_then_recovers() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(Durability::Strict)).unwrap();
    let rt = rt();
    rt.block_on(j.record(ev(0))).unwrap();
    assert!(j.writable());
    j.inject_write_failure(true);
    let err = rt.block_on(j.record(ev(1))).unwrap_err();
    assert!(err.0.contains("injected"), "{err}");
    assert!(!j.writable());
    assert!(
        rt.block_on(j.record(ev(2))).is_err(),
        "refused while failing"
    );
    std::thread::sleep(Duration::from_millis(100));
    assert!(!j.writable(), "still failing while the fault is on");
    j.inject_write_failure(false);
    let t0 = std::time::Instant::now();
    while !j.writable() {
        assert!(t0.elapsed() < Duration::from_secs(5), "did not recover");
        std::thread::sleep(Duration::from_millis(10));
    }
    let seq = rt.block_on(j.append(ev(3))).unwrap().unwrap();
    assert_eq!(seq, 2, "failed records took no sequence number");
    assert!(j.stats().write_failures >= 1);
    assert!(j.verify().unwrap().ok);
    // The failed batch (ev(1), partner p1) was inserted before its flush
    // failed: it must not read as an exchange that happened.
    let rec = j.store().get(2).unwrap().unwrap();
    assert_eq!(rec.event.partner.as_deref(), Some("p0"));
    let q = Query {
        partner: Some("p1".into()),
        limit: 10,
        ..Query::default()
    };
    assert!(
        j.store().query(&q).unwrap().is_empty(),
        "index kept the failed record"
    );
}

#[test]
fn a_checkpoint_is_signed_within_checkpoint_interval_of_new_records() {
    let (_d, home) = key_home();
    let s = JournalSettings {
        checkpoint_every: 1_000_000,
        checkpoint_interval: Duration::from_secs(1),
        ..settings(Durability::Strict)
    };
    let j = Journal::open(&home, &s).unwrap();
    let rt = rt();
    for i in 0..3 {
        rt.block_on(j.record(ev(i))).unwrap();
    }
    assert_eq!(j.verify().unwrap().unsigned_tail, 3);
    let t0 = std::time::Instant::now();
    while j.verify().unwrap().unsigned_tail != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "no checkpoint 3 s after the last record"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(700),
        "signed too early"
    );
    let report = j.verify().unwrap();
    assert!(report.ok);
    assert_eq!(report.last_checkpoint_seq, Some(3));
    // Idle: no new records, no new checkpoints.
    std::thread::sleep(Duration::from_millis(1300));
    assert_eq!(j.verify().unwrap().checkpoints, 1);
    rt.block_on(j.record(ev(4))).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(j.verify().unwrap().last_checkpoint_seq, Some(4));
}

#[test]
fn seqs_are_dense_across_reopen_and_checkpoints_are_signed() {
    let (_d, home) = key_home();
    let rt = rt();
    for round in 0..3u64 {
        let j = Journal::open(&home, &settings(Durability::Strict)).unwrap();
        for i in 0..150 {
            let seq = rt.block_on(j.append(ev(i))).unwrap().unwrap();
            assert_eq!(seq, round * 150 + i as u64 + 1);
        }
        j.shutdown().unwrap();
        j.shutdown().unwrap(); // idempotent
        assert!(
            rt.block_on(j.record(ev(0))).is_err(),
            "closed after shutdown"
        );
    }
    let store = Store::open(&home.journal_db()).unwrap();
    let report = store
        .verify(&Verifier::load(&home.journal_pub()).unwrap())
        .unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.records, 450);
    // periodic at 100..400 plus shutdown at 150, 300, 450
    let seqs: Vec<u64> = store
        .checkpoints_between(0, 1000)
        .unwrap()
        .iter()
        .map(|c| c.seq)
        .collect();
    assert_eq!(seqs, vec![100, 150, 200, 300, 400, 450]);
    assert_eq!(report.unsigned_tail, 0);
}

#[test]
fn dropping_the_last_handle_shuts_down_cleanly() {
    let (_d, home) = key_home();
    {
        let j = Journal::open(&home, &settings(Durability::Relaxed)).unwrap();
        rt().block_on(j.append(ev(0))).unwrap();
    }
    // The lock is released and the record is there.
    let j = Journal::open(&home, &settings(Durability::Strict)).unwrap();
    assert_eq!(j.stats().last_seq, 1);
}

#[test]
fn a_mismatched_public_key_is_refused_at_open() {
    let (_d, home) = key_home();
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(home.journal_pub(), other.public_key_pem()).unwrap();
    let err = Journal::open(&home, &settings(Durability::Strict))
        .err()
        .unwrap();
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn a_second_opener_is_told_the_database_is_locked() {
    let (_d, home) = key_home();
    let _j = Journal::open(&home, &settings(Durability::Strict)).unwrap();
    let err = Store::open(&home.journal_db()).err().unwrap();
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
}

#[test]
fn verify_in_parallel_ranges_checks_the_links_between_them() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(Durability::Strict)).unwrap();
    let rt = rt();
    rt.block_on(async {
        let acks: Vec<_> = (0..1000).map(|i| j.append(ev(i))).collect();
        futures_util::future::join_all(acks).await;
    });
    let v = Verifier::load(&home.journal_pub()).unwrap();
    let store = j.store().clone();
    for parts in [1, 2, 3, 7, 1000] {
        let r = store.verify_in_parts(&v, Some(parts)).unwrap();
        assert!(r.ok, "{parts}: {r:?}");
        assert_eq!(r.records, 1000);
    }
    drop(store);
    j.shutdown().unwrap();
    drop(j);
    // With 4 parts of 250, record 501 starts the third range: rewrite it
    // with a consistent hash of its own, so only the link into it breaks.
    let old = stored_record(&home, 501);
    tamper_record(&home, 501, |v| {
        let canonical = record::split_stored(v).unwrap().2.to_vec();
        let canonical = canonical.as_slice();
        let fake_prev = [1u8; 32];
        let h = record::chain_hash(&fake_prev, canonical);
        *v = record::stored_value(&fake_prev, &h, canonical);
    });
    let store = Store::open(&home.journal_db()).unwrap();
    for parts in [1, 2, 4, 5] {
        let f = store
            .verify_in_parts(&v, Some(parts))
            .unwrap()
            .failure
            .unwrap();
        assert_eq!(f.seq, 501, "{parts}: {f:?}");
        assert!(f.reason.contains("prev_hash"), "{f:?}");
    }
    drop(store);
    tamper_record(&home, 501, |v| *v = old);
    // A record missing at the end of a range.
    delete_record(&home, 250);
    let store = Store::open(&home.journal_db()).unwrap();
    assert!(
        store
            .verify_in_parts(&v, Some(1))
            .unwrap()
            .failure
            .is_some()
    );
    for parts in [1, 4] {
        let f = store
            .verify_in_parts(&v, Some(parts))
            .unwrap()
            .failure
            .unwrap();
        assert_eq!(f.seq, 250, "{parts}: {f:?}");
        assert!(f.reason.contains("missing"), "{f:?}");
    }
}

#[test]
fn retune_puts_new_checkpoint_settings_in_force_without_reopening() {
    let (_d, home) = key_home();
    let s = JournalSettings {
        checkpoint_every: 1_000_000,
        checkpoint_interval: Duration::from_secs(3600),
        ..settings(Durability::Strict)
    };
    let j = Journal::open(&home, &s).unwrap();
    let rt = rt();
    for i in 0..3 {
        rt.block_on(j.record(ev(i))).unwrap();
    }
    assert_eq!(j.verify().unwrap().unsigned_tail, 3);
    // A reload asks for a checkpoint every 2 records and at least each second.
    j.retune(&JournalSettings {
        checkpoint_every: 2,
        checkpoint_interval: Duration::from_secs(1),
        ..s.clone()
    })
    .unwrap();
    rt.block_on(j.record(ev(3))).unwrap();
    assert_eq!(
        j.verify().unwrap().last_checkpoint_seq,
        Some(4),
        "seq 4 is a multiple of the new checkpoint_every"
    );
    rt.block_on(j.record(ev(4))).unwrap();
    // The new interval signs the tail (seq 5) by itself, within bounds.
    let t0 = std::time::Instant::now();
    while j.verify().unwrap().unsigned_tail != 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "no checkpoint 5 s after the last record with checkpoint_interval = 1s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(j.verify().unwrap().last_checkpoint_seq, Some(5));
}

#[test]
fn under_min_free_the_journal_fails_closed_before_writing() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(Durability::Strict)).unwrap();
    let rt = rt();
    rt.block_on(j.record(ev(0))).unwrap();
    j.shutdown().unwrap();
    drop(j);
    // A margin larger than the free space there is: refused, nothing written.
    let (free, _) = crate::journal::space::free_space(&home.journal_db()).unwrap();
    let s = JournalSettings {
        min_free: crate::journal::space::MinFree::Bytes(free.saturating_mul(2).max(1 << 20)),
        ..settings(Durability::Strict)
    };
    let j = Journal::open(&home, &s).unwrap();
    let err = rt.block_on(j.record(ev(1))).unwrap_err();
    assert!(
        err.0.contains("disk_low") && err.0.contains("min_free"),
        "{}",
        err.0
    );
    assert!(!j.writable());
    let st = j.stats();
    assert!(st.disk_low, "{st:?}");
    assert_eq!(st.last_seq, 1, "nothing written under the margin");
    assert!(rt.block_on(j.record(ev(2))).is_err(), "still refused");
}

#[test]
fn retune_applies_a_new_min_free_to_the_next_write() {
    let (_d, home) = key_home();
    let rt = rt();
    let (free, _) = {
        let j = Journal::open(&home, &settings(Durability::Strict)).unwrap();
        rt.block_on(j.record(ev(0))).unwrap();
        j.shutdown().unwrap();
        crate::journal::space::free_space(&home.journal_db()).unwrap()
    };
    let s = settings(Durability::Strict);
    let j = Journal::open(&home, &s).unwrap();
    rt.block_on(j.record(ev(1))).unwrap();
    // A reload raises the margin above the free space there is: refused.
    let high = crate::journal::space::MinFree::Bytes(free.saturating_mul(2).max(1 << 20));
    j.retune(&JournalSettings {
        min_free: high,
        ..s.clone()
    })
    .unwrap();
    assert!(rt.block_on(j.record(ev(2))).is_err());
    // Turned off by the next reload: the journal takes records again.
    j.retune(&JournalSettings {
        min_free: crate::journal::space::MinFree::Bytes(0),
        ..s.clone()
    })
    .unwrap();
    let t0 = std::time::Instant::now();
    while rt.block_on(j.record(ev(3))).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the journal did not resume"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
