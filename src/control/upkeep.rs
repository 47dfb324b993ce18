//! The broker's periodic upkeep, every ten minutes: re-sign the CRL before
//! its next-update, and alert (once per certificate per run) on partner
//! certificates near expiry without a successor, on the broker's own
//! certificates near expiry, and on what partners' own CAs issued (the
//! certificates they presented, and those CAs themselves): the broker cannot
//! renew those, so the alert says to ask the partner. A certificate from a
//! partner's own CA presented for the first time is looked at at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;

use crate::ca::inventory::Inventory;
use crate::gateway::live::Live;
use crate::guard::EventSink;
use crate::guard::alerts::AlertNotice;
use crate::guard::monitor::{ExpiryWarning, expiring};
use crate::timefmt::rfc3339;
use crate::tls::partner_ca::PartnerCa;

/// How often the upkeep runs.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(600);

/// Runs the upkeep at start and every [`UPKEEP_INTERVAL`] until shutdown.
pub async fn run(live: Arc<Live>, events: Arc<EventSink>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Certificates already warned about (one alert per certificate per run).
    let mut warned = HashSet::new();
    loop {
        let presented_only = tokio::select! {
            _ = tick.tick() => false,
            _ = events.monitor().presented().new_certificate() => true,
            _ = shutdown.changed() => return,
        };
        let days = live.snapshot().gateway.monitor.expiry_warning_days;
        let now = OffsetDateTime::now_utc();
        for w in events.monitor().presented().expiring(now, days) {
            if warned.insert(format!("{}/{}", w.partner, w.serial)) {
                events.raise_notice(partner_notice(&w));
            }
        }
        if presented_only {
            continue;
        }
        for (key, notice) in own_ca_warnings(&live.snapshot().partner_cas, now, days) {
            if warned.insert(key) {
                events.raise_notice(notice);
            }
        }
        let l = live.clone();
        let validity = live.snapshot().gateway.ca.crl_validity;
        match tokio::task::spawn_blocking(move || {
            crate::ca::maintenance::refresh_crl_if_due(&l.home, validity)
        })
        .await
        {
            Ok(Ok(true)) => tracing::info!("CRL re-signed before its next-update"),
            Ok(Err(e)) => tracing::error!("could not re-sign the CRL: {e}"),
            _ => {}
        }
        let l = live.clone();
        if let Ok(warnings) = tokio::task::spawn_blocking(move || partner_warnings(&l)).await {
            for w in warnings {
                if warned.insert(w.serial.clone()) {
                    events.raise_notice(partner_notice(&w));
                }
            }
        }
        let l = live.clone();
        if let Ok(warnings) = tokio::task::spawn_blocking(move || broker_cert_warnings(&l)).await {
            for (serial, notice) in warnings {
                if warned.insert(serial) {
                    events.raise_notice(notice);
                }
            }
        }
    }
}

/// Partner certificates near expiry with no successor.
fn partner_warnings(live: &Live) -> Vec<ExpiryWarning> {
    let days = live.snapshot().gateway.monitor.expiry_warning_days;
    match Inventory::load(&live.home) {
        Ok(inv) => expiring(&inv, OffsetDateTime::now_utc(), days),
        Err(e) => {
            tracing::warn!("expiry check: cannot read the inventory: {e}");
            Vec::new()
        }
    }
}

fn partner_notice(w: &ExpiryWarning) -> AlertNotice {
    let message = match &w.issuer {
        None => format!(
            "certificate {} of partner {} expires {} ({} days) and has no successor: run `gatehouse cert renew {}`",
            w.serial, w.partner, w.not_after, w.days_left, w.partner
        ),
        Some(issuer) => format!(
            "certificate {} of partner {} expires {} ({} days) and no later one has been presented; it comes from the partner's own CA ({issuer}), so gatehouse cannot renew it: ask partner {} for a new certificate from that CA",
            w.serial, w.partner, w.not_after, w.days_left, w.partner
        ),
    };
    AlertNotice {
        kind: "cert_expiry".into(),
        partner: Some(w.partner.clone()),
        addr: None,
        message,
        time_ms: crate::event::now_ms(),
        details: serde_json::to_value(w).unwrap_or_default(),
    }
}

/// Partners' own CAs (their root certificates) that end within the
/// warning window: (a key for the warned set, alert).
fn own_ca_warnings(
    cas: &[Arc<PartnerCa>],
    now: OffsetDateTime,
    days: u32,
) -> Vec<(String, AlertNotice)> {
    let horizon = now.unix_timestamp() + i64::from(days) * 86_400;
    cas.iter()
        .filter(|ca| ca.not_after_unix <= horizon)
        .map(|ca| {
            let left = ca.not_after_unix - now.unix_timestamp();
            let not_after = OffsetDateTime::from_unix_timestamp(ca.not_after_unix)
                .map(rfc3339)
                .unwrap_or_default();
            let message = format!(
                "partner {}'s own CA ({}) ends {not_after} ({} days): certificates from it stop working then, and gatehouse cannot renew it: ask partner {} for its new CA chain and run `gatehouse partner trust {} --ca NEW.pem ...`",
                ca.partner,
                ca.issuer,
                left / 86_400,
                ca.partner,
                ca.partner
            );
            (
                format!("own-ca/{}/{}", ca.partner, ca.not_after_unix),
                AlertNotice {
                    kind: "cert_expiry".into(),
                    partner: Some(ca.partner.clone()),
                    addr: None,
                    message,
                    time_ms: crate::event::now_ms(),
                    details: serde_json::json!({
                        "partner": ca.partner,
                        "own_ca": ca.issuer,
                        "not_after": not_after,
                        "days_left": left / 86_400,
                        "seconds_left": left,
                    }),
                },
            )
        })
        .collect()
}

/// The broker's own certificates (server, upstream client) that end
/// within `[monitor] expiry_warning_days`: (serial, alert).
fn broker_cert_warnings(live: &Live) -> Vec<(String, AlertNotice)> {
    let days = live.snapshot().gateway.monitor.expiry_warning_days;
    let home = &live.home;
    let now = OffsetDateTime::now_utc();
    let horizon = now + time::Duration::days(i64::from(days));
    let mut out = Vec::new();
    for (which, path) in [
        ("server", home.server_cert()),
        ("broker-client", home.broker_client_cert()),
    ] {
        let (serial, not_after) = match crate::ca::lifecycle::read_cert_summary(&path) {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("expiry check of the broker's {which} certificate: {e}");
                continue;
            }
        };
        if not_after > horizon {
            continue;
        }
        let left = not_after - now;
        let message = format!(
            "the broker's {which} certificate {serial} ({}) expires {} ({} days): run `gatehouse cert server-renew`",
            path.display(),
            rfc3339(not_after),
            left.whole_days()
        );
        out.push((
            serial.clone(),
            AlertNotice {
                kind: "broker_cert_expiry".into(),
                partner: None,
                addr: None,
                message,
                time_ms: crate::event::now_ms(),
                details: serde_json::json!({
                    "certificate": which,
                    "serial": serial,
                    "not_after": rfc3339(not_after),
                    "days_left": left.whole_days(),
                    "seconds_left": left.whole_seconds(),
                }),
            },
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{NameMatch, OwnCa};

    /// A partner's root that ends `days` from now, built as the broker does.
    fn partner_ca(dir: &std::path::Path, partner: &str, days: i64) -> Arc<PartnerCa> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, format!("{partner} Root CA"));
        p.not_after = OffsetDateTime::now_utc() + time::Duration::days(days);
        let pem = p.self_signed(&key).unwrap().pem();
        let file = dir.join(format!("{partner}.pem"));
        std::fs::write(&file, pem).unwrap();
        let own = OwnCa {
            ca: file,
            name: NameMatch::SubjectCn(format!("{partner}-api")),
            pin_spki: Vec::new(),
            crl: None,
        };
        Arc::new(PartnerCa::build(partner, &own, |p| p.to_path_buf()).unwrap())
    }

    #[test]
    fn a_partners_own_ca_near_its_end_asks_for_its_new_chain() {
        let dir = tempfile::tempdir().unwrap();
        let cas = [
            partner_ca(dir.path(), "bank", 5),
            partner_ca(dir.path(), "telco", 300),
        ];
        let w = own_ca_warnings(&cas, OffsetDateTime::now_utc(), 14);
        assert_eq!(w.len(), 1, "{w:?}");
        let (_, notice) = &w[0];
        assert_eq!(notice.kind, "cert_expiry");
        assert_eq!(notice.partner.as_deref(), Some("bank"));
        assert!(
            notice.message.contains("bank Root CA")
                && notice
                    .message
                    .contains("ask partner bank for its new CA chain"),
            "{}",
            notice.message
        );
        assert!(own_ca_warnings(&cas, OffsetDateTime::now_utc(), 3).is_empty());
    }
}
