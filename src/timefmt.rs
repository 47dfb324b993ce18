//! Durations and instants as operators write them: `90s`, `15m`, `24h`, `7d`,
//! `500ms`, RFC 3339 timestamps, and "relative to now" (`1h` = one hour ago).

use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A duration or instant an operator wrote that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeParseError {
    #[error("`{0}` is not a duration (examples: 500ms, 30s, 15m, 24h, 7d)")]
    NotADuration(String),
    #[error("`{0}` is too long a duration")]
    TooLong(String),
    #[error("`{text}` has an unknown unit `{unit}` (use ms, s, m, h, d or w)")]
    UnknownUnit { text: String, unit: String },
    #[error("`{0}` is neither an RFC 3339 time (2026-11-27T10:00:00Z) nor a duration ago (1h, 7d)")]
    NotAnInstant(String),
}

/// Parses `500ms`, `30s`, `15m`, `24h`, `7d`, `2w`. A bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, TimeParseError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| TimeParseError::NotADuration(s.to_string()))?;
    let secs = |mult: u64| {
        n.checked_mul(mult)
            .map(Duration::from_secs)
            .ok_or_else(|| TimeParseError::TooLong(s.to_string()))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        "w" => secs(7 * 86_400),
        _ => Err(TimeParseError::UnknownUnit {
            text: s.to_string(),
            unit: unit.to_string(),
        }),
    }
}

/// Formats a duration the way `parse_duration` reads it, in the largest whole unit.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_millis() != 0 || s == 0 {
        return format!("{}ms", d.as_millis());
    }
    for (unit, len) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if s.is_multiple_of(len) {
            return format!("{}{unit}", s / len);
        }
    }
    format!("{s}s")
}

/// Parses an instant: RFC 3339 (`2026-11-27T10:00:00Z`) or a duration meaning
/// "that long ago" (`1h`, `7d`).
pub fn parse_instant(s: &str, now: OffsetDateTime) -> Result<OffsetDateTime, TimeParseError> {
    if let Ok(t) = OffsetDateTime::parse(s.trim(), &Rfc3339) {
        return Ok(t);
    }
    let d = parse_duration(s).map_err(|_| TimeParseError::NotAnInstant(s.to_string()))?;
    Ok(now - d)
}

/// RFC 3339 with second precision, UTC.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    t.replace_nanosecond(0)
        .unwrap_or(t)
        .format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// RFC 3339 with millisecond precision, UTC (journal and event times).
pub fn rfc3339_millis(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let ms = t.millisecond();
    let base = t.replace_nanosecond(0).unwrap_or(t);
    match base.format(&Rfc3339) {
        Ok(s) => format!("{}.{ms:03}Z", s.trim_end_matches('Z')),
        Err(_) => t.unix_timestamp().to_string(),
    }
}

/// serde support for `Duration` fields written as strings (`"24h"`).
pub mod serde_duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
    pub fn serialize<S: Serializer>(v: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*v))
    }

    /// The same for `Option<Duration>` (absent = `None`).
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};
        use std::time::Duration;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            Option::<String>::deserialize(d)?
                .map(|s| super::super::parse_duration(&s).map_err(serde::de::Error::custom))
                .transpose()
        }
        pub fn serialize<S: Serializer>(v: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match v {
                Some(d) => s.serialize_str(&super::super::format_duration(*d)),
                None => s.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_round_trip() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        for s in ["25h", "90s", "15m", "7d", "250ms", "1d"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }

    #[test]
    fn instants_accept_rfc3339_and_relative() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        assert_eq!(
            parse_instant("1h", now).unwrap(),
            now - Duration::from_secs(3600)
        );
        let t = parse_instant("2026-11-27T10:00:00Z", now).unwrap();
        assert_eq!(rfc3339(t), "2026-11-27T10:00:00Z");
        assert!(parse_instant("yesterday", now).is_err());
    }
}
