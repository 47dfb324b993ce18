//! Invalidations: what a CLI command (or a self-service renewal) on any
//! node tells the fleet after it has written its files, so every node
//! reloads within a second instead of waiting for its poll; and the fence
//! a node keeps while its own view of the files is older than an
//! announced revocation, suspension or removal (it refuses the affected
//! partner or certificate until the files it reads show the change).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ca::inventory::{Inventory, RecordStatus};
use crate::gateway::live::Snapshot;
use crate::home::Home;
use crate::identity::PartnerIdentity;

use super::store::{self, Keys};

/// How many announcements `status --fleet` can show.
pub const KEPT_CHANGES: isize = 50;

/// What changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Certificates revoked (`serials`).
    Revoked,
    /// The partner is suspended.
    Suspended,
    /// The partner is removed (its certificates revoked: `serials`).
    Removed,
    /// A partner was added, resumed, or got a new certificate (nothing a
    /// stale view could wrongly allow).
    PartnerChanged,
    /// Configuration or CA material (rotation, CRL, the broker's own certificates).
    Config,
}

/// One announced change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub kind: ChangeKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partner: Option<String>,
    /// Serials that must show as revoked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub serials: Vec<String>,
}

impl Change {
    pub fn partner(kind: ChangeKind, partner: &str) -> Change {
        Change {
            kind,
            partner: Some(partner.to_string()),
            serials: Vec::new(),
        }
    }
}

/// A change as published: with the fleet generation it made and who made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announcement {
    #[serde(flatten)]
    pub change: Change,
    pub generation: u64,
    pub origin: String,
    pub time_ms: i64,
}

/// Fills in the serials a partner-wide revocation or a removal revoked
/// (read back from the inventory the command just wrote).
fn with_revoked_serials(home: &Home, mut change: Change) -> Change {
    let partner_wide = matches!(change.kind, ChangeKind::Revoked | ChangeKind::Removed)
        && change.serials.is_empty();
    if let (true, Some(p)) = (partner_wide, &change.partner)
        && let Ok(inv) = Inventory::load(home)
    {
        change.serials = inv
            .certs
            .values()
            .filter(|c| c.partner == *p && c.status == RecordStatus::Revoked)
            .map(|c| c.serial.clone())
            .collect();
        change.serials.sort();
    }
    change
}

/// After a successful CLI command: tells the fleet, when the home has
/// `[cluster]`. A store that does not answer is a warning, not a failure:
/// the files are written, and every node still finds them at its poll.
pub fn publish_from_cli(home: &Home, change: &Change) {
    let Ok(cfg) = crate::config::load_gateway(home) else {
        return;
    };
    let Some(cluster) = cfg.cluster else {
        return;
    };
    let change = with_revoked_serials(home, change.clone());
    let origin = format!("cli@{}", cfg.server.node_id);
    let result = store::client(home, &cluster).and_then(|client| {
        let mut conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
        Ok(publish(
            &mut conn,
            &Keys::new(&cluster.key_prefix),
            change,
            &origin,
        )?)
    });
    match result {
        Ok(n) => tracing::debug!(nodes = n, "fleet told of the change"),
        Err(e) => eprintln!(
            "gatehouse: warning: the fleet was not told of this change ({e}); every node still picks it up at its next file poll (10 s at most)"
        ),
    }
}

/// Publishes `change` (sync or async connection): a new generation, the
/// change kept for the fleet view, then the message. Returns how many
/// nodes heard it.
pub fn publish(
    conn: &mut impl redis::ConnectionLike,
    keys: &Keys,
    change: Change,
    origin: &str,
) -> redis::RedisResult<usize> {
    let generation: u64 = redis::cmd("INCR").arg(keys.generation()).query(conn)?;
    let msg = message(change, generation, origin);
    let (_, _, heard): ((), (), usize) = redis::pipe()
        .cmd("LPUSH")
        .arg(keys.changes())
        .arg(&msg)
        .cmd("LTRIM")
        .arg(keys.changes())
        .arg(0)
        .arg(KEPT_CHANGES - 1)
        .cmd("PUBLISH")
        .arg(keys.channel())
        .arg(&msg)
        .query(conn)?;
    Ok(heard)
}

/// The async form of [`publish`] (a renewal inside the broker).
pub async fn publish_async(
    conn: &mut redis::aio::ConnectionManager,
    keys: &Keys,
    change: Change,
    origin: &str,
) -> redis::RedisResult<usize> {
    let generation: u64 = redis::cmd("INCR")
        .arg(keys.generation())
        .query_async(conn)
        .await?;
    let msg = message(change, generation, origin);
    let (_, _, heard): ((), (), usize) = redis::pipe()
        .cmd("LPUSH")
        .arg(keys.changes())
        .arg(&msg)
        .cmd("LTRIM")
        .arg(keys.changes())
        .arg(0)
        .arg(KEPT_CHANGES - 1)
        .cmd("PUBLISH")
        .arg(keys.channel())
        .arg(&msg)
        .query_async(conn)
        .await?;
    Ok(heard)
}

fn message(change: Change, generation: u64, origin: &str) -> String {
    serde_json::to_string(&Announcement {
        change,
        generation,
        origin: origin.to_string(),
        time_ms: crate::event::now_ms(),
    })
    .unwrap_or_default()
}

// ---------------------------------------------------------------- fence

/// What a node refuses until its files show an announced change.
#[derive(Default)]
pub struct Fence {
    any: AtomicBool,
    inner: Mutex<FenceInner>,
}

#[derive(Default)]
struct FenceInner {
    /// Serials that must show as revoked, with the generation that said so.
    serials: HashMap<String, u64>,
    /// Partners that must show as suspended or removed.
    partners: HashMap<String, (ChangeKind, u64)>,
}

impl Fence {
    /// Takes in an announcement. A later change to the same partner
    /// (resumed, re-added) replaces a pending suspension or removal.
    pub fn add(&self, a: &Announcement) {
        let mut f = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for s in &a.change.serials {
            f.serials.insert(s.clone(), a.generation);
        }
        if let Some(p) = &a.change.partner {
            match a.change.kind {
                ChangeKind::Suspended | ChangeKind::Removed => {
                    f.partners.insert(p.clone(), (a.change.kind, a.generation));
                }
                ChangeKind::PartnerChanged
                    if f.partners.get(p).is_some_and(|(_, g)| *g < a.generation) =>
                {
                    f.partners.remove(p);
                }
                _ => {}
            }
        }
        self.any.store(
            !f.serials.is_empty() || !f.partners.is_empty(),
            Ordering::Release,
        );
    }

    /// Drops what `snapshot` now shows; returns how many entries still wait.
    pub fn settle(&self, snapshot: &Snapshot) -> usize {
        if !self.any.load(Ordering::Acquire) {
            return 0;
        }
        let mut f = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f.serials.retain(|s, _| {
            !snapshot
                .certs
                .get(s)
                .is_some_and(|c| c.status == RecordStatus::Revoked)
        });
        f.partners
            .retain(|p, (kind, _)| match snapshot.partners.get(p) {
                None => false,
                Some(e) => {
                    *kind == ChangeKind::Removed
                        || e.partner.status != crate::config::PartnerStatus::Suspended
                }
            });
        let left = f.serials.len() + f.partners.len();
        self.any.store(left > 0, Ordering::Release);
        left
    }

    /// Whether a request by `id` must wait for the files (fail closed).
    pub fn holds(&self, id: &PartnerIdentity) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let f = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f.serials.contains_key(&*id.serial) || f.partners.contains_key(&*id.partner)
    }

    /// Pending entries (for logs and the fleet view).
    pub fn pending(&self) -> usize {
        let f = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f.serials.len() + f.partners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(kind: ChangeKind, partner: Option<&str>, serials: &[&str], g: u64) -> Announcement {
        Announcement {
            change: Change {
                kind,
                partner: partner.map(str::to_string),
                serials: serials.iter().map(|s| s.to_string()).collect(),
            },
            generation: g,
            origin: "test".into(),
            time_ms: 0,
        }
    }

    #[test]
    fn announcements_round_trip_and_later_changes_replace_suspensions() {
        let a = ann(ChangeKind::Revoked, Some("acme"), &["0a"], 3);
        let text = serde_json::to_string(&a).unwrap();
        assert!(text.contains("\"kind\":\"revoked\""), "{text}");
        assert_eq!(serde_json::from_str::<Announcement>(&text).unwrap(), a);

        let f = Fence::default();
        f.add(&ann(ChangeKind::Suspended, Some("acme"), &[], 4));
        assert_eq!(f.pending(), 1);
        // An older "changed" does not lift a newer suspension; a newer one does.
        f.add(&ann(ChangeKind::PartnerChanged, Some("acme"), &[], 2));
        assert_eq!(f.pending(), 1);
        f.add(&ann(ChangeKind::PartnerChanged, Some("acme"), &[], 5));
        assert_eq!(f.pending(), 0);
        f.add(&a);
        assert_eq!(f.pending(), 1);
    }
}
