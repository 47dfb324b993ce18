//! The operator view behind `GET /status` and `gatehouse status`: per
//! partner, the last hour's traffic, the limits in force, the certificates
//! and their days to expiry, and open alerts. It only assembles what it is
//! given into JSON; the CLI renders it.

use std::collections::HashMap;

use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{Monitor, expiring};
use crate::ca::inventory::{CertState, Inventory};
use crate::config::Partner;
use crate::timefmt::rfc3339;

/// The status document. `limits` maps a partner id to the limits in force
/// as the limits module reports them; a partner missing from it shows its
/// configured limits. `warn_days` is the expiry warning window.
pub fn status_json(
    monitor: &Monitor,
    partners: &[Partner],
    inventory: &Inventory,
    limits: &HashMap<String, Value>,
    now: OffsetDateTime,
    warn_days: u32,
) -> Value {
    let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
    let alerts = monitor.open_alerts(now_ms);
    let mut warnings = expiring(inventory, now, warn_days);
    warnings.extend(monitor.presented().expiring(now, warn_days));
    let presented = monitor.presented().valid(now);
    let mut sorted: Vec<&Partner> = partners.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    let rows: Vec<Value> = sorted
        .iter()
        .map(|p| {
            let w = monitor.recent(&p.id, now_ms);
            let mut certs: Vec<Value> = inventory
                .for_partner(&p.id)
                .into_iter()
                .filter(|c| c.state(now).usable())
                .map(|c| {
                    json!({
                        "serial": c.serial,
                        "state": match c.state(now) {
                            CertState::SupersededUntil(_) => "superseded",
                            _ => "active",
                        },
                        "not_after": rfc3339(c.not_after),
                        "days_to_expiry": (c.not_after - now).whole_days(),
                        "expiring": warnings.iter().any(|x| x.serial == c.serial),
                    })
                })
                .collect();
            // Certificates from the partner's own CA, as presented.
            certs.extend(
                presented
                    .iter()
                    .filter(|(partner, ..)| *partner == p.id)
                    .map(|(_, serial, not_after, issuer)| {
                        json!({
                            "serial": serial,
                            "state": "presented",
                            "issuer": issuer,
                            "not_after": OffsetDateTime::from_unix_timestamp(*not_after)
                                .map(rfc3339)
                                .unwrap_or_default(),
                            "days_to_expiry": (not_after - now.unix_timestamp()) / 86_400,
                            "expiring": warnings.iter().any(|x| {
                                x.partner == p.id && x.serial == *serial
                            }),
                        })
                    }),
            );
            let partner_alerts: Vec<&super::RecentAlert> = alerts
                .iter()
                .filter(|a| a.partner.as_deref() == Some(p.id.as_str()))
                .collect();
            let limits = match limits.get(&p.id) {
                Some(v) => v.clone(),
                None => serde_json::to_value(&p.limits).unwrap_or(Value::Null),
            };
            json!({
                "id": p.id,
                "name": p.name,
                "status": p.status.to_string(),
                "last_hour": w,
                "limits": limits,
                "certificates": certs,
                "alerts": partner_alerts,
            })
        })
        .collect();
    json!({
        "generated_at": rfc3339(now),
        "partners": rows,
        "expiring": warnings,
        "alerts": alerts,
    })
}
