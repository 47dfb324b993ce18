//! `gatehouse cert ...`: issue, renew, revoke and list partner certificates,
//! the CRL, and the broker's own certificates (the work is
//! `ca::lifecycle`); one step per subcommand, and their output.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;
use time::OffsetDateTime;

use super::CliResult;
use crate::ca::inventory::{CertState, Inventory, RevocationReason};
use crate::ca::lifecycle::{self, IssueOptions};
use crate::home::Home;
use crate::timefmt::{parse_duration, rfc3339};

#[derive(Subcommand, Debug)]
pub enum CertCmd {
    /// Issue a client certificate (new key, or sign the partner's CSR).
    Issue {
        /// The partner's id (see `gatehouse partner list`).
        id: String,
        /// Sign this PKCS#10 request (PEM) instead of making a new key; only
        /// its public key is used, subject and extensions are the CA's.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Validity in days (default from gatehouse.toml).
        #[arg(long)]
        days: Option<u32>,
        /// Where to write ID.pem (leaf + issuing CA), ID.key and ca.pem (the
        /// root(s) to trust); default: <home>/clients/ID.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Also write ID.p12 (key + chain, AES-256-CBC/PBKDF2-SHA256) and its
        /// password in ID.p12.pass (0600), for Java and .NET partners.
        #[arg(long)]
        p12: bool,
        /// Write ID.p12 with 3DES/SHA-1 instead, for Java 8-era readers.
        #[arg(long)]
        p12_legacy: bool,
    },
    /// Rotate: issue a successor; the old certificate stays valid for the overlap.
    Renew {
        /// The partner's id.
        id: String,
        /// Sign this PKCS#10 request (PEM) instead of making a new key.
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Validity in days (default from gatehouse.toml).
        #[arg(long)]
        days: Option<u32>,
        /// Where to write ID.pem, ID.key and ca.pem (default: <home>/clients/ID).
        #[arg(long)]
        out: Option<PathBuf>,
        /// How long the old certificate stays valid (default from gatehouse.toml, 24h).
        #[arg(long)]
        overlap: Option<String>,
        /// Also write ID.p12 and ID.p12.pass (see `cert issue --p12`).
        #[arg(long)]
        p12: bool,
        /// Write ID.p12 with 3DES/SHA-1 instead, for Java 8-era readers.
        #[arg(long)]
        p12_legacy: bool,
    },
    /// Revoke one certificate by serial, or all of a partner's.
    Revoke {
        /// The certificate's serial (hex, see `gatehouse cert list`).
        #[arg(required_unless_present = "partner", conflicts_with = "partner")]
        serial: Option<String>,
        /// Revoke every usable certificate of this partner instead.
        #[arg(long)]
        partner: Option<String>,
        /// RFC 5280 reason: keyCompromise, superseded, cessationOfOperation, ...
        #[arg(long, default_value = "unspecified")]
        reason: String,
    },
    /// List issued certificates and their states.
    List {
        /// Only this partner's certificates.
        id: Option<String>,
        /// Only certificates expiring within this long (e.g. 30d).
        #[arg(long)]
        expiring: Option<String>,
        /// One JSON array, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// The CRL: `--refresh` re-signs it now.
    Crl {
        /// Re-sign the CRL now (otherwise print it).
        #[arg(long)]
        refresh: bool,
    },
    /// Re-issue the broker's own certificates (server and upstream client);
    /// a running broker picks them up within a second, without a restart.
    ServerRenew {
        /// Name or IP for the new server certificate (repeatable; default:
        /// keep the current certificate's names).
        #[arg(long = "hostname")]
        hostnames: Vec<String>,
        /// Also rotate the key that signs X-Gatehouse-Identity (the JWKS
        /// keeps the previous key, so tokens already issued still verify).
        #[arg(long)]
        identity_key: bool,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(home: &Home, cmd: CertCmd) -> CliResult {
    match cmd {
        CertCmd::Issue {
            id,
            csr,
            days,
            out,
            p12,
            p12_legacy,
        } => {
            let opts = IssueOptions {
                csr,
                days,
                out,
                p12,
                p12_legacy,
            };
            issue(home, &id, &opts)?;
        }
        CertCmd::Renew {
            id,
            csr,
            days,
            out,
            overlap,
            p12,
            p12_legacy,
        } => {
            let opts = IssueOptions {
                csr,
                days,
                out,
                p12,
                p12_legacy,
            };
            renew(home, &id, &opts, overlap.as_deref())?;
        }
        CertCmd::Revoke {
            serial,
            partner,
            reason,
        } => revoke(home, serial, partner, &reason)?,
        CertCmd::List { id, expiring, json } => {
            list(home, id.as_deref(), expiring.as_deref(), json)?;
        }
        CertCmd::ServerRenew {
            hostnames,
            identity_key,
            json,
        } => server_renew(home, hostnames, identity_key, json)?,
        CertCmd::Crl { refresh } => crl(home, refresh)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `cert issue`: a new certificate for the partner.
fn issue(home: &Home, id: &str, opts: &IssueOptions) -> Result<(), Box<dyn Error>> {
    let r = lifecycle::issue(home, id, opts)?;
    print_issue(id, &r);
    Ok(())
}

/// `cert renew`: a successor; the certificates it supersedes stay valid for
/// the overlap.
fn renew(
    home: &Home,
    id: &str,
    opts: &IssueOptions,
    overlap: Option<&str>,
) -> Result<(), Box<dyn Error>> {
    let overlap = overlap.map(parse_duration).transpose()?;
    let r = lifecycle::renew(home, id, opts, overlap)?;
    print_issue(id, &r);
    for s in &r.superseded {
        println!("  superseded: {s} (valid until the overlap ends)");
    }
    Ok(())
}

/// `cert revoke`: one serial, or every usable certificate of a partner.
fn revoke(
    home: &Home,
    serial: Option<String>,
    partner: Option<String>,
    reason: &str,
) -> Result<(), Box<dyn Error>> {
    let reason = RevocationReason::parse(reason)?;
    let revoked = match (serial, partner) {
        (Some(s), None) => lifecycle::revoke(home, &[s], reason)?,
        (None, Some(p)) => lifecycle::revoke_partner(home, &p, reason)?,
        _ => return Err("give a serial or --partner ID".into()),
    };
    if revoked.is_empty() {
        println!("nothing to revoke (already revoked, or no usable certificate); CRL re-signed");
    }
    for s in revoked {
        println!(
            "revoked {s} ({}); CRL updated: {}",
            reason.name(),
            home.crl().display()
        );
    }
    Ok(())
}

/// `cert list`: the inventory, optionally one partner's and only what
/// expires within a window; a table or JSON.
fn list(
    home: &Home,
    id: Option<&str>,
    expiring: Option<&str>,
    json: bool,
) -> Result<(), Box<dyn Error>> {
    let inv = Inventory::load(home)?;
    let now = OffsetDateTime::now_utc();
    let window = expiring.map(parse_duration).transpose()?;
    let certs: Vec<_> = inv
        .sorted()
        .into_iter()
        .filter(|c| id.is_none_or(|p| c.partner == p))
        .filter(|c| match window {
            Some(w) => c.state(now).usable() && c.not_after <= now + w,
            None => true,
        })
        .collect();
    if json {
        let v: Vec<_> = certs.iter().map(|c| cert_json(c, now)).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:<32} {:<16} {:<20} {:<20} {:<44} {:<12} FINGERPRINT (SHA-256)",
        "SERIAL", "PARTNER", "NOT-BEFORE", "NOT-AFTER", "STATE", "CA"
    );
    for c in certs {
        println!(
            "{:<32} {:<16} {:<20} {:<20} {:<44} {:<12} {}",
            c.serial,
            c.partner,
            rfc3339(c.not_before),
            rfc3339(c.not_after),
            c.state(now).to_string(),
            crate::ca::rollover::short(&c.ca_fingerprint),
            c.fingerprint
        );
    }
    Ok(())
}

/// `cert server-renew`: the broker's own server and upstream client
/// certificates, and optionally the identity signing key.
fn server_renew(
    home: &Home,
    hostnames: Vec<String>,
    identity_key: bool,
    json: bool,
) -> Result<(), Box<dyn Error>> {
    let r = lifecycle::server_renew(
        home,
        &lifecycle::ServerRenewOptions {
            hostnames,
            identity_key,
        },
    )?;
    if json {
        let v = json!({
            "hostnames": r.hostnames,
            "server_serial": r.server_serial,
            "client_serial": r.client_serial,
            "not_after": rfc3339(r.not_after),
            "identity_kid": r.identity.as_ref().map(|i| i.kid.clone()),
            "identity_previous_kid": r.identity.as_ref().and_then(|i| i.previous_kid.clone()),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "server certificate {} for {} (valid until {}): {}",
        r.server_serial,
        r.hostnames.join(", "),
        rfc3339(r.not_after),
        home.server_cert().display()
    );
    println!(
        "upstream client certificate {}: {}",
        r.client_serial,
        home.broker_client_cert().display()
    );
    if let Some(i) = &r.identity {
        println!(
            "identity signing key rotated: kid {} (previous {} stays in {})",
            i.kid,
            i.previous_kid.as_deref().unwrap_or("none"),
            home.identity_jwks().display()
        );
    }
    println!("a running broker picks these up within a second; no restart needed");
    Ok(())
}

/// `cert crl`: print the CRL, or re-sign it now with `--refresh`.
fn crl(home: &Home, refresh: bool) -> Result<(), Box<dyn Error>> {
    if refresh {
        let n = lifecycle::refresh_crl(home)?;
        println!("CRL #{n} signed: {}", home.crl().display());
    } else {
        print!("{}", crate::home::read_to_string(&home.crl())?);
    }
    Ok(())
}

fn print_issue(id: &str, r: &lifecycle::IssueReport) {
    println!(
        "issued certificate {} to {} (valid until {})",
        r.record.serial,
        id,
        rfc3339(r.record.not_after)
    );
    let out = r.out_dir.display();
    println!("  certificate chain: {out}/{id}.pem");
    if r.key_written {
        println!(
            "  private key:       {out}/{id}.key (mode 0600; hand it to the partner securely)"
        );
    }
    if r.p12_written {
        println!(
            "  PKCS#12:           {out}/{id}.p12 (password in {out}/{id}.p12.pass, mode 0600)"
        );
    }
    println!("  root(s) to trust:  {out}/ca.pem");
}

pub(super) fn cert_json(
    c: &crate::ca::inventory::IssuedCert,
    now: OffsetDateTime,
) -> serde_json::Value {
    let state = c.state(now);
    json!({
        "serial": c.serial,
        "partner": c.partner,
        "not_before": rfc3339(c.not_before),
        "not_after": rfc3339(c.not_after),
        "state": match state {
            CertState::Active => "active",
            CertState::SupersededUntil(_) => "superseded",
            CertState::Revoked(_) => "revoked",
            CertState::Expired => "expired",
        },
        "state_detail": state.to_string(),
        "superseded_by": c.superseded_by,
        "fingerprint": c.fingerprint,
        "ca_fingerprint": c.ca_fingerprint,
    })
}
