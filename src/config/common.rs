//! What both configuration files share: errors that carry file and line,
//! identifier rules (partner ids, upstream names, the trust domain) and the
//! route method names.

use std::fmt;
use std::path::{Path, PathBuf};

/// Methods a route may grant.
pub const KNOWN_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

/// Default request body limit for a route (10 MiB).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;

/// One configuration problem, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// All the problems found in one load.
#[derive(Debug, Clone)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    pub(super) fn one(file: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        }])
    }
}

/// 1-based line of a byte offset in `text`.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

pub(super) fn toml_error(file: &Path, text: &str, e: toml::de::Error) -> ConfigErrors {
    let line = e.span().map(|s| line_of(text, s.start));
    ConfigErrors::one(file, line, e.message().trim().to_string())
}

/// A name or value the operator gave (on the command line or in a file)
/// that the broker refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidValue {
    #[error(
        "trust domain `{0}` is invalid: use lowercase letters, digits, '-' and '.' (e.g. gatehouse.local)"
    )]
    TrustDomain(String),
    #[error(
        "partner id `{0}` is invalid: it must match [a-z0-9][a-z0-9-]{{0,62}} (lowercase letters, digits, '-')"
    )]
    PartnerId(String),
    #[error("upstream name `{0}` is invalid: use [a-z0-9][a-z0-9-]{{0,62}}")]
    UpstreamName(String),
    #[error("node id `{0}` is invalid: 1 to 64 letters, digits, '-', '_' or '.'")]
    NodeId(String),
    #[error("route `{0}` is not of the form \"GET,POST /v1/orders -> upstream\"")]
    RouteForm(String),
    #[error("{0}")]
    Route(String),
    #[error("the partner file is not valid TOML: {0}")]
    PartnerToml(String),
}

pub fn validate_trust_domain(td: &str) -> Result<(), InvalidValue> {
    let ok = !td.is_empty()
        && td.len() <= 253
        && td
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && !td.starts_with(['.', '-'])
        && !td.ends_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(InvalidValue::TrustDomain(td.to_string()))
    }
}

/// `[a-z0-9][a-z0-9-]{0,62}`.
pub fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

/// Checks a partner id, with an operator-facing message.
pub fn validate_partner_id(id: &str) -> Result<(), InvalidValue> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(InvalidValue::PartnerId(id.to_string()))
    }
}
