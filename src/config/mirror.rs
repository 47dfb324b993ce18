//! `mirror = { to, percent, methods, compare, ignore_headers, ignore_json,
//! max_in_flight, timeout, baseline }` on an upstream: a share of the
//! requests relayed to it is copied to a candidate upstream, whose answer
//! the partner never waits for nor sees, and, with `compare`, compared with
//! the live answer. Parsing and the checks `gatehouse check` reports live
//! here; the mirror itself is [`crate::gateway::mirror`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::timefmt::serde_duration;

/// Methods mirrored when `methods` is not given: the ones without side
/// effects. A POST (or any other method) is mirrored only when named.
pub const DEFAULT_METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];

/// `ignore_json` and `ignore_headers` entries at most (each one is checked
/// against every difference found).
pub const MAX_IGNORES: usize = 64;

/// `mirror = { ... }` as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSettings {
    /// The candidate upstream (a pool) the copies go to.
    pub to: String,
    /// Share of the eligible requests mirrored, 0 to 100.
    #[serde(default = "default_percent")]
    pub percent: u32,
    /// Methods mirrored (default GET, HEAD, OPTIONS).
    #[serde(default = "default_methods")]
    pub methods: Vec<String>,
    /// Compare the candidate's answer with the live one (status, headers,
    /// body); without it only the status is compared and no record is written.
    #[serde(default)]
    pub compare: bool,
    /// Response header names left out of the comparison (besides the ones
    /// always left out: hop-by-hop, date-like, length).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_headers: Vec<String>,
    /// JSON pointers left out of the body comparison (`*` stands for any
    /// array element: `/items/*/updated_at`); a pointer covers what is below it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ignore_json: Vec<String>,
    /// Mirrored requests in flight at most; one more is dropped (counted).
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// How long a mirrored request may take (its answer and the live
    /// answer it is compared with); past it the mirror counts as `error`.
    #[serde(with = "serde_duration", default = "default_timeout")]
    pub timeout: Duration,
    /// An upstream (usually the legacy side) that a sample of mirrored
    /// requests also goes to a second time: what differs between its two
    /// answers is noise, no longer counted as a mismatch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
}

fn default_percent() -> u32 {
    100
}
fn default_methods() -> Vec<String> {
    DEFAULT_METHODS.iter().map(|m| m.to_string()).collect()
}
fn default_max_in_flight() -> u32 {
    64
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl MirrorSettings {
    /// Whether requests with `method` are mirrored.
    pub fn mirrors_method(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }

    /// Every problem of this table that needs no other upstream, as `check`
    /// words them (`name` is the upstream it belongs to).
    pub fn problems(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut err = |m: String| out.push(format!("[upstreams.{name}] mirror {m}"));
        if self.to == name {
            err(format!(
                "`to = \"{name}\"` names the upstream itself: name the candidate that should receive the copies"
            ));
        }
        if self.percent > 100 {
            err(format!(
                "percent = {} is a percentage: 0 to 100",
                self.percent
            ));
        }
        if self.methods.is_empty() {
            err("methods is empty: name the methods to mirror (default GET, HEAD, OPTIONS), or remove the mirror".into());
        }
        for m in &self.methods {
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                err(format!("method `{m}` is not an HTTP method"));
            }
        }
        if self.max_in_flight == 0 {
            err("max_in_flight must be at least 1".into());
        }
        if self.timeout.is_zero() {
            err("timeout must be longer than 0s".into());
        }
        if self.ignore_json.len() > MAX_IGNORES || self.ignore_headers.len() > MAX_IGNORES {
            err(format!(
                "ignore_json and ignore_headers hold at most {MAX_IGNORES} entries each"
            ));
        }
        for p in &self.ignore_json {
            if let Err(why) = check_pointer(p) {
                err(format!("ignore_json `{p}` {why}"));
            }
        }
        for h in &self.ignore_headers {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                err(format!("ignore_headers `{h}` is not a header name"));
            }
        }
        if self.baseline.as_deref() == Some(self.to.as_str()) {
            err("baseline names the candidate: the baseline is the side the candidate is compared against (usually the legacy one)".into());
        }
        out
    }
}

/// Why a JSON pointer as written in `ignore_json` is not one (RFC 6901,
/// with `*` for any array element).
pub fn check_pointer(p: &str) -> Result<(), &'static str> {
    if p.is_empty() {
        return Err("is the whole document: leave the body out with compare = false instead");
    }
    if !p.starts_with('/') {
        return Err("must start with / (a JSON pointer: /items/*/id)");
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0') | Some('1')) {
            return Err("has a ~ not followed by 0 or 1 (write ~0 for ~ and ~1 for /)");
        }
    }
    Ok(())
}

/// A JSON pointer's segments, unescaped (`~1` → `/`, `~0` → `~`).
pub fn pointer_segments(p: &str) -> Vec<String> {
    p.split('/')
        .skip(1)
        .map(|s| s.replace("~1", "/").replace("~0", "~"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> MirrorSettings {
        #[derive(Deserialize)]
        struct T {
            mirror: MirrorSettings,
        }
        toml::from_str::<T>(body).expect("test table parses").mirror
    }

    #[test]
    fn defaults_mirror_only_idempotent_methods() {
        let m = parse("mirror = { to = \"v2\" }");
        assert_eq!(m.percent, 100);
        assert!(m.mirrors_method("GET") && m.mirrors_method("head"));
        assert!(!m.mirrors_method("POST"), "POST must be named");
        assert!(!m.compare);
        assert!(m.problems("orders").is_empty());
        let post = parse("mirror = { to = \"v2\", methods = [\"GET\", \"POST\"] }");
        assert!(post.mirrors_method("POST"));
    }

    #[test]
    fn mistakes_are_explained() {
        let m = parse(
            "mirror = { to = \"orders\", percent = 101, methods = [\"G T\"], max_in_flight = 0, timeout = \"0s\", ignore_json = [\"total\", \"/a~2\", \"\"], ignore_headers = [\"bad header\"], baseline = \"orders\" }",
        );
        let p = m.problems("orders");
        for needle in [
            "names the upstream itself",
            "percent = 101",
            "`G T` is not an HTTP method",
            "max_in_flight",
            "timeout",
            "`total` must start with /",
            "`/a~2` has a ~",
            "`` is the whole document",
            "`bad header` is not a header name",
            "baseline names the candidate",
        ] {
            assert!(p.iter().any(|m| m.contains(needle)), "{needle} in {p:?}");
        }
        assert!(
            p.iter()
                .all(|m| m.starts_with("[upstreams.orders] mirror "))
        );
    }

    #[test]
    fn pointers_unescape() {
        assert_eq!(pointer_segments("/a~1b/*/c~0d"), vec!["a/b", "*", "c~d"]);
        assert!(check_pointer("/items/*/id").is_ok());
    }

    #[test]
    fn to_and_baseline_name_pools() {
        let text = crate::config::default_gateway_toml("gatehouse.local")
            + "\n[upstreams.legacy]\nurl = \"http://127.0.0.1:1\"\n\
               [upstreams.both]\nsplit = { legacy = 1 }\n\
               [upstreams.orders]\nurl = \"http://127.0.0.1:2\"\n\
               mirror = { to = \"nowhere\", baseline = \"both\" }\n";
        let e = crate::config::parse_gateway(std::path::Path::new("gatehouse.toml"), &text)
            .expect_err("refused")
            .to_string();
        assert!(
            e.contains("mirror to = \"nowhere\" is not an upstream"),
            "{e}"
        );
        assert!(e.contains("mirror baseline = \"both\" is a split"), "{e}");
    }
}
