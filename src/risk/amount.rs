//! `Amount`: an exact, non-negative decimal money amount in fixed point
//! (four decimal places), parsed from text (a JSON number's raw text, a
//! JSON string, a TOML string) and never through binary floating point.

use std::fmt;

/// Decimal places kept: amounts are counted in units of 0.0001.
pub const DECIMAL_PLACES: u32 = 4;
/// 10^[`DECIMAL_PLACES`].
pub const SCALE: i64 = 10_000;
/// The largest amount, in units of 0.0001: 2^53 - 1, so that a fleet's
/// store (whose script counts in doubles) adds and compares exactly.
pub const MAX_UNITS: i64 = (1 << 53) - 1;

/// A non-negative amount, in units of 10^-[`DECIMAL_PLACES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(i64);

/// Why a text is not an amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("`{0}` is not a decimal number")]
    NotDecimal(String),
    #[error("`{0}` is negative")]
    Negative(String),
    #[error("`{0}` has more than {DECIMAL_PLACES} decimal places that are not zero")]
    TooPrecise(String),
    #[error("`{0}` is larger than the largest amount kept (900719925474.0991)")]
    TooLarge(String),
}

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(0);

    /// The amount of `units` ten-thousandths (`None` past [`MAX_UNITS`] or below 0).
    pub fn from_units(units: i64) -> Option<Amount> {
        (0..=MAX_UNITS).contains(&units).then_some(Amount(units))
    }

    /// The amount in ten-thousandths.
    pub fn units(self) -> i64 {
        self.0
    }

    /// `self + other`, `None` past the largest amount.
    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).and_then(Amount::from_units)
    }

    /// `self - other`, never below zero.
    pub fn saturating_sub(self, other: Amount) -> Amount {
        Amount((self.0 - other.0).max(0))
    }

    /// Parses a decimal in JSON number syntax (`12`, `12.50`, `1.2e3`;
    /// also a leading `+` is refused, as JSON does). Trailing zeros past the
    /// kept places are fine (`1.00000`); other digits there are refused,
    /// never rounded.
    pub fn parse(text: &str) -> Result<Amount, AmountError> {
        let bad = || AmountError::NotDecimal(shown(text));
        let s = text.trim();
        if s.is_empty() || s.len() > 64 {
            return Err(bad());
        }
        let (negative, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (mantissa, exponent) = match s.find(['e', 'E']) {
            Some(i) => {
                let e = &s[i + 1..];
                let e = e.strip_prefix('+').unwrap_or(e);
                let (neg, digits) = match e.strip_prefix('-') {
                    Some(d) => (true, d),
                    None => (false, e),
                };
                if digits.is_empty()
                    || digits.len() > 4
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(bad());
                }
                let v: i32 = digits.parse().map_err(|_| bad())?;
                (&s[..i], if neg { -v } else { v })
            }
            None => (s, 0),
        };
        let (int, frac) = match mantissa.split_once('.') {
            Some((i, f)) if !f.is_empty() => (i, f),
            Some(_) => return Err(bad()),
            None => (mantissa, ""),
        };
        if int.is_empty()
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
            || (int.len() > 1 && int.starts_with('0'))
        {
            return Err(bad());
        }
        // All digits, and where the decimal point sits after the exponent.
        let digits: Vec<u8> = int.bytes().chain(frac.bytes()).map(|b| b - b'0').collect();
        let point = int.len() as i64 + i64::from(exponent);
        let mut units: i64 = 0;
        for (i, d) in digits.iter().enumerate() {
            // The place of this digit relative to the last kept one.
            let place = point - 1 - i as i64; // 0 = units, -1 = tenths, ...
            if place < -(DECIMAL_PLACES as i64) {
                if *d != 0 {
                    return Err(AmountError::TooPrecise(shown(text)));
                }
                continue;
            }
            if *d == 0 {
                continue;
            }
            let power = u32::try_from(place + DECIMAL_PLACES as i64)
                .map_err(|_| AmountError::TooLarge(shown(text)))?;
            let add = 10i64
                .checked_pow(power)
                .and_then(|p| p.checked_mul(i64::from(*d)))
                .ok_or_else(|| AmountError::TooLarge(shown(text)))?;
            units = units
                .checked_add(add)
                .ok_or_else(|| AmountError::TooLarge(shown(text)))?;
        }
        if units > MAX_UNITS {
            return Err(AmountError::TooLarge(shown(text)));
        }
        if negative && units != 0 {
            return Err(AmountError::Negative(shown(text)));
        }
        Ok(Amount(units))
    }
}

/// A text as shown in an error: at most 40 characters.
fn shown(text: &str) -> String {
    crate::event::truncated(text, 40)
}

impl fmt::Display for Amount {
    /// The shortest exact form with at least two decimals (`12.50`,
    /// `0.0001`, `250000.00`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let int = self.0 / SCALE;
        let frac = format!("{:04}", self.0 % SCALE);
        let frac = frac.trim_end_matches('0');
        let frac = if frac.len() < 2 {
            format!("{frac:0<2}")
        } else {
            frac.to_string()
        };
        write!(f, "{int}.{frac}")
    }
}

impl std::str::FromStr for Amount {
    type Err = AmountError;
    fn from_str(s: &str) -> Result<Amount, AmountError> {
        Amount::parse(s)
    }
}

impl serde::Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Amount {
    /// From a string (`"10000.00"`) or an integer (`10000`); a TOML float
    /// is refused (it went through binary floating point).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Amount, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Amount;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an amount as a decimal string such as \"10000.00\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Amount, E> {
                Amount::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Amount, E> {
                Amount::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Amount, E> {
                Amount::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Amount, E> {
                Err(E::custom(
                    "write amounts as strings (\"10000.00\"): a float is not exact",
                ))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Amount {
        Amount::parse(s).unwrap()
    }

    #[test]
    fn parses_exactly() {
        assert_eq!(a("0").units(), 0);
        assert_eq!(a("12").units(), 120_000);
        assert_eq!(a("12.5").units(), 125_000);
        assert_eq!(a("0.1").units() + a("0.2").units(), a("0.3").units());
        assert_eq!(a("10000.00").units(), 100_000_000);
        assert_eq!(a("1.2e3").units(), 12_000_000);
        assert_eq!(a("1E+2").units(), 1_000_000);
        assert_eq!(a("125e-2").units(), 12_500);
        assert_eq!(a("0.00010000").units(), 1);
        assert_eq!(a("-0").units(), 0);
        assert_eq!(a("900719925474.0991").units(), MAX_UNITS);
    }

    #[test]
    fn refuses_what_is_not_exact_or_not_a_number() {
        for bad in [
            "", "abc", "1.", ".5", "+1", "01", "1..2", "1e", "0x10", "1,5", "NaN", "1e99999",
        ] {
            assert!(
                matches!(Amount::parse(bad), Err(AmountError::NotDecimal(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Amount::parse("0.00001"),
            Err(AmountError::TooPrecise(_))
        ));
        assert!(matches!(Amount::parse("-5"), Err(AmountError::Negative(_))));
        assert!(matches!(
            Amount::parse("1e300"),
            Err(AmountError::TooLarge(_))
        ));
        assert!(matches!(
            Amount::parse("900719925474.0992"),
            Err(AmountError::TooLarge(_))
        ));
    }

    #[test]
    fn shows_two_decimals_at_least() {
        assert_eq!(a("12").to_string(), "12.00");
        assert_eq!(a("12.5").to_string(), "12.50");
        assert_eq!(a("0.0001").to_string(), "0.0001");
        assert_eq!(a("250000.125").to_string(), "250000.125");
    }

    proptest::proptest! {
        #[test]
        fn display_parses_back(units in 0..=MAX_UNITS) {
            let x = Amount::from_units(units).unwrap();
            proptest::prop_assert_eq!(Amount::parse(&x.to_string()).unwrap(), x);
        }
    }
}
