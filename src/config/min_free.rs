//! `[journal] min_free`: the free space the journal keeps on its file
//! system, as the operator writes it (`"256MiB"`, `"1GB"`, `"2%"`, `0`).
//! The journal's space guard (`journal::space`) enforces it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The free space the journal keeps on its file system: below it, writes
/// are refused (fail closed) until space comes back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MinFree {
    /// A size in bytes (0: no margin, the guard is off).
    Bytes(u64),
    /// A share of the file system's size, in percent (0 < p ≤ 50).
    Percent(f64),
}

/// The default margin: room for sled to rewrite its snapshot at the next
/// open (about 5 bytes per stored value: ~50 MB for ten million records)
/// and for several seconds of traffic at full speed, small against any disk
/// a broker runs on.
pub const DEFAULT_MIN_FREE: MinFree = MinFree::Bytes(256 * 1024 * 1024);

/// Smallest non-zero margin: a few sled log segments (512 KiB each).
pub const SMALLEST_MIN_FREE: u64 = 1024 * 1024;

impl Default for MinFree {
    fn default() -> Self {
        DEFAULT_MIN_FREE
    }
}

/// A `[journal] min_free` value that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MinFreeError {
    #[error(
        "`{0}` is not a size (like \"256MiB\", \"1GB\", \"0\" to turn the margin off) or a percent of the file system (like \"2%\")"
    )]
    NotASize(String),
    #[error("`{0}`: a percent must be above 0 and at most 50")]
    PercentOutOfRange(String),
}

impl MinFree {
    /// Parses `"256MiB"`, `"1GB"`, `"1048576"`, `"2%"` or `"0"`.
    pub fn parse(s: &str) -> Result<MinFree, MinFreeError> {
        let t = s.trim();
        let bad = || MinFreeError::NotASize(s.to_string());
        if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(p > 0.0 && p <= 50.0) {
                return Err(MinFreeError::PercentOutOfRange(s.to_string()));
            }
            return Ok(MinFree::Percent(p));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let num: f64 = num.parse().map_err(|_| bad())?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => return Err(bad()),
        };
        let bytes = num * mult as f64;
        if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
            return Err(bad());
        }
        Ok(MinFree::Bytes(bytes as u64))
    }

    /// What `gatehouse check` objects to, if anything.
    pub fn problem(&self) -> Option<String> {
        match *self {
            MinFree::Bytes(b) if b > 0 && b < SMALLEST_MIN_FREE => Some(format!(
                "[journal] min_free = \"{self}\" is below 1MiB: a margin that small is crossed by one sled log segment; use at least \"1MiB\", or \"0\" to turn it off"
            )),
            _ => None,
        }
    }

    /// The margin in bytes on a file system of `total` bytes.
    pub fn bytes(&self, total: u64) -> u64 {
        match *self {
            MinFree::Bytes(b) => b,
            MinFree::Percent(p) => (total as f64 * p / 100.0) as u64,
        }
    }

    pub fn is_off(&self) -> bool {
        *self == MinFree::Bytes(0)
    }
}

impl fmt::Display for MinFree {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            MinFree::Percent(p) => write!(f, "{p}%"),
            MinFree::Bytes(b) if b > 0 && b % (1 << 30) == 0 => write!(f, "{}GiB", b >> 30),
            MinFree::Bytes(b) if b > 0 && b % (1 << 20) == 0 => write!(f, "{}MiB", b >> 20),
            MinFree::Bytes(b) if b > 0 && b % (1 << 10) == 0 => write!(f, "{}KiB", b >> 10),
            MinFree::Bytes(b) => write!(f, "{b}"),
        }
    }
}

impl Serialize for MinFree {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MinFree {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => MinFree::parse(&s).map_err(serde::de::Error::custom),
            Raw::Int(b) => Ok(MinFree::Bytes(b)),
        }
    }
}
