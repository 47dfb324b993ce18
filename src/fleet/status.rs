//! `gatehouse status --fleet`: the fleet as the store sees it: live nodes
//! (heartbeat keys that have not expired) with their version, the
//! configuration generation each has applied against the fleet's (a node
//! behind has not picked up a change), the settings each waits to restart
//! for (`restart pending: …`), the per-partner request totals of
//! the current minute and UTC day across the fleet, and the last
//! announced changes.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;

use crate::guard::limits::{MS_PER_DAY, MS_PER_MINUTE};
use crate::home::Home;

use super::store::{self, Keys, StoreError};

/// The fleet view.
#[derive(Debug, Serialize)]
pub struct FleetView {
    pub generation: u64,
    pub nodes: Vec<serde_json::Value>,
    /// Per partner: requests this minute and today (UTC), fleet-wide.
    pub partners: BTreeMap<String, PartnerTotals>,
    pub recent_changes: Vec<serde_json::Value>,
}

#[derive(Debug, Default, Serialize)]
pub struct PartnerTotals {
    pub this_minute: u64,
    pub last_minute: u64,
    pub today: u64,
}

/// Reads the fleet view from the store named by the home's `[cluster]`.
pub fn read(home: &Home) -> Result<FleetView, StoreError> {
    let cfg = crate::config::load_gateway(home)?;
    let cluster = cfg.cluster.ok_or(StoreError::NoCluster)?;
    let client = store::client(home, &cluster)?;
    let url = crate::config::cluster::redact(&cluster.redis_url);
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|source| StoreError::Store {
            url: format!("{url} does not answer"),
            source,
        })?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let keys = Keys::new(&cluster.key_prefix);
    let q = |source: redis::RedisError| StoreError::Store {
        url: url.clone(),
        source,
    };

    let mut node_keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    for _ in 0..1000 {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(keys.node_pattern())
            .arg("COUNT")
            .arg(1000)
            .query(&mut conn)
            .map_err(q)?;
        node_keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    node_keys.sort();
    let mut nodes = Vec::new();
    for k in &node_keys {
        let v: Option<String> = redis::cmd("GET").arg(k).query(&mut conn).map_err(q)?;
        if let Some(v) = v.and_then(|v| serde_json::from_str::<serde_json::Value>(&v).ok()) {
            nodes.push(v);
        }
    }
    let now = crate::event::now_ms();
    let minute = now.div_euclid(MS_PER_MINUTE);
    let day = now.div_euclid(MS_PER_DAY);
    let generation: Option<u64> = redis::cmd("GET")
        .arg(keys.generation())
        .query(&mut conn)
        .map_err(q)?;
    let mut partners: BTreeMap<String, PartnerTotals> = BTreeMap::new();
    let this: HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(keys.minute(minute))
        .query(&mut conn)
        .map_err(q)?;
    let last: HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(keys.minute(minute - 1))
        .query(&mut conn)
        .map_err(q)?;
    let today: HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(keys.day(day))
        .query(&mut conn)
        .map_err(q)?;
    for (p, n) in this {
        partners.entry(p).or_default().this_minute = n;
    }
    for (p, n) in last {
        partners.entry(p).or_default().last_minute = n;
    }
    for (p, n) in today {
        partners.entry(p).or_default().today = n;
    }
    let recent: Vec<String> = redis::cmd("LRANGE")
        .arg(keys.changes())
        .arg(0)
        .arg(9)
        .query(&mut conn)
        .map_err(q)?;
    Ok(FleetView {
        generation: generation.unwrap_or(0),
        nodes,
        partners,
        recent_changes: recent
            .iter()
            .filter_map(|s| serde_json::from_str(s).ok())
            .collect(),
    })
}

/// Prints the fleet view (text, or JSON with `json`).
/// `restart pending: server.listen, ...` for a node whose files changed
/// settings only a restart applies; `None` when nothing waits.
fn restart_pending_line(node: &serde_json::Value) -> Option<String> {
    let keys: Vec<&str> = node["restart_pending"]
        .as_array()?
        .iter()
        .filter_map(|k| k.as_str())
        .collect();
    (!keys.is_empty()).then(|| format!("restart pending: {}", keys.join(", ")))
}

pub fn print(view: &FleetView, json: bool) -> Result<(), serde_json::Error> {
    if json {
        println!("{}", serde_json::to_string_pretty(view)?);
        return Ok(());
    }
    println!(
        "fleet: {} live node(s); configuration generation {}",
        view.nodes.len(),
        view.generation
    );
    println!(
        "  {:<20} {:<9} {:<10} {:<22} {:<8}",
        "NODE", "VERSION", "GENERATION", "LISTEN", "UP"
    );
    let now = crate::event::now_ms();
    for n in &view.nodes {
        let g = n["generation"].as_u64().unwrap_or(0);
        let behind = if g < view.generation { " (behind)" } else { "" };
        let up_s = (now - n["started_ms"].as_i64().unwrap_or(now)).max(0) / 1000;
        println!(
            "  {:<20} {:<9} {:<10} {:<22} {}s{}",
            n["node"].as_str().unwrap_or("?"),
            n["version"].as_str().unwrap_or("?"),
            g,
            n["listen"].as_str().unwrap_or("-"),
            up_s,
            behind
        );
        if let Some(line) = restart_pending_line(n) {
            println!("    {line}");
        }
    }
    if view.partners.is_empty() {
        println!("no partner traffic counted today");
    } else {
        println!(
            "  {:<24} {:>12} {:>12} {:>12}",
            "PARTNER", "THIS MINUTE", "LAST MINUTE", "TODAY (UTC)"
        );
        for (p, t) in &view.partners {
            println!(
                "  {:<24} {:>12} {:>12} {:>12}",
                p, t.this_minute, t.last_minute, t.today
            );
        }
    }
    Ok(())
}
