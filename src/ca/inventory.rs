//! The inventory of issued certificates, `certs/issued/`: one
//! `<serial>.toml` record and one `<serial>.pem` certificate per issue, plain
//! files an auditor can read. Each write is atomic. The record's `status`
//! plus the clock give a certificate's state: active, superseded until the
//! end of its overlap, revoked, or expired.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{CaError, invalid};
use crate::home::{Home, write_public};
use crate::timefmt::rfc3339;

/// RFC 5280 revocation reasons gatehouse accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RevocationReason {
    Unspecified,
    KeyCompromise,
    CaCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

/// A revocation reason `cert revoke --reason` does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown revocation reason `{0}` (use one of: {names})", names = RevocationReason::ALL.map(|r| r.name()).join(", "))]
pub struct UnknownRevocationReason(pub String);

impl RevocationReason {
    pub const ALL: [RevocationReason; 7] = [
        RevocationReason::Unspecified,
        RevocationReason::KeyCompromise,
        RevocationReason::CaCompromise,
        RevocationReason::AffiliationChanged,
        RevocationReason::Superseded,
        RevocationReason::CessationOfOperation,
        RevocationReason::PrivilegeWithdrawn,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RevocationReason::Unspecified => "unspecified",
            RevocationReason::KeyCompromise => "keyCompromise",
            RevocationReason::CaCompromise => "cACompromise",
            RevocationReason::AffiliationChanged => "affiliationChanged",
            RevocationReason::Superseded => "superseded",
            RevocationReason::CessationOfOperation => "cessationOfOperation",
            RevocationReason::PrivilegeWithdrawn => "privilegeWithdrawn",
        }
    }

    /// Reads `key-compromise`, `keyCompromise`, `key_compromise`…
    pub fn parse(s: &str) -> Result<Self, UnknownRevocationReason> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        RevocationReason::ALL
            .into_iter()
            .find(|r| r.name().to_ascii_lowercase() == norm)
            .ok_or_else(|| UnknownRevocationReason(s.to_string()))
    }

    pub fn to_rcgen(self) -> rcgen::RevocationReason {
        match self {
            RevocationReason::Unspecified => rcgen::RevocationReason::Unspecified,
            RevocationReason::KeyCompromise => rcgen::RevocationReason::KeyCompromise,
            RevocationReason::CaCompromise => rcgen::RevocationReason::CaCompromise,
            RevocationReason::AffiliationChanged => rcgen::RevocationReason::AffiliationChanged,
            RevocationReason::Superseded => rcgen::RevocationReason::Superseded,
            RevocationReason::CessationOfOperation => rcgen::RevocationReason::CessationOfOperation,
            RevocationReason::PrivilegeWithdrawn => rcgen::RevocationReason::PrivilegeWithdrawn,
        }
    }
}

/// What the inventory says about a certificate (time-independent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordStatus {
    Active,
    Superseded,
    Revoked,
}

/// One issued certificate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IssuedCert {
    pub serial: String,
    pub partner: String,
    pub fingerprint: String,
    pub ca_fingerprint: String,
    #[serde(with = "time::serde::rfc3339")]
    pub issued_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    pub status: RecordStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded_by: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub overlap_until: Option<OffsetDateTime>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub revoked_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<RevocationReason>,
}

/// A certificate's state at a given time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertState {
    Active,
    SupersededUntil(OffsetDateTime),
    Revoked(RevocationReason),
    Expired,
}

impl CertState {
    /// Whether a partner may still use the certificate.
    pub fn usable(self) -> bool {
        matches!(self, CertState::Active | CertState::SupersededUntil(_))
    }
}

impl fmt::Display for CertState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertState::Active => f.write_str("active"),
            CertState::SupersededUntil(t) => write!(f, "superseded-until-{}", rfc3339(*t)),
            CertState::Revoked(RevocationReason::Superseded) => {
                f.write_str("revoked (superseded, overlap ended)")
            }
            CertState::Revoked(r) => write!(f, "revoked ({})", r.name()),
            CertState::Expired => f.write_str("expired"),
        }
    }
}

impl IssuedCert {
    pub fn state(&self, now: OffsetDateTime) -> CertState {
        match self.status {
            RecordStatus::Revoked => {
                CertState::Revoked(self.reason.unwrap_or(RevocationReason::Unspecified))
            }
            _ if now >= self.not_after => CertState::Expired,
            RecordStatus::Superseded => match self.overlap_until {
                Some(t) if now < t => CertState::SupersededUntil(t),
                _ => CertState::Revoked(RevocationReason::Superseded),
            },
            RecordStatus::Active => CertState::Active,
        }
    }

    /// When, if ever, the certificate counts as revoked, and why (for the CRL).
    pub fn revocation(&self, now: OffsetDateTime) -> Option<(OffsetDateTime, RevocationReason)> {
        match self.state(now) {
            CertState::Revoked(reason) => Some((
                self.revoked_at.or(self.overlap_until).unwrap_or(now),
                reason,
            )),
            _ => None,
        }
    }
}

/// Every issued certificate, keyed by serial.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    pub certs: HashMap<String, IssuedCert>,
}

impl Inventory {
    /// Reads `certs/issued/*.toml`. A missing folder is an empty inventory.
    pub fn load(home: &Home) -> Result<Inventory, CaError> {
        let dir = home.issued_dir();
        let mut certs = HashMap::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Inventory::default()),
            Err(e) => return Err(crate::home::HomeError::io(&dir, e).into()),
        };
        for entry in entries {
            let path = entry
                .map_err(|e| crate::home::HomeError::io(&dir, e))?
                .path();
            let is_record = path.extension().is_some_and(|x| x == "toml")
                && !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if !is_record {
                continue;
            }
            let rec = read_record(&path)?;
            certs.insert(rec.serial.clone(), rec);
        }
        Ok(Inventory { certs })
    }

    pub fn get(&self, serial: &str) -> Option<&IssuedCert> {
        self.certs.get(&serial.to_ascii_lowercase())
    }

    /// A partner's certificates, newest first.
    pub fn for_partner(&self, partner: &str) -> Vec<&IssuedCert> {
        let mut v: Vec<_> = self
            .certs
            .values()
            .filter(|c| c.partner == partner)
            .collect();
        v.sort_by(|a, b| b.issued_at.cmp(&a.issued_at).then(a.serial.cmp(&b.serial)));
        v
    }

    /// All certificates, by partner then newest first.
    pub fn sorted(&self) -> Vec<&IssuedCert> {
        let mut v: Vec<_> = self.certs.values().collect();
        v.sort_by(|a, b| {
            a.partner
                .cmp(&b.partner)
                .then(b.issued_at.cmp(&a.issued_at))
                .then(a.serial.cmp(&b.serial))
        });
        v
    }
}

fn read_record(path: &Path) -> Result<IssuedCert, CaError> {
    let text = crate::home::read_to_string(path)?;
    toml::from_str(&text).map_err(|e| {
        invalid(format!(
            "{}: inventory record is damaged: {}",
            path.display(),
            e.message()
        ))
    })
}

/// Writes one record atomically (and its certificate, when given).
pub fn write_record(home: &Home, rec: &IssuedCert, cert_pem: Option<&str>) -> Result<(), CaError> {
    let dir = home.issued_dir();
    crate::home::ensure_dir(&dir)?;
    if let Some(pem) = cert_pem {
        write_public(&dir.join(format!("{}.pem", rec.serial)), pem.as_bytes())?;
    }
    let text = toml::to_string(rec).map_err(|e| invalid(format!("cannot encode record: {e}")))?;
    let header = format!(
        "# Certificate {} issued to partner {} (gatehouse inventory; do not edit by hand)\n",
        rec.serial, rec.partner
    );
    write_public(
        &dir.join(format!("{}.toml", rec.serial)),
        format!("{header}{text}").as_bytes(),
    )?;
    Ok(())
}

/// Parses an RFC 3339 time (helper for callers reading JSON output).
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn rec(status: RecordStatus) -> IssuedCert {
        let now = OffsetDateTime::now_utc();
        IssuedCert {
            serial: "0a".into(),
            partner: "acme".into(),
            fingerprint: "f".into(),
            ca_fingerprint: "c".into(),
            issued_at: now,
            not_before: now,
            not_after: now + Duration::days(90),
            status,
            superseded_by: None,
            overlap_until: Some(now + Duration::hours(24)),
            revoked_at: None,
            reason: None,
        }
    }

    #[test]
    fn states_follow_the_clock() {
        let now = OffsetDateTime::now_utc();
        assert_eq!(rec(RecordStatus::Active).state(now), CertState::Active);
        let s = rec(RecordStatus::Superseded);
        assert!(matches!(s.state(now), CertState::SupersededUntil(_)));
        assert_eq!(
            s.state(now + Duration::hours(25)),
            CertState::Revoked(RevocationReason::Superseded)
        );
        assert_eq!(
            rec(RecordStatus::Active).state(now + Duration::days(91)),
            CertState::Expired
        );
        assert!(!rec(RecordStatus::Revoked).state(now).usable());
    }

    #[test]
    fn reasons_parse_loosely() {
        assert_eq!(
            RevocationReason::parse("key-compromise").unwrap(),
            RevocationReason::KeyCompromise
        );
        assert_eq!(
            RevocationReason::parse("cessationOfOperation").unwrap(),
            RevocationReason::CessationOfOperation
        );
        assert!(RevocationReason::parse("bored").is_err());
    }
}
