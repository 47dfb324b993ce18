//! Resumed TLS sessions: rustls resumes a TLS 1.3 session from a ticket
//! without re-verifying the client certificate, so the per-request check is
//! what refuses a session whose certificate has since expired; and a
//! revocation rebuilds the server config (fresh ticketer), so a revoked
//! client cannot resume at all.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::broker::{
    ClientCert, TestHome, admin_get, client_tls, home_with_echo, mint_with_home_ca,
};
use gatehouse::ca::inventory::{IssuedCert, RecordStatus, write_record};
use gatehouse::home::Home;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::HandshakeKind;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use time::OffsetDateTime;

/// One request on a new connection made with `cfg` (which keeps the
/// session cache between calls): the handshake kind and the status, or the
/// error when the connection fails.
async fn request(
    addr: std::net::SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> Result<(HandshakeKind, u16), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let kind = tls
        .get_ref()
        .1
        .handshake_kind()
        .ok_or("no handshake kind")?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = http::Request::get("/v1/orders")
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let _ = resp.into_body().collect().await;
    Ok((kind, status))
}

/// A partner certificate that expires `secs` from now, entered in the
/// inventory as if issued by the CA.
fn short_lived(h: &TestHome, secs: i64) -> ClientCert {
    let not_after = OffsetDateTime::now_utc() + time::Duration::seconds(secs);
    let cert = mint_with_home_ca(h, |p| p.not_after = not_after);
    let leaf_der = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let ca_der = CertificateDer::from_pem_slice(h.ca_pem().as_bytes()).unwrap();
    let now = OffsetDateTime::now_utc();
    let rec = IssuedCert {
        serial: cert.serial.clone(),
        partner: "acme".into(),
        fingerprint: gatehouse::ca::fingerprint(&leaf_der),
        ca_fingerprint: gatehouse::ca::fingerprint(&ca_der),
        issued_at: now,
        not_before: now - time::Duration::hours(1),
        not_after,
        status: RecordStatus::Active,
        superseded_by: None,
        overlap_until: None,
        revoked_at: None,
        reason: None,
    };
    write_record(&Home::new(h.path()), &rec, None).unwrap();
    cert
}

#[tokio::test]
async fn a_session_resumed_after_its_certificate_expired_is_refused() {
    let (h, _up, _acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let cert = short_lived(&h, 4);
    let broker = h.start();
    let cfg = client_tls(&h.ca_pem(), Some(&cert), &[b"http/1.1"]);
    let (kind, status) = request(broker.addr, cfg.clone()).await.unwrap();
    assert_eq!((kind, status), (HandshakeKind::Full, 200));
    // Still valid: a resumed session works.
    let (kind, status) = request(broker.addr, cfg.clone()).await.unwrap();
    assert_eq!((kind, status), (HandshakeKind::Resumed, 200));
    // After expiry: the session still resumes (rustls does not look at the
    // certificate again), but the request is refused.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    match request(broker.addr, cfg.clone()).await {
        Ok((kind, status)) => {
            assert_eq!(kind, HandshakeKind::Resumed, "expected a resumed session");
            assert_eq!(
                status, 403,
                "an expired certificate got through on a resumed session"
            );
        }
        Err(e) => panic!("expected a resumed session refused per request, got {e}"),
    }
    let rec = h
        .wait_journal(5, |v| v["reason"] == "expired" && v["kind"] == "exchange")
        .await
        .expect("refusal journaled");
    assert_eq!(rec["cert_serial"], cert.serial.as_str());
}

#[tokio::test]
async fn a_revoked_client_cannot_resume_its_session() {
    let (h, _up, acme) = home_with_echo(&["GET /v1/orders -> orders"]).await;
    let broker = h.start();
    let cfg = client_tls(&h.ca_pem(), Some(&acme), &[b"http/1.1"]);
    assert_eq!(
        request(broker.addr, cfg.clone()).await.unwrap(),
        (HandshakeKind::Full, 200)
    );
    assert_eq!(
        request(broker.addr, cfg.clone()).await.unwrap(),
        (HandshakeKind::Resumed, 200)
    );
    // The metrics tell the two kinds apart.
    let (_, metrics) = admin_get(broker.admin, "/metrics").await;
    for (kind, n) in [("full", 1.0), ("resumed", 1.0)] {
        let series = format!(r#"gatehouse_tls_handshakes_total{{outcome="ok",reason="{kind}"}}"#);
        let got = metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.trim().parse::<f64>().ok());
        assert_eq!(got, Some(n), "{series} in {metrics}");
    }
    h.ok(&["cert", "revoke", &acme.serial]);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The ticket is from a ticketer that no longer exists: the client falls
    // back to a full handshake, which the revoked certificate fails.
    if let Ok((kind, status)) = request(broker.addr, cfg.clone()).await {
        panic!("revoked client got {kind:?} {status}");
    }
}
