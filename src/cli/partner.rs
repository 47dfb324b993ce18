//! `gatehouse partner ...`: onboard, list, show, suspend, resume and remove
//! partners (the files are `crate::partners`), and their tables and JSON.

use std::error::Error;
use std::process::ExitCode;

use clap::Subcommand;
use serde_json::json;
use time::OffsetDateTime;

use super::CliResult;
use super::cert::cert_json;
use crate::ca::inventory::Inventory;
use crate::config::{PartnerStatus, parse_route_arg};
use crate::home::Home;
use crate::partners;
use crate::timefmt::rfc3339;

#[derive(Subcommand, Debug)]
pub enum PartnerCmd {
    /// Onboard a partner: writes partners/<ID>.toml.
    Add {
        /// Partner id: lowercase letters, digits and '-', up to 63 characters.
        id: String,
        /// Display name (the certificate's O=).
        #[arg(long)]
        name: Option<String>,
        /// A granted route: "GET,POST /v1/orders -> orders" (repeatable).
        #[arg(long = "route")]
        routes: Vec<String>,
    },
    /// List partners.
    List {
        /// One JSON array, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show one partner, its routes and certificates.
    Show {
        /// The partner's id.
        id: String,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Stop a partner's calls at once (its certificates stay valid).
    Suspend {
        /// The partner's id.
        id: String,
    },
    /// Let a suspended partner call again.
    Resume {
        /// The partner's id.
        id: String,
    },
    /// A one-time enrolment invitation (EST) for a partner, and what to send it.
    Invite {
        /// The partner's id.
        #[arg(required_unless_present = "revoke", conflicts_with = "revoke")]
        id: Option<String>,
        /// How long the invitation is valid (e.g. 72h, 7d; at most 30d).
        #[arg(long, default_value = "72h")]
        ttl: String,
        /// The broker's URL as partners reach it (default: the server
        /// certificate's first name and the listen port).
        #[arg(long)]
        url: Option<String>,
        /// One JSON object, for scripts.
        #[arg(long)]
        json: bool,
        /// Revoke this partner's invitation instead.
        #[arg(long, value_name = "ID")]
        revoke: Option<String>,
    },
    /// The partner brings its own CA: its certificates from that CA, with
    /// the given name (and key pin), are accepted for this partner only.
    #[command(group(clap::ArgGroup::new("name").required(true).multiple(false)))]
    Trust {
        /// The partner's id.
        id: String,
        /// The partner's root certificate(s), PEM.
        #[arg(long)]
        ca: std::path::PathBuf,
        /// The URI SAN its certificates carry.
        #[arg(long, group = "name")]
        match_san_uri: Option<String>,
        /// The DNS SAN its certificates carry.
        #[arg(long, group = "name")]
        match_san_dns: Option<String>,
        /// The subject CN its certificates carry.
        #[arg(long, group = "name")]
        match_subject_cn: Option<String>,
        /// SHA-256 (hex) of an accepted key's SubjectPublicKeyInfo (repeatable).
        #[arg(long = "pin-spki")]
        pin_spki: Vec<String>,
        /// The partner's CRL, PEM (checked per request, reloaded on change).
        #[arg(long)]
        crl: Option<std::path::PathBuf>,
    },
    /// Offboard a partner: revokes its certificates and deletes its file.
    Remove {
        /// The partner's id.
        id: String,
    },
}

pub(super) fn run(home: &Home, cmd: PartnerCmd) -> CliResult {
    match cmd {
        PartnerCmd::Add { id, name, routes } => {
            let routes = routes
                .iter()
                .map(|r| parse_route_arg(r))
                .collect::<Result<Vec<_>, _>>()?;
            let p = partners::add(home, &id, name.as_deref(), routes)?;
            println!(
                "added partner {} ({}) with {} route(s): {}",
                p.id,
                p.name,
                p.routes.len(),
                home.partner_file(&p.id).display()
            );
        }
        PartnerCmd::List { json } => list(home, json)?,
        PartnerCmd::Show { id, json } => show(home, &id, json)?,
        PartnerCmd::Trust {
            id,
            ca,
            match_san_uri,
            match_san_dns,
            match_subject_cn,
            pin_spki,
            crl,
        } => {
            use crate::config::NameMatch;
            let name = match (match_san_uri, match_san_dns, match_subject_cn) {
                (Some(u), _, _) => NameMatch::SanUri(u),
                (_, Some(d), _) => NameMatch::SanDns(d),
                (_, _, Some(c)) => NameMatch::SubjectCn(c),
                _ => {
                    return Err(
                        "give one of --match-san-uri, --match-san-dns, --match-subject-cn".into(),
                    );
                }
            };
            let pin_spki = pin_spki
                .iter()
                .map(|p| p.replace(':', "").to_ascii_lowercase())
                .collect();
            let own = crate::config::OwnCa {
                ca,
                name,
                pin_spki,
                crl,
            };
            // The files must be usable before the partner file names them.
            crate::tls::partner_ca::PartnerCa::build(&id, &own, |p| p.to_path_buf())?;
            let p = partners::trust(home, &id, &own)?;
            let described = p
                .own_ca
                .as_ref()
                .map(|o| o.name.describe())
                .unwrap_or_default();
            println!(
                "partner {id} now uses its own CA: certificates from it with {described} are accepted for {id} only (the running broker picks this up within a second)"
            );
        }
        PartnerCmd::Invite {
            id,
            ttl,
            url,
            json,
            revoke,
        } => match (revoke, id) {
            (Some(id), _) => super::invite::revoke(home, &id)?,
            (None, Some(id)) => {
                let ttl = crate::timefmt::parse_duration(&ttl)?;
                super::invite::invite(home, &id, ttl, url.as_deref(), json)?
            }
            (None, None) => return Err("partner invite needs an ID (or --revoke ID)".into()),
        },
        PartnerCmd::Suspend { id } => {
            partners::set_status(home, &id, PartnerStatus::Suspended)?;
            println!("partner {id} suspended: its calls are refused (403) from now on");
        }
        PartnerCmd::Resume { id } => {
            partners::set_status(home, &id, PartnerStatus::Active)?;
            // A running broker also lifts an anomaly throttle on the partner.
            let note = match crate::control::socket::clear_anomaly(home, &id) {
                Ok(true) => "; the running broker cleared its anomaly state",
                _ => "",
            };
            println!("partner {id} resumed{note}");
        }
        PartnerCmd::Remove { id } => {
            let revoked = partners::remove(home, &id)?;
            println!(
                "partner {id} removed; {} certificate(s) revoked",
                revoked.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `partner list`: every partner with its status, route count and usable
/// certificates; a table or JSON.
fn list(home: &Home, json: bool) -> Result<(), Box<dyn Error>> {
    let list = partners::list(home)?;
    let inv = Inventory::load(home)?;
    let now = OffsetDateTime::now_utc();
    if json {
        let v: Vec<_> = list
            .iter()
            .map(|p| {
                let usable = inv.for_partner(&p.id).iter().filter(|c| c.state(now).usable()).count();
                json!({"id": p.id, "name": p.name, "status": p.status.to_string(), "routes": p.routes.len(), "usable_certs": usable})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{:<24} {:<10} {:>6} {:>6}  NAME",
            "ID", "STATUS", "ROUTES", "CERTS"
        );
        for p in &list {
            let usable = inv
                .for_partner(&p.id)
                .iter()
                .filter(|c| c.state(now).usable())
                .count();
            println!(
                "{:<24} {:<10} {:>6} {:>6}  {}",
                p.id,
                p.status,
                p.routes.len(),
                usable,
                p.name
            );
        }
    }
    Ok(())
}

/// `partner show`: one partner, its routes and its certificates.
fn show(home: &Home, id: &str, json: bool) -> Result<(), Box<dyn Error>> {
    let p = partners::show(home, id)?;
    let inv = Inventory::load(home)?;
    let now = OffsetDateTime::now_utc();
    let certs = inv.for_partner(id);
    if json {
        let certs: Vec<_> = certs.iter().map(|c| cert_json(c, now)).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "partner": p,
                "certificates": certs,
                "invitation": super::invite::describe(home, id),
            }))?
        );
    } else {
        println!("partner {} ({})", p.id, p.name);
        println!("  status: {}", p.status);
        println!("  routes:");
        if p.routes.is_empty() {
            println!("    (none: every call is denied)");
        }
        for r in &p.routes {
            println!("    {}", r.describe());
        }
        if let Some(own) = &p.own_ca {
            println!(
                "  own CA: {} (certificates with {}{}{}); we cannot renew these: expiring ones are for the partner to replace",
                own.ca.display(),
                own.name.describe(),
                if own.pin_spki.is_empty() {
                    ""
                } else {
                    ", pinned keys"
                },
                own.crl
                    .as_ref()
                    .map(|c| format!(", CRL {}", c.display()))
                    .unwrap_or_default()
            );
        }
        if let Some(inv) = super::invite::describe(home, id) {
            println!("  invitation: {inv}");
        }
        println!("  certificates:");
        for c in certs {
            println!(
                "    {} {} until {}",
                c.serial,
                c.state(now),
                rfc3339(c.not_after)
            );
        }
    }
    Ok(())
}
