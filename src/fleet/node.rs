//! A node's life in the fleet: the heartbeat (every second: its key with a
//! TTL, its per-partner request counts added to the fleet's per-minute
//! and per-day counts once (a batch sent again after a lost answer is not
//! added twice), the live-node count read back), the fleet-wide anomaly
//! baseline (the other nodes' share of each partner's minute is fed to
//! this node's detector, so a spike spread over the fleet is judged
//! against the partner's whole traffic), and the alert gate (an anomaly
//! alert is raised by the first node to claim it: one per fleet).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::guard::alerts::AlertNotice;
use crate::guard::limits::{MS_PER_DAY, MS_PER_MINUTE};
use crate::guard::sink::FleetHooks;

use super::Fleet;
use super::store::StoreError;

/// A heartbeat key lives this long: a node that stops beating leaves the
/// live set within it.
pub const HEARTBEAT_TTL_SECS: u64 = 5;
const BEAT: Duration = Duration::from_secs(1);
/// While the store is down it is probed this often.
const PROBE: Duration = Duration::from_millis(250);
/// An anomaly alert claimed by one node silences the others this long.
const ALERT_CLAIM_SECS: u64 = 600;
/// At most this many of the other nodes' requests are fed to the detector
/// per partner and beat (bounded work, whatever the traffic).
const MAX_FEED: u64 = 100_000;

/// This node's requests per partner since the last beat.
#[derive(Default)]
pub struct Counts {
    pending: Mutex<HashMap<String, u64>>,
}

impl Counts {
    fn add(&self, partner: &str) {
        let mut m = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match m.get_mut(partner) {
            Some(n) => *n += 1,
            None => {
                m.insert(partner.to_string(), 1);
            }
        }
    }

    fn take(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// The event sink's hooks into the fleet.
pub struct Hooks {
    counts: Arc<Counts>,
    alerts: mpsc::Sender<AlertNotice>,
}

impl Hooks {
    pub fn new(counts: Arc<Counts>, alerts: mpsc::Sender<AlertNotice>) -> Hooks {
        Hooks { counts, alerts }
    }
}

impl FleetHooks for Hooks {
    fn exchange(&self, partner: &str) {
        self.counts.add(partner);
    }

    fn claim_alert(&self, notice: &AlertNotice) -> bool {
        self.alerts.try_send(notice.clone()).is_ok()
    }
}

/// Raises each anomaly alert once per fleet: the node whose `SET NX` on
/// the alert's key wins raises it; the others log that it is raised. With
/// the store down, every node raises its own (better twice than never).
pub async fn alert_gate(
    fleet: Arc<Fleet>,
    mut rx: mpsc::Receiver<AlertNotice>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let notice = tokio::select! {
            n = rx.recv() => match n { Some(n) => n, None => return },
            _ = shutdown.changed() => return,
        };
        let subject = notice
            .partner
            .clone()
            .or_else(|| notice.addr.clone())
            .unwrap_or_else(|| "-".into());
        let key = fleet.keys.alert(&notice.kind, &subject);
        let claimed = match fleet.connection() {
            Some(mut conn) if fleet.store_up() => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(&key)
                    .arg(&fleet.node)
                    .arg("NX")
                    .arg("EX")
                    .arg(ALERT_CLAIM_SECS);
                let set = cmd.query_async::<Option<String>>(&mut conn);
                match tokio::time::timeout(fleet.store_timeout(), set).await {
                    Ok(Ok(reply)) => reply.is_some(),
                    _ => true,
                }
            }
            _ => true,
        };
        if claimed {
            fleet.events.raise_notice(notice);
        } else {
            tracing::info!(kind = %notice.kind, subject = %subject, "anomaly alert already raised by another node of the fleet");
        }
    }
}

/// What the node knows of the current minute, to feed the detector only
/// the other nodes' requests.
#[derive(Default)]
struct MinuteBook {
    minute: i64,
    /// This node's requests already added to the fleet's count.
    own: HashMap<String, u64>,
    /// The other nodes' requests already fed to the detector.
    fed: HashMap<String, u64>,
}

/// This node's counts on their way to the store, under one id until the
/// store has answered: a beat whose answer was lost (a timeout after Redis
/// ran it) sends the same batch again, and the store adds it only once.
struct Batch {
    id: String,
    minute: i64,
    day: i64,
    counts: HashMap<String, u64>,
}

/// How long the store remembers a batch id (far longer than any retry).
const BATCH_ID_TTL_SECS: u64 = 600;

/// Adds a batch of per-partner counts to the minute's and the day's
/// hashes, once per batch id. KEYS: the batch id key, the minute hash, the
/// day hash. ARGV: the id's TTL, then partner, count pairs.
const ADD_BATCH: &str = r#"
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  for i = 2, #ARGV, 2 do
    redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
    redis.call('HINCRBY', KEYS[3], ARGV[i], ARGV[i + 1])
  end
  redis.call('EXPIRE', KEYS[2], 180)
  redis.call('EXPIRE', KEYS[3], 259200)
  return 1
end
return 0
"#;

/// Beats every second (probes every 250 ms while the store is down).
pub async fn heartbeat(fleet: Arc<Fleet>, mut shutdown: watch::Receiver<bool>) {
    let mut book = MinuteBook::default();
    let mut in_flight: Option<Batch> = None;
    let batch_ids = BatchIds::new(&fleet.node);
    loop {
        let pause = if fleet.store_up() { BEAT } else { PROBE };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = shutdown.changed() => {
                leave(&fleet).await;
                return;
            }
        }
        if fleet.conn.load().is_none() {
            match tokio::time::timeout(
                fleet.store_timeout() * 4,
                super::store::manager(&fleet.client, fleet.store_timeout()),
            )
            .await
            {
                Ok(Ok(c)) => fleet.conn.store(Some(Arc::new(c))),
                _ => continue,
            }
        }
        match beat(&fleet, &mut book, &mut in_flight, &batch_ids).await {
            Ok(()) => fleet.store_answered(),
            Err(e) => fleet.store_failed(&e.to_string()),
        }
    }
}

/// Batch ids unique to this process: the node's id, the process's start
/// and a sequence.
struct BatchIds {
    prefix: String,
    next: std::sync::atomic::AtomicU64,
}

impl BatchIds {
    fn new(node: &str) -> BatchIds {
        BatchIds {
            prefix: format!("{node}:{:x}", rand::random::<u64>()),
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }
    fn next(&self) -> String {
        format!(
            "{}:{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// One beat: heartbeat key, counts in, fleet counts and live nodes out.
async fn beat(
    fleet: &Fleet,
    book: &mut MinuteBook,
    in_flight: &mut Option<Batch>,
    ids: &BatchIds,
) -> Result<(), StoreError> {
    let Some(mut conn) = fleet.connection() else {
        return Err(StoreError::NotConnected);
    };
    let now = crate::event::now_ms();
    let minute = now.div_euclid(MS_PER_MINUTE);
    let day = now.div_euclid(MS_PER_DAY);
    if book.minute != minute {
        *book = MinuteBook {
            minute,
            ..Default::default()
        };
    }
    // The batch whose answer was lost goes again, as it was; new counts
    // wait for the next beat.
    if in_flight.is_none() {
        let counts = fleet.counts.take();
        if !counts.is_empty() {
            *in_flight = Some(Batch {
                id: ids.next(),
                minute,
                day,
                counts,
            });
        }
    }
    let keys = &fleet.keys;
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(keys.node(&fleet.node))
        .arg(fleet.heartbeat_value().to_string())
        .arg("EX")
        .arg(HEARTBEAT_TTL_SECS)
        .ignore();
    if let Some(batch) = in_flight.as_ref() {
        // EVAL in the beat's pipeline: the script is small, sent whole.
        pipe.cmd("EVAL")
            .arg(ADD_BATCH)
            .arg(3)
            .arg(keys.batch(&batch.id))
            .arg(keys.minute(batch.minute))
            .arg(keys.day(batch.day))
            .arg(BATCH_ID_TTL_SECS);
        for (p, n) in &batch.counts {
            pipe.arg(p).arg(*n);
        }
        pipe.ignore();
    }
    pipe.cmd("HGETALL").arg(keys.minute(minute));
    pipe.cmd("GET").arg(keys.generation());
    let query = pipe.query_async::<(HashMap<String, u64>, Option<u64>)>(&mut conn);
    let (fleet_minute, generation) =
        match tokio::time::timeout(fleet.store_timeout() * 4, query).await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(StoreError::NoAnswer {
                    what: "heartbeat",
                    within: fleet.store_timeout() * 4,
                });
            }
        };
    if let Some(batch) = in_flight.take()
        && batch.minute == minute
    {
        for (p, n) in batch.counts {
            *book.own.entry(p).or_default() += n;
        }
    }
    // A generation announced while this node was not listening.
    if let Some(g) = generation
        && g > fleet.heard_generation.load(Ordering::Acquire)
    {
        fleet.heard_generation.fetch_max(g, Ordering::AcqRel);
        fleet.reload.poke(false);
    }
    fleet
        .live_nodes
        .store(count_live(fleet, &mut conn).await.max(1), Ordering::Relaxed);
    feed_detector(fleet, book, &fleet_minute, now);
    Ok(())
}

/// Live nodes: heartbeat keys that have not expired.
async fn count_live(fleet: &Fleet, conn: &mut redis::aio::ConnectionManager) -> u32 {
    let mut cursor: u64 = 0;
    let mut n: u32 = 0;
    for _ in 0..100 {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(fleet.keys.node_pattern())
            .arg("COUNT")
            .arg(1000);
        let step = cmd.query_async::<(u64, Vec<String>)>(conn);
        match tokio::time::timeout(fleet.store_timeout() * 4, step).await {
            Ok(Ok((next, keys))) => {
                n = n.saturating_add(keys.len() as u32);
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
            _ => return fleet.live_nodes(),
        }
    }
    n
}

/// Feeds the detector the other nodes' requests of this minute.
fn feed_detector(
    fleet: &Fleet,
    book: &mut MinuteBook,
    fleet_minute: &HashMap<String, u64>,
    now: i64,
) {
    let detector = fleet.events.detector();
    for (p, total) in fleet_minute {
        let own = book.own.get(p).copied().unwrap_or(0);
        let fed = book.fed.entry(p.clone()).or_default();
        let others = total.saturating_sub(own).saturating_sub(*fed).min(MAX_FEED);
        for _ in 0..others {
            if let Some(alert) = detector.observe_request(p, false, now) {
                fleet.events.raise(alert);
            }
        }
        *fed += others;
    }
}

/// Leaves the fleet at shutdown: the heartbeat key goes at once.
async fn leave(fleet: &Fleet) {
    if let Some(mut conn) = fleet.connection() {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(fleet.keys.node(&fleet.node));
        let del = cmd.query_async::<()>(&mut conn);
        let _ = tokio::time::timeout(fleet.store_timeout(), del).await;
    }
}
