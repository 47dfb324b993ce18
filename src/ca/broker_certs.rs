//! The broker's own certificates: its TLS server certificate (signed by the
//! issuing CA, with the names partners dial) and its client certificate for
//! the upstream leg (signed by the upstream-client CA), each with a fresh
//! key and never outliving its CA. `init` and a CA rollover issue them
//! through here; `cert server-renew` re-issues both in place.

use std::path::Path;

use rcgen::KeyPair;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use x509_parser::prelude::{GeneralName, X509Certificate, parse_x509_certificate};

use super::{Authority, BACKDATE, BROKER_CERT_DAYS, CaError, LeafKind, Signed, invalid, new_key};
use super::{lock, pki};
use crate::config;
use crate::home::{self, Home};
use crate::identity_token;

/// Default server-certificate names.
pub fn default_hostnames() -> Vec<String> {
    vec!["localhost".to_string(), "127.0.0.1".to_string()]
}

/// Options of `gatehouse cert server-renew`.
#[derive(Debug, Default, Clone)]
pub struct ServerRenewOptions {
    /// SANs of the new server certificate; empty keeps the current ones.
    pub hostnames: Vec<String>,
    /// Also rotate the upstream identity signing key.
    pub identity_key: bool,
}

/// What `cert server-renew` did.
#[derive(Debug)]
pub struct ServerRenewReport {
    pub hostnames: Vec<String>,
    pub server_serial: String,
    pub client_serial: String,
    pub not_after: OffsetDateTime,
    pub identity: Option<identity_token::Rotation>,
}

/// `gatehouse cert server-renew`: new keys and certificates for the
/// broker's server certificate (signed by the issuing CA) and its upstream
/// client certificate (signed by the upstream-client CA). All of it is made
/// in memory first; then each key and certificate pair is renamed into
/// place back to back, so a running broker sees a mismatched pair for
/// microseconds at most (and then keeps its old config and retries at the
/// next tick). The running broker picks them up within a second.
pub fn server_renew(home: &Home, opts: &ServerRenewOptions) -> Result<ServerRenewReport, CaError> {
    let gateway = config::load_gateway(home).map_err(|e| invalid(e.to_string()))?;
    let _lock = lock::lock(home)?;
    let ca = Authority::load(home)?;
    let hostnames = if opts.hostnames.is_empty() {
        server_hostnames(&home.server_cert())?
    } else {
        opts.hostnames.clone()
    };
    let now = OffsetDateTime::now_utc();
    let until = (now + time::Duration::days(BROKER_CERT_DAYS)).min(ca.not_after);
    let (server_key, server) = sign_server_cert(&ca, &hostnames, now)?;
    let (upstream_ca, client_tail) = pki::upstream_client_signer(home)?;
    let (client_key, client) = sign_broker_client_cert(&upstream_ca, &gateway.trust_domain, now)?;
    let (server_key_pem, client_key_pem) = (server_key.serialize_pem(), client_key.serialize_pem());
    let server_pem = format!("{}{}", server.pem, pki::chain_tail(home, &ca)?);
    let client_pem = format!("{}{client_tail}", client.pem);
    home::write_atomic_many(&[
        (
            &home.server_key(),
            server_key_pem.as_bytes(),
            home::KEY_MODE,
        ),
        (
            &home.server_cert(),
            server_pem.as_bytes(),
            home::PUBLIC_MODE,
        ),
        (
            &home.broker_client_key(),
            client_key_pem.as_bytes(),
            home::KEY_MODE,
        ),
        (
            &home.broker_client_cert(),
            client_pem.as_bytes(),
            home::PUBLIC_MODE,
        ),
    ])?;
    let identity = if opts.identity_key {
        Some(identity_token::rotate(home).map_err(|e| invalid(e.to_string()))?)
    } else {
        None
    };
    Ok(ServerRenewReport {
        hostnames,
        server_serial: server.serial,
        client_serial: client.serial,
        not_after: until,
        identity,
    })
}

/// A new key and TLS server certificate (`hostnames`) for the broker under
/// `ca`, valid `BROKER_CERT_DAYS`, never past the CA.
pub(crate) fn sign_server_cert(
    ca: &Authority,
    hostnames: &[String],
    now: OffsetDateTime,
) -> Result<(KeyPair, Signed), CaError> {
    let until = (now + time::Duration::days(BROKER_CERT_DAYS)).min(ca.not_after);
    let key = new_key()?;
    let cert = ca.sign_leaf(LeafKind::Server { hostnames }, &key, now - BACKDATE, until)?;
    Ok((key, cert))
}

/// A new key and upstream-leg client certificate for the broker under `ca`
/// (the upstream-client CA), valid `BROKER_CERT_DAYS`, never past the CA.
pub(crate) fn sign_broker_client_cert(
    ca: &Authority,
    trust_domain: &str,
    now: OffsetDateTime,
) -> Result<(KeyPair, Signed), CaError> {
    let until = (now + time::Duration::days(BROKER_CERT_DAYS)).min(ca.not_after);
    let key = new_key()?;
    let cert = ca.sign_leaf(
        LeafKind::BrokerClient { trust_domain },
        &key,
        now - BACKDATE,
        until,
    )?;
    Ok((key, cert))
}

/// The names in a certificate's SANs (DNS names and IP addresses), in order.
fn san_names(x: &X509Certificate<'_>) -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(Some(san)) = x.subject_alternative_name() {
        for n in &san.value.general_names {
            match n {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*b).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        names.push(ip.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    names
}

/// The names of the server certificate at `path`, for `cert server-renew`
/// (refused when they cannot be read: the operator passes `--hostname`).
pub(crate) fn server_hostnames(path: &Path) -> Result<Vec<String>, CaError> {
    let der = CertificateDer::from_pem_file(path).map_err(|e| {
        invalid(format!(
            "{}: not a PEM certificate ({e}); pass --hostname to choose the names",
            path.display()
        ))
    })?;
    let (_, x) = parse_x509_certificate(&der)
        .map_err(|e| invalid(format!("{}: cannot parse: {e}", path.display())))?;
    let names = san_names(&x);
    if names.is_empty() {
        return Err(invalid(format!(
            "{} names no host; pass --hostname",
            path.display()
        )));
    }
    Ok(names)
}

/// The names of the broker's current server certificate, for a CA rollover
/// that re-issues it; the default names when it cannot be read or names none.
pub(crate) fn current_hostnames(home: &Home) -> Vec<String> {
    let Ok(der) = CertificateDer::from_pem_file(home.server_cert()) else {
        return default_hostnames();
    };
    let Ok((_, x)) = parse_x509_certificate(&der) else {
        return default_hostnames();
    };
    let names = san_names(&x);
    if names.is_empty() {
        default_hostnames()
    } else {
        names
    }
}
