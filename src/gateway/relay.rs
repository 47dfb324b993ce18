//! The relay's side of the upstream leg: the header hygiene on both
//! directions (hop-by-hop headers, spoofable headers, the broker's identity
//! annotations). Sending goes through the upstream's pool
//! ([`crate::upstream::Pool`]: endpoints, balancing, retries, health).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub use crate::upstream::{BoxError, Pool as Upstream, RelayBody, UpstreamError};

/// Hop-by-hop headers (RFC 9110 §7.6.1), never relayed.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including those named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for h in HOP_BY_HOP {
        headers.remove(*h);
    }
}

/// Whether a partner-sent header could be used to pose as someone else,
/// forge the broker's own annotations or override the granted method or
/// path, in any spelling (`_` for `-`, any case): such headers are dropped.
/// The list and the folding live in [`crate::gateway::header_guard`].
pub fn is_spoofable(name: &HeaderName) -> bool {
    crate::gateway::header_guard::is_reserved(name.as_str())
}

/// Prepares a partner's request headers for the upstream: hop-by-hop and
/// spoofable headers removed, `Host` dropped (the client sets the
/// upstream's), then the broker's identity headers set.
pub fn upstream_request_headers(headers: &mut HeaderMap, annotations: &Annotations<'_>) {
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    crate::gateway::header_guard::strip_reserved(headers);
    // Repeated (equal) Content-Length values go upstream as one.
    if let Some(len) = headers.get(header::CONTENT_LENGTH).cloned()
        && headers
            .get_all(header::CONTENT_LENGTH)
            .iter()
            .nth(1)
            .is_some()
    {
        headers.insert(header::CONTENT_LENGTH, len);
    }
    let mut set = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    };
    set("x-gatehouse-partner", annotations.partner);
    set("x-gatehouse-cert-serial", annotations.serial);
    set("x-request-id", annotations.request_id);
    set("x-forwarded-for", annotations.client_ip);
    set("x-forwarded-proto", "https");
    set(
        "x-forwarded-client-cert",
        &format!("Hash={};URI={}", annotations.fingerprint, annotations.uri),
    );
    if let Some(token) = annotations.identity {
        set(crate::identity_token::HEADER, token);
    }
}

/// What the broker tells the upstream about the caller.
pub struct Annotations<'a> {
    pub partner: &'a str,
    pub serial: &'a str,
    pub fingerprint: &'a str,
    pub uri: &'a str,
    pub request_id: &'a str,
    pub client_ip: &'a str,
    /// The signed identity token (`X-Gatehouse-Identity`), when there is one.
    pub identity: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spoofed_and_hop_headers_are_replaced() {
        let mut h = HeaderMap::new();
        h.insert("x-gatehouse-partner", HeaderValue::from_static("globex"));
        h.insert("x-gatehouse-identity", HeaderValue::from_static("forged"));
        h.insert(
            "X-Forwarded-Client-Cert",
            HeaderValue::from_static("Hash=x;URI=y"),
        );
        h.insert("forwarded", HeaderValue::from_static("for=1.2.3.4"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil"));
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("te", HeaderValue::from_static("trailers"));
        h.insert("accept", HeaderValue::from_static("application/json"));
        upstream_request_headers(
            &mut h,
            &Annotations {
                partner: "acme",
                serial: "0a",
                fingerprint: "ff",
                uri: "spiffe://td/partner/acme",
                request_id: "r1",
                client_ip: "127.0.0.1",
                identity: Some("e30.e30.sig"),
            },
        );
        assert_eq!(h["x-gatehouse-partner"], "acme");
        assert_eq!(h["x-gatehouse-identity"], "e30.e30.sig");
        assert_eq!(
            h["x-forwarded-client-cert"],
            "Hash=ff;URI=spiffe://td/partner/acme"
        );
        assert!(h.get("forwarded").is_none());
        assert!(h.get("x-forwarded-host").is_none());
        assert!(h.get("x-secret").is_none());
        assert!(h.get("te").is_none());
        assert!(h.get("connection").is_none());
        assert_eq!(h["accept"], "application/json");
    }
}
