//! Which partner-sent header fields never reach an upstream, in any
//! spelling: the broker's own identity annotations, the fields proxies and
//! frameworks read as the caller's address or certificate, and the fields
//! that override the method or the path a route granted. Owns the list, the
//! name folding, and [`TrailerFilter`], which applies the same rule to
//! request trailers.
//!
//! **Folding.** A name is compared after lowercasing it and reading every
//! character other than a letter or a digit as `-`: CGI, WSGI, PHP and Rack
//! turn both `X-Gatehouse-Partner` and `X_Gatehouse_Partner` into the one
//! key `HTTP_X_GATEHOUSE_PARTNER`, so the spoof could win over the broker's
//! header. Any folded match is dropped.
//!
//! **The list** ([`is_reserved`]):
//! - set by the broker: `x-gatehouse-*` (partner, certificate serial,
//!   signed identity), `x-request-id`, `x-forwarded-*` (for, proto, client
//!   certificate; also host, prefix, port, …);
//! - the caller's address as other proxies pass it: `forwarded`,
//!   `x-real-ip`, `x-client-ip`, `true-client-ip`, `x-cluster-client-ip`,
//!   `cf-connecting-ip`;
//! - the caller's certificate as other TLS terminators pass it: RFC 9440
//!   `client-cert` and `client-cert-chain` (any `client-cert*`),
//!   `x-client-cert*`, `ssl-client-*`, `x-ssl-*`, `x-arr-clientcert`,
//!   `x-amzn-mtls-*`;
//! - method overrides (Rails, Express, Spring, ASP.NET turn a granted `POST`
//!   into a `DELETE`): `x-http-method-override`, `x-http-method`,
//!   `x-method-override`, `x-original-method`;
//! - path overrides (IIS URL Rewrite, Symfony, nginx `auth_request`):
//!   `x-original-url`, `x-rewrite-url`, `x-original-uri`.
//!
//! Trailers ([`TrailerFilter`]) lose the reserved fields and the fields that
//! frame or route a message (`content-length`, `transfer-encoding`, `host`,
//! `te`, `trailer`, the hop-by-hop ones).

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http::header::HeaderName;
use hyper::body::{Body, Frame, SizeHint};

/// Reserved names, folded (see the module docs).
const RESERVED: &[&str] = &[
    "x-request-id",
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "x-cluster-client-ip",
    "cf-connecting-ip",
    "x-arr-clientcert",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-original-url",
    "x-rewrite-url",
    "x-original-uri",
];

/// Reserved prefixes, folded.
const RESERVED_PREFIXES: &[&str] = &[
    "x-gatehouse-",
    "x-forwarded-",
    "client-cert",
    "x-client-cert",
    "ssl-client-",
    "x-ssl-",
    "x-amzn-mtls-",
];

/// Fields a trailer must not carry (framing, routing, hop-by-hop), folded.
const NOT_IN_TRAILERS: &[&str] = &[
    "content-length",
    "transfer-encoding",
    "host",
    "te",
    "trailer",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "upgrade",
];

/// Longest name folded; longer names are judged by their first bytes (every
/// reserved name and prefix is shorter).
const FOLD_MAX: usize = 64;

/// Lowercase, with every character but a letter or a digit read as `-`.
fn fold(name: &str) -> ([u8; FOLD_MAX], usize) {
    let mut out = [0u8; FOLD_MAX];
    let n = name.len().min(FOLD_MAX);
    for (o, b) in out.iter_mut().zip(name.bytes().take(n)) {
        *o = if b.is_ascii_alphanumeric() {
            b.to_ascii_lowercase()
        } else {
            b'-'
        };
    }
    (out, n)
}

fn matches_list(folded: &[u8], exact: &[&str], prefixes: &[&str]) -> bool {
    exact.iter().any(|e| folded == e.as_bytes())
        || prefixes.iter().any(|p| folded.starts_with(p.as_bytes()))
}

/// Whether a partner-sent field named `name` (any case, `_` or `-`) is one
/// the upstream must never get from the partner.
pub fn is_reserved(name: &str) -> bool {
    let (buf, n) = fold(name);
    let folded = &buf[..n];
    matches_list(folded, RESERVED, RESERVED_PREFIXES)
}

/// Whether a trailer field named `name` is dropped.
pub fn is_dropped_trailer(name: &str) -> bool {
    let (buf, n) = fold(name);
    let folded = &buf[..n];
    matches_list(folded, RESERVED, RESERVED_PREFIXES) || matches_list(folded, NOT_IN_TRAILERS, &[])
}

/// Removes every reserved field from `headers`.
pub fn strip_reserved(headers: &mut HeaderMap) {
    strip(headers, is_reserved);
}

fn strip(headers: &mut HeaderMap, drop: fn(&str) -> bool) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| drop(n.as_str()))
        .cloned()
        .collect();
    for n in names {
        headers.remove(n);
    }
}

/// A request body whose trailers lose every field [`is_dropped_trailer`]
/// names; data frames pass untouched. Trailers left empty are dropped.
pub struct TrailerFilter<B> {
    inner: B,
}

impl<B> TrailerFilter<B> {
    pub fn new(inner: B) -> Self {
        TrailerFilter { inner }
    }
}

impl<B> Body for TrailerFilter<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        loop {
            let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                other => return Poll::Ready(other),
            };
            match frame.into_trailers() {
                Ok(mut trailers) => {
                    strip(&mut trailers, is_dropped_trailer);
                    if trailers.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                }
                Err(data) => return Poll::Ready(Some(Ok(data))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use http_body_util::BodyExt;

    #[test]
    fn every_spelling_of_a_reserved_name_is_reserved() {
        for n in [
            "x-gatehouse-partner",
            "X_Gatehouse_Partner",
            "x-gatehouse_cert_serial",
            "X-Gatehouse-Identity",
            "x.gatehouse.partner",
            "X-Forwarded_Client_Cert",
            "x_forwarded_for",
            "X-Forwarded-Host",
            "x-forwarded-prefix",
            "Forwarded",
            "Client-Cert",
            "client_cert_chain",
            "X-HTTP-Method-Override",
            "x_http_method",
            "X-Method-Override",
            "X-Original-URL",
            "x_rewrite_url",
            "X-Real-IP",
            "x_request_id",
            "ssl_client_cert",
            "X-SSL-Client-Verify",
            "X-ARR-ClientCert",
            "X-Amzn-Mtls-Clientcert-Leaf",
        ] {
            assert!(is_reserved(n), "{n}");
        }
        for n in [
            "accept",
            "content-type",
            "x-gatehouse",
            "x-forwarded",
            "authorization",
            "x-requested-with",
            "x-original",
            "x-request",
            "cookie",
            "x-api-key",
        ] {
            assert!(!is_reserved(n), "{n}");
        }
        // Long names are judged by their start; no panic on any length.
        assert!(is_reserved(&format!("x-gatehouse-{}", "a".repeat(500))));
        assert!(!is_reserved(&"a".repeat(500)));
    }

    #[test]
    fn strip_reserved_keeps_the_rest() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x_gatehouse_partner", "globex"),
            ("x-http-method-override", "DELETE"),
            ("accept", "*/*"),
            ("x-api-key", "k"),
        ] {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        strip_reserved(&mut h);
        assert_eq!(h.len(), 2);
        assert_eq!(h["accept"], "*/*");
        assert_eq!(h["x-api-key"], "k");
    }

    #[tokio::test]
    async fn trailers_lose_reserved_and_framing_fields() {
        let mut trailers = HeaderMap::new();
        for (k, v) in [
            ("x_gatehouse_partner", "globex"),
            ("x-forwarded-client-cert", "Hash=x"),
            ("content-length", "0"),
            ("host", "evil"),
            ("x-checksum", "abc"),
        ] {
            trailers.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"hello"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let collected = TrailerFilter::new(body).collect().await.unwrap();
        let t = collected.trailers().cloned().unwrap();
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t["x-checksum"], "abc");
        assert_eq!(collected.to_bytes(), "hello");

        // Trailers left empty are not sent at all.
        let mut only_spoof = HeaderMap::new();
        only_spoof.insert("x-gatehouse-partner", HeaderValue::from_static("globex"));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            vec![Ok(Frame::trailers(only_spoof))];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let collected = TrailerFilter::new(body).collect().await.unwrap();
        assert!(collected.trailers().is_none());
    }
}
