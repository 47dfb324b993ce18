//! The CA and partner lifecycle, driven through the real binary in a temp
//! home: issuance, CSR signing, rotation, revocation and the CRL, and every
//! bad input refused with nothing half-written.

use crate::common;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::broker::TestHome;
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::*;

fn parse(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Every file under the home with its bytes, to prove a refused command changed nothing.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    fn walk(base: &Path, dir: &Path, m: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, m);
            } else {
                m.insert(
                    p.strip_prefix(base).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    walk(dir, dir, &mut m);
    m
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// basicConstraints of a certificate: (is CA, path length).
fn constraints(der: &[u8]) -> (bool, Option<u32>) {
    let (_, c) = parse_x509_certificate(der).unwrap();
    let bc = c.basic_constraints().unwrap().unwrap().value;
    (bc.ca, bc.path_len_constraint)
}

#[test]
fn init_creates_a_ca_and_broker_certificates_with_private_keys_0600() {
    let h = TestHome::new();
    for k in [
        "root.key",
        "ca.key",
        "upstream-client-ca.key",
        "server.key",
        "broker-client.key",
        "journal-signing.key",
    ] {
        assert_eq!(mode(&h.path().join("certs").join(k)), 0o600, "{k}");
    }
    // Two tiers: a root with no path length limit (room for a root
    // rollover's cross certificate), an issuing CA with pathlen 0 under it.
    let root_der = parse(&h.read("certs/root.pem"));
    let (_, root) = parse_x509_certificate(&root_der).unwrap();
    assert_eq!(constraints(&root_der), (true, None));
    assert_eq!(root.issuer().as_raw(), root.subject().as_raw());
    let root_years = (root.validity().not_after.timestamp()
        - root.validity().not_before.timestamp())
        / 86_400
        / 365;
    assert!(root_years >= 19, "root validity {root_years} years");
    let ca_der = parse(&h.ca_pem());
    let (_, ca) = parse_x509_certificate(&ca_der).unwrap();
    assert_eq!(constraints(&ca_der), (true, Some(0)));
    ca.verify_signature(Some(root.public_key())).unwrap();
    let ku = ca.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    let years =
        (ca.validity().not_after.timestamp() - ca.validity().not_before.timestamp()) / 86_400 / 365;
    assert!(years >= 4, "issuing CA validity {years} years");
    // Partners are handed the root, nothing else.
    assert_eq!(parse(&h.roots_pem()), root_der);
    // The upstream leg has its own self-signed CA; it signs the broker's
    // client certificate and nothing else.
    let up_der = parse(&h.upstream_client_ca_pem());
    let (_, up) = parse_x509_certificate(&up_der).unwrap();
    assert_eq!(up.issuer().as_raw(), up.subject().as_raw());
    assert_ne!(up_der, root_der);
    let client_der = parse(&h.read("certs/broker-client.pem"));
    let (_, client) = parse_x509_certificate(&client_der).unwrap();
    client.verify_signature(Some(up.public_key())).unwrap();
    assert!(client.verify_signature(Some(ca.public_key())).is_err());
    // `check` says where the root key is.
    let out = h.ok(&["check"]);
    assert!(
        out.contains("two-tier") && out.contains("root key: present"),
        "{out}"
    );
    let server = std::fs::read_to_string(h.path().join("certs/server.pem")).unwrap();
    let sder = parse(&server);
    let (_, s) = parse_x509_certificate(&sder).unwrap();
    let eku = s.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && !eku.client_auth);
    let sans: Vec<String> = s
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|g| g.to_string())
        .collect();
    assert!(sans.iter().any(|n| n.contains("localhost")), "{sans:?}");
    assert!(sans.iter().any(|n| n.contains("7f:00:00:01")), "{sans:?}");
    s.verify_signature(Some(ca.public_key())).unwrap();
    // The server chain: leaf + issuing CA (the partner holds the root).
    assert_eq!(CertificateDer::pem_slice_iter(server.as_bytes()).count(), 2);

    // A second init refuses, and changes nothing.
    let before = tree(h.path());
    let out = h.run(&["init"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(before, tree(h.path()));
    // --force replaces the CA, and the replaced CA's certificates are
    // marked superseded with no overlap: none stays usable.
    h.add_partner("acme", &[]);
    let old = h.issue("acme");
    h.ok(&["init", "--force"]);
    assert_ne!(parse(&h.ca_pem()), ca_der);
    assert_ne!(parse(&h.read("certs/root.pem")), root_der);
    let list: serde_json::Value = serde_json::from_str(&h.ok(&["cert", "list", "--json"])).unwrap();
    let rec = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["serial"] == old.serial.as_str())
        .unwrap();
    assert_eq!(rec["state"], "revoked", "{rec}");
    assert!(
        rec["state_detail"].as_str().unwrap().contains("superseded"),
        "{rec}"
    );
}

#[test]
fn issued_certificate_carries_exactly_the_partner_identity() {
    let h = TestHome::new();
    h.ok(&["partner", "add", "acme", "--name", "Acme Logistics"]);
    let c = h.issue("acme");
    let der = parse(&c.cert_pem);
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|g| match g {
            GeneralName::URI(u) => format!("URI:{u}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        sans,
        vec!["URI:spiffe://gatehouse.local/partner/acme".to_string()]
    );
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "acme"
    );
    assert_eq!(
        cert.subject()
            .iter_organization()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "Acme Logistics"
    );
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);
    assert!(!cert.is_ca());
    // ~90 days, 16-byte positive serial.
    let days =
        (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86_400;
    assert!((89..=91).contains(&days), "{days}");
    assert_eq!(cert.raw_serial().len(), 16);
    assert!(cert.raw_serial()[0] < 0x80 && cert.raw_serial()[0] > 0);
    let ca_der = parse(&h.ca_pem());
    let (_, ca) = parse_x509_certificate(&ca_der).unwrap();
    cert.verify_signature(Some(ca.public_key())).unwrap();
    // The chain file holds leaf + issuing CA; the key is 0600.
    assert_eq!(
        CertificateDer::pem_slice_iter(c.cert_pem.as_bytes()).count(),
        2
    );
    let out_dirs: Vec<_> = std::fs::read_dir(h.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(mode(&out_dirs[0].join("acme.key")), 0o600);
    // openssl agrees, when it is installed.
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok()
    {
        // The partner's ca.pem is the root; acme.pem carries the issuing CA.
        assert_eq!(
            std::fs::read_to_string(out_dirs[0].join("ca.pem")).unwrap(),
            h.roots_pem()
        );
        let st = std::process::Command::new("openssl")
            .args(["verify", "-x509_strict", "-purpose", "sslclient", "-CAfile"])
            .arg(out_dirs[0].join("ca.pem"))
            .arg("-untrusted")
            .arg(out_dirs[0].join("acme.pem"))
            .arg(out_dirs[0].join("acme.pem"))
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stdout)
        );
    }
    // Two issues never share a serial.
    let c2 = h.issue("acme");
    assert_ne!(c.serial, c2.serial);
}

#[test]
fn csr_contents_are_never_trusted() {
    let h = TestHome::new();
    h.add_partner("acme", &[]);
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(vec!["admin.example".to_string()]).unwrap();
    p.subject_alt_names.push(SanType::URI(
        "spiffe://gatehouse.local/partner/globex"
            .try_into()
            .unwrap(),
    ));
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "globex");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = p.serialize_request(&key).unwrap().pem().unwrap();
    let csr_path = h.path().join("acme.csr");
    std::fs::write(&csr_path, &csr).unwrap();
    let out = h.path().join("csr-out");
    h.ok(&[
        "cert",
        "issue",
        "acme",
        "--csr",
        csr_path.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!out.join("acme.key").exists(), "no key is made for a CSR");
    let pem = std::fs::read_to_string(out.join("acme.pem")).unwrap();
    let der = parse(&pem);
    let (_, cert) = parse_x509_certificate(&der).unwrap();
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|g| g.to_string())
        .collect();
    assert_eq!(sans.len(), 1, "{sans:?}");
    assert!(
        sans[0].contains("spiffe://gatehouse.local/partner/acme"),
        "{sans:?}"
    );
    assert_eq!(
        cert.subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "acme"
    );
    assert!(!cert.is_ca());
    // The certificate certifies the CSR's key.
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );
}

#[test]
fn renew_keeps_the_old_certificate_for_the_overlap_and_revoke_writes_the_crl() {
    let h = TestHome::new();
    h.add_partner("acme", &[]);
    let old = h.issue("acme");
    let out = h.path().join("renewed");
    h.ok(&[
        "cert",
        "renew",
        "acme",
        "--overlap",
        "2h",
        "--out",
        out.to_str().unwrap(),
    ]);
    let new = h.read_client(&out, "acme");
    let list: serde_json::Value =
        serde_json::from_str(&h.ok(&["cert", "list", "acme", "--json"])).unwrap();
    let state = |serial: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|c| c["serial"] == serial)
            .unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(state(&old.serial), "superseded");
    assert_eq!(state(&new.serial), "active");
    let text = h.ok(&["cert", "list"]);
    assert!(text.contains("superseded-until-"), "{text}");

    // Revoke the new one with a reason: the CRL lists it, signed by the CA.
    h.ok(&["cert", "revoke", &new.serial, "--reason", "keyCompromise"]);
    let crl_pem = std::fs::read_to_string(h.path().join("certs/crl.pem")).unwrap();
    let crl_der = CertificateRevocationListDer::from_pem_slice(crl_pem.as_bytes()).unwrap();
    let (_, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(crl_der.as_ref())
            .unwrap();
    let ca_der = parse(&h.ca_pem());
    let (_, ca) = parse_x509_certificate(&ca_der).unwrap();
    crl.verify_signature(ca.public_key()).unwrap();
    let entries: Vec<_> = crl.iter_revoked_certificates().collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(hex::encode(entries[0].raw_serial()), new.serial);
    let reason = entries[0].reason_code().unwrap().1;
    assert_eq!(reason, ReasonCode::KeyCompromise);
    assert!(crl.next_update().is_some());
    let n1 = crl.crl_number().unwrap().clone();
    // Revoking all of acme's: the old (superseded) one too; CRL number grows.
    h.ok(&[
        "cert",
        "revoke",
        "--partner",
        "acme",
        "--reason",
        "cessation-of-operation",
    ]);
    let crl_pem = std::fs::read_to_string(h.path().join("certs/crl.pem")).unwrap();
    let crl_der = CertificateRevocationListDer::from_pem_slice(crl_pem.as_bytes()).unwrap();
    let (_, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(crl_der.as_ref())
            .unwrap();
    assert_eq!(crl.iter_revoked_certificates().count(), 2);
    assert!(crl.crl_number().unwrap() > &n1);
    if std::process::Command::new("openssl")
        .arg("version")
        .output()
        .is_ok()
    {
        let o = std::process::Command::new("openssl")
            .args(["crl", "-noout", "-text", "-in"])
            .arg(h.path().join("certs/crl.pem"))
            .output()
            .unwrap();
        let t = String::from_utf8_lossy(&o.stdout);
        assert!(
            t.contains("Key Compromise") && t.contains("Cessation Of Operation"),
            "{t}"
        );
    }
}

#[test]
fn partner_lifecycle_commands() {
    let h = TestHome::new();
    h.add_upstream("orders", "http://127.0.0.1:9", None);
    h.add_partner("acme", &["GET,POST /v1/orders -> orders"]);
    let list = h.ok(&["partner", "list"]);
    assert!(list.contains("acme") && list.contains("active"), "{list}");
    h.ok(&["partner", "suspend", "acme"]);
    let show = h.ok(&["partner", "show", "acme"]);
    assert!(
        show.contains("suspended") && show.contains("GET,POST /v1/orders -> orders"),
        "{show}"
    );
    h.ok(&["partner", "resume", "acme"]);
    assert!(
        h.ok(&["partner", "show", "acme"])
            .contains("status: active")
    );
    let c = h.issue("acme");
    h.ok(&["partner", "remove", "acme"]);
    assert!(!h.path().join("partners/acme.toml").exists());
    let list: serde_json::Value = serde_json::from_str(&h.ok(&["cert", "list", "--json"])).unwrap();
    assert_eq!(list[0]["serial"], c.serial.as_str());
    assert_eq!(list[0]["state"], "revoked");
}

#[test]
fn bad_input_is_refused_with_one_clear_line_and_nothing_changes() {
    let h = TestHome::new();
    h.add_upstream("orders", "http://127.0.0.1:9", None);
    h.add_partner("acme", &["GET /v1 -> orders"]);
    h.issue("acme");
    let junk = h.path().join("junk.csr");
    std::fs::write(&junk, "not a csr").unwrap();
    // A CSR whose signature does not verify.
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::new(vec![])
        .unwrap()
        .serialize_request(&key)
        .unwrap();
    let mut der = csr.der().to_vec();
    let n = der.len();
    der[n - 5] ^= 0x55;
    let bad_sig = h.path().join("badsig.csr");
    std::fs::write(
        &bad_sig,
        ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", der)),
    )
    .unwrap();
    // Unsupported key type (P-521), made with openssl when it is installed.
    let p521 = h.path().join("p521.csr");
    let have_openssl = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-521",
            "-nodes",
            "-subj",
            "/CN=x",
            "-keyout",
        ])
        .arg(h.path().join("p521.key"))
        .arg("-out")
        .arg(&p521)
        .output()
        .is_ok_and(|o| o.status.success());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["partner", "add", "Bad_ID"], "invalid"),
        (vec!["partner", "add", "acme"], "already exists"),
        (vec!["partner", "show", "nobody"], "unknown partner"),
        (
            vec!["partner", "add", "zed", "--route", "GET /v1 -> nowhere"],
            "nowhere",
        ),
        (
            vec!["partner", "add", "zed", "--route", "GET v1 -> orders"],
            "route",
        ),
        (vec!["cert", "issue", "nobody"], "unknown partner"),
        (
            vec!["cert", "issue", "acme", "--csr", junk.to_str().unwrap()],
            "PEM",
        ),
        (
            vec!["cert", "issue", "acme", "--csr", bad_sig.to_str().unwrap()],
            "signature",
        ),
        (vec!["cert", "issue", "acme", "--days", "0"], "--days"),
        (
            if have_openssl {
                vec!["cert", "issue", "acme", "--csr", p521.to_str().unwrap()]
            } else {
                vec!["cert", "issue", "nobody"]
            },
            if have_openssl {
                "key type is not supported"
            } else {
                "unknown partner"
            },
        ),
        (
            vec!["cert", "issue", "acme", "--days", "99999"],
            "outlive the CA",
        ),
        (
            vec!["cert", "revoke", "0123456789abcdef"],
            "no certificate with serial",
        ),
        (vec!["cert", "revoke", "xyz"], "not a certificate serial"),
        (
            vec!["cert", "revoke", "--partner", "acme", "--reason", "bored"],
            "unknown revocation reason",
        ),
    ];
    for (args, needle) in cases {
        let before = tree(h.path());
        let out = h.run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(needle), "{args:?}: stderr was {err}");
        assert!(
            err.trim().lines().count() == 1,
            "{args:?}: more than one line: {err}"
        );
        assert_eq!(before, tree(h.path()), "{args:?} changed files");
    }
    // Malformed TOML in a partner file: `check` names file and line.
    std::fs::write(
        h.path().join("partners/broken.toml"),
        "id = \"broken\"\nstatus = \n",
    )
    .unwrap();
    let out = h.run(&["check"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.toml:2:"), "{err}");
}

#[test]
fn commands_before_init_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        vec!["partner", "list"],
        vec!["cert", "list"],
        vec!["check"],
        vec!["serve"],
    ] {
        let out = std::process::Command::new(common::broker::BIN)
            .arg("--home")
            .arg(dir.path())
            .args(&args)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("gatehouse init"),
            "{args:?}"
        );
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn init_adopts_an_existing_ca_and_refuses_a_non_ca_or_mismatched_key() {
    let dir = tempfile::tempdir().unwrap();
    // An intermediate CA of "the company's own PKI".
    let root_key = KeyPair::generate().unwrap();
    let mut rp = CertificateParams::default();
    rp.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root = rp.self_signed(&root_key).unwrap();
    let root_issuer = rcgen::Issuer::new(rp, root_key);
    let int_key = KeyPair::generate().unwrap();
    let mut ip = CertificateParams::default();
    ip.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ip.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    ip.distinguished_name
        .push(rcgen::DnType::CommonName, "Corp Partner CA");
    let int = ip.signed_by(&int_key, &root_issuer).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::default()
        .signed_by(&leaf_key, &root_issuer)
        .unwrap();
    let w = |name: &str, s: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, s).unwrap();
        p
    };
    let int_pem = w("int.pem", &format!("{}{}", int.pem(), root.pem()));
    let int_key_p = w("int.key", &int_key.serialize_pem());
    let leaf_pem = w("leaf.pem", &leaf.pem());
    let leaf_key_p = w("leaf.key", &leaf_key.serialize_pem());
    let run = |home: &str, cert: &Path, key: &Path| {
        std::process::Command::new(common::broker::BIN)
            .arg("--home")
            .arg(dir.path().join(home))
            .args(["init", "--ca-cert"])
            .arg(cert)
            .arg("--ca-key")
            .arg(key)
            .output()
            .unwrap()
    };
    let o = run("h1", &leaf_pem, &leaf_key_p);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a CA"));
    let o = run("h2", &int_pem, &leaf_key_p);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not match"));
    assert!(!dir.path().join("h2/certs/ca.key").exists());
    let o = run("h3", &int_pem, &int_key_p);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // Certificates issued by the adopted CA chain to it.
    let home = dir.path().join("h3");
    let g = |args: &[&str]| {
        let o = std::process::Command::new(common::broker::BIN)
            .arg("--home")
            .arg(&home)
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    g(&["partner", "add", "acme"]);
    g(&[
        "cert",
        "issue",
        "acme",
        "--out",
        home.join("o").to_str().unwrap(),
    ]);
    let pem = std::fs::read_to_string(home.join("o/acme.pem")).unwrap();
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    assert_eq!(
        certs.len(),
        2,
        "leaf + the adopted intermediate; the corporate root is what partners trust"
    );
    assert_eq!(certs[1].as_ref(), int.der().as_ref());
    let (_, leaf) = parse_x509_certificate(&certs[0]).unwrap();
    let (_, ca) = parse_x509_certificate(int.der()).unwrap();
    leaf.verify_signature(Some(ca.public_key())).unwrap();
    let trust = std::fs::read_to_string(home.join("o/ca.pem")).unwrap();
    assert_eq!(
        parse(&trust),
        root.der().as_ref().to_vec(),
        "ca.pem is the corporate root"
    );
    let server = std::fs::read_to_string(home.join("certs/server.pem")).unwrap();
    assert_eq!(CertificateDer::pem_slice_iter(server.as_bytes()).count(), 2);
    // The corporate root's key is not ours: rotation says what it needs.
    let o = std::process::Command::new(common::broker::BIN)
        .arg("--home")
        .arg(&home)
        .args(["ca", "rotate"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("root key") && err.contains("--root-key"),
        "{err}"
    );
}
