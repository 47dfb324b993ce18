//! The echo upstream works over real TLS on loopback: it echoes what it got,
//! requires and reports client certificates when asked, serves plain HTTP,
//! can present a certificate from the wrong CA, speaks HTTP/1.1 and HTTP/2,
//! and stops when shut down.

use crate::common;

use std::sync::Arc;

use bytes::Bytes;
use common::upstream::{EchoOptions, EchoUpstream, start_echo_upstream};
use gatehouse::ca::{Authority, LeafKind};
use http_body_util::{BodyExt, Full};
use hyper::{Request, Version};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A client certificate and its key.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

/// A gatehouse CA (the crate's own) and a partner certificate it issued.
fn gatehouse_partner(id: &str) -> (String, Identity) {
    let (ca, _key_pem, _) = Authority::create_ca("gatehouse test CA", Some(0), 365, None).unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let now = OffsetDateTime::now_utc();
    let signed = ca
        .sign_leaf(
            LeafKind::Partner {
                trust_domain: "gatehouse.local",
                id,
                name: "Acme Logistics",
            },
            &key,
            now - Duration::minutes(5),
            now + Duration::days(1),
        )
        .unwrap();
    let identity = Identity {
        chain: vec![signed.der],
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    };
    (ca.chain_pem, identity)
}

fn tls_config(ca_pem: &str, identity: Option<Identity>) -> ClientConfig {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    match identity {
        Some(id) => builder.with_client_auth_cert(id.chain, id.key).unwrap(),
        None => builder.with_no_client_auth(),
    }
}

fn https_client(config: ClientConfig, http2_only: bool) -> HttpsClient {
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if http2_only {
        b.enable_http2().build()
    } else {
        b.enable_http1().build()
    };
    Client::builder(TokioExecutor::new())
        .http2_only(http2_only)
        .build(connector)
}

/// `https://localhost:PORT` so the server name `localhost` is checked.
fn localhost_url(up: &EchoUpstream, path: &str) -> String {
    format!("https://localhost:{}{path}", up.addr.port())
}

async fn call(
    client: &HttpsClient,
    method: &str,
    url: &str,
    body: &'static [u8],
) -> Result<(Version, serde_json::Value), String> {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("x-test", "one")
        .body(Full::new(Bytes::from_static(body)))
        .unwrap();
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    assert_eq!(resp.status(), 200);
    let version = resp.version();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((version, serde_json::from_slice(&bytes).unwrap()))
}

#[tokio::test]
async fn echoes_over_tls_without_client_certificate() {
    let up = start_echo_upstream(EchoOptions::default()).await;
    assert_eq!(up.url(), format!("https://{}", up.addr));
    let client = https_client(tls_config(&up.ca_pem, None), false);
    let (version, json) = call(
        &client,
        "POST",
        &localhost_url(&up, "/v1/orders/7?x=1&y=%41"),
        b"hello",
    )
    .await
    .unwrap();
    assert_eq!(version, Version::HTTP_11);
    assert_eq!(json["method"], "POST");
    assert_eq!(json["path"], "/v1/orders/7?x=1&y=%41");
    assert_eq!(json["headers"]["x-test"], "one");
    assert_eq!(json["body_bytes"], 5);
    assert!(json["client_cert_cn"].is_null());
    assert!(json["client_cert_uri"].is_null());
    assert_eq!(up.calls(), 1);
    assert_eq!(up.seen(), vec![json]);
    // By IP address too: the certificate names 127.0.0.1.
    let url = format!("https://127.0.0.1:{}/ip", up.addr.port());
    assert!(call(&client, "GET", &url, b"").await.is_ok());
    assert_eq!(up.calls(), 2);
}

#[tokio::test]
async fn requires_and_reports_client_certificates() {
    let (gatehouse_ca, partner) = gatehouse_partner("acme");
    let up = start_echo_upstream(EchoOptions::mtls(gatehouse_ca)).await;

    let client = https_client(tls_config(&up.ca_pem, Some(partner)), false);
    let (_, json) = call(&client, "GET", &localhost_url(&up, "/who"), b"")
        .await
        .unwrap();
    assert_eq!(json["client_cert_cn"], "acme");
    assert_eq!(
        json["client_cert_uri"],
        "spiffe://gatehouse.local/partner/acme"
    );
    assert_eq!(up.calls(), 1);

    // No certificate: refused during the handshake, never counted.
    let anonymous = https_client(tls_config(&up.ca_pem, None), false);
    let err = call(&anonymous, "GET", &localhost_url(&up, "/who"), b"").await;
    assert!(err.is_err(), "anonymous client got in: {err:?}");

    // A certificate from another CA: refused too.
    let (_, stranger) = gatehouse_partner("stranger");
    let foreign = https_client(tls_config(&up.ca_pem, Some(stranger)), false);
    let err = call(&foreign, "GET", &localhost_url(&up, "/who"), b"").await;
    assert!(err.is_err(), "foreign client got in: {err:?}");
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn speaks_http2() {
    let up = start_echo_upstream(EchoOptions::default()).await;
    let client = https_client(tls_config(&up.ca_pem, None), true);
    let (version, json) = call(&client, "PUT", &localhost_url(&up, "/h2/path?q=1"), b"abc")
        .await
        .unwrap();
    assert_eq!(version, Version::HTTP_2);
    assert_eq!(json["path"], "/h2/path?q=1");
    assert_eq!(json["method"], "PUT");
    assert_eq!(json["body_bytes"], 3);
}

#[tokio::test]
async fn wrong_ca_is_refused_by_a_verifying_client() {
    let up = start_echo_upstream(EchoOptions::wrong_ca()).await;
    let client = https_client(tls_config(&up.ca_pem, None), false);
    let err = call(&client, "GET", &localhost_url(&up, "/"), b"")
        .await
        .unwrap_err();
    assert!(
        err.contains("UnknownIssuer")
            || err.contains("BadSignature")
            || err.contains("certificate"),
        "{err}"
    );
    assert_eq!(up.calls(), 0);
}

#[tokio::test]
async fn serves_plain_http() {
    let up = start_echo_upstream(EchoOptions::plain()).await;
    assert!(up.url().starts_with("http://"));
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let req = Request::builder()
        .method("DELETE")
        .uri(format!("{}/legacy?id=3", up.url()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(json["method"], "DELETE");
    assert_eq!(json["path"], "/legacy?id=3");
    assert_eq!(up.calls(), 1);
}

#[tokio::test]
async fn shutdown_closes_the_listener_and_open_connections() {
    let up = start_echo_upstream(EchoOptions::default()).await;
    let addr = up.addr;
    let client = https_client(tls_config(&up.ca_pem, None), false);
    call(&client, "GET", &localhost_url(&up, "/"), b"")
        .await
        .unwrap();
    let url = localhost_url(&up, "/again");
    let ca_pem = up.ca_pem.clone();
    up.shutdown().await;
    // A new connection is refused, unless a test running beside this one
    // was given the freed port in the meantime: then it must at least not
    // be this upstream answering (its CA vouches for no other server).
    if tokio::net::TcpStream::connect(addr).await.is_ok() {
        let fresh = https_client(tls_config(&ca_pem, None), false);
        assert!(call(&fresh, "GET", &url, b"").await.is_err());
    }
    // The pooled keep-alive connection was closed too.
    assert!(call(&client, "GET", &url, b"").await.is_err());
}
