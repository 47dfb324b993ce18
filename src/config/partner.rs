//! `partners/<id>.toml`: one partner each (status, limits, granted
//! routes), parsed and validated against the gateway's upstreams; parsed
//! files are cached between reloads by their stamps.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::home::Home;
use crate::risk::{CurrencyLimit, ValueSpec};
use crate::timefmt::serde_duration;

use super::common::*;
use super::gateway::*;

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
    /// The partner's own CA, instead of ours.
    #[serde(default)]
    own_ca: Option<Spanned<OwnCaRaw>>,
    /// Per currency: `EUR = { per_call = "10000.00", per_day = "250000.00" }`.
    #[serde(default)]
    value_limits: Option<Spanned<BTreeMap<String, CurrencyLimit>>>,
    /// `signing = true`: the partner signs its requests (RFC 9421), so its
    /// high-risk routes require a signature unless a route says otherwise.
    #[serde(default)]
    signing: bool,
    /// Keys other than its certificate's that the partner signs with.
    #[serde(default)]
    signing_keys: Vec<Spanned<SigningKeyRaw>>,
    /// `pin = { orders = "orders-v2" }`: a split upstream → the side this
    /// partner always reaches.
    #[serde(default)]
    pin: Option<Spanned<BTreeMap<String, String>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OwnCaRaw {
    ca: String,
    #[serde(default)]
    match_san_uri: Option<String>,
    #[serde(default)]
    match_san_dns: Option<String>,
    #[serde(default)]
    match_subject_cn: Option<String>,
    #[serde(default)]
    pin_spki: Vec<String>,
    #[serde(default)]
    crl: Option<String>,
}

/// The name a certificate from a partner's own CA must carry. Shown (and
/// serialized) under the partner file's key for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum NameMatch {
    /// A URI SAN equal to this.
    #[serde(rename = "match_san_uri")]
    SanUri(String),
    /// A DNS SAN equal to this (ASCII case-insensitive).
    #[serde(rename = "match_san_dns")]
    SanDns(String),
    /// The subject's common name equal to this.
    #[serde(rename = "match_subject_cn")]
    SubjectCn(String),
}

impl NameMatch {
    /// The partner file's key for this kind of name.
    pub fn key(&self) -> &'static str {
        match self {
            NameMatch::SanUri(_) => "match_san_uri",
            NameMatch::SanDns(_) => "match_san_dns",
            NameMatch::SubjectCn(_) => "match_subject_cn",
        }
    }

    /// The name itself.
    pub fn value(&self) -> &str {
        match self {
            NameMatch::SanUri(v) | NameMatch::SanDns(v) | NameMatch::SubjectCn(v) => v,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            NameMatch::SanUri(u) => format!("URI SAN {u}"),
            NameMatch::SanDns(d) => format!("DNS SAN {d}"),
            NameMatch::SubjectCn(c) => format!("subject CN {c}"),
        }
    }
}

/// `[own_ca]`: the partner brings its own CA. Certificates from it are
/// this partner's only, and only with the name (and key pin) given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnCa {
    /// The partner's root certificate(s), PEM (relative to the home).
    pub ca: PathBuf,
    #[serde(flatten)]
    pub name: NameMatch,
    /// SHA-256 (lowercase hex) of accepted SubjectPublicKeyInfo; empty: any key.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pin_spki: Vec<String>,
    /// The partner's CRL, PEM (relative to the home).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crl: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SigningKeyRaw {
    id: String,
    public_key: String,
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
    #[serde(default)]
    value: Option<Spanned<ValueSpec>>,
    #[serde(default)]
    require_signature: Option<bool>,
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
    /// `pin = { orders = "orders-v2" }`: for a split upstream, the side this
    /// partner always reaches, whatever the weights.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pin: BTreeMap<String, String>,
    pub routes: Vec<RouteSpec>,
    /// The partner's own CA (`[own_ca]`), when it does not use ours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_ca: Option<OwnCa>,
    /// `[value_limits]`: per currency code, the most one call and one UTC
    /// day may carry on routes that name a `value`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub value_limits: BTreeMap<String, CurrencyLimit>,
    /// `signing = true`: the partner signs its requests; its `risk =
    /// "high"` routes require a signature unless they say otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub signing: bool,
    /// `[[signing_keys]]`: keys other than the certificate's that the
    /// partner signs with (`id`, `public_key` PEM file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<SigningKey>,
}

/// A key a partner signs requests with, besides its certificate's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SigningKey {
    /// What the signature's `keyid` names it by.
    pub id: String,
    /// The PEM file (`PUBLIC KEY`), as written (relative to the home).
    pub public_key: String,
    /// The key's SubjectPublicKeyInfo, read when the file was loaded.
    #[serde(skip)]
    pub spki: Vec<u8>,
}

impl Partner {
    /// Whether `route` requires a signed request: as the route says, else
    /// when it is high-risk and the partner signs.
    pub fn requires_signature(&self, route: &RouteSpec) -> bool {
        route
            .require_signature
            .unwrap_or(self.signing && route.risk == Risk::High)
    }
}

pub(super) fn is_alert_only(a: &OnAnomaly) -> bool {
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
    /// Where the amount and currency are in the request body (JSON
    /// pointers); such a route's calls count against `[value_limits]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<ValueSpec>,
    /// `require_signature`: calls must carry an RFC 9421 signature (unset:
    /// high-risk routes of a partner with `signing = true` do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_signature: Option<bool>,
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
pub fn parse_route_arg(s: &str) -> Result<RouteSpec, InvalidValue> {
    let bad = || InvalidValue::RouteForm(s.to_string());
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
        return Err(InvalidValue::Route(p));
    }
    Ok(RouteSpec {
        methods,
        path: path.to_string(),
        upstream: upstream.to_string(),
        strip_prefix: false,
        risk: Risk::Normal,
        limits: None,
        max_body_bytes: None,
        value: None,
        require_signature: None,
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
        err(raw.id.span(), m.to_string());
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
        if let Some(v) = &r.value {
            for p in [&v.get_ref().amount, &v.get_ref().currency] {
                if let Some(m) = crate::risk::value::pointer_problem(p) {
                    err(v.span(), format!("value: {m}"));
                }
            }
        }
        routes.push(RouteSpec {
            methods,
            path: r.path.into_inner(),
            upstream: r.upstream.into_inner(),
            strip_prefix: r.strip_prefix,
            risk: r.risk,
            limits: r.limits,
            max_body_bytes: r.max_body_bytes,
            value: r.value.map(Spanned::into_inner),
            require_signature: r.require_signature,
        });
    }
    let mut pin = BTreeMap::new();
    if let Some(p) = raw.pin {
        let span = p.span();
        for (upstream, side) in p.into_inner() {
            match gateway.upstreams.get(&upstream) {
                Some(u) if u.split.contains_key(&side) => {
                    pin.insert(upstream, side);
                }
                Some(u) if u.is_split() => err(
                    span.clone(),
                    format!(
                        "pin sends `{upstream}` to `{side}`, which is not one of its sides ({})",
                        u.split.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ),
                Some(_) => err(
                    span.clone(),
                    format!(
                        "pin names `{upstream}`, which is not a split: only a split's side can be pinned"
                    ),
                ),
                None => err(
                    span.clone(),
                    format!(
                        "pin names upstream `{upstream}`, which is not defined in gatehouse.toml (defined: {})",
                        defined_upstreams(gateway)
                    ),
                ),
            }
        }
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
    let own_ca = match raw.own_ca {
        None => None,
        Some(o) => {
            let span = o.span();
            match own_ca(o.into_inner(), &gateway.trust_domain) {
                Ok(v) => Some(v),
                Err(e) => {
                    errors.push(ConfigError {
                        file: path.to_path_buf(),
                        line: Some(line_of(text, span.start)),
                        message: e.to_string(),
                    });
                    None
                }
            }
        }
    };
    let value_limits = match raw.value_limits {
        None => BTreeMap::new(),
        Some(v) => {
            let line = Some(line_of(text, v.span().start));
            let v = v.into_inner();
            for (currency, limit) in &v {
                if let Some(m) = value_limit_problem(currency, limit) {
                    errors.push(ConfigError {
                        file: path.to_path_buf(),
                        line,
                        message: m,
                    });
                }
            }
            v
        }
    };
    let home_dir = path
        .parent()
        .and_then(Path::parent)
        .unwrap_or_else(|| Path::new("."));
    let mut signing_keys: Vec<SigningKey> = Vec::new();
    for k in raw.signing_keys {
        let line = Some(line_of(text, k.span().start));
        let k = k.into_inner();
        let mut problem = |message: String| {
            errors.push(ConfigError {
                file: path.to_path_buf(),
                line,
                message,
            })
        };
        if k.id.is_empty() || k.id.len() > 128 || k.id.chars().any(|c| c.is_control()) {
            problem("[[signing_keys]] id must be 1 to 128 printable characters".into());
            continue;
        }
        if signing_keys.iter().any(|x| x.id == k.id) {
            problem(format!("[[signing_keys]] id `{}` is given twice", k.id));
            continue;
        }
        match read_public_key(&home_dir.join(&k.public_key)) {
            Ok(spki) => signing_keys.push(SigningKey {
                id: k.id,
                public_key: k.public_key,
                spki,
            }),
            Err(m) => problem(format!("[[signing_keys]] `{}`: {m}", k.id)),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(Partner {
        own_ca,
        value_limits,
        signing: raw.signing,
        signing_keys,
        name: raw.name.unwrap_or_else(|| id.clone()),
        id,
        status: raw.status,
        limits,
        on_anomaly: raw.on_anomaly,
        renewal_window,
        routes,
        pin,
    })
}

/// Why a partner's `[own_ca]` table cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OwnCaError {
    #[error("[own_ca] needs exactly one of match_san_uri, match_san_dns, match_subject_cn")]
    NotOneName,
    #[error("[own_ca]: the name to match is empty")]
    EmptyName,
    #[error(
        "[own_ca] match_san_uri `{uri}` is in our trust domain {trust_domain}: a partner's CA never names an identity there"
    )]
    OurTrustDomain { uri: String, trust_domain: String },
    #[error("[own_ca] pin_spki `{0}` is not a SHA-256 (64 hex digits)")]
    BadPin(String),
    #[error("[own_ca] ca: the partner's CA file is missing")]
    NoCaFile,
}

/// `[own_ca]` checked: one name to match, never one in our trust domain,
/// pins as SHA-256 hex. (Its files are read when the TLS config is built.)
fn own_ca(raw: OwnCaRaw, trust_domain: &str) -> Result<OwnCa, OwnCaError> {
    let names: Vec<NameMatch> = [
        raw.match_san_uri.map(NameMatch::SanUri),
        raw.match_san_dns.map(NameMatch::SanDns),
        raw.match_subject_cn.map(NameMatch::SubjectCn),
    ]
    .into_iter()
    .flatten()
    .collect();
    let name = match names.as_slice() {
        [one] => one.clone(),
        _ => return Err(OwnCaError::NotOneName),
    };
    if name.value().trim().is_empty() {
        return Err(OwnCaError::EmptyName);
    }
    if let NameMatch::SanUri(u) = &name
        && u.starts_with(&format!("spiffe://{trust_domain}/"))
    {
        return Err(OwnCaError::OurTrustDomain {
            uri: u.clone(),
            trust_domain: trust_domain.to_string(),
        });
    }
    let mut pins = Vec::new();
    for p in raw.pin_spki {
        let hexed: String = p
            .chars()
            .filter(|c| *c != ':')
            .collect::<String>()
            .to_ascii_lowercase();
        if hexed.len() != 64 || !hexed.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(OwnCaError::BadPin(p));
        }
        pins.push(hexed);
    }
    if raw.ca.trim().is_empty() {
        return Err(OwnCaError::NoCaFile);
    }
    Ok(OwnCa {
        ca: PathBuf::from(raw.ca),
        name,
        pin_spki: pins,
        crl: raw.crl.map(PathBuf::from),
    })
}

/// Why a partner's `[[signing_keys]]` public key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PublicKeyFileError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not PEM: {source}", path.display())]
    NotPem {
        path: PathBuf,
        source: pem::PemError,
    },
    #[error("{} holds a {tag}, not a PUBLIC KEY", path.display())]
    NotPublicKey { path: PathBuf, tag: String },
    #[error("{}: {source}", path.display())]
    Key {
        path: PathBuf,
        source: crate::risk::signature::KeyError,
    },
}

/// Reads a `PUBLIC KEY` PEM file a partner signs with; its SPKI DER.
fn read_public_key(path: &Path) -> Result<Vec<u8>, PublicKeyFileError> {
    let path_buf = || path.to_path_buf();
    let text = std::fs::read_to_string(path).map_err(|source| PublicKeyFileError::Read {
        path: path_buf(),
        source,
    })?;
    let block = pem::parse(&text).map_err(|source| PublicKeyFileError::NotPem {
        path: path_buf(),
        source,
    })?;
    if block.tag() != "PUBLIC KEY" {
        return Err(PublicKeyFileError::NotPublicKey {
            path: path_buf(),
            tag: block.tag().to_string(),
        });
    }
    let spki = block.contents().to_vec();
    crate::risk::signature::key_alg(&spki).map_err(|source| PublicKeyFileError::Key {
        path: path_buf(),
        source,
    })?;
    Ok(spki)
}

fn value_limit_problem(currency: &str, l: &CurrencyLimit) -> Option<String> {
    if !(3..=8).contains(&currency.len()) || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
        return Some(format!(
            "[value_limits] `{currency}` is not a currency code (3 to 8 letters A-Z, like EUR)"
        ));
    }
    if l.per_call.is_none() && l.per_day.is_none() {
        return Some(format!(
            "[value_limits] {currency} sets neither per_call nor per_day"
        ));
    }
    None
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

/// Parsed partner files by path, with a hash of the content they were
/// parsed from: a reload re-parses only the files whose content changed
/// (content, not length and mtime: two writes of the same length within one
/// clock tick of the file system share an mtime). Valid for one gateway
/// config (its upstream names); clear it when that changes.
#[derive(Default)]
pub struct PartnerCache {
    entries: std::collections::HashMap<PathBuf, (u64, Partner)>,
}

fn content_hash(text: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl PartnerCache {
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

/// `load_partners`, re-using `cache` for files whose content is unchanged.
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
        seen.insert(path.clone());
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
        let hash = content_hash(&text);
        if let Some((cached, p)) = cache.entries.get(&path)
            && *cached == hash
        {
            partners.push(p.clone());
            continue;
        }
        match parse_partner(&path, &text, gateway) {
            Ok(p) => {
                cache.entries.insert(path.clone(), (hash, p.clone()));
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
