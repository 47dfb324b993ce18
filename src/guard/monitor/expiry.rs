//! Certificate expiry warnings: which partners are about to lose their
//! last usable certificate. A pure function of the inventory and the clock.

use serde::Serialize;
use time::OffsetDateTime;

use crate::ca::inventory::Inventory;
use crate::timefmt::rfc3339;

/// A partner certificate close to its end with no successor to take over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiryWarning {
    pub partner: String,
    pub serial: String,
    /// RFC 3339.
    pub not_after: String,
    /// Whole days left (rounded down).
    pub days_left: i64,
    pub seconds_left: i64,
    /// A certificate from the partner's own CA (`[own_ca]`): that CA's
    /// subject. The broker cannot renew it; the partner must replace it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
}

/// Partner certificates usable at `now` that end within `warn_days` and
/// have no successor (no other usable certificate of the same partner with
/// a later `not_after`). Sorted by time left, then partner and serial.
pub fn expiring(inventory: &Inventory, now: OffsetDateTime, warn_days: u32) -> Vec<ExpiryWarning> {
    let horizon = now + time::Duration::days(i64::from(warn_days));
    let usable: Vec<_> = inventory
        .certs
        .values()
        .filter(|c| c.state(now).usable())
        .collect();
    let mut out: Vec<ExpiryWarning> = usable
        .iter()
        .filter(|c| c.not_after <= horizon)
        .filter(|c| {
            !usable.iter().any(|o| {
                o.partner == c.partner && o.serial != c.serial && o.not_after > c.not_after
            })
        })
        .map(|c| {
            let left = c.not_after - now;
            ExpiryWarning {
                partner: c.partner.clone(),
                serial: c.serial.clone(),
                not_after: rfc3339(c.not_after),
                days_left: left.whole_days(),
                seconds_left: left.whole_seconds(),
                issuer: None,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        a.seconds_left
            .cmp(&b.seconds_left)
            .then_with(|| a.partner.cmp(&b.partner))
            .then_with(|| a.serial.cmp(&b.serial))
    });
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ca::inventory::{IssuedCert, RecordStatus, RevocationReason};
    use time::Duration;
    use time::macros::datetime;

    pub(crate) const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

    /// An active certificate of `partner` with `days_left` to go at `NOW`.
    pub(crate) fn cert(serial: &str, partner: &str, days_left: i64) -> IssuedCert {
        IssuedCert {
            serial: serial.into(),
            partner: partner.into(),
            fingerprint: format!("fp-{serial}"),
            ca_fingerprint: "ca".into(),
            issued_at: NOW - Duration::days(30),
            not_before: NOW - Duration::days(30),
            not_after: NOW + Duration::days(days_left),
            status: RecordStatus::Active,
            superseded_by: None,
            overlap_until: None,
            revoked_at: None,
            reason: None,
        }
    }

    pub(crate) fn inv(certs: Vec<IssuedCert>) -> Inventory {
        Inventory {
            certs: certs.into_iter().map(|c| (c.serial.clone(), c)).collect(),
        }
    }

    #[test]
    fn inside_the_window_without_a_successor_warns() {
        let w = expiring(&inv(vec![cert("aa", "acme", 5)]), NOW, 14);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].partner, "acme");
        assert_eq!(w[0].serial, "aa");
        assert_eq!(w[0].days_left, 5);
        assert_eq!(w[0].seconds_left, 5 * 86_400);
    }

    #[test]
    fn outside_the_window_does_not_warn() {
        assert!(expiring(&inv(vec![cert("aa", "acme", 30)]), NOW, 14).is_empty());
    }

    #[test]
    fn a_successor_silences_the_warning() {
        let mut old = cert("aa", "acme", 5);
        old.status = RecordStatus::Superseded;
        old.overlap_until = Some(NOW + Duration::days(2));
        old.superseded_by = Some("bb".into());
        let new = cert("bb", "acme", 90);
        assert!(expiring(&inv(vec![old.clone(), new]), NOW, 14).is_empty());
        // Another partner's later certificate is no successor.
        let other = cert("cc", "globex", 90);
        let w = expiring(&inv(vec![old, other]), NOW, 14);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].serial, "aa");
    }

    #[test]
    fn a_revoked_successor_is_no_successor() {
        let mut new = cert("bb", "acme", 90);
        new.status = RecordStatus::Revoked;
        new.reason = Some(RevocationReason::KeyCompromise);
        let w = expiring(&inv(vec![cert("aa", "acme", 5), new]), NOW, 14);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].serial, "aa");
    }

    #[test]
    fn expired_and_revoked_certificates_do_not_warn() {
        let expired = cert("aa", "acme", -1);
        let mut revoked = cert("bb", "globex", 3);
        revoked.status = RecordStatus::Revoked;
        revoked.reason = Some(RevocationReason::KeyCompromise);
        let mut overlap_over = cert("cc", "initech", 3);
        overlap_over.status = RecordStatus::Superseded;
        overlap_over.overlap_until = Some(NOW - Duration::hours(1));
        assert!(expiring(&inv(vec![expired, revoked, overlap_over]), NOW, 14).is_empty());
    }

    #[test]
    fn sorted_by_time_left() {
        let w = expiring(
            &inv(vec![cert("aa", "acme", 9), cert("bb", "globex", 2)]),
            NOW,
            14,
        );
        let serials: Vec<_> = w.iter().map(|w| w.serial.as_str()).collect();
        assert_eq!(serials, ["bb", "aa"]);
    }
}
