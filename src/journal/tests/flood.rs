//! Handshake floods: past the per-address threshold, refused handshakes are
//! folded into one aggregate record per interval, so the journal's growth
//! stays bounded.

use std::time::Duration;

use super::support::*;
use crate::event::{Decision, Event, EventKind};
use crate::journal::Journal;

fn refused(addr: &str) -> Event {
    let mut e = Event::new(EventKind::Handshake, "gatehouse-1", Decision::Denied);
    e.client_addr = Some(addr.into());
    e.reason = Some(crate::reason::Reason::UnknownCa.code().into());
    e
}

#[test]
fn ten_thousand_refusals_from_one_address_make_a_handful_of_records() {
    let (_d, home) = key_home();
    let mut s = settings(1000);
    s.handshake_refusals_per_interval = 10;
    s.handshake_aggregate_interval = Duration::from_millis(300);
    let j = Journal::open(&home, &s).unwrap();
    let rt = rt();
    rt.block_on(async {
        let acks: Vec<_> = (0..10_000)
            .map(|i| j.append(refused(&format!("203.0.113.5:{}", 1024 + i))))
            .collect();
        let results = futures_util::future::join_all(acks).await;
        let written = results.iter().filter(|r| matches!(r, Ok(Some(_)))).count();
        let folded = results.iter().filter(|r| matches!(r, Ok(None))).count();
        assert_eq!((written, folded), (10, 9990));
    });
    // The interval ends on its own (no further event needed).
    std::thread::sleep(Duration::from_millis(700));
    let recs = j.store().after(0, 100).unwrap();
    assert_eq!(recs.len(), 11, "10 individual + 1 aggregate");
    let agg = &recs[10].event;
    assert_eq!(agg.kind, EventKind::HandshakeAggregate);
    assert_eq!(agg.client_addr.as_deref(), Some("203.0.113.5"));
    assert!(
        agg.detail
            .as_deref()
            .unwrap()
            .starts_with("9990 refused handshakes from 203.0.113.5, reason unknown_ca"),
        "{agg:?}"
    );
    // A new interval admits the next few again.
    let seq = rt.block_on(j.append(refused("203.0.113.5:9"))).unwrap();
    assert_eq!(seq, Some(12));
    assert!(j.verify().unwrap().ok);
}

#[test]
fn pending_aggregates_are_written_at_shutdown() {
    let (_d, home) = key_home();
    let mut s = settings(1000);
    s.handshake_refusals_per_interval = 2;
    let j = Journal::open(&home, &s).unwrap();
    let rt = rt();
    for i in 0..5 {
        rt.block_on(j.append(refused(&format!("198.51.100.1:{i}"))))
            .unwrap();
    }
    // Other kinds are never aggregated.
    let mut ex = exchange(Some("acme"), 1, 200);
    ex.client_addr = Some("198.51.100.1:1".into());
    assert!(rt.block_on(j.append(ex)).unwrap().is_some());
    j.shutdown().unwrap();
    let recs = j.store().after(0, 100).unwrap();
    assert_eq!(recs.len(), 4);
    assert!(
        recs[3]
            .event
            .detail
            .as_deref()
            .unwrap()
            .starts_with("3 refused handshakes")
    );
}
