//! Renewal whose answer is lost, against a real broker over real TLS: the
//! same CSR again gets the same certificate (not rate limited), also when
//! the client left before the answer; another key replaces a successor that
//! was never used (the replaced one is revoked and refused at the
//! handshake) but not one seen at a handshake, even after a restart; a
//! journal that cannot record before signing issues nothing (503); the
//! agent keeps its pending key and CSR (0600) and retries with them.

use crate::common;
use crate::renewal::{hostile_csr, issue, post_renew, setup};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::broker::{ClientCert, TestHome, client_tls, get_once, tls_connect};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::AsyncWriteExt;

const RENEW: &str = "/.well-known/gatehouse/renew";

/// `setup` with a window open for a 3-day certificate and an overlap long
/// enough to outlast a one-minute wait.
async fn home() -> (TestHome, common::upstream::EchoUpstream) {
    let (h, up) = setup(Some("7d")).await;
    h.edit_config(|doc| doc["ca"]["overlap"] = toml_edit::value("10m"));
    (h, up)
}

fn cert_list(h: &TestHome) -> Vec<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&h.ok(&["cert", "list", "acme", "--json"])).unwrap();
    v.as_array().unwrap().clone()
}

fn record<'a>(list: &'a [serde_json::Value], serial: &str) -> &'a serde_json::Value {
    list.iter()
        .find(|c| c["serial"] == serial)
        .unwrap_or_else(|| panic!("{serial} not in {list:?}"))
}

/// Serial and subjectPublicKey bits of a chain's leaf.
fn leaf(chain_pem: &str) -> (String, Vec<u8>) {
    let der = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .next()
        .expect("a certificate")
        .unwrap();
    let (_, x) = x509_parser::parse_x509_certificate(&der).unwrap();
    (
        hex::encode(x.raw_serial()),
        x.public_key().subject_public_key.data.to_vec(),
    )
}

fn client(chain_pem: &str, key: &rcgen::KeyPair) -> ClientCert {
    ClientCert {
        cert_pem: chain_pem.to_string(),
        key_pem: key.serialize_pem(),
        serial: leaf(chain_pem).0,
    }
}

#[tokio::test]
async fn the_same_csr_again_gets_the_same_certificate_without_the_rate_limit() {
    let (h, _up) = home().await;
    let (old, _) = issue(&h, &["--days", "3"]);
    let broker = h.start();
    let (key, csr) = hostile_csr();
    let first = post_renew(&h, broker.addr, &old, &csr).await;
    assert_eq!(first.status, 200, "{}", first.body);
    // Twice more within the minute: the answer again, byte for byte.
    for _ in 0..2 {
        let again = post_renew(&h, broker.addr, &old, &csr).await;
        assert_eq!(again.status, 200, "{}", again.body);
        assert_eq!(again.body, first.body);
    }
    let (serial, spki) = leaf(&first.body);
    assert_eq!(spki, rcgen::PublicKeyData::der_bytes(&key));
    let list = cert_list(&h);
    assert_eq!(list.len(), 2, "one successor only: {list:?}");
    assert_eq!(record(&list, &old.serial)["superseded_by"], serial.as_str());
    let new = client(&first.body, &key);
    let r = get_once(broker.addr, &h.ca_pem(), &new, "/v1/orders")
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    // On record: the intent before signing, then the renewal; once each.
    let renewed = h
        .wait_journal(5, |v| v["reason"] == "cert_renewed")
        .await
        .expect("cert_renewed");
    let journal = h.journal();
    let issuing: Vec<_> = journal
        .iter()
        .filter(|v| v["reason"] == "cert_renewal_issuing")
        .collect();
    assert_eq!(issuing.len(), 1, "{issuing:?}");
    assert_eq!(issuing[0]["cert_serial"], old.serial.as_str());
    assert!(issuing[0]["seq"].as_u64() < renewed["seq"].as_u64());
    assert_eq!(
        journal
            .iter()
            .filter(|v| v["reason"] == "cert_renewed")
            .count(),
        1
    );
}

#[tokio::test]
async fn an_answer_lost_when_the_client_leaves_is_delivered_on_retry() {
    let (h, _up) = home().await;
    let (old, _) = issue(&h, &["--days", "3"]);
    let broker = h.start();
    let (key, csr) = hostile_csr();
    // Send the CSR, close the sending side (close_notify, FIN: hyper drops a
    // request whose client went away) and never read the answer.
    let mut tls = tls_connect(
        broker.addr,
        client_tls(&h.ca_pem(), Some(&old), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let request = format!(
        "POST {RENEW} HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/pkcs10\r\ncontent-length: {}\r\n\r\n{csr}",
        csr.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    tls.shutdown().await.unwrap();
    // Retry at once, then again (the first may still be running, or may
    // never have started: either way one successor, delivered each time).
    let again = post_renew(&h, broker.addr, &old, &csr).await;
    assert_eq!(again.status, 200, "{}", again.body);
    let (serial, spki) = leaf(&again.body);
    assert_eq!(spki, rcgen::PublicKeyData::der_bytes(&key));
    drop(tls);
    let third = post_renew(&h, broker.addr, &old, &csr).await;
    assert_eq!(third.status, 200, "{}", third.body);
    assert_eq!(third.body, again.body);
    let list = cert_list(&h);
    assert_eq!(list.len(), 2, "one successor only: {list:?}");
    assert_eq!(record(&list, &old.serial)["superseded_by"], serial.as_str());
    h.wait_journal(5, |v| v["reason"] == "cert_renewed")
        .await
        .expect("the renewal is on record");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let renewed = h
        .journal()
        .into_iter()
        .filter(|v| v["reason"] == "cert_renewed")
        .count();
    assert_eq!(renewed, 1);
}

#[tokio::test]
async fn another_key_replaces_a_successor_never_used_once_the_minute_is_over() {
    let (h, _up) = home().await;
    let (old, _) = issue(&h, &["--days", "3"]);
    let broker = h.start();
    let (key1, csr1) = hostile_csr();
    let first = post_renew(&h, broker.addr, &old, &csr1).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let (a, _) = leaf(&first.body);

    // Another key at once: the per-partner minute still applies.
    let (key2, csr2) = hostile_csr();
    let soon = post_renew(&h, broker.addr, &old, &csr2).await;
    assert_eq!(soon.status, 429, "{}", soon.body);
    assert_eq!(soon.json()["error"], "renewal_rate_limited");
    let wait: u64 = soon.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(cert_list(&h).len(), 2, "nothing issued while rate limited");
    tokio::time::sleep(Duration::from_secs(wait + 1)).await;

    let replaced = post_renew(&h, broker.addr, &old, &csr2).await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    let (b, spki) = leaf(&replaced.body);
    assert_ne!(a, b);
    assert_eq!(spki, rcgen::PublicKeyData::der_bytes(&key2));
    let list = cert_list(&h);
    assert_eq!(list.len(), 3);
    assert_eq!(record(&list, &old.serial)["superseded_by"], b.as_str());
    assert_eq!(record(&list, &old.serial)["state"], "superseded");
    assert_eq!(record(&list, &a)["state"], "revoked", "{list:?}");
    assert!(
        record(&list, &a)["state_detail"]
            .as_str()
            .unwrap()
            .contains("superseded")
    );
    assert_eq!(record(&list, &b)["state"], "active");

    // The replaced successor is refused at the handshake; the new one and
    // the old one (in its overlap) work.
    let ca = h.ca_pem();
    let refused = tls_connect(
        broker.addr,
        client_tls(&ca, Some(&client(&first.body, &key1)), &[b"http/1.1"]),
    )
    .await;
    assert!(refused.is_err(), "the replaced successor still connects");
    let new = client(&replaced.body, &key2);
    for c in [&new, &old] {
        let r = get_once(broker.addr, &ca, c, "/v1/orders").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let ev = h
        .wait_journal(5, |v| {
            v["reason"] == "cert_renewed" && v["cert_serial"] == b.as_str()
        })
        .await
        .expect("the replacement is on record");
    assert!(ev["detail"].as_str().unwrap().contains(&a), "{ev}");
}

#[tokio::test]
async fn a_successor_used_at_a_handshake_is_not_replaced_even_after_a_restart() {
    let (h, _up) = home().await;
    let (old, _) = issue(&h, &["--days", "3"]);
    let mut broker = h.start();
    let (key1, csr1) = hostile_csr();
    let first = post_renew(&h, broker.addr, &old, &csr1).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let (a, _) = leaf(&first.body);
    let used = client(&first.body, &key1);
    let r = get_once(broker.addr, &h.ca_pem(), &used, "/v1/orders")
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    let (_, csr2) = hostile_csr();
    let refused = post_renew(&h, broker.addr, &old, &csr2).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    assert_eq!(refused.json()["error"], "already_renewed");
    assert_eq!(refused.json()["superseded_by"], a.as_str());

    // Persisted: a restarted broker (empty memory, no rate state) refuses too.
    let marker = h.path().join(format!("certs/issued/{a}.seen"));
    for _ in 0..50 {
        if marker.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(marker.exists(), "no seen marker for {a}");
    broker.signal("TERM");
    broker.wait_exit(10);
    drop(broker);
    let broker = h.start();
    let refused = post_renew(&h, broker.addr, &old, &csr2).await;
    assert_eq!(refused.status, 409, "{}", refused.body);
    // The same key still gets its certificate again.
    let again = post_renew(&h, broker.addr, &old, &csr1).await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.body, first.body);
    assert_eq!(cert_list(&h).len(), 2);
}

fn agent(dir: &Path, addr: std::net::SocketAddr) -> std::process::Output {
    std::process::Command::new(common::broker::BIN)
        .args(["agent", "renew", "--cert"])
        .arg(dir.join("acme.pem"))
        .arg("--key")
        .arg(dir.join("acme.key"))
        .arg("--ca")
        .arg(dir.join("ca.pem"))
        .arg("--broker")
        .arg(format!("https://127.0.0.1:{}", addr.port()))
        .output()
        .unwrap()
}

#[tokio::test]
async fn a_journal_failure_before_signing_issues_nothing_and_the_agent_retries_with_its_key() {
    let (h, _up) = home().await;
    let (old, dir) = issue(&h, &["--days", "3"]);
    let broker = h.start();
    let issued_files = || {
        std::fs::read_dir(h.path().join("certs/issued"))
            .unwrap()
            .filter(|e| {
                let p = e.as_ref().unwrap().path();
                p.extension().is_some_and(|x| x == "pem" || x == "toml")
            })
            .count()
    };
    let before = issued_files();

    // The expiry alert for the 3-day certificate is the broker's first write:
    // let it land, so the renewal is the first write that fails.
    assert!(
        h.wait_journal(10, |v| v["reason"] == "cert_expiry")
            .await
            .is_some()
    );
    h.ok(&["log", "fault-drill", "fail"]);
    let out = agent(&dir, broker.addr);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("503"), "{stderr}");
    assert!(
        broker
            .wait_log("not signed: the journal cannot record it", 5)
            .await,
        "the renewal was not refused before signing: {}",
        broker.log()
    );
    assert_eq!(cert_list(&h).len(), 1, "a certificate was issued");
    assert_eq!(issued_files(), before, "the inventory changed");
    let pending_key = dir.join("acme.key.pending");
    let pending_csr = dir.join("acme.key.pending.csr");
    for p in [&pending_key, &pending_csr] {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
    let kept_key = std::fs::read_to_string(&pending_key).unwrap();
    let kept_csr = std::fs::read_to_string(&pending_csr).unwrap();

    h.ok(&["log", "fault-drill", "recover"]);
    let mut recovered = false;
    for _ in 0..50 {
        let r = get_once(broker.addr, &h.ca_pem(), &old, "/v1/orders").await;
        if r.is_ok_and(|r| r.status == 200) {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the journal did not recover");

    // The kept CSR reaches the broker but its answer is lost; the agent's
    // next attempt sends it again and installs that certificate.
    let lost = post_renew(&h, broker.addr, &old, &kept_csr).await;
    assert_eq!(lost.status, 200, "{}", lost.body);
    let out = agent(&dir, broker.addr);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("acme.pem")).unwrap(),
        lost.body
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("acme.key")).unwrap(),
        kept_key
    );
    assert!(!pending_key.exists() && !pending_csr.exists());
    let installed = h.read_client(&dir, "acme");
    let r = get_once(broker.addr, &h.ca_pem(), &installed, "/v1/orders")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(cert_list(&h).len(), 2);
}
