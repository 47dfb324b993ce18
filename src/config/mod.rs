//! The operator's configuration: `gatehouse.toml` and `partners/<id>.toml`
//! (DESIGN.md). This module reads, validates and reports; it owns the file
//! formats and the validated types the rest of the crate works from.
//!
//! Every problem is reported with its file and line, and loading reports all
//! problems it finds, not just the first, so `gatehouse check` can list them.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::home::Home;
use crate::timefmt::serde_duration;

pub mod cluster;
pub use cluster::{ClusterSettings, OnStoreFailure};

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
    fn one(file: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        }])
    }
}

/// 1-based line of a byte offset in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn toml_error(file: &Path, text: &str, e: toml::de::Error) -> ConfigErrors {
    let line = e.span().map(|s| line_of(text, s.start));
    ConfigErrors::one(file, line, e.message().trim().to_string())
}

// ---------------------------------------------------------------- gatehouse.toml

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
    pub cluster: Option<ClusterSettings>,
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
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            admin: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin_public: false,
            node_id: "gatehouse-1".to_string(),
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(10),
            max_connections: 10_000,
            max_header_bytes: 16 * 1024,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            h2_max_concurrent_streams: 100,
        }
    }
}

/// How journal records reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// A response's end is held until its record is flushed.
    Strict,
    /// Records are flushed every `flush_interval`; a crash may lose that window.
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
    /// Refused handshakes from one address per interval before they are aggregated.
    pub handshake_refusals_per_interval: u32,
    #[serde(with = "serde_duration")]
    pub handshake_aggregate_interval: Duration,
}

impl Default for JournalSettings {
    fn default() -> Self {
        JournalSettings {
            durability: Durability::Strict,
            flush_interval: Duration::from_millis(10),
            checkpoint_every: 10_000,
            handshake_refusals_per_interval: 10,
            handshake_aggregate_interval: Duration::from_secs(60),
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

/// `[upstreams.<name>]`: one service the broker relays to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    pub url: String,
    /// CA file that verifies the upstream's server certificate (https only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// Name checked in the upstream's certificate (default: the URL's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<PathBuf>,
    #[serde(with = "serde_duration", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    #[serde(with = "serde_duration", default = "default_response_timeout")]
    pub response_timeout: Duration,
    /// Add the signed `X-Gatehouse-Identity` token to requests relayed here
    /// (about 25 µs of CPU per request; turn off for upstreams that do not
    /// verify it).
    #[serde(default = "default_true")]
    pub signed_identity: bool,
}

fn default_true() -> bool {
    true
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_response_timeout() -> Duration {
    Duration::from_secs(30)
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
        err(m);
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
    for (name, up) in &cfg.upstreams {
        if let Err(m) = validate_upstream_name(name) {
            err(format!("[upstreams.{name}]: {m}"));
        }
        match up.url.split_once("://") {
            Some(("https", rest)) | Some(("http", rest)) if !rest.is_empty() => {
                if up.url.parse::<http::Uri>().is_err() {
                    err(format!(
                        "[upstreams.{name}] url `{}` is not a valid URL",
                        up.url
                    ));
                }
            }
            _ => err(format!(
                "[upstreams.{name}] url `{}` must start with http:// or https://",
                up.url
            )),
        }
        if up.url.starts_with("https://") && up.ca.is_none() {
            err(format!(
                "[upstreams.{name}] is https but has no `ca` to verify its certificate"
            ));
        }
        if up.client_cert.is_some() != up.client_key.is_some() {
            err(format!(
                "[upstreams.{name}] client_cert and client_key go together"
            ));
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

pub fn validate_trust_domain(td: &str) -> Result<(), String> {
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
        Err(format!(
            "trust domain `{td}` is invalid: use lowercase letters, digits, '-' and '.' (e.g. gatehouse.local)"
        ))
    }
}

fn validate_upstream_name(name: &str) -> Result<(), String> {
    if valid_id(name) {
        Ok(())
    } else {
        Err(format!(
            "upstream name `{name}` is invalid: use [a-z0-9][a-z0-9-]{{0,62}}"
        ))
    }
}

/// What to do about a partner's rate spike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnAnomaly {
    /// Alert only.
    #[default]
    Alert,
    /// Alert and clamp the partner to the threshold until an operator clears it.
    Throttle,
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
pub fn validate_partner_id(id: &str) -> Result<(), String> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(format!(
            "partner id `{id}` is invalid: it must match [a-z0-9][a-z0-9-]{{0,62}} (lowercase letters, digits, '-')"
        ))
    }
}

// ---------------------------------------------------------------- partners

/// Whether a partner may call at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PartnerStatus {
    #[default]
    Active,
    Suspended,
}

impl fmt::Display for PartnerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PartnerStatus::Active => "active",
            PartnerStatus::Suspended => "suspended",
        })
    }
}

/// How sensitive a route's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    #[default]
    Normal,
    High,
}

/// Traffic limits of a partner or a route (all optional: unset = unlimited).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
}

/// A partner file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PartnerFileRaw {
    id: Spanned<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    status: PartnerStatus,
    #[serde(default)]
    limits: Option<LimitSpec>,
    #[serde(default)]
    on_anomaly: OnAnomaly,
    /// Self-service renewal opens this long before `not_after`.
    #[serde(default)]
    renewal_window: Option<Spanned<String>>,
    #[serde(default)]
    routes: Vec<Spanned<RouteRaw>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteRaw {
    methods: Spanned<Vec<String>>,
    path: Spanned<String>,
    upstream: Spanned<String>,
    #[serde(default)]
    strip_prefix: bool,
    #[serde(default)]
    risk: Risk,
    #[serde(default)]
    limits: Option<LimitSpec>,
    #[serde(default)]
    max_body_bytes: Option<u64>,
}

/// A validated partner.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Partner {
    pub id: String,
    pub name: String,
    pub status: PartnerStatus,
    pub limits: LimitSpec,
    /// `on_anomaly = "throttle"` clamps the partner on a traffic spike.
    #[serde(default, skip_serializing_if = "is_alert_only")]
    pub on_anomaly: OnAnomaly,
    /// `renewal_window = "30d"`: self-service renewal opens this long before
    /// the certificate's `not_after` (unset: the last third of its lifetime).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "serde_duration::option"
    )]
    pub renewal_window: Option<Duration>,
    pub routes: Vec<RouteSpec>,
}

fn is_alert_only(a: &OnAnomaly) -> bool {
    *a == OnAnomaly::Alert
}

/// A validated route grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub methods: Vec<String>,
    pub path: String,
    pub upstream: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_prefix: bool,
    #[serde(default, skip_serializing_if = "is_normal_risk")]
    pub risk: Risk,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
}

fn is_normal_risk(r: &Risk) -> bool {
    *r == Risk::Normal
}

impl RouteSpec {
    /// `GET,POST /v1/orders`, the form the CLI takes and shows.
    pub fn describe(&self) -> String {
        format!(
            "{} {} -> {}",
            self.methods.join(","),
            self.path,
            self.upstream
        )
    }
}

/// Checks one route's method list and path; `None` when fine.
pub fn route_problem(methods: &[String], path: &str) -> Option<String> {
    if methods.is_empty() {
        return Some("a route needs at least one method".into());
    }
    for m in methods {
        if !KNOWN_METHODS.contains(&m.as_str()) {
            return Some(format!(
                "unknown method `{m}` (use {})",
                KNOWN_METHODS.join(", ")
            ));
        }
    }
    if !path.starts_with('/') {
        return Some(format!("route path `{path}` must start with `/`"));
    }
    if path.len() > 1024 {
        return Some("route path is longer than 1024 bytes".into());
    }
    for seg in path.split('/').skip(1) {
        if seg == "." || seg == ".." {
            return Some(format!("route path `{path}` holds a `.` or `..` segment"));
        }
    }
    if path.bytes().any(|b| {
        b == b'%' || b == b'\\' || b == b'?' || b == b'#' || b.is_ascii_control() || b == b' '
    }) {
        return Some(format!(
            "route path `{path}` may not hold `%`, `\\`, `?`, `#`, spaces or control characters"
        ));
    }
    None
}

/// Parses a route written on the command line: `GET,POST /v1/orders -> orders`.
pub fn parse_route_arg(s: &str) -> Result<RouteSpec, String> {
    let bad = || format!("route `{s}` is not of the form \"GET,POST /v1/orders -> upstream\"");
    let (lhs, upstream) = s.split_once("->").ok_or_else(bad)?;
    let mut parts = lhs.split_whitespace();
    let methods = parts.next().ok_or_else(bad)?;
    let path = parts.next().ok_or_else(bad)?;
    if parts.next().is_some() {
        return Err(bad());
    }
    let upstream = upstream.trim();
    if upstream.is_empty() || upstream.contains(char::is_whitespace) {
        return Err(bad());
    }
    let methods: Vec<String> = methods
        .split(',')
        .map(|m| m.trim().to_ascii_uppercase())
        .filter(|m| !m.is_empty())
        .collect();
    if let Some(p) = route_problem(&methods, path) {
        return Err(p);
    }
    Ok(RouteSpec {
        methods,
        path: path.to_string(),
        upstream: upstream.to_string(),
        strip_prefix: false,
        risk: Risk::Normal,
        limits: None,
        max_body_bytes: None,
    })
}

/// Parses and validates one partner file's text against the gateway config.
pub fn parse_partner(
    path: &Path,
    text: &str,
    gateway: &GatewayConfig,
) -> Result<Partner, ConfigErrors> {
    let raw: PartnerFileRaw = toml::from_str(text).map_err(|e| toml_error(path, text, e))?;
    let mut errors = Vec::new();
    let mut err = |span: std::ops::Range<usize>, message: String| {
        errors.push(ConfigError {
            file: path.to_path_buf(),
            line: Some(line_of(text, span.start)),
            message,
        })
    };
    let id = raw.id.get_ref().clone();
    if let Err(m) = validate_partner_id(&id) {
        err(raw.id.span(), m);
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    if stem.as_deref() != Some(id.as_str()) {
        err(
            raw.id.span(),
            format!("id `{id}` does not match the file name (expected partners/{id}.toml)"),
        );
    }
    let mut routes = Vec::new();
    for r in raw.routes {
        let span = r.span();
        let r = r.into_inner();
        let methods: Vec<String> = r
            .methods
            .get_ref()
            .iter()
            .map(|m| m.to_ascii_uppercase())
            .collect();
        if let Some(p) = route_problem(&methods, "/") {
            err(r.methods.span(), p);
        }
        if let Some(p) = route_problem(&["GET".to_string()], r.path.get_ref()) {
            err(r.path.span(), p);
        }
        if !gateway.upstreams.contains_key(r.upstream.get_ref()) {
            err(
                r.upstream.span(),
                format!(
                    "route names upstream `{}`, which is not defined in gatehouse.toml (defined: {})",
                    r.upstream.get_ref(),
                    defined_upstreams(gateway)
                ),
            );
        }
        if r.max_body_bytes == Some(0) {
            err(span.clone(), "max_body_bytes must be at least 1".into());
        }
        if let Some(l) = &r.limits
            && let Some(m) = limit_problem(l)
        {
            err(span.clone(), m);
        }
        routes.push(RouteSpec {
            methods,
            path: r.path.into_inner(),
            upstream: r.upstream.into_inner(),
            strip_prefix: r.strip_prefix,
            risk: r.risk,
            limits: r.limits,
            max_body_bytes: r.max_body_bytes,
        });
    }
    let renewal_window = match &raw.renewal_window {
        None => None,
        Some(w) => match crate::timefmt::parse_duration(w.get_ref()) {
            Ok(d) if d.is_zero() => {
                err(
                    w.span(),
                    "renewal_window must be longer than 0 (e.g. \"30d\")".into(),
                );
                None
            }
            Ok(d) => Some(d),
            Err(m) => {
                err(w.span(), format!("renewal_window: {m}"));
                None
            }
        },
    };
    let limits = raw.limits.unwrap_or_default();
    if let Some(m) = limit_problem(&limits) {
        errors.push(ConfigError {
            file: path.to_path_buf(),
            line: text
                .lines()
                .position(|l| l.trim_start().starts_with("[limits]"))
                .map(|i| i + 1),
            message: m,
        });
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Partner {
        name: raw.name.unwrap_or_else(|| id.clone()),
        id,
        status: raw.status,
        limits,
        on_anomaly: raw.on_anomaly,
        renewal_window,
        routes,
    })
}

fn limit_problem(l: &LimitSpec) -> Option<String> {
    if l.requests_per_minute == Some(0) {
        return Some(
            "requests_per_minute must be at least 1 (suspend the partner to stop it)".into(),
        );
    }
    if l.burst.is_some() && l.requests_per_minute.is_none() {
        return Some("burst needs requests_per_minute".into());
    }
    if l.burst == Some(0) {
        return Some("burst must be at least 1".into());
    }
    if l.requests_per_day == Some(0) || l.max_concurrent == Some(0) {
        return Some("limits must be at least 1 (suspend the partner to stop it)".into());
    }
    None
}

fn defined_upstreams(gateway: &GatewayConfig) -> String {
    if gateway.upstreams.is_empty() {
        "none".into()
    } else {
        gateway
            .upstreams
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Reads and validates every `partners/*.toml`. Returns the partners sorted
/// by id, or every problem found.
pub fn load_partners(home: &Home, gateway: &GatewayConfig) -> Result<Vec<Partner>, ConfigErrors> {
    load_partners_cached(home, gateway, &mut PartnerCache::default())
}

/// Parsed partner files by path, with the (length, mtime) they were parsed
/// at: a reload re-parses only the files that changed. Valid for one
/// gateway config (its upstream names); clear it when that changes.
#[derive(Default)]
pub struct PartnerCache {
    entries: std::collections::HashMap<PathBuf, (u64, Option<std::time::SystemTime>, Partner)>,
}

impl PartnerCache {
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// `load_partners`, re-using `cache` for files whose length and mtime are unchanged.
pub fn load_partners_cached(
    home: &Home,
    gateway: &GatewayConfig,
    cache: &mut PartnerCache,
) -> Result<Vec<Partner>, ConfigErrors> {
    let dir = home.partners_dir();
    let mut errors = Vec::new();
    let mut partners = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ConfigErrors::one(&dir, None, format!("cannot read: {e}"))),
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    let mut seen = std::collections::HashSet::with_capacity(paths.len());
    for path in paths {
        let meta = std::fs::metadata(&path).ok();
        let stamp = meta.as_ref().map(|m| (m.len(), m.modified().ok()));
        seen.insert(path.clone());
        if let (Some((len, mtime)), Some((clen, cmtime, p))) = (stamp, cache.entries.get(&path))
            && len == *clen
            && mtime == *cmtime
            && mtime.is_some()
        {
            partners.push(p.clone());
            continue;
        }
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError {
                    file: path.clone(),
                    line: None,
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        match parse_partner(&path, &text, gateway) {
            Ok(p) => {
                if let Some((len, mtime)) = stamp {
                    cache.entries.insert(path.clone(), (len, mtime, p.clone()));
                }
                partners.push(p)
            }
            Err(ConfigErrors(mut es)) => {
                cache.entries.remove(&path);
                errors.append(&mut es)
            }
        }
    }
    cache.entries.retain(|p, _| seen.contains(p));
    if errors.is_empty() {
        Ok(partners)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Renders a new partner file.
pub fn render_partner(partner: &Partner) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        id: &'a str,
        name: &'a str,
        status: PartnerStatus,
        #[serde(skip_serializing_if = "is_alert_only")]
        on_anomaly: OnAnomaly,
        #[serde(
            skip_serializing_if = "Option::is_none",
            with = "serde_duration::option"
        )]
        renewal_window: Option<Duration>,
        #[serde(skip_serializing_if = "is_empty_limits")]
        limits: &'a LimitSpec,
        routes: &'a [RouteSpec],
    }
    fn is_empty_limits(l: &&LimitSpec) -> bool {
        **l == LimitSpec::default()
    }
    let out = Out {
        id: &partner.id,
        name: &partner.name,
        status: partner.status,
        on_anomaly: partner.on_anomaly,
        renewal_window: partner.renewal_window,
        limits: &partner.limits,
        routes: &partner.routes,
    };
    let body = toml::to_string(&out).unwrap_or_default();
    format!(
        "# Partner {}: granted routes are deny-by-default; see DESIGN.md, \"Partner file\".\n{body}",
        partner.id
    )
}

/// Sets `status = "..."` in a partner file's text, keeping the operator's
/// comments and layout.
pub fn set_partner_status(text: &str, status: PartnerStatus) -> Result<String, String> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| e.message().to_string())?;
    doc["status"] = toml_edit::value(status.to_string());
    Ok(doc.to_string())
}

/// The whole validated configuration of a home.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub gateway: GatewayConfig,
    pub partners: Vec<Partner>,
}

/// Loads `gatehouse.toml` and every partner file, or reports every problem.
pub fn load_all(home: &Home) -> Result<Loaded, ConfigErrors> {
    let gateway = load_gateway(home)?;
    let partners = load_partners(home, &gateway)?;
    Ok(Loaded { gateway, partners })
}

/// The `gatehouse.toml` that `init` writes.
pub fn default_gateway_toml(trust_domain: &str) -> String {
    format!(
        r#"# gatehouse configuration (DESIGN.md). Relative paths are relative to this folder.
trust_domain = "{trust_domain}"

[server]
listen = "127.0.0.1:8443"     # partners connect here
admin = "127.0.0.1:9090"      # metrics and health; loopback unless admin_public = true
node_id = "gatehouse-1"       # this broker's name in journal records
handshake_timeout = "10s"
header_timeout = "10s"        # slow-header (slowloris) cut-off
idle_timeout = "60s"          # keep-alive connections idle this long are closed
drain_timeout = "10s"         # on SIGTERM, in-flight requests get this long
max_connections = 10000
max_header_bytes = 16384      # larger header blocks get 431
max_body_bytes = 10485760     # default per-route request body limit (413 beyond)

[journal]
durability = "strict"         # "strict": a response ends only after its record is on disk; or "relaxed"
flush_interval = "10ms"       # relaxed mode: how often records are flushed (the loss window)
checkpoint_every = 10000      # a signed checkpoint every N records and at shutdown

[ca]
default_days = 90             # partner certificate lifetime
overlap = "24h"               # how long a renewed certificate's predecessor stays valid
crl_validity = "7d"           # CRL next-update; the broker re-signs it well before

[monitor]
expiry_warning_days = 14     # warn (log, alert) when a certificate without successor nears expiry
anomaly_factor = 10.0        # alert when a partner's rate exceeds this many times its baseline...
anomaly_floor_per_minute = 100.0   # ...and at least this many requests per minute
anomaly_warmup_minutes = 60  # a baseline needs this much history before it alerts
# webhook_url = "https://alerts.example.com/gatehouse"   # alerts are POSTed here as JSON
# webhook_ca = "certs/webhook-ca.pem"                     # CA for an https webhook

# The example upstream: `cargo run --example echo-upstream` serves it and writes
# certs/upstream-ca.pem, the CA that verifies its server certificate.
[upstreams.orders]
url = "https://127.0.0.1:9443"
ca = "certs/upstream-ca.pem"
server_name = "localhost"
# client_cert / client_key default to certs/broker-client.pem / .key
connect_timeout = "5s"
response_timeout = "30s"

# A fleet of several nodes shares limits, quotas, revocations and anomaly
# baselines through Redis (see the README, "Run a fleet"):
# [cluster]
# redis_url = "rediss://redis.internal:6379"
# redis_ca = "certs/redis-ca.pem"
# redis_password_file = "certs/redis.pass"
# on_store_failure = "local"  # or "deny"

# A legacy plain-HTTP upstream looks like this:
# [upstreams.legacy-billing]
# url = "http://127.0.0.1:8080"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw() -> GatewayConfig {
        parse_gateway(
            Path::new("gatehouse.toml"),
            &default_gateway_toml("gatehouse.local"),
        )
        .unwrap()
    }

    #[test]
    fn default_config_parses() {
        let g = gw();
        assert_eq!(g.trust_domain, "gatehouse.local");
        assert!(g.upstreams.contains_key("orders"));
        assert_eq!(g.journal.durability, Durability::Strict);
    }

    #[test]
    fn partner_ids() {
        assert!(valid_id("acme"));
        assert!(valid_id("0-a"));
        assert!(!valid_id("-acme"));
        assert!(!valid_id("Acme"));
        assert!(!valid_id("ac_me"));
        assert!(!valid_id(""));
        assert!(valid_id(&"a".repeat(63)));
        assert!(!valid_id(&"a".repeat(64)));
    }

    #[test]
    fn route_args() {
        let r = parse_route_arg("GET,post /v1/orders -> orders").unwrap();
        assert_eq!(r.methods, vec!["GET", "POST"]);
        assert_eq!(r.path, "/v1/orders");
        assert_eq!(r.upstream, "orders");
        assert!(parse_route_arg("GET v1/orders -> orders").is_err());
        assert!(parse_route_arg("FETCH /v1 -> orders").is_err());
        assert!(parse_route_arg("GET /v1/orders").is_err());
        assert!(parse_route_arg("GET /v1/../x -> orders").is_err());
    }

    #[test]
    fn partner_errors_name_the_line() {
        let text = "id = \"acme\"\n\n[[routes]]\nmethods = [\"GET\"]\npath = \"/v1\"\nupstream = \"nope\"\n";
        let e = parse_partner(Path::new("partners/acme.toml"), text, &gw()).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].line, Some(6));
        assert!(e.0[0].message.contains("nope"), "{}", e.0[0].message);
        let bad = "id = \"acme\"\nstatus = \n";
        let e = parse_partner(Path::new("partners/acme.toml"), bad, &gw()).unwrap_err();
        assert_eq!(e.0[0].line, Some(2), "{e}");
    }

    #[test]
    fn status_edit_keeps_comments() {
        let text = "# keep me\nid = \"acme\"\nstatus = \"active\"\n";
        let out = set_partner_status(text, PartnerStatus::Suspended).unwrap();
        assert!(out.contains("# keep me"));
        assert!(out.contains("status = \"suspended\""));
    }

    #[test]
    fn rendered_partner_round_trips() {
        let p = Partner {
            id: "acme".into(),
            name: "Acme Logistics".into(),
            status: PartnerStatus::Active,
            limits: LimitSpec::default(),
            on_anomaly: Default::default(),
            renewal_window: None,
            routes: vec![parse_route_arg("GET /v1/orders -> orders").unwrap()],
        };
        let text = render_partner(&p);
        let back = parse_partner(Path::new("partners/acme.toml"), &text, &gw()).unwrap();
        assert_eq!(back, p);
    }
}
