//! `gatehouse check`: validates a home offline, like `nginx -t` — the
//! configuration, every partner file, the CA (and any previous CA kept by a
//! rollover), the broker certificates and the CRL — and reports every
//! problem found with its file (and line where the problem has one).

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
        if let Err(e) = config::load_partners(home, g) {
            problems.extend(e.0.iter().map(|e| e.to_string()));
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
    if let Err(e) = crate::ca::rollover::previous(home) {
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
