//! Partners that bring their own CA (`partner trust`), with a bank-style
//! PKI made by openssl (root + issuing intermediate): its leaf with the
//! configured name works for that partner through curl, Python and Java
//! (PKCS#12 made by openssl); a leaf of that CA with another name, one
//! carrying our trust domain's SPIFFE URI, and one presented under another
//! partner's CA configuration are refused; a pin mismatch is refused; a
//! revocation in the partner's CRL bites within a second, also on an open
//! connection.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::broker::{ClientCert, Conn, TestHome, admin_request, get_once};
use common::stacks::{self, Client, PartnerFiles};
use common::upstream::{EchoOptions, start_echo_upstream};

pub(crate) fn openssl_available() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "openssl is required in CI"
        );
        eprintln!("openssl not installed: skipping");
    }
    ok
}

pub(crate) fn bash(dir: &Path, script: &str) {
    let o = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{script}\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A root and an issuing CA under it, in `dir/<name>-*`, with an (empty)
/// CRL of the issuing CA at `dir/<name>-crl.pem` (openssl ca's files).
pub(crate) fn make_ca(dir: &Path, name: &str) {
    bash(
        dir,
        &format!(
            r#"
mkdir -p {name}-db && : > {name}-db/index.txt && echo 01 > {name}-db/crlnumber
cat > {name}.cnf <<CNF
[ ca ]
default_ca = this
[ this ]
database = {name}-db/index.txt
crlnumber = {name}-db/crlnumber
default_md = sha256
default_crl_days = 7
CNF
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}-root.key -out {name}-root.pem \
  -subj "/O={name}/CN={name} Root CA" -days 30 \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {name}-int.key -out {name}-int.csr \
  -subj "/O={name}/CN={name} Issuing CA" 2>/dev/null
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n' > {name}-int.ext
openssl x509 -req -in {name}-int.csr -CA {name}-root.pem -CAkey {name}-root.key -CAcreateserial \
  -out {name}-int.pem -days 30 -extfile {name}-int.ext 2>/dev/null
openssl ca -config {name}.cnf -gencrl -keyfile {name}-int.key -cert {name}-int.pem -out {name}-crl.pem 2>/dev/null
"#
        ),
    );
}

/// `partner trust ID`: the bank's root in `dir`, leaves named by SAN URI
/// `uri`, revocations from the bank's CRL.
fn trust_bank_by_uri(h: &TestHome, dir: &Path, id: &str, uri: &str) {
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    h.ok(&[
        "partner",
        "trust",
        id,
        "--ca",
        &s(dir.join("bank-root.pem")),
        "--match-san-uri",
        uri,
        "--crl",
        &s(dir.join("bank-crl.pem")),
    ]);
}

/// Revokes `dir/<leaf>-leaf.pem` in `ca`'s issuing CA and writes its CRL
/// again (`dir/<ca>-crl.pem`).
pub(crate) fn revoke(dir: &Path, ca: &str, leaf: &str) {
    bash(
        dir,
        &format!(
            "openssl ca -config {ca}.cnf -revoke {leaf}-leaf.pem -keyfile {ca}-int.key -cert {ca}-int.pem 2>/dev/null && \
             openssl ca -config {ca}.cnf -gencrl -keyfile {ca}-int.key -cert {ca}-int.pem -out {ca}-crl.pem 2>/dev/null"
        ),
    );
}

/// Polls (bounded by `deadline`) GETs of `/v1/orders` on fresh connections
/// as `cert` until whether one answers 200 is `want_ok`; false if never.
async fn ok_within(
    addr: std::net::SocketAddr,
    roots: &str,
    cert: &ClientCert,
    deadline: Duration,
    want_ok: bool,
) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        let ok = get_once(addr, roots, cert, "/v1/orders")
            .await
            .is_ok_and(|r| r.status == 200);
        if ok == want_ok {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// A client certificate from `ca`'s issuing CA with subject CN `cn` and the
/// SAN `san` (`URI:...` or `DNS:...`); `dir/<leaf>.pem` is leaf + issuing
/// CA, with its key, and a PKCS#12 of both with its password file.
pub(crate) fn make_leaf(dir: &Path, ca: &str, leaf: &str, cn: &str, san: &str) -> PathBuf {
    bash(
        dir,
        &format!(
            r#"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {leaf}.key -out {leaf}.csr -subj "/CN={cn}" 2>/dev/null
printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\nsubjectAltName={san}\nauthorityKeyIdentifier=keyid\n' > {leaf}.ext
openssl x509 -req -in {leaf}.csr -CA {ca}-int.pem -CAkey {ca}-int.key -CAcreateserial -out {leaf}-leaf.pem -days 10 -extfile {leaf}.ext 2>/dev/null
cat {leaf}-leaf.pem {ca}-int.pem > {leaf}.pem
echo pass-{leaf} > {leaf}.p12.pass
openssl pkcs12 -export -inkey {leaf}.key -in {leaf}.pem -out {leaf}.p12 -passout pass:pass-{leaf} -name {leaf}
"#
        ),
    );
    dir.join(format!("{leaf}.pem"))
}

pub(crate) fn client(dir: &Path, leaf: &str) -> ClientCert {
    ClientCert {
        cert_pem: std::fs::read_to_string(dir.join(format!("{leaf}.pem"))).unwrap(),
        key_pem: std::fs::read_to_string(dir.join(format!("{leaf}.key"))).unwrap(),
        serial: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partners_own_ca_speaks_for_that_partner_and_that_name_only() {
    if !openssl_available() {
        return;
    }
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("orders", &up);
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    h.add_partner("globex", &["GET /v1/orders -> orders"]);
    let dir = h.path().join("pki");
    std::fs::create_dir_all(&dir).unwrap();
    make_ca(&dir, "bank");
    make_ca(&dir, "telco");
    let acme_uri = "https://bank.example/clients/acme";
    make_leaf(
        &dir,
        "bank",
        "acme1",
        "acme-api",
        &format!("URI:{acme_uri}"),
    );
    make_leaf(
        &dir,
        "bank",
        "other",
        "other",
        "URI:https://bank.example/clients/other",
    );
    make_leaf(
        &dir,
        "bank",
        "spoof",
        "globex",
        "URI:spiffe://gatehouse.local/partner/globex",
    );
    // The bank's CA signing the name globex's (telco) configuration expects.
    make_leaf(&dir, "bank", "cross", "globex-client", "DNS:globex.example");
    trust_bank_by_uri(&h, &dir, "acme", acme_uri);
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    h.ok(&[
        "partner",
        "trust",
        "globex",
        "--ca",
        &s(dir.join("telco-root.pem")),
        "--match-subject-cn",
        "globex-client",
    ]);
    let shown = h.ok(&["partner", "show", "acme"]);
    assert!(
        shown.contains("own CA") && shown.contains("bank-root.pem"),
        "{shown}"
    );
    let shown: serde_json::Value =
        serde_json::from_str(&h.ok(&["partner", "show", "acme", "--json"])).unwrap();
    assert_eq!(
        shown["partner"]["own_ca"]["match_san_uri"], acme_uri,
        "{shown}"
    );
    let broker = h.start();
    let roots = h.roots_pem();
    std::fs::write(dir.join("broker-roots.pem"), &roots).unwrap();
    let url = format!("https://localhost:{}/v1/orders", broker.addr.port());

    // acme's leaf through curl, Python and Java (PKCS#12): 200 as acme.
    let files = PartnerFiles {
        ca: dir.join("broker-roots.pem"),
        cert: dir.join("acme1.pem"),
        key: dir.join("acme1.key"),
        p12: dir.join("acme1.p12"),
        p12_pass: dir.join("acme1.p12.pass"),
    };
    for c in [Client::Curl, Client::Python, Client::Java] {
        if !stacks::available(c) {
            continue;
        }
        let (files, url) = (files.clone(), url.clone());
        let answer = tokio::task::spawn_blocking(move || stacks::get(c, &files, &url))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{}: {e}", c.name()));
        assert_eq!(answer.status, 200, "{}: {}", c.name(), answer.body);
        assert!(
            answer.body.contains("\"acme\""),
            "{}: {}",
            c.name(),
            answer.body
        );
    }

    // acme's certificate ends in 10 days, inside the 14-day warning
    // window: the alert says we cannot renew it and whom to ask.
    let alert = h
        .wait_journal(10, |r| {
            r["reason"] == "cert_expiry" && r["partner"] == "acme"
        })
        .await
        .unwrap_or_else(|| panic!("no expiry alert for acme's own-CA certificate"));
    let detail = alert["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("cannot renew")
            && detail.contains("ask partner acme")
            && detail.contains("bank Root CA"),
        "{detail}"
    );
    // The console says whose CA acme uses, and shows the certificate it
    // presented, expiring.
    let (code, _, body) = admin_request(broker.admin, "/api/overview", &[]).await;
    assert_eq!(code, 200, "{body}");
    let o: serde_json::Value = serde_json::from_str(&body).unwrap();
    let row = o["partners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "acme")
        .cloned()
        .unwrap();
    assert!(
        row["own_ca"]["issuer"]
            .as_str()
            .is_some_and(|i| i.contains("bank Root CA")),
        "{row}"
    );
    assert_eq!(
        row["own_ca"]["name"],
        format!("URI SAN {acme_uri}"),
        "{row}"
    );
    let presented = &row["certificates"][0];
    assert_eq!(presented["state"], "presented", "{row}");
    assert_eq!(presented["expiring"], true, "{row}");
    assert!(
        o["expiring"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["partner"] == "acme" && w["issuer"].is_string()),
        "{body}"
    );

    // Another name, our SPIFFE URI, or globex's name from the bank's CA:
    // refused at the handshake, never at the upstream.
    let calls = up.calls();
    for leaf in ["other", "spoof", "cross"] {
        let r = get_once(broker.addr, &roots, &client(&dir, leaf), "/v1/orders").await;
        assert!(r.is_err(), "{leaf}: {r:?}");
    }
    assert_eq!(up.calls(), calls);

    // A pin for another key: refused at the next handshake; the right pin works.
    let acme_pin = {
        let o = Command::new("bash")
            .args([
                "-c",
                "openssl x509 -in acme1-leaf.pem -pubkey -noout | openssl pkey -pubin -outform DER | openssl dgst -sha256 -r | cut -d' ' -f1",
            ])
            .current_dir(&dir)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(acme_pin.len(), 64, "{acme_pin}");
    let trust_with_pin = |pin: &str| {
        h.ok(&[
            "partner",
            "trust",
            "acme",
            "--ca",
            &s(dir.join("bank-root.pem")),
            "--match-san-uri",
            acme_uri,
            "--crl",
            &s(dir.join("bank-crl.pem")),
            "--pin-spki",
            pin,
        ])
    };
    // Nothing changed since the start: the own CA's files were stamped
    // then, so no look took them for a change.
    assert!(
        !h.journal().iter().any(|r| r["reason"] == "config_reloaded"),
        "a reload without a change"
    );
    trust_with_pin(&"ab".repeat(32));
    let acme1 = client(&dir, "acme1");
    let refused_within = |deadline: Duration, expect_ok: bool| {
        ok_within(broker.addr, &roots, &acme1, deadline, expect_ok)
    };
    assert!(
        refused_within(Duration::from_secs(3), false).await,
        "pin mismatch not refused"
    );
    trust_with_pin(&acme_pin);
    assert!(
        refused_within(Duration::from_secs(3), true).await,
        "the right pin is refused"
    );

    // Revoked in the bank's CRL: an open connection is refused within a second.
    let mut open = Conn::open(broker.addr, &roots, &acme1, false)
        .await
        .unwrap();
    assert_eq!(open.get("/v1/orders").await.unwrap().status, 200);
    revoke(&dir, "bank", "acme1");
    let changed = Instant::now();
    let mut status = 200;
    while changed.elapsed() < Duration::from_secs(3) {
        match open.get("/v1/orders").await {
            Ok(r) if r.status == 200 => {}
            Ok(r) => {
                status = r.status.as_u16();
                break;
            }
            Err(_) => {
                status = 0;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status, 403,
        "revocation did not bite on the open connection"
    );
    assert!(
        changed.elapsed() < Duration::from_millis(1500),
        "{:?}",
        changed.elapsed()
    );
    let again = get_once(broker.addr, &roots, &acme1, "/v1/orders").await;
    assert!(
        again.is_err(),
        "a new connection is refused at the handshake: {again:?}"
    );

    // On record: the exchanges of acme's own-CA certificate name the issuer.
    let records = h.journal();
    let own = records
        .iter()
        .find(|r| r["partner"] == "acme" && r["decision"] == "allowed")
        .unwrap_or_else(|| panic!("no allowed acme exchange: {records:#?}"));
    assert!(
        own["issuer"]
            .as_str()
            .is_some_and(|i| i.contains("bank Root CA")),
        "{own}"
    );
    assert!(records.iter().any(|r| r["reason"] == "key_pin_mismatch"));
    drop(broker);
}

/// `partner trust` on a running broker, the CA and CRL in a folder it did
/// not watch when it started: the reload puts the CA in force (its keys
/// reported as applied), and a revocation in that CRL bites within seconds,
/// not at the slow safety poll, because the reload watches the new folder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_ca_trusted_while_running_is_in_force_and_its_crl_is_watched() {
    if !openssl_available() {
        return;
    }
    let h = TestHome::new();
    let up = start_echo_upstream(EchoOptions::default()).await;
    h.add_echo_upstream("orders", &up);
    h.add_partner("acme", &["GET /v1/orders -> orders"]);
    let broker = h.start();
    let roots = h.roots_pem();
    // Outside the home, made after the start.
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    make_ca(dir, "bank");
    let acme_uri = "https://bank.example/clients/acme";
    make_leaf(dir, "bank", "acme1", "acme-api", &format!("URI:{acme_uri}"));
    let acme1 = client(dir, "acme1");
    let r = get_once(broker.addr, &roots, &acme1, "/v1/orders").await;
    assert!(r.is_err(), "a CA nobody trusts: {r:?}");

    trust_bank_by_uri(&h, dir, "acme", acme_uri);
    let status_within = |deadline: Duration, want_ok: bool| {
        ok_within(broker.addr, &roots, &acme1, deadline, want_ok)
    };
    assert!(
        status_within(Duration::from_secs(5), true).await,
        "the CA trusted while running is not in force"
    );
    let reload = h
        .wait_journal(5, |r| {
            r["reason"] == "config_reloaded"
                && r["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("partners/acme.toml own_ca.ca"))
        })
        .await;
    assert!(reload.is_some(), "no reload record naming own_ca.ca");

    // Revoked in the CRL of the new folder: refused well before the
    // 10-second safety poll would have looked.
    revoke(dir, "bank", "acme1");
    assert!(
        status_within(Duration::from_secs(3), false).await,
        "a revocation in the partner's CRL, kept in a folder named by a reload, did not bite"
    );
    drop(broker);
}

/// `gatehouse check` judges `[own_ca]` as the broker would: a CA file that
/// cannot be used, and one name claimed by two partners, are problems
/// named with their file; a usable CA passes.
#[test]
fn check_names_an_own_ca_the_broker_could_not_use() {
    if !openssl_available() {
        return;
    }
    let h = TestHome::new();
    h.add_partner("acme", &[]);
    h.add_partner("globex", &[]);
    let dir = h.path().join("pki");
    std::fs::create_dir_all(&dir).unwrap();
    make_ca(&dir, "bank");
    let set_own_ca = |id: &str, ca: &str, cn: &str| {
        let path = h.path().join(format!("partners/{id}.toml"));
        let mut doc: toml_edit::DocumentMut =
            std::fs::read_to_string(&path).unwrap().parse().unwrap();
        let mut t = toml_edit::Table::new();
        t["ca"] = toml_edit::value(ca);
        t["match_subject_cn"] = toml_edit::value(cn);
        doc["own_ca"] = toml_edit::Item::Table(t);
        std::fs::write(&path, doc.to_string()).unwrap();
    };
    let check = || {
        let out = h.run(&["check"]);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    assert!(check().0, "{}", check().1);

    set_own_ca("acme", "pki/missing-root.pem", "acme-api");
    let (ok, text) = check();
    assert!(!ok, "{text}");
    assert!(
        text.contains("acme.toml") && text.contains("missing-root.pem"),
        "{text}"
    );

    set_own_ca("acme", "pki/bank-root.pem", "shared-api");
    assert!(check().0, "{}", check().1);
    set_own_ca("globex", "pki/bank-root.pem", "shared-api");
    let (ok, text) = check();
    assert!(!ok, "{text}");
    assert!(text.contains("already partner"), "{text}");
}
