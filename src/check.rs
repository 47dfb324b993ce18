//! `gatehouse check`: validates a home offline, like `nginx -t` — the
//! configuration, every partner file (and the CA and CRL files of partners
//! that bring their own CA), the CA (and any previous CA kept by a
//! rollover), the root and upstream-client CA with their path lengths, the
//! broker certificates and the CRL — and reports every problem found with
//! its file (and line where the problem has one). `describe_pki` says which
//! layout the home has and where the root key is.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::ca::Authority;
use crate::config;
use crate::home::Home;

/// Every problem in the home, as one line each; empty when all is well.
pub fn check_home(home: &Home) -> Vec<String> {
    let mut problems = Vec::new();
    let gateway = match config::load_gateway(home) {
        Ok(g) => Some(g),
        Err(e) => {
            problems.extend(e.0.iter().map(|e| e.to_string()));
            None
        }
    };
    if let Some(g) = &gateway {
        match config::load_partners(home, g) {
            Ok(partners) => problems.extend(own_ca_problems(home, &partners)),
            Err(e) => problems.extend(e.0.iter().map(|e| e.to_string())),
        }
        for (name, up) in &g.upstreams {
            for f in [&up.ca, &up.client_cert, &up.client_key]
                .into_iter()
                .flatten()
            {
                let p = home.resolve(f);
                if !p.is_file() {
                    problems.push(format!(
                        "{}: [upstreams.{name}] file {} does not exist (yet)",
                        home.config_file().display(),
                        p.display()
                    ));
                }
            }
        }
    }
    if let Err(e) = Authority::load(home) {
        problems.push(e.to_string());
    }
    // CAs kept by a rollover: loadable, keys private.
    if let Err(e) = crate::ca::pki::previous(home) {
        problems.push(e.to_string());
    }
    if let Ok(entries) = std::fs::read_dir(home.ca_previous_dir()) {
        for key in entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "key"))
        {
            use std::os::unix::fs::PermissionsExt;
            if std::fs::metadata(&key).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
                problems.push(format!(
                    "{}: private key is readable by others (chmod 600 it)",
                    key.display()
                ));
            }
        }
    }
    problems.extend(pki_problems(home));
    for (cert, key) in [
        (home.server_cert(), home.server_key()),
        (home.broker_client_cert(), home.broker_client_key()),
    ] {
        if let Err(e) = CertificateDer::from_pem_file(&cert) {
            problems.push(format!("{}: not a usable certificate: {e}", cert.display()));
        }
        if let Err(e) = PrivateKeyDer::from_pem_file(&key) {
            problems.push(format!("{}: not a usable private key: {e}", key.display()));
        }
        match std::fs::metadata(&key) {
            Ok(m) => {
                use std::os::unix::fs::PermissionsExt;
                if m.permissions().mode() & 0o077 != 0 {
                    problems.push(format!(
                        "{}: private key is readable by others (chmod 600 it)",
                        key.display()
                    ));
                }
            }
            Err(e) => problems.push(format!("{}: {e}", key.display())),
        }
    }
    // The journal and the admin socket live in data/: closed to other users.
    let data = home.data_dir();
    if crate::durable_file::is_loose(&data).unwrap_or(false) {
        problems.push(format!(
            "{}: folder is open to other users (the journal and admin socket live here; chmod 700 it)",
            data.display()
        ));
    }
    if let Err(e) = CertificateRevocationListDer::from_pem_file(home.crl()) {
        problems.push(format!(
            "{}: not a usable CRL: {e} (run `gatehouse cert crl --refresh`)",
            home.crl().display()
        ));
    }
    problems
}

/// Partners' own CAs (`[own_ca]`): their CA and CRL files usable, and no
/// name claimed by two partners.
fn own_ca_problems(home: &Home, partners: &[config::Partner]) -> Vec<String> {
    use crate::tls::partner_ca::{PartnerCa, build_all};
    let resolve = |p: &std::path::Path| home.resolve(p);
    let owned: Vec<_> = partners
        .iter()
        .filter_map(|p| p.own_ca.as_ref().map(|o| (p.id.as_str(), o)))
        .collect();
    let mut problems: Vec<String> = owned
        .iter()
        .filter_map(|(id, own)| {
            PartnerCa::build(id, own, resolve)
                .err()
                .map(|e| format!("{}: {e}", home.partner_file(id).display()))
        })
        .collect();
    if problems.is_empty()
        && let Err(e) = build_all(owned.iter().copied(), resolve)
    {
        problems.push(e.to_string());
    }
    problems
}

/// The path length of a CA certificate (`None`: no limit), or `Err` when it
/// is no CA.
fn path_len(der: &[u8]) -> Result<Option<u32>, NotACa> {
    let (_, x) =
        x509_parser::parse_x509_certificate(der).map_err(|e| NotACa::Unparsable(e.to_string()))?;
    match x.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Ok(bc.value.path_len_constraint),
        _ => Err(NotACa::NoCaFlag),
    }
}

/// Why a certificate that should be a CA is not one.
#[derive(Debug, thiserror::Error)]
enum NotACa {
    #[error("{0}")]
    Unparsable(String),
    #[error("not a CA certificate")]
    NoCaFlag,
}

/// Problems of the two-tier material: path lengths that real clients
/// refuse, private keys others can read.
fn pki_problems(home: &Home) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut problems = Vec::new();
    if !crate::ca::pki::is_two_tier(home) {
        return problems;
    }
    // A root of ours has a CRL beside it; an adopted CA's root is the
    // corporate PKI's, and its limits are not ours to judge.
    let adopted = !home.root_crl().is_file();
    match CertificateDer::from_pem_file(home.root_cert()) {
        Err(e) => problems.push(format!(
            "{}: not a usable certificate: {e}",
            home.root_cert().display()
        )),
        Ok(root) if !adopted => match path_len(&root) {
            Ok(Some(n)) if n < 2 => problems.push(format!(
                "{}: the root's pathlen is {n}: after a root rollover (old root, cross certificate, issuing CA) OpenSSL, Go, Java and Node refuse the chain; it needs no limit or at least 2",
                home.root_cert().display()
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("{}: {e}", home.root_cert().display())),
        },
        Ok(_) => {}
    }
    if let Ok(cross) = CertificateDer::from_pem_file(home.root_cross()) {
        match path_len(&cross) {
            Ok(Some(0)) => problems.push(format!(
                "{}: the cross certificate has pathlen 0: the issuing CA below it is refused by real clients",
                home.root_cross().display()
            )),
            Ok(_) => {}
            Err(e) => problems.push(format!("{}: {e}", home.root_cross().display())),
        }
    }
    if let Err(e) = crate::ca::pki::load_upstream_client_ca(home) {
        problems.push(e.to_string());
    } else if !home.upstream_client_ca_cert().is_file() {
        problems.push(format!(
            "{} is missing: upstreams cannot tell the broker from a partner (run `gatehouse ca migrate` or `init --force`)",
            home.upstream_client_ca_cert().display()
        ));
    }
    for key in [
        home.root_key(),
        home.upstream_client_ca_key(),
        home.ca_key(),
    ] {
        if std::fs::metadata(&key).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            problems.push(format!(
                "{}: private key is readable by others (chmod 600 it)",
                key.display()
            ));
        }
    }
    problems
}

/// What PKI layout the home has, one line each, for `check`'s report.
pub fn describe_pki(home: &Home) -> Vec<String> {
    use crate::ca::pki::{self, RootKeyState};
    use crate::ca::rollover::short;
    let fp = |p: &std::path::Path| {
        CertificateDer::from_pem_file(p)
            .map(|d| short(&crate::ca::fingerprint(&d)).to_string())
            .unwrap_or_else(|_| "?".into())
    };
    let mut lines = Vec::new();
    match pki::root_key_state(home) {
        RootKeyState::NoRoot => {
            lines.push(format!(
                "pki: single-tier ({} is its own root; no separate upstream-client CA): run `gatehouse ca migrate` to move to a root + issuing CA without breaking issued certificates",
                home.ca_cert().display()
            ));
        }
        state => {
            lines.push(format!(
                "pki: two-tier: root {}, issuing CA {}, upstream-client CA {}",
                fp(&home.root_cert()),
                fp(&home.ca_cert()),
                fp(&home.upstream_client_ca_cert())
            ));
            lines.push(match state {
                RootKeyState::Present => format!(
                    "root key: present ({}); it may be moved offline: only `ca rotate` needs it (then pass --root-key FILE)",
                    home.root_key().display()
                ),
                _ => format!(
                    "root key: offline ({} absent); serving, issuing, renewing, revoking and CRLs work without it; `ca rotate` needs --root-key FILE",
                    home.root_key().display()
                ),
            });
        }
    }
    lines
}
