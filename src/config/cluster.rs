//! `[cluster]` in `gatehouse.toml`: the Redis store a fleet of brokers
//! shares (limits, quotas, invalidations, anomaly counts, heartbeats) and
//! what a node does when that store does not answer. A home without the
//! section runs as a single node and never touches Redis.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::common::InvalidValue;
use crate::timefmt::serde_duration;

/// What a node does with limited partners while the store does not answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreFailure {
    /// Enforce the limits locally at 1/N of each rate (N = live nodes last
    /// seen) and raise an alert.
    #[default]
    Local,
    /// Answer 503 to partners that have limits until the store is back.
    Deny,
}

impl std::fmt::Display for OnStoreFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OnStoreFailure::Local => "local",
            OnStoreFailure::Deny => "deny",
        })
    }
}

/// `[cluster]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// `redis://[:password@]host:port[/db]` or `rediss://…` (TLS).
    pub redis_url: String,
    /// PEM CA that verifies a `rediss://` server (default: the system roots).
    #[serde(default)]
    pub redis_ca: Option<PathBuf>,
    /// A file holding the Redis password (AUTH), instead of putting it in
    /// the URL; keep it 0600.
    #[serde(default)]
    pub redis_password_file: Option<PathBuf>,
    /// ACL user name for the password (Redis 6+); default: `default`.
    #[serde(default)]
    pub redis_username: Option<String>,
    #[serde(default)]
    pub on_store_failure: OnStoreFailure,
    /// Prefix of every key and channel, so several fleets can share one Redis.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// How long a request waits for the store before the node falls back.
    #[serde(default = "default_timeout", with = "serde_duration")]
    pub store_timeout: Duration,
}

fn default_prefix() -> String {
    "gatehouse".to_string()
}

fn default_timeout() -> Duration {
    Duration::from_millis(250)
}

impl ClusterSettings {
    /// Problems with the settings, one message each.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let scheme = self.redis_url.split_once("://").map(|(s, _)| s);
        if !matches!(scheme, Some("redis" | "rediss")) {
            out.push(format!(
                "[cluster] redis_url `{}` must start with redis:// or rediss://",
                redact(&self.redis_url)
            ));
        }
        if self.redis_ca.is_some() && scheme != Some("rediss") {
            out.push("[cluster] redis_ca is only used with a rediss:// (TLS) url".into());
        }
        if self.key_prefix.is_empty()
            || !self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            out.push("[cluster] key_prefix must be letters, digits, - or _".into());
        }
        if self.store_timeout.is_zero() || self.store_timeout > Duration::from_secs(5) {
            out.push("[cluster] store_timeout must be between 1ms and 5s".into());
        }
        out
    }
}

/// A node id (`--node-id`, `GATEHOUSE_NODE_ID`): it names the node in
/// records, heartbeat keys and alerts.
pub fn validate_node_id(id: &str) -> Result<(), InvalidValue> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(InvalidValue::NodeId(id.to_string()))
    }
}

/// The URL with any password replaced by `***` (for messages and logs).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((cred, host)) => {
            let user = cred.split_once(':').map(|(u, _)| u).unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterSettings, toml::de::Error> {
        toml::from_str::<ClusterSettings>(text)
    }

    #[test]
    fn defaults_and_problems() {
        let c = parse(r#"redis_url = "redis://127.0.0.1:6379""#).unwrap();
        assert_eq!(c.on_store_failure, OnStoreFailure::Local);
        assert_eq!(c.key_prefix, "gatehouse");
        assert!(c.problems().is_empty());
        let c = parse("redis_url = \"http://x\"\non_store_failure = \"deny\"").unwrap();
        assert_eq!(c.on_store_failure, OnStoreFailure::Deny);
        assert_eq!(c.problems().len(), 1);
        let c = parse("redis_url = \"redis://x\"\nredis_ca = \"ca.pem\"").unwrap();
        assert!(c.problems()[0].contains("rediss://"));
        assert!(parse("redis_url = \"redis://x\"\non_store_failure = \"maybe\"").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("rediss://:s3cret@redis.internal:6380/0"),
            "rediss://:***@redis.internal:6380/0"
        );
        assert_eq!(redact("redis://u:p@h"), "redis://u:***@h");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
