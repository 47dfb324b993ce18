//! Route policy: the pure decision "may this partner call this method on this
//! path, and where does the call go?" (docs/architecture.md, data path step
//! *authorize*). No I/O, no async, no logging: callers log and count, the
//! [`Permit`] is carried downstream to the relay.
//!
//! Two steps, both on the request-target as received:
//!
//! 1. [`check_target`] refuses request-targets that could be read differently
//!    by gatehouse and by an upstream (dot segments in any spelling an
//!    upstream may decode, encoded separators, backslashes, control
//!    characters, bad or deeply nested percent-encoding, empty segments,
//!    anything but origin-form, more than [`MAX_TARGET_BYTES`]). A refusal is
//!    the partner's fault: the gateway answers 400 and never relays.
//! 2. [`RouteTable::authorize`] matches method and path against one partner's
//!    compiled routes. Deny by default; an empty table denies everything.
//!
//! Decisions (documented here because the gateway and operators rely on them):
//!
//! - **Segment-aware prefixes.** A route path `/v1/orders` grants
//!   `/v1/orders`, `/v1/orders/` and `/v1/orders/…`, never
//!   `/v1/orders-export`. A route path `/` grants every path. A trailing `/`
//!   on a route path is ignored (`/v1/orders/` ≡ `/v1/orders`).
//! - **Longest grant wins.** A route matches when its prefix covers the path
//!   *and* it lists the method. Among matching routes the one with the most
//!   path segments wins (its upstream, `strip_prefix`, limits apply); ties go
//!   to the route listed first. Grants are therefore additive: a `GET`-only
//!   route at `/v1/orders` does not take `POST` away from a broader `/v1`
//!   route.
//! - **Methods are exact.** Method names are compared case-sensitively
//!   (RFC 9110: methods are case-sensitive) and there are no implicit
//!   grants: `HEAD` is allowed only where a route lists `HEAD`, not wherever
//!   `GET` is granted. Operators list what they mean.
//! - **Dot segments in every spelling an upstream may normalise are
//!   refused.** The matcher compares raw segments, so a segment an upstream
//!   reads as `.` or `..` would let a path matched under one grant reach
//!   another (`GET /v1/orders/..;/admin` is `/v1/admin` on Tomcat, Jetty and
//!   Spring, which cut `;parameters` off each segment before they resolve
//!   dot segments). Each segment is *folded* the way the most lenient
//!   common upstream would read it, and refused as `dot_segment` when the
//!   fold is `.` or `..`. The fold: percent-decoding repeated until nothing
//!   changes (so `%2e`, `%2E` and the double-encoded `%252e` are all dots;
//!   more than [`MAX_DECODE_ROUNDS`] levels of nesting is refused as
//!   `nested_encoding`); the overlong UTF-8 forms of `.`, `/` and `\`
//!   (`%c0%ae`, `%e0%80%ae`, `%f0%80%80%ae`, and the same for `%c0%af`,
//!   `%c1%9c`) and the compatibility forms that NFKC normalisation or
//!   Windows best-fit code pages turn into ASCII (fullwidth full stop U+FF0E,
//!   one dot leader U+2024, small full stop U+FE52; fullwidth solidus U+FF0F
//!   and reverse solidus U+FF3C), raw or percent-encoded, read as their ASCII
//!   character; then everything from the first `;` (raw or decoded) cut off.
//!   So `..;`, `.;`, `..;jsessionid=1`, `%2e%2e;x`, `%2E.;`, `%252e%252e`,
//!   `%c0%ae%c0%ae`, `．．` and `%ef%bc%8e.` are all refused. A fold that
//!   holds `/` or `\` (`%252f`, `%c0%af`, `／`) is refused as
//!   `encoded_separator`; a fold that is empty (a segment that is only
//!   `;params`) is an empty segment unless it is the last. IIS's `%uXXXX`
//!   is not percent-encoding and is refused as `bad_percent_encoding`.
//!   Windows' trimming of trailing dots and spaces (`... `) is not modelled:
//!   put such upstreams behind a `strip_prefix` route of their own.
//! - **Empty segments are refused** (`//`, `/a//b`, a leading `//`): upstream
//!   routers disagree on whether they collapse, which would let a path match
//!   one route here and reach another upstream. A single trailing `/` is not
//!   an empty segment in this sense and is allowed (`/v1/orders/`).
//! - **Query strings** are relayed untouched. They count toward the length
//!   limit, raw control characters and `%00` in them are refused (NUL
//!   truncation in upstream code); other percent-encoded bytes in a query are
//!   data (a multi-line search term is legitimate) and are not judged.
//! - **Fragments** (`#`) are not part of a request-target (RFC 9112 §3.2.1);
//!   a target holding `#` is not origin-form and is refused.
//! - **What is relayed is what was matched**: the path is never decoded or
//!   normalized; with `strip_prefix` the matched prefix is cut off and the
//!   rest is relayed byte for byte (`/v1/orders/7` → `/7`, `/v1/orders` →
//!   `/`).
//! - The denial is the same whether or not the path exists for another
//!   partner ([`Denial::RouteNotGranted`]): nothing leaks across partners.
//!
//! Cost: each partner has its own [`RouteTable`], a prefix tree over path
//! segments, so a decision costs one hash lookup per path segment whatever
//! the number of partners and routes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;

use crate::config::RouteSpec;
use crate::reason::Reason;

/// Longest request-target accepted, query included (8 KiB).
pub const MAX_TARGET_BYTES: usize = 8192;

// ------------------------------------------------------------------ targets

/// A request-target that passed [`check_target`]: an origin-form path and the
/// optional query (without its `?`), both borrowed from the raw target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// Why a request-target was refused before matching. The partner is to
/// blame: the gateway answers 400 and relays nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    /// Not `/path[?query]`: `*`, absolute-form, authority-form, a fragment.
    NotOriginForm,
    /// A segment an upstream may read as `.` or `..` (see the module docs).
    DotSegment,
    /// `%2f` or `%5c` (an encoded `/` or `\`) in the path.
    EncodedSeparator,
    /// A raw `\` in the path.
    Backslash,
    /// A control character (raw, or `%00`-`%1f`, `%7f` in the path; raw or
    /// `%00` in the query).
    ControlCharacter,
    /// `%` not followed by two hex digits in the path.
    BadPercentEncoding,
    /// `//` in the path (or a segment that is only `;params`, not last).
    EmptySegment,
    /// Percent-encoding nested more than [`MAX_DECODE_ROUNDS`] levels deep.
    NestedEncoding,
    /// Longer than [`MAX_TARGET_BYTES`].
    TooLong,
}

impl TargetError {
    /// The reason a refusal for this error gives.
    pub fn reason(&self) -> Reason {
        match self {
            TargetError::NotOriginForm => Reason::NotOriginForm,
            TargetError::DotSegment => Reason::DotSegment,
            TargetError::EncodedSeparator => Reason::EncodedSeparator,
            TargetError::Backslash => Reason::Backslash,
            TargetError::ControlCharacter => Reason::ControlCharacter,
            TargetError::BadPercentEncoding => Reason::BadPercentEncoding,
            TargetError::EmptySegment => Reason::EmptySegment,
            TargetError::NestedEncoding => Reason::NestedEncoding,
            TargetError::TooLong => Reason::TargetTooLong,
        }
    }
}

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetError::NotOriginForm => "request-target is not origin-form (/path?query)",
            TargetError::DotSegment => "path holds a `.` or `..` segment",
            TargetError::EncodedSeparator => "path holds an encoded `/` or `\\`",
            TargetError::Backslash => "path holds a backslash",
            TargetError::ControlCharacter => "request-target holds a control character",
            TargetError::BadPercentEncoding => "path holds invalid percent-encoding",
            TargetError::EmptySegment => "path holds an empty segment (`//`)",
            TargetError::NestedEncoding => "path holds percent-encoding nested too deep",
            TargetError::TooLong => "request-target is longer than 8192 bytes",
        })
    }
}

impl std::error::Error for TargetError {}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The byte a `%XY` at `bytes[i]` encodes, if `bytes[i..i+3]` is one.
fn decode_at(bytes: &[u8], i: usize) -> Option<u8> {
    let hi = hex_value(*bytes.get(i + 1)?)?;
    let lo = hex_value(*bytes.get(i + 2)?)?;
    Some(hi << 4 | lo)
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Most percent-decoding rounds a segment's fold applies; a segment still
/// changing after them is refused (`nested_encoding`).
pub const MAX_DECODE_ROUNDS: usize = 4;

/// Multi-byte sequences some upstream reads as an ASCII character: overlong
/// UTF-8 (decoders that do not reject them), and compatibility forms that
/// NFKC normalisation or Windows best-fit mapping turn into ASCII.
const LOOKALIKES: &[(&[u8], u8)] = &[
    (&[0xc0, 0xae], b'.'),
    (&[0xe0, 0x80, 0xae], b'.'),
    (&[0xf0, 0x80, 0x80, 0xae], b'.'),
    (&[0xef, 0xbc, 0x8e], b'.'), // U+FF0E fullwidth full stop
    (&[0xe2, 0x80, 0xa4], b'.'), // U+2024 one dot leader
    (&[0xef, 0xb9, 0x92], b'.'), // U+FE52 small full stop
    (&[0xc0, 0xaf], b'/'),
    (&[0xe0, 0x80, 0xaf], b'/'),
    (&[0xf0, 0x80, 0x80, 0xaf], b'/'),
    (&[0xef, 0xbc, 0x8f], b'/'), // U+FF0F fullwidth solidus
    (&[0xc1, 0x9c], b'\\'),
    (&[0xe0, 0x81, 0x9c], b'\\'),
    (&[0xf0, 0x80, 0x81, 0x9c], b'\\'),
    (&[0xef, 0xbc, 0xbc], b'\\'), // U+FF3C fullwidth reverse solidus
];

/// One round: every `%XY` decoded, every look-alike read as ASCII. `None`
/// when nothing changed.
fn fold_round(seg: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(seg.len());
    let mut changed = false;
    let mut i = 0;
    while i < seg.len() {
        if seg[i] == b'%'
            && let Some(b) = decode_at(seg, i)
        {
            out.push(b);
            i += 3;
            changed = true;
            continue;
        }
        if seg[i] >= 0x80
            && let Some((from, to)) = LOOKALIKES
                .iter()
                .find(|(from, _)| seg[i..].starts_with(from))
        {
            out.push(*to);
            i += from.len();
            changed = true;
            continue;
        }
        out.push(seg[i]);
        i += 1;
    }
    changed.then_some(out)
}

/// What the most lenient common upstream may make of one raw path segment:
/// decoded and look-alikes read as ASCII until nothing changes (at most
/// [`MAX_DECODE_ROUNDS`] rounds), then cut at the first `;` (path
/// parameters). Borrowed when the segment needs no folding.
fn fold_segment(seg: &str) -> Result<Cow<'_, [u8]>, TargetError> {
    let bytes = seg.as_bytes();
    let mut folded: Cow<'_, [u8]> = Cow::Borrowed(bytes);
    if bytes.iter().any(|&b| b == b'%' || b >= 0x80) {
        let mut rounds = 0;
        while let Some(next) = fold_round(&folded) {
            rounds += 1;
            if rounds > MAX_DECODE_ROUNDS {
                return Err(TargetError::NestedEncoding);
            }
            folded = Cow::Owned(next);
        }
    }
    Ok(match folded.iter().position(|&b| b == b';') {
        Some(cut) => match folded {
            Cow::Borrowed(b) => Cow::Borrowed(&b[..cut]),
            Cow::Owned(mut v) => {
                v.truncate(cut);
                Cow::Owned(v)
            }
        },
        None => folded,
    })
}

/// Checks a request-target as received (path plus optional `?query`) and
/// splits it. See the module docs for every rule.
pub fn check_target(raw: &str) -> Result<Target<'_>, TargetError> {
    if raw.len() > MAX_TARGET_BYTES {
        return Err(TargetError::TooLong);
    }
    if !raw.starts_with('/') {
        return Err(TargetError::NotOriginForm);
    }
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (raw, None),
    };
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b if is_control(b) => return Err(TargetError::ControlCharacter),
            b'\\' => return Err(TargetError::Backslash),
            b'#' => return Err(TargetError::NotOriginForm),
            b'%' => {
                let decoded = decode_at(bytes, i).ok_or(TargetError::BadPercentEncoding)?;
                if is_control(decoded) {
                    return Err(TargetError::ControlCharacter);
                }
                if decoded == b'/' || decoded == b'\\' {
                    return Err(TargetError::EncodedSeparator);
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    // Segments after the leading `/`; only the last may be empty (trailing
    // `/`). Each is judged by its fold (see the module docs).
    let mut segments = path[1..].split('/').peekable();
    while let Some(seg) = segments.next() {
        let folded = fold_segment(seg)?;
        if folded.iter().any(|&b| b == b'/' || b == b'\\') {
            return Err(TargetError::EncodedSeparator);
        }
        if folded.iter().any(|&b| is_control(b)) {
            return Err(TargetError::ControlCharacter);
        }
        match &*folded {
            b"." | b".." => return Err(TargetError::DotSegment),
            b"" if segments.peek().is_some() => return Err(TargetError::EmptySegment),
            _ => {}
        }
    }
    if let Some(q) = query {
        let qb = q.as_bytes();
        for (i, &b) in qb.iter().enumerate() {
            if is_control(b) {
                return Err(TargetError::ControlCharacter);
            }
            if b == b'#' {
                return Err(TargetError::NotOriginForm);
            }
            if b == b'%' && decode_at(qb, i) == Some(0) {
                return Err(TargetError::ControlCharacter);
            }
        }
    }
    Ok(Target { path, query })
}

// ------------------------------------------------------------------- routes

/// Why a request was not authorized. One variant on purpose: the answer is
/// the same whether the path is unknown, granted to someone else, or granted
/// to this partner for other methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    RouteNotGranted,
}

impl Denial {
    /// The reason a refusal for this denial gives.
    pub fn reason(&self) -> Reason {
        match self {
            Denial::RouteNotGranted => Reason::RouteNotGranted,
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Denial::RouteNotGranted => f.write_str("no route grants this method and path"),
        }
    }
}

impl std::error::Error for Denial {}

/// An authorized request: which route granted it, and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permit<'r> {
    /// Index of the granting route in the slice given to [`RouteTable::compile`].
    pub route_index: usize,
    pub route: &'r RouteSpec,
    /// The upstream name (a key of `[upstreams]`).
    pub upstream: &'r str,
    /// The path to send upstream (after `strip_prefix`), without the query.
    pub upstream_path: Cow<'r, str>,
}

/// One level of the prefix tree.
#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    /// Routes whose prefix ends here, in file order.
    grants: Vec<usize>,
}

/// One partner's routes, compiled. Immutable, `Send + Sync`; share it in an
/// `Arc` and swap it whole on reload.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<RouteSpec>,
    root: Node,
}

impl RouteTable {
    /// Compiles routes (as validated by `config`). Never fails: a route whose
    /// path is not origin-form can match nothing and is kept inert.
    pub fn compile(routes: &[RouteSpec]) -> RouteTable {
        let mut root = Node::default();
        for (index, route) in routes.iter().enumerate() {
            // Not origin-form, or holding an empty segment: no checked
            // target can match it, so it is left out of the tree.
            let Some(rest) = route.path.strip_prefix('/') else {
                continue;
            };
            if route.path.contains("//") {
                continue;
            }
            let rest = rest.strip_suffix('/').unwrap_or(rest);
            let mut node = &mut root;
            if !rest.is_empty() {
                for seg in rest.split('/') {
                    node = node.children.entry(seg.into()).or_default();
                }
            }
            node.grants.push(index);
        }
        RouteTable {
            routes: routes.to_vec(),
            root,
        }
    }

    /// Number of routes compiled (inert ones included).
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The routes, in the order given to [`RouteTable::compile`].
    pub fn routes(&self) -> &[RouteSpec] {
        &self.routes
    }

    /// Decides one request. `path` is the `path` of a [`Target`] that passed
    /// [`check_target`] (no query). Deny by default.
    pub fn authorize<'a>(&'a self, method: &str, path: &'a str) -> Result<Permit<'a>, Denial> {
        let rest = path.strip_prefix('/').ok_or(Denial::RouteNotGranted)?;
        let grant_here = |node: &Node| {
            node.grants
                .iter()
                .copied()
                .find(|&i| self.routes[i].methods.iter().any(|m| m == method))
        };
        // Best so far: (route index, byte length of the matched prefix).
        let mut best = grant_here(&self.root).map(|i| (i, 0));
        let mut node = &self.root;
        let mut offset = 0; // bytes of `path` consumed (before the next `/`)
        if !rest.is_empty() {
            for seg in rest.split('/') {
                match node.children.get(seg) {
                    Some(child) => {
                        node = child;
                        offset += 1 + seg.len();
                        if let Some(i) = grant_here(node) {
                            best = Some((i, offset));
                        }
                    }
                    None => break,
                }
            }
        }
        let (index, prefix_len) = best.ok_or(Denial::RouteNotGranted)?;
        let route = &self.routes[index];
        let upstream_path = if route.strip_prefix {
            match &path[prefix_len..] {
                "" => Cow::Borrowed("/"),
                rest => Cow::Borrowed(rest),
            }
        } else {
            Cow::Borrowed(path)
        };
        Ok(Permit {
            route_index: index,
            route,
            upstream: &route.upstream,
            upstream_path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Risk;

    fn route(methods: &[&str], path: &str, upstream: &str) -> RouteSpec {
        RouteSpec {
            methods: methods.iter().map(|m| m.to_string()).collect(),
            path: path.into(),
            upstream: upstream.into(),
            strip_prefix: false,
            risk: Risk::Normal,
            limits: None,
            max_body_bytes: None,
            value: None,
            require_signature: None,
        }
    }

    fn stripped(methods: &[&str], path: &str, upstream: &str) -> RouteSpec {
        RouteSpec {
            strip_prefix: true,
            ..route(methods, path, upstream)
        }
    }

    fn err(raw: &str) -> TargetError {
        check_target(raw).expect_err(raw)
    }

    // ---- check_target

    #[test]
    fn accepts_plain_targets() {
        assert_eq!(
            check_target("/v1/orders/7?x=1&y=%41"),
            Ok(Target {
                path: "/v1/orders/7",
                query: Some("x=1&y=%41")
            })
        );
        assert_eq!(
            check_target("/"),
            Ok(Target {
                path: "/",
                query: None
            })
        );
        assert_eq!(
            check_target("/v1/orders/").map(|t| t.path),
            Ok("/v1/orders/")
        );
        assert_eq!(check_target("/a?").map(|t| t.query), Ok(Some("")));
        // Encoded bytes that are not separators, dots or controls are fine.
        assert!(check_target("/files/a%20b/%C3%A9/.hidden/a.b/...").is_ok());
        // A query may hold `?`, `/`, `..` and encoded newlines: it is data.
        assert!(check_target("/s?q=a?b/../c&t=line1%0Aline2").is_ok());
    }

    #[test]
    fn refuses_non_origin_form() {
        for raw in [
            "*",
            "http://example.com/v1",
            "https://example.com:443/",
            "example.com:443",
            "",
            "v1/orders",
            "/v1/orders#frag",
            "/v1?x=1#frag",
        ] {
            assert_eq!(err(raw), TargetError::NotOriginForm, "{raw}");
        }
    }

    #[test]
    fn refuses_dot_segments_raw_and_encoded() {
        for raw in [
            "/.",
            "/..",
            "/v1/./orders",
            "/v1/../admin",
            "/v1/orders/..",
            "/v1/orders/../",
            "/v1/%2e/x",
            "/v1/%2E%2E/x",
            "/v1/.%2e/x",
            "/v1/%2e./x",
            "/v1/%2E./x",
            "/v1/orders/%2e%2e",
            "/v1/..?x=1",
        ] {
            assert_eq!(err(raw), TargetError::DotSegment, "{raw}");
        }
        // Not dot segments.
        for ok in [
            "/v1/.../x",
            "/v1/..a/x",
            "/v1/a../x",
            "/v1/%2e%2e%2e/x",
            "/.well-known/x",
        ] {
            assert!(check_target(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_what_servlet_containers_read_as_dot_segments() {
        // `;params` cut off, then dots in every spelling an upstream decodes.
        for raw in [
            "/v1/orders/..;/admin",
            "/v1/orders/.;/admin",
            "/v1/orders/..;jsessionid=1/admin",
            "/v1/orders/%2e%2e;x/admin",
            "/v1/orders/%2E.;/admin",
            "/v1/orders/..%3b/admin",
            "/v1/orders/..%3Bx/admin",
            "/v1/orders/..;",
            "/v1/orders/%252e%252e/admin",
            "/v1/orders/%25252e./admin",
            "/v1/orders/%c0%ae%c0%ae/admin",
            "/v1/orders/%C0%AE./admin",
            "/v1/orders/%e0%80%ae%e0%80%ae/admin",
            "/v1/orders/%f0%80%80%ae./admin",
            "/v1/orders/\u{ff0e}\u{ff0e}/admin",
            "/v1/orders/%ef%bc%8e%ef%bc%8e/admin",
            "/v1/orders/%EF%BC%8E./admin",
            "/v1/orders/\u{2024}./admin",
            "/v1/orders/\u{fe52}\u{fe52};x/admin",
            "/v1/orders/%2525ef%25bc%258e./admin",
        ] {
            assert_eq!(err(raw), TargetError::DotSegment, "{raw}");
        }
        for raw in [
            "/v1/orders/%252f/admin",
            "/v1/orders/%255c",
            "/v1/orders/%c0%af",
            "/v1/orders/%e0%80%afadmin",
            "/v1/orders/%c1%9c",
            "/v1/orders/a\u{ff0f}b",
            "/v1/orders/%ef%bc%bc",
        ] {
            assert_eq!(err(raw), TargetError::EncodedSeparator, "{raw}");
        }
        assert_eq!(err("/v1/%2500"), TargetError::ControlCharacter);
        assert_eq!(err("/v1/;/admin"), TargetError::EmptySegment);
        assert_eq!(err("/v1/%3b/admin"), TargetError::EmptySegment);
        assert_eq!(
            err("/v1/%252525252e"),
            TargetError::NestedEncoding,
            "five levels of nesting"
        );
        // Still fine: parameters on a real segment, dots that stay names,
        // an encoded percent that decodes to no dot or separator, a last
        // segment that is only a parameter.
        for ok in [
            "/v1/orders;jsessionid=1/7",
            "/v1/orders/7;v=2",
            "/v1/orders/...;x",
            "/v1/orders/.a;x",
            "/v1/orders/%25",
            "/v1/orders/100%2525",
            "/v1/orders/%c3%a9t%c3%a9",
            "/v1/orders/caf\u{e9}",
            "/v1/orders/;x",
            "/v1/orders/%25252e%25252e%25252e",
        ] {
            assert!(check_target(ok).is_ok(), "{ok}: {:?}", check_target(ok));
        }
    }

    #[test]
    fn refuses_encoded_separators() {
        for raw in [
            "/v1%2forders",
            "/v1%2Forders",
            "/v1/%5c..",
            "/v1%5Cx",
            "/%2F",
        ] {
            assert_eq!(err(raw), TargetError::EncodedSeparator, "{raw}");
        }
    }

    #[test]
    fn refuses_backslash() {
        assert_eq!(err("/v1\\orders"), TargetError::Backslash);
        assert_eq!(err("/\\"), TargetError::Backslash);
    }

    #[test]
    fn refuses_control_characters() {
        for raw in [
            "/v1\0x",
            "/v1\nx",
            "/v1\rx",
            "/v1\tx",
            "/v1\x7fx",
            "/v1%00x",
            "/v1%0ax",
            "/v1%0D%0Ax",
            "/v1%1f",
            "/v1%7F",
            "/v1?x=\0",
            "/v1?x=\n",
            "/v1?x=%00",
        ] {
            assert_eq!(err(raw), TargetError::ControlCharacter, "{raw:?}");
        }
    }

    #[test]
    fn refuses_bad_percent_encoding() {
        for raw in ["/v1%zz", "/v1%4", "/v1%", "/v1%g1", "/%%41", "/a%4?x=1"] {
            assert_eq!(err(raw), TargetError::BadPercentEncoding, "{raw}");
        }
    }

    #[test]
    fn refuses_empty_segments() {
        for raw in [
            "//",
            "//v1",
            "/v1//orders",
            "/v1/orders//",
            "//evil.example/x",
        ] {
            assert_eq!(err(raw), TargetError::EmptySegment, "{raw}");
        }
    }

    #[test]
    fn length_limit_counts_the_query() {
        let path = format!("/{}", "a".repeat(MAX_TARGET_BYTES - 1));
        assert!(check_target(&path).is_ok());
        assert_eq!(err(&format!("{path}b")), TargetError::TooLong);
        let half = format!("/{}?{}", "a".repeat(4000), "q".repeat(4191));
        assert_eq!(half.len(), MAX_TARGET_BYTES + 1);
        assert_eq!(err(&half), TargetError::TooLong);
    }

    #[test]
    fn error_codes_and_messages() {
        assert_eq!(TargetError::DotSegment.reason(), Reason::DotSegment);
        assert_eq!(Denial::RouteNotGranted.reason(), Reason::RouteNotGranted);
        assert!(!TargetError::EmptySegment.to_string().is_empty());
    }

    // ---- authorize

    fn allowed(t: &RouteTable, method: &str, path: &str) -> Option<(usize, String)> {
        t.authorize(method, path)
            .ok()
            .map(|p| (p.route_index, p.upstream_path.into_owned()))
    }

    #[test]
    fn empty_table_denies_everything() {
        let t = RouteTable::compile(&[]);
        assert!(t.is_empty());
        assert_eq!(t.len(), 0);
        for p in ["/", "/v1", "/v1/orders"] {
            assert_eq!(t.authorize("GET", p), Err(Denial::RouteNotGranted));
        }
    }

    #[test]
    fn prefix_is_segment_aware() {
        let t = RouteTable::compile(&[route(&["GET"], "/v1/orders", "orders")]);
        assert_eq!(t.len(), 1);
        for ok in [
            "/v1/orders",
            "/v1/orders/",
            "/v1/orders/7",
            "/v1/orders/7/lines",
        ] {
            let p = t.authorize("GET", ok).expect(ok);
            assert_eq!(p.upstream, "orders");
            assert_eq!(p.upstream_path, ok, "no strip: relayed as matched");
            assert_eq!(p.route.path, "/v1/orders");
        }
        for no in [
            "/v1/orders-export",
            "/v1/order",
            "/v1",
            "/",
            "/v2/orders",
            "/V1/orders",
        ] {
            assert_eq!(t.authorize("GET", no), Err(Denial::RouteNotGranted), "{no}");
        }
        assert_eq!(
            t.authorize("GET", "v1/orders"),
            Err(Denial::RouteNotGranted)
        );
    }

    #[test]
    fn trailing_slash_on_route_is_ignored() {
        let t = RouteTable::compile(&[route(&["GET"], "/v1/orders/", "orders")]);
        assert!(t.authorize("GET", "/v1/orders").is_ok());
        assert!(t.authorize("GET", "/v1/orders/7").is_ok());
        assert!(t.authorize("GET", "/v1/orders-x").is_err());
    }

    #[test]
    fn root_route_grants_everything() {
        let t = RouteTable::compile(&[route(&["GET"], "/", "all")]);
        for p in ["/", "/x", "/v1/orders/7", "/v1/"] {
            assert_eq!(allowed(&t, "GET", p), Some((0, p.to_string())), "{p}");
        }
        assert!(t.authorize("POST", "/x").is_err());
    }

    #[test]
    fn strip_prefix_cuts_the_matched_prefix() {
        let t = RouteTable::compile(&[
            stripped(&["GET"], "/v1/orders", "orders"),
            stripped(&["GET"], "/", "root"),
        ]);
        assert_eq!(allowed(&t, "GET", "/v1/orders/7"), Some((0, "/7".into())));
        assert_eq!(allowed(&t, "GET", "/v1/orders"), Some((0, "/".into())));
        assert_eq!(allowed(&t, "GET", "/v1/orders/"), Some((0, "/".into())));
        assert_eq!(
            allowed(&t, "GET", "/v1/orders/a%20b/c/"),
            Some((0, "/a%20b/c/".into()))
        );
        // Root route with strip_prefix relays the path unchanged.
        assert_eq!(allowed(&t, "GET", "/other/x"), Some((1, "/other/x".into())));
        assert_eq!(allowed(&t, "GET", "/"), Some((1, "/".into())));
        // The permit borrows the path: no allocation.
        let path = String::from("/v1/orders/9");
        let p = t.authorize("GET", &path).unwrap();
        assert!(matches!(p.upstream_path, Cow::Borrowed("/9")));
    }

    #[test]
    fn longest_prefix_wins() {
        let t = RouteTable::compile(&[
            route(&["GET", "POST"], "/v1", "general"),
            route(&["GET"], "/v1/orders", "orders"),
            route(&["GET"], "/v1/orders/export", "export"),
            route(&["GET"], "/", "fallback"),
        ]);
        let up = |m: &str, p: &str| t.authorize(m, p).map(|p| p.upstream.to_string());
        assert_eq!(up("GET", "/v1/orders/export/2024").as_deref(), Ok("export"));
        assert_eq!(up("GET", "/v1/orders/exports").as_deref(), Ok("orders"));
        assert_eq!(up("GET", "/v1/orders/7").as_deref(), Ok("orders"));
        assert_eq!(up("GET", "/v1/other").as_deref(), Ok("general"));
        assert_eq!(up("GET", "/v2").as_deref(), Ok("fallback"));
        // A GET-only longer route does not take POST away from /v1.
        assert_eq!(up("POST", "/v1/orders/7").as_deref(), Ok("general"));
        assert_eq!(up("POST", "/v2"), Err(Denial::RouteNotGranted));
    }

    #[test]
    fn order_does_not_matter_for_specificity_and_ties_go_to_first() {
        let t = RouteTable::compile(&[
            route(&["GET"], "/v1/orders", "first"),
            route(&["GET"], "/v1", "short"),
            route(&["GET", "PUT"], "/v1/orders", "second"),
        ]);
        assert_eq!(
            t.authorize("GET", "/v1/orders/1").unwrap().upstream,
            "first"
        );
        assert_eq!(t.authorize("GET", "/v1/orders/1").unwrap().route_index, 0);
        assert_eq!(
            t.authorize("PUT", "/v1/orders/1").unwrap().upstream,
            "second"
        );
        assert_eq!(t.authorize("GET", "/v1/x").unwrap().upstream, "short");
    }

    #[test]
    fn methods_are_exact_and_head_is_not_implied() {
        let t = RouteTable::compile(&[route(&["GET", "POST"], "/v1/orders", "orders")]);
        assert!(t.authorize("GET", "/v1/orders").is_ok());
        assert!(t.authorize("POST", "/v1/orders").is_ok());
        for m in [
            "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "get", "CONNECT", "",
        ] {
            assert_eq!(
                t.authorize(m, "/v1/orders"),
                Err(Denial::RouteNotGranted),
                "{m}"
            );
        }
        let t = RouteTable::compile(&[route(&["GET", "HEAD"], "/v1/orders", "orders")]);
        assert!(t.authorize("HEAD", "/v1/orders/1").is_ok());
    }

    #[test]
    fn inert_routes_match_nothing() {
        let t = RouteTable::compile(&[route(&["GET"], "v1/orders", "x")]);
        assert_eq!(t.len(), 1);
        assert!(t.authorize("GET", "/v1/orders").is_err());
        assert!(t.authorize("GET", "/").is_err());
        let t = RouteTable::compile(&[route(&["GET"], "//", "x"), route(&["GET"], "/a//b", "x")]);
        assert!(t.authorize("GET", "/").is_err());
        assert!(t.authorize("GET", "/a/b").is_err());
    }

    #[test]
    fn many_routes_and_deep_paths() {
        let routes: Vec<RouteSpec> = (0..200)
            .map(|i| {
                route(
                    &["GET"],
                    &format!("/api/v{}/res{}", i % 5, i),
                    &format!("u{i}"),
                )
            })
            .collect();
        let t = RouteTable::compile(&routes);
        assert_eq!(t.len(), 200);
        for i in 0..200 {
            let p = format!("/api/v{}/res{}/x/y", i % 5, i);
            let permit = t.authorize("GET", &p).unwrap();
            assert_eq!(permit.route_index, i);
            assert_eq!(permit.upstream, format!("u{i}"));
        }
        assert!(t.authorize("GET", "/api/v0/res1").is_err());
    }

    #[test]
    fn table_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<RouteTable>();
    }

    #[test]
    fn check_then_authorize() {
        let t = RouteTable::compile(&[stripped(&["GET"], "/v1/orders", "orders")]);
        let target = check_target("/v1/orders/7?expand=lines").unwrap();
        let p = t.authorize("GET", target.path).unwrap();
        assert_eq!(p.upstream_path, "/7");
        assert_eq!(target.query, Some("expand=lines"));
    }

    // ---- property: nothing accepted and matched escapes its grant

    mod escape {
        use super::*;
        use proptest::prelude::*;

        /// Pieces of segments: names, every dot spelling, parameters,
        /// encoded and double-encoded bytes, look-alikes, separators.
        const PIECES: &[&str] = &[
            "a",
            "v1",
            "orders",
            "export",
            "admin",
            "7",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2e%2e",
            ";",
            ";x",
            ";jsessionid=1",
            "%3b",
            "%3B",
            "%25",
            "%252e",
            "%25252e",
            "%c0%ae",
            "%e0%80%ae",
            "%ef%bc%8e",
            "\u{ff0e}",
            "\u{2024}",
            "%41",
            "x.y",
            "~",
            "%2f",
            "%252f",
            "%5c",
            "\\",
            "%c0%af",
            "=",
            "%20",
            "",
            "%",
            "%00",
            "\u{e9}",
        ];

        fn segment() -> impl Strategy<Value = String> {
            prop::collection::vec(prop::sample::select(PIECES), 1..4).prop_map(|p| p.concat())
        }

        fn target() -> impl Strategy<Value = String> {
            (
                prop::sample::select(&["/v1/orders", "/v1", "", "/a"][..]),
                prop::collection::vec(segment(), 0..5),
                any::<bool>(),
                prop::option::of(prop::sample::select(&["x=1", "q=..;/", ""][..])),
            )
                .prop_map(|(prefix, segs, slash, query)| {
                    let mut t = prefix.to_string();
                    for s in segs {
                        t.push('/');
                        t.push_str(&s);
                    }
                    if slash || t.is_empty() {
                        t.push('/');
                    }
                    if let Some(q) = query {
                        t.push('?');
                        t.push_str(q);
                    }
                    t
                })
        }

        fn decode_once(p: &[u8]) -> Vec<u8> {
            let mut out = Vec::with_capacity(p.len());
            let mut i = 0;
            while i < p.len() {
                if p[i] == b'%'
                    && let Some(b) = decode_at(p, i)
                {
                    out.push(b);
                    i += 3;
                } else {
                    out.push(p[i]);
                    i += 1;
                }
            }
            out
        }

        fn strip_params(p: &[u8]) -> Vec<u8> {
            p.split(|&b| b == b'/')
                .map(|s| s.split(|&b| b == b';').next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(&b'/')
        }

        /// RFC 3986 §5.2.4 on an absolute path.
        fn remove_dot_segments(p: &[u8]) -> Vec<u8> {
            let segs: Vec<&[u8]> = p[1..].split(|&b| b == b'/').collect();
            let mut out: Vec<&[u8]> = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                let last = i + 1 == segs.len();
                match *s {
                    b"." => {}
                    b".." => {
                        out.pop();
                    }
                    _ => {
                        out.push(s);
                        continue;
                    }
                }
                if last {
                    out.push(b"");
                }
            }
            let mut r = b"/".to_vec();
            r.extend(out.join(&b'/'));
            r
        }

        /// The two orders servlet containers and frameworks use: strip
        /// `;params` then decode (Tomcat), or decode then strip (Spring's
        /// decoded paths), each followed by dot-segment removal.
        fn normalised(p: &[u8]) -> [Vec<u8>; 2] {
            [
                remove_dot_segments(&decode_once(&strip_params(p))),
                remove_dot_segments(&strip_params(&decode_once(p))),
            ]
        }

        fn under(path: &[u8], prefix: &str) -> bool {
            let prefix = prefix.trim_end_matches('/').as_bytes();
            prefix.is_empty()
                || path == prefix
                || (path.starts_with(prefix) && path.get(prefix.len()) == Some(&b'/'))
        }

        fn table() -> RouteTable {
            RouteTable::compile(&[
                stripped(&["GET"], "/v1/orders", "orders"),
                route(&["GET"], "/v1/orders/export", "export"),
                route(&["GET"], "/a", "a"),
            ])
        }

        proptest! {
            #![proptest_config(ProptestConfig {
                cases: 4000,
                failure_persistence: None,
                ..ProptestConfig::default()
            })]

            #[test]
            fn accepted_targets_never_normalise_outside_their_grant(raw in target()) {
                let table = table();
                let Ok(t) = check_target(&raw) else { return Ok(()) };
                let Ok(permit) = table.authorize("GET", t.path) else { return Ok(()) };
                for n in normalised(t.path.as_bytes()) {
                    prop_assert!(
                        under(&n, &permit.route.path),
                        "{raw} granted by {} normalises to {}",
                        permit.route.path,
                        String::from_utf8_lossy(&n)
                    );
                }
                // What a stripped route relays stays under the upstream's base path.
                if permit.route.strip_prefix {
                    let relayed = format!("/base{}", permit.upstream_path);
                    for n in normalised(relayed.as_bytes()) {
                        prop_assert!(under(&n, "/base"), "{raw} relays {relayed}");
                    }
                }
            }

            #[test]
            fn the_checker_never_panics(raw in "\\PC{0,64}") {
                let _ = check_target(&raw);
            }
        }

        #[test]
        fn the_model_sees_the_bypass_the_checker_refuses() {
            // Without the fold, these would be accepted under /v1/orders and
            // reach /v1/admin (the property above would fail).
            for raw in ["/v1/orders/..;/admin", "/v1/orders/%2e%2e%3bx/admin"] {
                let n = normalised(raw.as_bytes());
                assert!(n.iter().any(|n| n == b"/v1/admin"), "{raw}: {n:?}");
                assert!(table().authorize("GET", raw).is_ok());
                assert_eq!(err(raw), TargetError::DotSegment);
            }
        }
    }
}
