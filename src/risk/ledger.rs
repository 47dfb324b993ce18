//! The single node's running value totals: per partner and currency, for
//! the current UTC day. A call's amount is reserved before it is relayed
//! and given back when the upstream fails or answers non-2xx. In a fleet
//! the store keeps the totals instead (`crate::fleet::value`); this one
//! then stands in only while the store does not answer.

use std::collections::HashMap;
use std::sync::Mutex;

use super::amount::Amount;
/// Milliseconds in a day.
const MS_PER_DAY: i64 = 86_400_000;

/// The UTC day (days since the epoch) of `now_ms`.
pub fn day_of(now_ms: i64) -> i64 {
    now_ms.div_euclid(MS_PER_DAY)
}

/// Seconds until the next UTC midnight (at least 1).
pub fn secs_to_midnight(now_ms: i64) -> u64 {
    let next = (day_of(now_ms) + 1) * MS_PER_DAY;
    ((next - now_ms) as u64).div_ceil(1000).max(1)
}

/// The day's total would pass `per_day`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DailyOver {
    /// Today's total before this call.
    pub total: Amount,
}

/// Today's totals (see the module doc).
#[derive(Default)]
pub struct Ledger {
    totals: Mutex<HashMap<(String, String), (i64, Amount)>>,
}

impl Ledger {
    /// Reserves `amount` of `currency` for `partner` on `day`, unless the
    /// day's total would pass `per_day`.
    pub fn reserve(
        &self,
        partner: &str,
        currency: &str,
        amount: Amount,
        per_day: Option<Amount>,
        day: i64,
    ) -> Result<(), DailyOver> {
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let key = (partner.to_string(), currency.to_string());
        let entry = totals.entry(key).or_insert((day, Amount::ZERO));
        if entry.0 != day {
            *entry = (day, Amount::ZERO);
        }
        let total = entry.1;
        match total.checked_add(amount) {
            Some(new) if per_day.is_none_or(|limit| new <= limit) => {
                entry.1 = new;
                Ok(())
            }
            _ => Err(DailyOver { total }),
        }
    }

    /// Gives back a reservation made on `day` (nothing if the day is over).
    pub fn give_back(&self, partner: &str, currency: &str, amount: Amount, day: i64) {
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = totals.get_mut(&(partner.to_string(), currency.to_string()))
            && entry.0 == day
        {
            entry.1 = entry.1.saturating_sub(amount);
        }
    }

    /// Adds a settled amount found in the journal at start-up.
    pub fn restore(&self, partner: &str, currency: &str, amount: Amount, day: i64) {
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let entry = totals
            .entry((partner.to_string(), currency.to_string()))
            .or_insert((day, Amount::ZERO));
        if entry.0 < day {
            *entry = (day, Amount::ZERO);
        }
        if entry.0 == day {
            entry.1 = entry.1.checked_add(amount).unwrap_or(entry.1);
        }
    }

    /// Sets the total to what a fleet's store answered (the fleet's total as
    /// this node last saw it: what status shows, and where a fallback to
    /// this node's totals starts).
    pub fn observe(&self, partner: &str, currency: &str, total: Amount, day: i64) {
        let mut totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let entry = totals
            .entry((partner.to_string(), currency.to_string()))
            .or_insert((day, Amount::ZERO));
        if entry.0 <= day {
            *entry = (day, total);
        }
    }

    /// Today's total of `partner` in `currency`.
    pub fn total(&self, partner: &str, currency: &str, day: i64) -> Amount {
        let totals = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        match totals.get(&(partner.to_string(), currency.to_string())) {
            Some((d, a)) if *d == day => *a,
            _ => Amount::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Amount {
        Amount::parse(s).unwrap()
    }

    #[test]
    fn reserves_up_to_the_day_limit_and_gives_back() {
        let l = Ledger::default();
        let limit = Some(a("100.00"));
        assert!(l.reserve("acme", "EUR", a("60"), limit, 1).is_ok());
        assert_eq!(
            l.reserve("acme", "EUR", a("40.01"), limit, 1),
            Err(DailyOver { total: a("60") })
        );
        assert!(l.reserve("acme", "USD", a("100"), limit, 1).is_ok());
        assert!(l.reserve("beta", "EUR", a("100"), limit, 1).is_ok());
        l.give_back("acme", "EUR", a("60"), 1);
        assert!(l.reserve("acme", "EUR", a("100"), limit, 1).is_ok());
        assert_eq!(l.total("acme", "EUR", 1), a("100"));
        // A new day starts from zero; yesterday's give-back changes nothing.
        assert!(l.reserve("acme", "EUR", a("100"), limit, 2).is_ok());
        l.give_back("acme", "EUR", a("100"), 1);
        assert_eq!(l.total("acme", "EUR", 2), a("100"));
        assert_eq!(l.total("acme", "EUR", 1), Amount::ZERO);
    }

    #[test]
    fn midnight() {
        assert_eq!(secs_to_midnight(MS_PER_DAY - 1), 1);
        assert_eq!(secs_to_midnight(0), 86_400);
    }
}
