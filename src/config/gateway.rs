//! `gatehouse.toml`: the gateway's settings (listeners, journal, CA
//! defaults, monitoring, upstreams), parsed and validated with file and line
//! in every error.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::home::Home;
use crate::timefmt::serde_duration;

use super::common::*;
use super::upstream::UpstreamSettings;

/// `gatehouse.toml` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    pub trust_domain: String,
    #[serde(default)]
    pub server: ServerSettings,
    #[serde(default)]
    pub journal: JournalSettings,
    #[serde(default)]
    pub ca: CaSettings,
    #[serde(default)]
    pub monitor: MonitorSettings,
    #[serde(default)]
    pub upstreams: BTreeMap<String, UpstreamSettings>,
    /// A fleet's shared store; absent: a single node, no Redis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<super::ClusterSettings>,
}

/// `[server]`: listeners and the limits that protect them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Where partners connect.
    pub listen: SocketAddr,
    /// Metrics and health; loopback unless `admin_public = true`.
    pub admin: SocketAddr,
    /// Must be set to bind the admin listener to a non-loopback address.
    pub admin_public: bool,
    /// With `admin_public`: a file (relative to the home) holding the bearer
    /// token that the console, `/status` and the journal API then require.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<std::path::PathBuf>,
    /// Name of this broker in journal records.
    pub node_id: String,
    #[serde(with = "serde_duration")]
    pub handshake_timeout: Duration,
    #[serde(with = "serde_duration")]
    pub header_timeout: Duration,
    #[serde(with = "serde_duration")]
    pub idle_timeout: Duration,
    #[serde(with = "serde_duration")]
    pub drain_timeout: Duration,
    pub max_connections: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub h2_max_concurrent_streams: u32,
    /// A relayed response the partner stops reading is abandoned (and its
    /// upstream connection released) after this long without progress.
    #[serde(with = "serde_duration")]
    pub write_timeout: Duration,
    /// TLS handshakes in progress from one client address (an IPv6 /64)
    /// at once; more are closed at once.
    pub max_pending_handshakes_per_addr: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin_public: false,
            admin_token_file: None,
            node_id: "gatehouse-1".to_string(),
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            h2_max_concurrent_streams: 100,
            write_timeout: Duration::from_secs(30),
            max_pending_handshakes_per_addr: 256,
        }
    }
}

/// How journal records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A response's end is held until its record is flushed.
    Strict,
    /// Records are flushed (fdatasync) every `flush_interval`; a crash or
    /// power cut may lose that window.
    Relaxed,
}

/// `[journal]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalSettings {
    pub durability: Durability,
    #[serde(with = "serde_duration")]
    pub flush_interval: Duration,
    /// A signed checkpoint every this many records (and at shutdown).
    pub checkpoint_every: u64,
    /// And a signed checkpoint at least this often while records come in.
    #[serde(with = "serde_duration")]
    pub checkpoint_interval: Duration,
    /// Refused handshakes from one address per interval before they are aggregated.
    pub handshake_refusals_per_interval: u32,
    #[serde(with = "serde_duration")]
    pub handshake_aggregate_interval: Duration,
    /// Free space kept on the journal's file system: below it the journal
    /// fails closed (503) until space comes back ("256MiB", "2%", "0": off).
    pub min_free: super::min_free::MinFree,
}

impl Default for JournalSettings {
    fn default() -> Self {
        JournalSettings {
            durability: Durability::Strict,
            flush_interval: Duration::from_millis(10),
            checkpoint_every: 10_000,
            checkpoint_interval: Duration::from_secs(60),
            handshake_refusals_per_interval: 10,
            handshake_aggregate_interval: Duration::from_secs(60),
            min_free: super::min_free::DEFAULT_MIN_FREE,
        }
    }
}

/// `[ca]`: issuance defaults.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaSettings {
    pub default_days: u32,
    #[serde(with = "serde_duration")]
    pub overlap: Duration,
    #[serde(with = "serde_duration")]
    pub crl_validity: Duration,
}

impl Default for CaSettings {
    fn default() -> Self {
        CaSettings {
            default_days: 90,
            overlap: Duration::from_secs(86_400),
            crl_validity: Duration::from_secs(7 * 86_400),
        }
    }
}

/// `[monitor]`: expiry warnings, anomaly detection and alert delivery.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MonitorSettings {
    pub expiry_warning_days: u32,
    /// Alert when a partner's rate exceeds this many times its baseline...
    pub anomaly_factor: f64,
    /// ...and at least this many requests per minute.
    pub anomaly_floor_per_minute: f64,
    /// Minutes of traffic a baseline needs before it can alert.
    pub anomaly_warmup_minutes: u32,
    /// Where alerts are POSTed as JSON (http:// or https://), if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// CA file that verifies an https webhook's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_ca: Option<PathBuf>,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        MonitorSettings {
            expiry_warning_days: 14,
            anomaly_factor: 10.0,
            anomaly_floor_per_minute: 100.0,
            anomaly_warmup_minutes: 60,
            webhook_url: None,
            webhook_ca: None,
        }
    }
}

/// Reads and validates `gatehouse.toml`.
pub fn load_gateway(home: &Home) -> Result<GatewayConfig, ConfigErrors> {
    let path = home.config_file();
    let text = std::fs::read_to_string(&path)
        .map_err(|e| ConfigErrors::one(&path, None, format!("cannot read: {e}")))?;
    parse_gateway(&path, &text)
}

/// Parses and validates the text of a `gatehouse.toml`.
pub fn parse_gateway(path: &Path, text: &str) -> Result<GatewayConfig, ConfigErrors> {
    let cfg: GatewayConfig = toml::from_str(text).map_err(|e| toml_error(path, text, e))?;
    let mut errors = Vec::new();
    let mut err = |msg: String| {
        errors.push(ConfigError {
            file: path.to_path_buf(),
            line: None,
            message: msg,
        })
    };
    if let Err(m) = validate_trust_domain(&cfg.trust_domain) {
        err(m.to_string());
    }
    if !cfg.server.admin.ip().is_loopback() && !cfg.server.admin_public {
        err(format!(
            "[server] admin = {} is not a loopback address; set admin_public = true to expose metrics there on purpose",
            cfg.server.admin
        ));
    }
    if cfg.server.max_connections == 0 {
        err("[server] max_connections must be at least 1".into());
    }
    if cfg.server.max_pending_handshakes_per_addr == 0 {
        err("[server] max_pending_handshakes_per_addr must be at least 1".into());
    }
    if cfg.server.write_timeout.is_zero() {
        err("[server] write_timeout must be longer than 0s".into());
    }
    if cfg.server.max_header_bytes < 1024 {
        err("[server] max_header_bytes must be at least 1024".into());
    }
    if cfg.ca.default_days == 0 {
        err("[ca] default_days must be at least 1".into());
    }
    if cfg.monitor.anomaly_factor.is_nan() || cfg.monitor.anomaly_factor <= 1.0 {
        err("[monitor] anomaly_factor must be greater than 1".into());
    }
    if let Some(url) = &cfg.monitor.webhook_url {
        let https = url.starts_with("https://");
        if !(https || url.starts_with("http://")) || url.parse::<http::Uri>().is_err() {
            err(format!(
                "[monitor] webhook_url `{url}` must be an http:// or https:// URL"
            ));
        } else if https && cfg.monitor.webhook_ca.is_none() {
            err("[monitor] an https webhook_url needs webhook_ca to verify it".into());
        }
    }
    for m in cfg.cluster.iter().flat_map(|c| c.problems()) {
        err(m);
    }
    if cfg.journal.checkpoint_every == 0 {
        err("[journal] checkpoint_every must be at least 1".into());
    }
    if cfg.journal.checkpoint_interval < Duration::from_secs(1) {
        err("[journal] checkpoint_interval must be at least 1s".into());
    }
    if let Some(m) = cfg.journal.min_free.problem() {
        err(m);
    }
    for (name, up) in &cfg.upstreams {
        if let Err(m) = validate_upstream_name(name) {
            err(format!("[upstreams.{name}]: {m}"));
        }
        for m in up.problems(name) {
            err(m);
        }
        for side in up.split.keys() {
            match cfg.upstreams.get(side) {
                None => err(format!(
                    "[upstreams.{name}] split names `{side}`, which is not an upstream (defined: {})",
                    cfg.upstreams.keys().cloned().collect::<Vec<_>>().join(", ")
                )),
                Some(s) if s.is_split() => err(format!(
                    "[upstreams.{name}] split names `{side}`, itself a split: a split's sides are pools (name `{side}`'s own sides instead)"
                )),
                Some(_) => {}
            }
        }
        if let Some(m) = &up.mirror {
            for (key, target) in [("to", Some(&m.to)), ("baseline", m.baseline.as_ref())] {
                let Some(target) = target else { continue };
                match cfg.upstreams.get(target) {
                    None => err(format!(
                        "[upstreams.{name}] mirror {key} = \"{target}\" is not an upstream (defined: {})",
                        cfg.upstreams.keys().cloned().collect::<Vec<_>>().join(", ")
                    )),
                    Some(s) if s.is_split() => err(format!(
                        "[upstreams.{name}] mirror {key} = \"{target}\" is a split: a mirror sends to a pool (name one of `{target}`'s sides)"
                    )),
                    Some(_) => {}
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(cfg)
    } else {
        // Point each message at the table it names, when we can find it.
        for e in &mut errors {
            e.line = find_line_for(text, &e.message);
        }
        Err(ConfigErrors(errors))
    }
}

/// Best-effort line for a semantic error: the line of the `[table]` or key it names.
fn find_line_for(text: &str, message: &str) -> Option<usize> {
    let needle = if let Some(start) = message.find('[') {
        let end = message[start..].find(']')? + start + 1;
        message[start..end].to_string()
    } else if message.starts_with("trust domain") {
        "trust_domain".to_string()
    } else {
        return None;
    };
    text.lines()
        .position(|l| l.trim_start().starts_with(&needle))
        .map(|i| i + 1)
}

fn validate_upstream_name(name: &str) -> Result<(), InvalidValue> {
    if valid_id(name) {
        Ok(())
    } else {
        Err(InvalidValue::UpstreamName(name.to_string()))
    }
}
