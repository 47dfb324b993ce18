//! The fleet's Redis store: how a node or a CLI command connects to it
//! (`redis://` or `rediss://` with the operator's CA, a password from the
//! URL or from a file) and the names of every key and channel the fleet
//! uses, all under `[cluster] key_prefix`.

use std::time::Duration;

use crate::config::ClusterSettings;
use crate::config::cluster::redact;
use crate::home::Home;

/// What failed between a node (or a CLI command) and the fleet's store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// `[cluster]` names a URL, password file or CA that cannot be used.
    #[error("[cluster] {0}")]
    Settings(String),
    /// The home runs as a single node.
    #[error(
        "this home has no [cluster] section: it runs as a single node (see `gatehouse status`)"
    )]
    NoCluster,
    /// `gatehouse.toml` fails validation.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigErrors),
    /// No connection to the store (yet).
    #[error("not connected")]
    NotConnected,
    /// The store did not answer within the time allowed.
    #[error("{what}: no answer within {within:?}")]
    NoAnswer {
        what: &'static str,
        within: Duration,
    },
    /// The store answered with an error, or the connection failed.
    #[error("the fleet store {url}: {source}")]
    Store {
        url: String,
        #[source]
        source: redis::RedisError,
    },
    /// The store's connection failed (during the heartbeat or a limit check).
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Builds a client for `[cluster]` (nothing is connected yet).
pub fn client(home: &Home, settings: &ClusterSettings) -> Result<redis::Client, StoreError> {
    use redis::IntoConnectionInfo;
    let url = redact(&settings.redis_url);
    let mut info = settings
        .redis_url
        .as_str()
        .into_connection_info()
        .map_err(|e| StoreError::Settings(format!("redis_url `{url}`: {e}")))?;
    if let Some(f) = &settings.redis_password_file {
        let path = home.resolve(f);
        let pass = std::fs::read_to_string(&path).map_err(|e| {
            StoreError::Settings(format!("redis_password_file {}: {e}", path.display()))
        })?;
        info.redis.password = Some(pass.trim_end_matches(['\r', '\n']).to_string());
    }
    if let Some(u) = &settings.redis_username {
        info.redis.username = Some(u.clone());
    }
    match &settings.redis_ca {
        None => redis::Client::open(info)
            .map_err(|e| StoreError::Settings(format!("redis `{url}`: {e}"))),
        Some(ca) => {
            let path = home.resolve(ca);
            let pem = std::fs::read(&path)
                .map_err(|e| StoreError::Settings(format!("redis_ca {}: {e}", path.display())))?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                },
            )
            .map_err(|e| {
                StoreError::Settings(format!("redis `{url}` with CA {}: {e}", path.display()))
            })
        }
    }
}

/// The connection's own bound on an answer. Each call on the request path
/// is bounded by the live `[cluster] store_timeout` (at most 5 s, some calls
/// four times that); the connection, made once, must not hold the value it
/// was made with, or a reload that raises `store_timeout` would be cut
/// short by the old one. This ceiling only bounds the background calls
/// (announcements, giving an amount back) that have no timeout of their own.
const RESPONSE_CEILING: Duration = Duration::from_secs(20);

/// A connection manager (reconnects by itself) that gives up connecting
/// after `timeout`; its callers bound each call by the live
/// `store_timeout`, so a store that does not answer never holds a request
/// long.
pub async fn manager(
    client: &redis::Client,
    timeout: Duration,
) -> Result<redis::aio::ConnectionManager, redis::RedisError> {
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(timeout.max(Duration::from_millis(100)))
        .set_response_timeout(RESPONSE_CEILING)
        .set_number_of_retries(1)
        .set_max_delay(1_000);
    client.get_connection_manager_with_config(config).await
}

/// Names of the fleet's keys and channels.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Keys {
        Keys {
            prefix: prefix.to_string(),
        }
    }

    /// The pub/sub channel of invalidations.
    pub fn channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }
    /// The fleet's configuration generation (one step per announced change).
    pub fn generation(&self) -> String {
        format!("{}:generation", self.prefix)
    }
    /// The last announced changes, newest first (for `status --fleet`).
    pub fn changes(&self) -> String {
        format!("{}:changes", self.prefix)
    }
    /// A node's heartbeat (expires when the node stops beating).
    pub fn node(&self, id: &str) -> String {
        format!("{}:node:{id}", self.prefix)
    }
    /// A batch of a node's counts already added (its id, for a while).
    pub fn batch(&self, id: &str) -> String {
        format!("{}:batch:{id}", self.prefix)
    }
    pub fn node_pattern(&self) -> String {
        format!("{}:node:*", self.prefix)
    }
    /// A token bucket's theoretical arrival time (GCRA), per partner and scope.
    pub fn bucket(&self, partner: &str, scope: &str) -> String {
        format!("{}:bucket:{partner}:{scope}", self.prefix)
    }
    /// A daily quota's counter.
    pub fn quota(&self, partner: &str, scope: &str, day: i64) -> String {
        format!("{}:quota:{partner}:{scope}:{day}", self.prefix)
    }
    /// Requests per partner in one UTC minute, fleet-wide (hash partner → count).
    pub fn minute(&self, minute: i64) -> String {
        format!("{}:minute:{minute}", self.prefix)
    }
    /// Requests per partner on one UTC day, fleet-wide (hash partner → count).
    pub fn day(&self, day: i64) -> String {
        format!("{}:day:{day}", self.prefix)
    }
    /// A partner's running value total in one currency on one UTC day
    /// (in units of 0.0001).
    pub fn value(&self, partner: &str, currency: &str, day: i64) -> String {
        format!("{}:value:{partner}:{currency}:{day}", self.prefix)
    }
    /// A nonce of an accepted signature (expires after the nonce window).
    pub fn nonce(&self, partner: &str, nonce_hash: &str) -> String {
        format!("{}:nonce:{partner}:{nonce_hash}", self.prefix)
    }
    /// One anomaly alert per fleet: the first node to set it raises it.
    pub fn alert(&self, kind: &str, subject: &str) -> String {
        format!("{}:alert:{kind}:{subject}", self.prefix)
    }
}
