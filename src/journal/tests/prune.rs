//! Retention: `prune --before T` drops the oldest records but leaves a
//! signed checkpoint at the cut, so verification still runs from there.

use super::support::*;
use crate::journal::{CheckpointKind, ExportItem, Journal, Query, Store, Verifier};

const T0: i64 = 1_800_000_000_000;

#[test]
fn prune_keeps_verify_passing_and_sequence_numbers_dense() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(30)).unwrap();
    fill(
        &j,
        (0..100)
            .map(|i| exchange(Some("acme"), T0 + i * 1000, 200))
            .collect(),
    );
    let r = j.prune(T0 + 50_000).unwrap();
    assert_eq!((r.removed, r.base_seq), (50, 50));
    let v = j.verify().unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!((v.base_seq, v.records), (50, 50));
    assert!(j.store().get(50).unwrap().is_none());
    assert!(j.store().get(51).unwrap().is_some());
    // The index forgets pruned records too (the stored entries; the
    // writer's open ones hold none of them here).
    let listed = j.store().index_seqs();
    assert!(
        !listed.is_empty() && listed.iter().all(|s| *s > 50),
        "{listed:?}"
    );
    let q = Query {
        partner: Some("acme".into()),
        limit: 1000,
        ..Query::default()
    };
    assert_eq!(j.store().query(&q).unwrap()[0].seq, 51);
    // Export starts with the prune anchor.
    let mut items = Vec::new();
    j.store()
        .export(0, false, &|| false, &mut |i| {
            items.push(i);
            true
        })
        .unwrap();
    match &items[0] {
        ExportItem::Checkpoint(c) => assert_eq!((c.seq, c.kind), (50, CheckpointKind::Prune)),
        other => panic!("{other:?}"),
    }
    // Pruning the same cut again is a no-op; writing goes on densely.
    assert_eq!(j.prune(T0 + 50_000).unwrap().removed, 0);
    let next = fill(&j, vec![exchange(Some("acme"), T0 + 200_000, 200)]);
    assert_eq!(next, vec![101]);
    j.shutdown().unwrap();
    drop(j);

    let j = Journal::open(&home, &settings(30)).unwrap();
    assert_eq!(fill(&j, vec![exchange(None, T0 + 300_000, 200)]), vec![102]);
    let r = j.prune(i64::MAX).unwrap();
    assert_eq!((r.removed, r.base_seq), (52, 102));
    assert!(j.verify().unwrap().ok);
    assert_eq!(fill(&j, vec![exchange(None, T0, 200)]), vec![103]);
    let v = j.verify().unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.records, 1);
}

#[test]
fn tampering_after_a_prune_is_still_caught() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(1000)).unwrap();
    fill(
        &j,
        (0..20)
            .map(|i| exchange(None, T0 + i * 1000, 200))
            .collect(),
    );
    j.prune(T0 + 10_000).unwrap();
    j.shutdown().unwrap();
    drop(j);
    tamper_record(&home, 11, |v| v[70] ^= 1);
    let store = Store::open(&home.journal_db()).unwrap();
    let v = store
        .verify(&Verifier::load(&home.journal_pub()).unwrap())
        .unwrap();
    assert_eq!(v.failure.unwrap().seq, 11);
}

#[test]
fn prune_refuses_to_destroy_a_broken_chain() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(1000)).unwrap();
    fill(
        &j,
        (0..20)
            .map(|i| exchange(None, T0 + i * 1000, 200))
            .collect(),
    );
    j.shutdown().unwrap();
    drop(j);
    delete_record(&home, 5);
    let j = Journal::open(&home, &settings(1000)).unwrap();
    let err = j.prune(T0 + 10_000).unwrap_err();
    assert!(err.to_string().contains("not pruning"), "{err}");
    assert!(j.store().get(1).unwrap().is_some(), "nothing was removed");
}

#[test]
fn prune_refuses_to_cut_a_checkpoint_that_does_not_verify() {
    let (_d, home) = key_home();
    let j = Journal::open(&home, &settings(10)).unwrap();
    fill(
        &j,
        (0..30)
            .map(|i| exchange(Some("acme"), T0 + i * 1000, 200))
            .collect(),
    );
    j.shutdown().unwrap();
    drop(j);
    {
        // Forge the signature of the checkpoint at seq 10 (the chain itself
        // stays intact, so only the checkpoint check can see it).
        let db = raw_db(&home);
        let t = db.open_tree("checkpoints").unwrap();
        let mut v = t.get(be(10)).unwrap().expect("checkpoint at 10").to_vec();
        let last = v.len() - 1;
        v[last] ^= 0x01;
        t.insert(be(10), v).unwrap();
        db.flush().unwrap();
    }
    let j = Journal::open(&home, &settings(10)).unwrap();
    let err = j.prune(T0 + 25_000).unwrap_err();
    assert!(err.to_string().contains("not pruning"), "{err}");
    assert!(err.to_string().contains("checkpoint"), "{err}");
    assert!(j.store().get(1).unwrap().is_some(), "records were removed");
    // A range without the forged checkpoint still prunes.
    assert_eq!(j.prune(T0 + 5_000).unwrap().removed, 5);
}
