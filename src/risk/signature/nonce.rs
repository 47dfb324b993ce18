//! Nonces seen in accepted signatures, per partner, for
//! [`NONCE_WINDOW_SECS`]: a nonce is accepted once in that window. This is
//! a single node's log (bounded: past [`MAX_NONCES`] unexpired entries it
//! refuses new ones rather than forget one); a fleet asks its store
//! instead.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// How long a nonce is remembered (a signature is at most 300 s old, either
/// way, so twice that covers every signature that can still verify).
pub const NONCE_WINDOW_SECS: i64 = 600;
/// The most nonces a single node remembers at once.
pub const MAX_NONCES: usize = 200_000;

/// The answer to "may this nonce be used now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// First use: it is remembered now.
    Fresh,
    /// Seen within the window.
    Replayed,
    /// The log is full of unexpired nonces (refused: fail closed).
    Full,
}

#[derive(Default)]
struct Log {
    until: HashMap<(String, String), i64>,
    order: VecDeque<(i64, String, String)>,
}

/// A node's nonce log (see the module doc).
#[derive(Default)]
pub struct NonceLog {
    log: Mutex<Log>,
}

impl NonceLog {
    /// Records `nonce` of `partner` at `now_secs` unless seen in the window.
    pub fn check(&self, partner: &str, nonce: &str, now_secs: i64) -> NonceCheck {
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((until, _, _)) = log.order.front() {
            if *until > now_secs {
                break;
            }
            if let Some((_, p, n)) = log.order.pop_front()
                && log
                    .until
                    .get(&(p.clone(), n.clone()))
                    .is_some_and(|u| *u <= now_secs)
            {
                log.until.remove(&(p, n));
            }
        }
        let key = (partner.to_string(), nonce.to_string());
        if log.until.get(&key).is_some_and(|u| *u > now_secs) {
            return NonceCheck::Replayed;
        }
        if log.until.len() >= MAX_NONCES {
            return NonceCheck::Full;
        }
        let until = now_secs + NONCE_WINDOW_SECS;
        log.until.insert(key.clone(), until);
        log.order.push_back((until, key.0, key.1));
        NonceCheck::Fresh
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_partner_within_the_window() {
        let l = NonceLog::default();
        assert_eq!(l.check("acme", "n1", 1000), NonceCheck::Fresh);
        assert_eq!(l.check("acme", "n1", 1001), NonceCheck::Replayed);
        assert_eq!(l.check("beta", "n1", 1001), NonceCheck::Fresh);
        assert_eq!(
            l.check("acme", "n1", 1000 + NONCE_WINDOW_SECS - 1),
            NonceCheck::Replayed
        );
        assert_eq!(
            l.check("acme", "n1", 1000 + NONCE_WINDOW_SECS),
            NonceCheck::Fresh
        );
    }
}
