//! `gatehouse partner invite ID [--ttl 72h] [--url URL] [--json]` and
//! `partner invite --revoke ID`: a one-time enrolment invitation (the
//! store is `crate::enrolment::invitation`) and what to send the partner:
//! the EST URL, the root to trust with its fingerprint, the secret, and
//! ready commands (openssl + curl, or `gatehouse agent enroll`).

use std::error::Error;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use serde_json::json;
use time::OffsetDateTime;

use crate::enrolment::invitation;
use crate::gateway::est::SIMPLEENROLL_PATH;
use crate::home::Home;
use crate::partners;
use crate::timefmt::rfc3339;

/// The base URL partners reach the broker at: `--url`, else the first name
/// of the broker's server certificate and the `[server] listen` port.
fn base_url(home: &Home, url: Option<&str>) -> Result<String, Box<dyn Error>> {
    if let Some(u) = url {
        let u = u.trim_end_matches('/');
        if !u.starts_with("https://") {
            return Err(format!("--url {u}: must start with https://").into());
        }
        return Ok(u.to_string());
    }
    let gateway = crate::config::load_gateway(home)?;
    let host = crate::ca::broker_certs::server_hostnames(&home.server_cert())?
        .into_iter()
        .next()
        .unwrap_or_else(|| "localhost".into());
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    Ok(format!("https://{host}:{}", gateway.server.listen.port()))
}

/// Creates (or replaces) `id`'s invitation and prints what to send.
pub fn invite(
    home: &Home,
    id: &str,
    ttl: Duration,
    url: Option<&str>,
    json_out: bool,
) -> Result<(), Box<dyn Error>> {
    partners::show(home, id)?;
    let base = base_url(home, url)?;
    let roots_pem = crate::ca::pki::trust_bundle_pem(home)?;
    let root = CertificateDer::pem_slice_iter(roots_pem.as_bytes())
        .next()
        .ok_or("the home's trust bundle holds no certificate")??;
    let root_sha256 = crate::ca::fingerprint(&root);
    let (inv, secret) = invitation::create(home, id, ttl)?;
    let expires = OffsetDateTime::from_unix_timestamp(inv.expires_at)?;
    let enrol_url = format!("{base}{SIMPLEENROLL_PATH}");
    let openssl_curl = [
        format!(
            "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout {id}.key -subj /CN={id} -outform DER | openssl base64 > {id}.csr.b64"
        ),
        format!(
            "curl --fail-with-body --cacert root.pem -u '{id}:{secret}' -H 'Content-Type: application/pkcs10' --data-binary @{id}.csr.b64 {enrol_url} | openssl base64 -d | openssl pkcs7 -inform DER -print_certs -out {id}.pem"
        ),
        format!("curl --cacert root.pem --cert {id}.pem --key {id}.key {base}/..."),
    ];
    let agent = format!(
        "gatehouse agent enroll --url {base} --id {id} --secret '{secret}' --root-fingerprint {root_sha256} --out ./{id}"
    );
    if json_out {
        let v = json!({
            "partner": id,
            "secret": secret,
            "expires_at": rfc3339(expires),
            "est_url": format!("{base}/.well-known/est"),
            "root_pem": roots_pem,
            "root_sha256": root_sha256,
            "commands": {"openssl_curl": openssl_curl, "gatehouse": agent},
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "invitation for partner {id}: single use, valid until {} (locked after {} wrong secrets)",
        rfc3339(expires),
        invitation::MAX_WRONG_SECRETS
    );
    println!("send the partner what follows (the secret is shown only now):");
    println!();
    println!("  EST URL:  {base}/.well-known/est   (RFC 7030)");
    println!("  user:     {id}");
    println!("  secret:   {secret}");
    println!("  root to trust, SHA-256 {root_sha256}; save it as root.pem:");
    println!();
    print!("{roots_pem}");
    println!();
    println!("  with openssl and curl (the key is made on your side and never leaves it):");
    for c in &openssl_curl {
        println!("    {c}");
    }
    println!("  or with gatehouse (which then renews with `gatehouse agent renew`):");
    println!("    {agent}");
    Ok(())
}

/// `--revoke ID`.
pub fn revoke(home: &Home, id: &str) -> Result<(), Box<dyn Error>> {
    if invitation::revoke(home, id)? {
        println!("partner {id}'s invitation revoked: its secret no longer enrols");
    } else {
        println!("partner {id} has no invitation; nothing changed");
    }
    Ok(())
}

/// One line on `id`'s invitation for `partner show`, if it has one.
pub fn describe(home: &Home, id: &str) -> Option<String> {
    let inv = invitation::load(home, id).ok()??;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let until = OffsetDateTime::from_unix_timestamp(inv.expires_at)
        .map(rfc3339)
        .unwrap_or_default();
    Some(match inv.state(now) {
        "open" => format!("open until {until}"),
        state => format!("{state} (expires {until})"),
    })
}
