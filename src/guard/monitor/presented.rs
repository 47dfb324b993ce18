//! Certificates from partners' own CAs (`[own_ca]`) that completed a
//! handshake. The broker never issued them, so the inventory does not know
//! them: this is where their expiry is seen. Per partner, the few latest
//! ending ones are kept (in memory: a restart learns them again at the next
//! handshakes); a certificate seen for the first time wakes the upkeep so an
//! expiring one is reported at once.

use std::collections::HashMap;
use std::sync::Mutex;

use time::OffsetDateTime;
use tokio::sync::Notify;

use super::ExpiryWarning;
use crate::identity::PartnerIdentity;
use crate::timefmt::rfc3339;

/// Certificates kept per partner (the latest ending ones).
const PER_PARTNER: usize = 8;
/// Partners kept at most (they come from the configuration; this only
/// bounds a map that would otherwise keep partners since removed).
const PARTNERS: usize = 4096;

/// One presented certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Presented {
    serial: String,
    not_after_unix: i64,
    /// The partner's CA that issued it (its subject).
    issuer: String,
}

/// Certificates from partners' own CAs seen at handshakes (module doc).
#[derive(Debug, Default)]
pub struct PresentedCerts {
    by_partner: Mutex<HashMap<String, Vec<Presented>>>,
    /// Raised when a certificate is seen for the first time.
    new_certificate: Notify,
}

impl PresentedCerts {
    /// Notes a verified identity; only those from a partner's own CA count.
    /// Cheap when the certificate is already known (one lock, a short scan).
    pub fn note(&self, id: &PartnerIdentity) {
        let Some(issuer) = &id.own_issuer else {
            return;
        };
        let mut map = self.by_partner.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(id.partner.as_ref()) && map.len() >= PARTNERS {
            return;
        }
        let certs = map.entry(id.partner.to_string()).or_default();
        if certs.iter().any(|c| c.serial == id.serial.as_ref()) {
            return;
        }
        certs.push(Presented {
            serial: id.serial.to_string(),
            not_after_unix: id.not_after_unix,
            issuer: issuer.to_string(),
        });
        certs.sort_by_key(|c| std::cmp::Reverse(c.not_after_unix));
        certs.truncate(PER_PARTNER);
        drop(map);
        self.new_certificate.notify_one();
    }

    /// Resolves when a certificate was seen for the first time since the
    /// last call (one waiter: the upkeep).
    pub async fn new_certificate(&self) {
        self.new_certificate.notified().await;
    }

    /// Presented certificates still valid at `now` that end within
    /// `warn_days` with no later ending one presented by the same partner:
    /// only the partner can replace them.
    pub fn expiring(&self, now: OffsetDateTime, warn_days: u32) -> Vec<ExpiryWarning> {
        let now_unix = now.unix_timestamp();
        let horizon = now_unix + i64::from(warn_days) * 86_400;
        let map = self.by_partner.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (partner, certs) in map.iter() {
            // Sorted latest first: only the first can lack a successor.
            let Some(latest) = certs.first() else {
                continue;
            };
            if latest.not_after_unix <= now_unix || latest.not_after_unix > horizon {
                continue;
            }
            let left = latest.not_after_unix - now_unix;
            out.push(ExpiryWarning {
                partner: partner.clone(),
                serial: latest.serial.clone(),
                not_after: OffsetDateTime::from_unix_timestamp(latest.not_after_unix)
                    .map(rfc3339)
                    .unwrap_or_default(),
                days_left: left / 86_400,
                seconds_left: left,
                issuer: Some(latest.issuer.clone()),
            });
        }
        out.sort_by(|a, b| {
            a.seconds_left
                .cmp(&b.seconds_left)
                .then_with(|| a.partner.cmp(&b.partner))
        });
        out
    }

    /// Every presented certificate still valid at `now`: (partner, serial,
    /// not-after unix, issuer).
    pub fn valid(&self, now: OffsetDateTime) -> Vec<(String, String, i64, String)> {
        let now_unix = now.unix_timestamp();
        let map = self.by_partner.lock().unwrap_or_else(|p| p.into_inner());
        map.iter()
            .flat_map(|(partner, certs)| {
                certs
                    .iter()
                    .filter(|c| c.not_after_unix > now_unix)
                    .map(|c| {
                        (
                            partner.clone(),
                            c.serial.clone(),
                            c.not_after_unix,
                            c.issuer.clone(),
                        )
                    })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::guard::monitor::expiry::tests::NOW;

    fn id(partner: &str, serial: &str, days_left: i64, issuer: Option<&str>) -> PartnerIdentity {
        PartnerIdentity {
            partner: Arc::from(partner),
            serial: Arc::from(serial),
            fingerprint: Arc::from(format!("fp-{serial}")),
            uri: Arc::from("https://bank.example/clients/acme"),
            not_before_unix: NOW.unix_timestamp() - 86_400,
            not_after_unix: NOW.unix_timestamp() + days_left * 86_400,
            subject: "CN=acme-api".into(),
            own_issuer: issuer.map(Arc::from),
            spki: Arc::from(&[][..]),
        }
    }

    #[test]
    fn an_own_ca_certificate_near_its_end_warns_with_its_issuer_until_a_later_one_is_presented() {
        let p = PresentedCerts::default();
        p.note(&id("acme", "aa", 5, Some("CN=bank Root CA")));
        let w = p.expiring(NOW, 14);
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(w[0].partner, "acme");
        assert_eq!(w[0].serial, "aa");
        assert_eq!(w[0].days_left, 5);
        assert_eq!(w[0].issuer.as_deref(), Some("CN=bank Root CA"));
        // Presented again: still one; a later one presented: none.
        p.note(&id("acme", "aa", 5, Some("CN=bank Root CA")));
        assert_eq!(p.expiring(NOW, 14).len(), 1);
        p.note(&id("acme", "bb", 300, Some("CN=bank Root CA")));
        assert!(p.expiring(NOW, 14).is_empty());
        assert_eq!(p.valid(NOW).len(), 2);
    }

    #[test]
    fn our_certificates_far_ones_and_ended_ones_do_not_count() {
        let p = PresentedCerts::default();
        p.note(&id("ours", "aa", 5, None));
        p.note(&id("far", "bb", 30, Some("CN=x")));
        p.note(&id("gone", "cc", -1, Some("CN=x")));
        assert!(p.expiring(NOW, 14).is_empty());
        assert_eq!(p.valid(NOW).len(), 1);
    }

    #[test]
    fn a_partner_keeps_its_latest_ending_certificates_only() {
        let p = PresentedCerts::default();
        for i in 0..(PER_PARTNER as i64 + 5) {
            p.note(&id("acme", &format!("{i:02x}"), 20 + i, Some("CN=x")));
        }
        let valid = p.valid(NOW);
        assert_eq!(valid.len(), PER_PARTNER);
        assert!(
            valid
                .iter()
                .all(|(_, _, end, _)| *end >= NOW.unix_timestamp() + 25 * 86_400)
        );
    }
}
