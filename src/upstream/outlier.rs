//! Passive outlier ejection, as pure rules: how long an ejection lasts
//! (`base_ejection`, doubling on each repeat) and whether one more endpoint
//! may be ejected without going past `max_ejected_percent` of the pool.

use std::time::Duration;

/// Doublings at most: the tenth ejection and later last `base × 512`.
const MAX_DOUBLINGS: u32 = 9;

/// The length of an endpoint's `nth` ejection (1-based).
pub fn ejection_length(base: Duration, nth: u32) -> Duration {
    base.saturating_mul(1 << nth.saturating_sub(1).min(MAX_DOUBLINGS))
}

/// Whether one more of `pool_size` endpoints may be ejected while
/// `ejected` are out: never more than `max_percent` of the pool at once.
pub fn may_eject(pool_size: usize, ejected: usize, max_percent: u32) -> bool {
    (ejected + 1) * 100 <= max_percent as usize * pool_size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejections_double() {
        let b = Duration::from_secs(30);
        assert_eq!(ejection_length(b, 1), b);
        assert_eq!(ejection_length(b, 2), b * 2);
        assert_eq!(ejection_length(b, 3), b * 4);
        assert_eq!(ejection_length(b, 50), b * 512);
    }

    #[test]
    fn never_more_than_the_share() {
        // Three endpoints at 50 %: one may go, not two.
        assert!(may_eject(3, 0, 50));
        assert!(!may_eject(3, 1, 50));
        // A pool of one is ejected only at 100 %.
        assert!(!may_eject(1, 0, 50));
        assert!(may_eject(1, 0, 100));
        assert!(may_eject(3, 2, 100));
    }
}
