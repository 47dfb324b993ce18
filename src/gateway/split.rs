//! A split upstream's choice of side: weighted rendezvous (highest random
//! weight) hashing over the partner id. For a given weight table a partner
//! always lands on the same side, and changing the weights moves only the
//! partners that must move (raising one side's weight only draws partners
//! to it). A partner's `pin` overrides the choice.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// `split = { a = 90, b = 10 }` as the request path uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Sides with a weight above 0, in name order.
    sides: Vec<(String, u32)>,
}

impl Split {
    /// The split of a validated weight table (sides weighted 0 never answer).
    pub fn new(weights: &BTreeMap<String, u32>) -> Split {
        Split {
            sides: weights
                .iter()
                .filter(|(_, w)| **w > 0)
                .map(|(s, w)| (s.clone(), *w))
                .collect(),
        }
    }

    /// The side `partner` reaches: its pin for `upstream` when it has one,
    /// else the side with the highest `weight / -ln(u)`, `u` in (0, 1) drawn
    /// from SHA-256 of the side and the partner id. `None` only for a split
    /// with no weighted side (configuration checks refuse that).
    pub fn side_for<'a>(&'a self, partner: &str, pin: Option<&'a String>) -> Option<&'a str> {
        if let Some(side) = pin {
            return Some(side.as_str());
        }
        let mut best: Option<(&str, f64)> = None;
        for (side, weight) in &self.sides {
            let score = f64::from(*weight) / -unit_interval(side, partner).ln();
            if best.is_none_or(|(_, s)| score > s) {
                best = Some((side.as_str(), score));
            }
        }
        best.map(|(side, _)| side)
    }
}

/// A number in the open interval (0, 1) that depends only on `side` and
/// `partner` (stable across restarts, builds and nodes of a fleet).
fn unit_interval(side: &str, partner: &str) -> f64 {
    let mut h = Sha256::new();
    h.update(side.as_bytes());
    h.update([0u8]);
    h.update(partner.as_bytes());
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let bits = u64::from_be_bytes(first) >> 11; // 53 bits
    (bits as f64 + 0.5) / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(a: u32, b: u32) -> Split {
        Split::new(&BTreeMap::from([
            ("legacy".to_string(), a),
            ("v2".to_string(), b),
        ]))
    }

    fn partners() -> Vec<String> {
        (0..2000).map(|i| format!("partner-{i}")).collect()
    }

    #[test]
    fn shares_follow_the_weights() {
        let s = split(90, 10);
        let v2 = partners()
            .iter()
            .filter(|p| s.side_for(p, None) == Some("v2"))
            .count();
        // 10 % of 2000 = 200; the binomial spread is about 13.
        assert!((150..=250).contains(&v2), "{v2} of 2000 on v2");
    }

    #[test]
    fn raising_a_weight_only_draws_partners_to_it() {
        let before = split(90, 10);
        let after = split(50, 50);
        let mut moved = 0;
        for p in partners() {
            let (b, a) = (before.side_for(&p, None), after.side_for(&p, None));
            assert!(
                !(b == Some("v2") && a == Some("legacy")),
                "{p} left v2 when v2's weight rose"
            );
            moved += usize::from(b != a);
        }
        // 40 % must move (from 90 % legacy to 50 %), give or take the spread.
        assert!((650..=950).contains(&moved), "{moved} of 2000 moved");
    }

    #[test]
    fn a_pin_wins_and_zero_weight_never_answers() {
        let s = split(100, 0);
        let pin = "v2".to_string();
        for p in partners().iter().take(200) {
            assert_eq!(s.side_for(p, None), Some("legacy"));
            assert_eq!(s.side_for(p, Some(&pin)), Some("v2"));
        }
        assert_eq!(Split::new(&BTreeMap::new()).side_for("a", None), None);
    }
}
