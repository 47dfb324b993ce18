//! The comparison of two answers to the same request (pure): status;
//! headers other than the ignored ones; bodies as canonical JSON when both
//! are JSON (key order and number formatting do not matter; ignored JSON
//! pointers are skipped, `*` standing for any array element), else as
//! bytes. What differs is named (header names, JSON pointers), never shown:
//! a difference carries no body content.

use std::collections::BTreeSet;

use http::HeaderMap;
use serde_json::Value;

use crate::config::mirror::pointer_segments;

/// Response headers never compared: hop-by-hop ones, the ones that differ
/// by nature between two servers or two moments (date, age, expiry, last
/// change, entity tag, server name, request id), and the length (the body
/// comparison covers it, and JSON may be spelled at another length).
pub const ALWAYS_IGNORED_HEADERS: [&str; 15] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "date",
    "age",
    "expires",
    "last-modified",
    "etag",
    "server",
    "x-request-id",
];

/// Differing pointers kept at most per comparison (the rest are counted).
pub const MAX_POINTERS: usize = 32;

/// One answer as the comparison sees it.
pub struct Answer<'a> {
    pub status: u16,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    /// False when the body was longer than the capture (then bodies are not
    /// compared; status and headers still are).
    pub body_whole: bool,
}

/// What is left out of a comparison: header names (lower case) and JSON
/// pointer patterns (segments, `*` for any array element).
#[derive(Debug, Clone, Default)]
pub struct Ignores {
    headers: BTreeSet<String>,
    pointers: Vec<Vec<String>>,
}

impl Ignores {
    /// The configured ignores (`ignore_headers`, `ignore_json`).
    pub fn new<'a>(
        headers: impl IntoIterator<Item = &'a String>,
        pointers: impl IntoIterator<Item = &'a String>,
    ) -> Ignores {
        let mut i = Ignores::default();
        for h in headers {
            i.add_header(h);
        }
        for p in pointers {
            i.add_pointer(p);
        }
        i
    }

    pub fn add_header(&mut self, name: &str) {
        self.headers.insert(name.to_ascii_lowercase());
    }

    pub fn add_pointer(&mut self, pointer: &str) {
        self.pointers.push(pointer_segments(pointer));
    }

    fn header(&self, name: &str) -> bool {
        ALWAYS_IGNORED_HEADERS.contains(&name) || self.headers.contains(name)
    }

    /// Whether the node at `path` (and so everything below it) is ignored.
    fn pointer(&self, path: &[Segment]) -> bool {
        self.pointers.iter().any(|p| {
            p.len() == path.len()
                && p.iter()
                    .zip(path)
                    .all(|(want, seg)| want == &seg.key || (want == "*" && seg.index))
        })
    }
}

/// How the bodies compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyOutcome {
    /// Equal (as JSON, or byte for byte).
    Same,
    /// Both JSON; the differing pointers are listed.
    Json,
    /// Not both JSON, and the bytes differ.
    Bytes,
    /// One body was longer than the capture: not compared.
    NotCompared,
}

/// What differs between two answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Differences {
    pub status: bool,
    /// Names of headers that differ (present on one side only, or with
    /// other values), lower case, sorted.
    pub headers: BTreeSet<String>,
    /// JSON pointers that differ (RFC 6901), sorted; at most `MAX_POINTERS`.
    pub pointers: BTreeSet<String>,
    /// The same pointers with array indices as `*` (what noise is learned as).
    pub patterns: BTreeSet<String>,
    /// Differing pointers beyond `MAX_POINTERS`.
    pub more_pointers: usize,
    pub body: BodyOutcome,
}

impl Differences {
    /// Nothing differs (a body not compared does not count as a difference).
    pub fn none(&self) -> bool {
        !self.status
            && self.headers.is_empty()
            && self.pointers.is_empty()
            && self.more_pointers == 0
            && self.body != BodyOutcome::Bytes
    }
}

/// Compares `live` with `other`, leaving out `ignores`.
pub fn compare(live: &Answer<'_>, other: &Answer<'_>, ignores: &Ignores) -> Differences {
    let mut d = Differences {
        status: live.status != other.status,
        headers: differing_headers(live.headers, other.headers, ignores),
        pointers: BTreeSet::new(),
        patterns: BTreeSet::new(),
        more_pointers: 0,
        body: BodyOutcome::Same,
    };
    if !live.body_whole || !other.body_whole {
        d.body = BodyOutcome::NotCompared;
        return d;
    }
    let json = |a: &Answer<'_>| {
        if is_json(a.headers) {
            serde_json::from_slice::<Value>(a.body).ok()
        } else {
            None
        }
    };
    match (json(live), json(other)) {
        (Some(a), Some(b)) => {
            let mut path = Vec::new();
            diff_json(&a, &b, &mut path, ignores, &mut d);
            d.body = if d.pointers.is_empty() {
                BodyOutcome::Same
            } else {
                BodyOutcome::Json
            };
        }
        _ => {
            if live.body != other.body {
                d.body = BodyOutcome::Bytes;
            }
        }
    }
    d
}

/// Whether a Content-Type says JSON (`application/json`, `…+json`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            let essence = v
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            essence == "application/json" || essence.ends_with("+json")
        })
        .unwrap_or(false)
}

fn differing_headers(a: &HeaderMap, b: &HeaderMap, ignores: &Ignores) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for name in a.keys().chain(b.keys()) {
        let n = name.as_str();
        if ignores.header(n) || out.contains(n) {
            continue;
        }
        if !a.get_all(name).iter().eq(b.get_all(name).iter()) {
            out.insert(n.to_string());
        }
    }
    out
}

/// One step of a JSON path: an object key, or an array index.
struct Segment {
    key: String,
    index: bool,
}

fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

fn note(path: &[Segment], d: &mut Differences) {
    if d.pointers.len() >= MAX_POINTERS {
        d.more_pointers += 1;
        return;
    }
    let mut pointer = String::new();
    let mut pattern = String::new();
    for s in path {
        pointer.push('/');
        pointer.push_str(&escape(&s.key));
        pattern.push('/');
        if s.index {
            pattern.push('*');
        } else {
            pattern.push_str(&escape(&s.key));
        }
    }
    d.pointers.insert(pointer);
    d.patterns.insert(pattern);
}

fn same_number(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    match (a.as_i64(), b.as_i64(), a.as_u64(), b.as_u64()) {
        (Some(x), Some(y), _, _) => x == y,
        (_, _, Some(x), Some(y)) => x == y,
        _ => a.as_f64() == b.as_f64(),
    }
}

fn diff_json(a: &Value, b: &Value, path: &mut Vec<Segment>, ig: &Ignores, d: &mut Differences) {
    if ig.pointer(path) {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                path.push(Segment {
                    key: k.clone(),
                    index: false,
                });
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => diff_json(va, vb, path, ig, d),
                    _ => {
                        if !ig.pointer(path) {
                            note(path, d);
                        }
                    }
                }
                path.pop();
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                path.push(Segment {
                    key: i.to_string(),
                    index: true,
                });
                match (x.get(i), y.get(i)) {
                    (Some(va), Some(vb)) => diff_json(va, vb, path, ig, d),
                    _ => {
                        if !ig.pointer(path) {
                            note(path, d);
                        }
                    }
                }
                path.pop();
            }
        }
        (Value::Number(x), Value::Number(y)) => {
            if !same_number(x, y) {
                note(path, d);
            }
        }
        _ => {
            if a != b {
                note(path, d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn json_answer<'a>(h: &'a HeaderMap, body: &'a str) -> Answer<'a> {
        Answer {
            status: 200,
            headers: h,
            body: body.as_bytes(),
            body_whole: true,
        }
    }

    fn diff(a: &str, b: &str, ignores: &Ignores) -> Differences {
        let h = headers(&[("content-type", "application/json")]);
        compare(&json_answer(&h, a), &json_answer(&h, b), ignores)
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn key_order_and_number_spelling_do_not_matter() {
        let d = diff(
            r#"{"total": 10, "items": [{"sku": "a", "qty": 1}], "rate": 0.5}"#,
            r#"{"rate": 5e-1, "items": [{"qty": 1.0, "sku": "a"}], "total": 1e1}"#,
            &Ignores::default(),
        );
        assert!(d.none(), "{d:?}");
        assert_eq!(d.body, BodyOutcome::Same);
    }

    #[test]
    fn a_differing_field_is_named_by_its_pointer() {
        let d = diff(
            r#"{"total": 10, "items": [{"sku": "a"}, {"sku": "b"}], "a/b": 1, "gone": true}"#,
            r#"{"total": 11, "items": [{"sku": "a"}, {"sku": "c"}, {"sku": "d"}], "a/b": 2}"#,
            &Ignores::default(),
        );
        assert_eq!(
            d.pointers,
            set(&["/a~1b", "/gone", "/items/1/sku", "/items/2", "/total"])
        );
        assert_eq!(
            d.patterns,
            set(&["/a~1b", "/gone", "/items/*", "/items/*/sku", "/total"])
        );
        assert_eq!(d.body, BodyOutcome::Json);
        assert!(!d.none());
    }

    #[test]
    fn ignored_pointers_with_a_star_cover_every_element_and_what_is_below() {
        let a =
            r#"{"meta": {"at": 1, "by": "x"}, "items": [{"id": 1, "ts": 5}, {"id": 2, "ts": 6}]}"#;
        let b =
            r#"{"meta": {"at": 2, "by": "y"}, "items": [{"id": 1, "ts": 7}, {"id": 2, "ts": 8}]}"#;
        let none = Ignores::default();
        assert_eq!(
            diff(a, b, &none).pointers,
            set(&["/items/0/ts", "/items/1/ts", "/meta/at", "/meta/by"])
        );
        let ig = Ignores::new(&[], &["/items/*/ts".to_string(), "/meta".to_string()]);
        assert!(diff(a, b, &ig).none(), "{:?}", diff(a, b, &ig));
        // `*` stands for array elements, not object keys.
        let keys = Ignores::new(&[], &["/*/at".to_string()]);
        assert!(diff(a, b, &keys).pointers.contains("/meta/at"));
    }

    #[test]
    fn headers_compare_by_value_minus_the_ignored_ones() {
        let a = headers(&[
            ("content-type", "text/plain"),
            ("date", "Mon"),
            ("x-version", "1"),
            ("x-trace", "abc"),
            ("cache-control", "no-store"),
        ]);
        let b = headers(&[
            ("content-type", "text/plain"),
            ("date", "Tue"),
            ("x-version", "2"),
            ("x-trace", "def"),
            ("vary", "accept"),
        ]);
        let ig = Ignores::new(&["X-Trace".to_string()], &[]);
        let d = compare(
            &Answer {
                status: 200,
                headers: &a,
                body: b"same",
                body_whole: true,
            },
            &Answer {
                status: 404,
                headers: &b,
                body: b"same",
                body_whole: true,
            },
            &ig,
        );
        assert!(d.status);
        assert_eq!(d.headers, set(&["cache-control", "vary", "x-version"]));
        assert_eq!(d.body, BodyOutcome::Same);
    }

    #[test]
    fn other_bodies_compare_as_bytes_and_cut_bodies_not_at_all() {
        let h = headers(&[("content-type", "text/plain")]);
        let a = Answer {
            status: 200,
            headers: &h,
            body: b"one",
            body_whole: true,
        };
        let b = Answer {
            status: 200,
            headers: &h,
            body: b"two",
            body_whole: true,
        };
        let d = compare(&a, &b, &Ignores::default());
        assert_eq!(d.body, BodyOutcome::Bytes);
        assert!(d.pointers.is_empty() && !d.none());
        let cut = Answer {
            body_whole: false,
            ..b
        };
        let d = compare(&a, &cut, &Ignores::default());
        assert_eq!(d.body, BodyOutcome::NotCompared);
        assert!(d.none());
        // JSON that does not parse is compared as bytes.
        let d = diff("{\"a\": 1}", "{\"a\": 1", &Ignores::default());
        assert_eq!(d.body, BodyOutcome::Bytes);
    }

    #[test]
    fn pointers_are_bounded() {
        let a: Vec<u32> = (0..100).collect();
        let b: Vec<u32> = (1..101).collect();
        let d = diff(
            &serde_json::to_string(&a).unwrap(),
            &serde_json::to_string(&b).unwrap(),
            &Ignores::default(),
        );
        assert_eq!(d.pointers.len(), MAX_POINTERS);
        assert_eq!(d.more_pointers, 100 - MAX_POINTERS);
        assert_eq!(d.patterns, set(&["/*"]));
    }
}
