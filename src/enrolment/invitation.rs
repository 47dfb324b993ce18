//! One-time enrolment invitations: `partner invite ID` makes a random
//! secret (192 bits) for an existing partner and keeps only its SHA-256 in
//! `invitations/<ID>.json` (mode 0600), with when it expires, how many
//! wrong secrets were tried and whether it was used. Redeeming checks, in
//! this order: locked (5 wrong secrets), the secret (a wrong one counts),
//! used, expired; only the holder of the secret learns the last two.
//! A successful redemption marks the invitation used before anything is
//! signed (single use even if signing fails; the operator invites again).
//!
//! The file is the state; callers serialize redemptions (one at a time per
//! broker). It never holds the secret itself.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::home::{self, Home, HomeError, KEY_MODE};

/// Wrong secrets after which an invitation is locked.
pub const MAX_WRONG_SECRETS: u32 = 5;
/// Random bytes in a secret (192 bits).
const SECRET_BYTES: usize = 24;
/// Largest invitation file read (it is a few hundred bytes).
const MAX_FILE_BYTES: u64 = 16 * 1024;
/// Longest `--ttl` accepted.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);

/// What an invitation file holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    pub partner: String,
    /// SHA-256 of the secret, lowercase hex.
    pub secret_sha256: String,
    /// Unix seconds.
    pub created_at: i64,
    pub expires_at: i64,
    pub wrong_secrets: u32,
    pub used_at: Option<i64>,
}

impl Invitation {
    pub fn locked(&self) -> bool {
        self.wrong_secrets >= MAX_WRONG_SECRETS
    }

    /// `open`, `used`, `expired` or `locked`, at `now` (unix seconds).
    pub fn state(&self, now: i64) -> &'static str {
        if self.locked() {
            "locked"
        } else if self.used_at.is_some() {
            "used"
        } else if now >= self.expires_at {
            "expired"
        } else {
            "open"
        }
    }
}

/// Why an invitation could not be made, revoked or redeemed.
#[derive(Debug, thiserror::Error)]
pub enum InvitationError {
    #[error(transparent)]
    Home(#[from] HomeError),
    #[error(
        "{path}: not a readable invitation ({message}); revoke it with `gatehouse partner invite --revoke ID` and invite again"
    )]
    Corrupt { path: PathBuf, message: String },
    #[error("--ttl must be between 1 minute and 30 days")]
    BadTtl,
    /// No invitation for this partner.
    #[error("partner {0} has no invitation")]
    None(String),
    /// The secret is wrong; `locked` when this try locked it.
    #[error(
        "wrong secret for partner {partner}'s invitation ({tries} of {MAX_WRONG_SECRETS} wrong tries)"
    )]
    WrongSecret {
        partner: String,
        tries: u32,
        locked: bool,
    },
    #[error("partner {0}'s invitation is locked after {MAX_WRONG_SECRETS} wrong secrets")]
    Locked(String),
    #[error("partner {0}'s invitation was already used")]
    Used(String),
    #[error("partner {0}'s invitation has expired")]
    Expired(String),
}

/// A redeemed invitation (now marked used).
#[derive(Debug, Clone)]
pub struct Redeemed {
    pub invitation: Invitation,
}

fn sha256_hex(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Reads `partner`'s invitation, if there is one.
pub fn load(home: &Home, partner: &str) -> Result<Option<Invitation>, InvitationError> {
    let path = home.invitation_file(partner);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HomeError::io(&path, e).into()),
    };
    let corrupt = |message: String| InvitationError::Corrupt {
        path: path.clone(),
        message,
    };
    if meta.len() > MAX_FILE_BYTES {
        return Err(corrupt("larger than 16 KiB".into()));
    }
    let text = home::read_to_string(&path)?;
    let inv: Invitation = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if inv.partner != partner {
        return Err(corrupt(format!("it names partner {}", inv.partner)));
    }
    Ok(Some(inv))
}

fn store(home: &Home, inv: &Invitation) -> Result<(), InvitationError> {
    home::ensure_private_dir(&home.invitations_dir())?;
    let text = serde_json::to_string_pretty(inv).map_err(|e| InvitationError::Corrupt {
        path: home.invitation_file(&inv.partner),
        message: e.to_string(),
    })?;
    home::write_atomic(
        &home.invitation_file(&inv.partner),
        text.as_bytes(),
        KEY_MODE,
    )?;
    Ok(())
}

/// A new invitation for `partner` (replacing any earlier one), valid for
/// `ttl`; returns it and the secret, which is shown once and kept nowhere.
/// The caller checks that the partner exists.
pub fn create(
    home: &Home,
    partner: &str,
    ttl: Duration,
) -> Result<(Invitation, String), InvitationError> {
    if ttl < Duration::from_secs(60) || ttl > MAX_TTL {
        return Err(InvitationError::BadTtl);
    }
    let bytes: [u8; SECRET_BYTES] = rand::random();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let inv = Invitation {
        partner: partner.to_string(),
        secret_sha256: sha256_hex(&secret),
        created_at: now,
        expires_at: now + ttl.as_secs() as i64,
        wrong_secrets: 0,
        used_at: None,
    };
    store(home, &inv)?;
    Ok((inv, secret))
}

/// Removes `partner`'s invitation; whether there was one.
pub fn revoke(home: &Home, partner: &str) -> Result<bool, InvitationError> {
    let path = home.invitation_file(partner);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(HomeError::io(&path, e).into()),
    }
}

/// Redeems `partner`'s invitation with `secret` at `now` (unix seconds):
/// marks it used, or counts the wrong secret (see the module's order).
/// Callers run one redemption at a time.
pub fn redeem(
    home: &Home,
    partner: &str,
    secret: &str,
    now: i64,
) -> Result<Redeemed, InvitationError> {
    let mut inv = load(home, partner)?.ok_or_else(|| InvitationError::None(partner.into()))?;
    if inv.locked() {
        return Err(InvitationError::Locked(partner.into()));
    }
    let expected = hex::decode(&inv.secret_sha256).unwrap_or_default();
    let given = Sha256::digest(secret.as_bytes());
    if aws_lc_rs::constant_time::verify_slices_are_equal(&expected, &given).is_err() {
        inv.wrong_secrets = inv.wrong_secrets.saturating_add(1);
        store(home, &inv)?;
        return Err(InvitationError::WrongSecret {
            partner: partner.into(),
            tries: inv.wrong_secrets,
            locked: inv.locked(),
        });
    }
    if inv.used_at.is_some() {
        return Err(InvitationError::Used(partner.into()));
    }
    if now >= inv.expires_at {
        return Err(InvitationError::Expired(partner.into()));
    }
    inv.used_at = Some(now);
    store(home, &inv)?;
    Ok(Redeemed { invitation: inv })
}

/// Opens `partner`'s spent invitation again (its certificate could not be
/// issued after all).
pub fn release(home: &Home, partner: &str) -> Result<(), InvitationError> {
    if let Some(mut inv) = load(home, partner)? {
        inv.used_at = None;
        store(home, &inv)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn home() -> (tempfile::TempDir, Home) {
        let dir = tempfile::tempdir().unwrap();
        let h = Home::new(dir.path());
        (dir, h)
    }

    #[test]
    fn the_secret_is_long_and_kept_only_hashed_in_a_private_file() {
        let (_d, h) = home();
        let (inv, secret) = create(&h, "acme", Duration::from_secs(3600)).unwrap();
        assert!(secret.len() >= 32, "{secret}");
        let text = std::fs::read_to_string(h.invitation_file("acme")).unwrap();
        assert!(!text.contains(&secret));
        assert!(text.contains(&inv.secret_sha256));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(h.invitation_file("acme"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (_, other) = create(&h, "acme", Duration::from_secs(3600)).unwrap();
        assert_ne!(secret, other, "a new invitation has a new secret");
    }

    #[test]
    fn single_use_expiring_and_locked_after_five_wrong_secrets() {
        let (_d, h) = home();
        let (inv, secret) = create(&h, "acme", Duration::from_secs(3600)).unwrap();
        let now = inv.created_at;
        assert!(redeem(&h, "acme", &secret, now).is_ok());
        assert!(matches!(
            redeem(&h, "acme", &secret, now),
            Err(InvitationError::Used(_))
        ));

        let (inv, secret) = create(&h, "acme", Duration::from_secs(3600)).unwrap();
        assert!(matches!(
            redeem(&h, "acme", &secret, inv.expires_at),
            Err(InvitationError::Expired(_))
        ));

        let (_, secret) = create(&h, "acme", Duration::from_secs(3600)).unwrap();
        for i in 1..=MAX_WRONG_SECRETS {
            match redeem(&h, "acme", "guess", now) {
                Err(InvitationError::WrongSecret { tries, locked, .. }) => {
                    assert_eq!(tries, i);
                    assert_eq!(locked, i == MAX_WRONG_SECRETS);
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(matches!(
            redeem(&h, "acme", &secret, now),
            Err(InvitationError::Locked(_))
        ));
        assert!(revoke(&h, "acme").unwrap());
        assert!(matches!(
            redeem(&h, "acme", &secret, now),
            Err(InvitationError::None(_))
        ));
        assert!(!revoke(&h, "acme").unwrap());
    }
}
