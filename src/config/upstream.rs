//! `[upstreams.<name>]`: one service the broker relays to, as a pool of
//! endpoints (`url` is a pool of one), with its balancing, admission cap and
//! queue, retry policy, active health checks, passive outlier ejection and
//! DNS refresh; or a weighted `split` of other upstreams (sticky per
//! partner). Parsing and the checks `gatehouse check` reports live here;
//! the pool itself is [`crate::upstream`], the split's choice
//! [`crate::gateway::split`].

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::mirror::MirrorSettings;
use crate::timefmt::serde_duration;

/// Retries never go past this (each one is another request to a backend).
pub const MAX_RETRIES: u32 = 10;

/// `[upstreams.<name>]` as written.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSettings {
    /// One endpoint: the pool of one (the form before pools; still fine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Several endpoints (`https://10.0.0.11:9443`, `https://orders-b.internal:9443`);
    /// a host name stands for every address it resolves to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
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
    /// The whole upstream leg of one request (every attempt) until the
    /// response head.
    #[serde(with = "serde_duration", default = "default_response_timeout")]
    pub response_timeout: Duration,
    /// Add the signed `X-Gatehouse-Identity` token to requests relayed here
    /// (about 25 µs of CPU per request; turn off for upstreams that do not
    /// verify it).
    #[serde(default = "default_true")]
    pub signed_identity: bool,
    /// How an endpoint is chosen.
    #[serde(default)]
    pub balance: Balance,
    /// Requests this node sends to the upstream at once, across its
    /// endpoints; beyond it requests wait in `queue`. Absent: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// The wait line in front of `max_in_flight`.
    #[serde(default)]
    pub queue: QueueSettings,
    /// Further attempts on other endpoints, by the retry rules.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Each attempt's wait for a response head (default: `response_timeout`).
    #[serde(
        with = "serde_duration::option",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    /// Retries in flight at most this share of the requests in flight.
    #[serde(default = "default_retry_budget")]
    pub retry_budget: f64,
    /// Active health checks; absent: endpoints are judged by traffic only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthSettings>,
    /// Passive outlier ejection.
    #[serde(default)]
    pub outlier: OutlierSettings,
    /// How often a host name among the endpoints is resolved again.
    #[serde(with = "serde_duration", default = "default_dns_refresh")]
    pub dns_refresh: Duration,
    /// `split = { orders-legacy = 90, orders-v2 = 10 }`: this upstream is no
    /// pool of its own but a weighted split of other upstreams (pools), each
    /// partner staying on one side for a given weight table.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub split: BTreeMap<String, u32>,
    /// `mirror = { to = "orders-v2", ... }`: a share of the requests
    /// relayed here is copied to a candidate upstream (and compared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<MirrorSettings>,
}

/// `balance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Power of two choices over the endpoints' requests in flight.
    #[default]
    LeastRequest,
    /// Each endpoint in turn.
    RoundRobin,
}

/// `queue = { size, timeout }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSettings {
    /// Requests waiting at most; one more is refused at once.
    pub size: u32,
    /// A request waits at most this long for its turn.
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        QueueSettings {
            size: 100,
            timeout: Duration::from_secs(1),
        }
    }
}

/// `health = { path, interval, timeout, healthy, unhealthy }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSettings {
    /// Path of the check (`GET`; a 2xx or 3xx answer passes).
    pub path: String,
    #[serde(with = "serde_duration")]
    pub interval: Duration,
    #[serde(with = "serde_duration")]
    pub timeout: Duration,
    /// Passes in a row that bring an endpoint back.
    pub healthy: u32,
    /// Failures in a row that take an endpoint out.
    pub unhealthy: u32,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            path: "/healthz".to_string(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy: 2,
            unhealthy: 3,
        }
    }
}

/// `outlier = { consecutive_failures, base_ejection, max_ejected_percent }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierSettings {
    /// Connect errors, resets, timeouts or 5xx in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// The first ejection's length; each repeat doubles it (up to 10 times).
    #[serde(with = "serde_duration")]
    pub base_ejection: Duration,
    /// Never more than this share of the pool ejected at once (a pool of
    /// one is ejected only at 100).
    pub max_ejected_percent: u32,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejected_percent: 50,
        }
    }
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
fn default_retries() -> u32 {
    1
}
fn default_retry_budget() -> f64 {
    0.2
}
fn default_dns_refresh() -> Duration {
    Duration::from_secs(30)
}

/// One endpoint as written, checked: scheme, host, port, base path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointUrl {
    pub https: bool,
    /// Host name or address (without IPv6 brackets).
    pub host: String,
    pub port: u16,
    /// Path prefix (`https://h/base` → `/base`), without a trailing `/`.
    pub base_path: String,
}

/// An endpoint URL that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{url}` {problem}")]
pub struct EndpointUrlError {
    pub url: String,
    pub problem: EndpointProblem,
}

/// What is wrong with an endpoint URL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointProblem {
    #[error("must start with http:// or https://")]
    Scheme,
    #[error("is not a valid URL: {0}")]
    Invalid(String),
    #[error("has no host")]
    NoHost,
    #[error("has credentials: credentials in the URL are not supported")]
    Credentials,
    #[error("has a query: a query has no place in an endpoint")]
    Query,
}

impl EndpointUrl {
    /// Parses an endpoint URL (`http://` or `https://`, a host, no query).
    pub fn parse(url: &str) -> Result<EndpointUrl, EndpointUrlError> {
        let bad = |problem: EndpointProblem| EndpointUrlError {
            url: url.to_string(),
            problem,
        };
        let https = match url.split_once("://") {
            Some(("https", rest)) if !rest.is_empty() => true,
            Some(("http", rest)) if !rest.is_empty() => false,
            _ => return Err(bad(EndpointProblem::Scheme)),
        };
        let uri: http::Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| bad(EndpointProblem::Invalid(e.to_string())))?;
        let authority = uri
            .authority()
            .ok_or_else(|| bad(EndpointProblem::NoHost))?;
        if authority.as_str().contains('@') {
            return Err(bad(EndpointProblem::Credentials));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        if host.is_empty() {
            return Err(bad(EndpointProblem::NoHost));
        }
        if uri.query().is_some() {
            return Err(bad(EndpointProblem::Query));
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(EndpointUrl {
            https,
            host,
            port,
            base_path: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

impl UpstreamSettings {
    /// Whether this upstream is a split of others rather than a pool.
    pub fn is_split(&self) -> bool {
        !self.split.is_empty()
    }

    /// The upstream's endpoints as written (`url` or `endpoints`).
    pub fn endpoint_urls(&self) -> Vec<&str> {
        match &self.url {
            Some(u) => vec![u.as_str()],
            None => self.endpoints.iter().map(String::as_str).collect(),
        }
    }

    /// The checked endpoints; the first problem found, if any.
    pub fn parsed_endpoints(&self) -> Result<Vec<EndpointUrl>, EndpointUrlError> {
        self.endpoint_urls()
            .into_iter()
            .map(EndpointUrl::parse)
            .collect()
    }

    /// Each attempt's timeout.
    pub fn per_try(&self) -> Duration {
        self.per_try_timeout
            .unwrap_or(self.response_timeout)
            .min(self.response_timeout)
    }

    /// Every problem with this table, as `check` words them.
    pub fn problems(&self, name: &str) -> Vec<String> {
        let mut out: Vec<String> = self.mirror.iter().flat_map(|m| m.problems(name)).collect();
        let mut err = |m: String| out.push(format!("[upstreams.{name}] {m}"));
        if self.is_split() {
            if self.url.is_some() || !self.endpoints.is_empty() {
                err("has both `split` and `url`/`endpoints`: a split sends to other upstreams and has no endpoints of its own; keep one".into());
            }
            if self.split.values().map(|w| u64::from(*w)).sum::<u64>() == 0 {
                err("`split` weights add up to 0: give at least one side a weight above 0".into());
            }
            return out;
        }
        match (&self.url, self.endpoints.is_empty()) {
            (Some(_), false) => err(
                "has both `url` and `endpoints`: keep one (`url = \"...\"` is a pool of one, `endpoints = [...]` a pool of several)".into(),
            ),
            (None, true) => err(
                "has no `url` and no `endpoints`: give `url = \"https://host:port\"` or `endpoints = [\"https://a:port\", \"https://b:port\"]`".into(),
            ),
            _ => {}
        }
        let mut parsed = Vec::new();
        for url in self.endpoint_urls() {
            match EndpointUrl::parse(url) {
                Ok(e) => parsed.push(e),
                Err(m) => err(format!("endpoint {m}")),
            }
        }
        if let Some(first) = parsed.first() {
            if parsed.iter().any(|e| e.https != first.https) {
                err(
                    "mixes http:// and https:// endpoints: a pool is all one or all the other"
                        .into(),
                );
            }
            if parsed.iter().any(|e| e.base_path != first.base_path) {
                err("endpoints have different paths: every endpoint of a pool serves the same base path".into());
            }
            if first.https && self.ca.is_none() {
                err("is https but has no `ca` to verify its certificate".into());
            }
        }
        for (i, e) in parsed.iter().enumerate() {
            if parsed[..i]
                .iter()
                .any(|p| p.host == e.host && p.port == e.port)
            {
                err(format!("lists endpoint {}:{} twice", e.host, e.port));
            }
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            err("client_cert and client_key go together".into());
        }
        if self.connect_timeout.is_zero() {
            err("connect_timeout must be longer than 0s".into());
        }
        if self.response_timeout.is_zero() {
            err("response_timeout must be longer than 0s".into());
        }
        if self.max_in_flight == Some(0) {
            err("max_in_flight must be at least 1 (leave it out for no cap)".into());
        }
        if self.queue.timeout.is_zero() && self.queue.size > 0 {
            err("queue timeout must be longer than 0s (or set size = 0 for no queue)".into());
        }
        if self.retries > MAX_RETRIES {
            err(format!(
                "retries = {} is more than {MAX_RETRIES}",
                self.retries
            ));
        }
        if let Some(t) = self.per_try_timeout {
            if t.is_zero() {
                err("per_try_timeout must be longer than 0s".into());
            } else if t > self.response_timeout {
                err(format!(
                    "per_try_timeout is longer than response_timeout ({}), which bounds every attempt together",
                    crate::timefmt::format_duration(self.response_timeout)
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.retry_budget) {
            err(
                "retry_budget is a share of the requests in flight, between 0 and 1 (0.2 = 20 %)"
                    .into(),
            );
        }
        if let Some(h) = &self.health {
            if !h.path.starts_with('/') {
                err(format!("health path `{}` must start with /", h.path));
            }
            if h.interval.is_zero() || h.timeout.is_zero() {
                err("health interval and timeout must be longer than 0s".into());
            }
            if h.timeout > h.interval {
                err("health timeout must not be longer than its interval".into());
            }
            if h.healthy == 0 || h.unhealthy == 0 {
                err("health healthy and unhealthy must be at least 1".into());
            }
        }
        if self.outlier.consecutive_failures == 0 {
            err("outlier consecutive_failures must be at least 1".into());
        }
        if self.outlier.base_ejection.is_zero() {
            err("outlier base_ejection must be longer than 0s".into());
        }
        if self.outlier.max_ejected_percent > 100 {
            err("outlier max_ejected_percent is a percentage: at most 100".into());
        }
        if self.dns_refresh < Duration::from_secs(1) {
            err("dns_refresh must be at least 1s".into());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> UpstreamSettings {
        toml::from_str(body).expect("test table parses")
    }

    #[test]
    fn url_is_a_pool_of_one_with_todays_defaults() {
        let u = parse("url = \"https://127.0.0.1:9443/base/\"\nca = \"c.pem\"");
        assert!(u.problems("a").is_empty());
        let e = u.parsed_endpoints().expect("parses");
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].port, 9443);
        assert_eq!(e[0].base_path, "/base");
        assert_eq!(u.max_in_flight, None);
        assert_eq!(u.per_try(), u.response_timeout);
    }

    #[test]
    fn mistakes_are_explained() {
        let both = parse("url = \"http://a:1\"\nendpoints = [\"http://b:1\"]");
        assert!(both.problems("x")[0].contains("both `url` and `endpoints`"));
        let none = parse("ca = \"c.pem\"");
        assert!(none.problems("x")[0].contains("no `url` and no `endpoints`"));
        let mixed = parse("endpoints = [\"http://a:1\", \"https://b:1\"]\nca = \"c\"");
        assert!(mixed.problems("x").iter().any(|m| m.contains("mixes http")));
        let bad = parse("endpoints = [\"ftp://a:1\"]");
        assert!(bad.problems("x")[0].contains("must start with http"));
        let dup = parse("endpoints = [\"http://a:1\", \"http://a:1/\"]");
        assert!(dup.problems("x").iter().any(|m| m.contains("twice")));
        let t = parse(
            "url = \"http://a:1\"\nretries = 11\nretry_budget = 2.0\nmax_in_flight = 0\nper_try_timeout = \"60s\"\nhealth = { path = \"x\" }\noutlier = { max_ejected_percent = 101 }",
        );
        let p = t.problems("x");
        for needle in [
            "retries = 11",
            "retry_budget",
            "max_in_flight",
            "per_try_timeout",
            "health path",
            "max_ejected_percent",
        ] {
            assert!(p.iter().any(|m| m.contains(needle)), "{needle} in {p:?}");
        }
    }

    #[test]
    fn every_key_of_a_pool_parses_and_round_trips() {
        let u = parse(
            r#"endpoints = ["https://10.0.0.11:9443", "https://orders-b.internal:9443"]
ca = "certs/upstream-ca.pem"
balance = "round_robin"
max_in_flight = 200
queue = { size = 500, timeout = "2s" }
retries = 2
per_try_timeout = "5s"
retry_budget = 0.2
health = { path = "/healthz", interval = "5s", timeout = "1s", healthy = 2, unhealthy = 3 }
outlier = { consecutive_failures = 5, base_ejection = "30s", max_ejected_percent = 50 }
dns_refresh = "30s"
"#,
        );
        assert!(u.problems("o").is_empty(), "{:?}", u.problems("o"));
        assert_eq!(u.balance, Balance::RoundRobin);
        assert_eq!(u.queue.size, 500);
        let text = toml::to_string(&u).expect("serializes");
        let again: UpstreamSettings = toml::from_str(&text).expect("re-parses");
        assert_eq!(again.endpoints, u.endpoints);
        assert_eq!(again.health, u.health);
    }
}
