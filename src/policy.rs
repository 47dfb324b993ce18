//! PLACEHOLDER (replaced by the policy branch): route authorization.
use std::borrow::Cow;

use crate::config::RouteSpec;

pub struct RouteTable {
    routes: Vec<RouteSpec>,
}
pub struct Target<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
}
#[derive(Debug, PartialEq, Eq)]
pub enum TargetError {
    NotOriginForm,
    DotSegment,
    EncodedSeparator,
    Backslash,
    ControlCharacter,
    BadPercentEncoding,
    EmptySegment,
    TooLong,
}
impl TargetError {
    pub fn code(&self) -> &'static str {
        "bad_target"
    }
}
impl std::fmt::Display for TargetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
pub fn check_target(raw: &str) -> Result<Target<'_>, TargetError> {
    if !raw.starts_with('/') {
        return Err(TargetError::NotOriginForm);
    }
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    Ok(Target { path, query })
}
pub struct Permit<'r> {
    pub route_index: usize,
    pub route: &'r RouteSpec,
    pub upstream: &'r str,
    pub upstream_path: Cow<'r, str>,
}
#[derive(Debug, PartialEq, Eq)]
pub enum Denial {
    RouteNotGranted,
}
impl RouteTable {
    pub fn compile(routes: &[RouteSpec]) -> RouteTable {
        RouteTable {
            routes: routes.to_vec(),
        }
    }
    pub fn len(&self) -> usize {
        self.routes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
    pub fn authorize<'a>(&'a self, method: &str, path: &'a str) -> Result<Permit<'a>, Denial> {
        for (i, r) in self.routes.iter().enumerate() {
            let p = r.path.trim_end_matches('/');
            let hit = path == p || path.starts_with(&format!("{p}/"));
            if hit && r.methods.iter().any(|m| m == method) {
                return Ok(Permit {
                    route_index: i,
                    route: r,
                    upstream: &r.upstream,
                    upstream_path: Cow::Borrowed(path),
                });
            }
        }
        Err(Denial::RouteNotGranted)
    }
}
