//! `gatehouse ca ...`: CA rollover from the command line (rotate, migrate,
//! retire, list; the work is `ca::rollover`) and what each step tells the
//! operator to do next.

use std::error::Error;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::CliResult;
use crate::ca::rollover::{self, RotateKind, RotateOptions, RotateReport, short};
use crate::home::Home;
use crate::timefmt::rfc3339;

#[derive(Subcommand, Debug)]
pub enum CaCmd {
    /// Make a new issuing CA under the same root (partners and upstreams
    /// notice nothing); `--root`: also a new root, cross-signed by the old
    /// one; `--upstream-client`: a new upstream-client CA, cross-signed by
    /// the old one. In a single-tier home, the first rotation migrates it.
    Rotate {
        /// A new root too, cross-signed by the current one (certs/root-cross.pem,
        /// sent in the broker's chain so holders of the old root keep working).
        #[arg(long, visible_alias = "cross-sign", conflicts_with = "upstream_client")]
        root: bool,
        /// Rotate the CA of the broker's upstream-leg certificate instead.
        #[arg(long)]
        upstream_client: bool,
        /// The root key, when it is kept offline (not in certs/root.key).
        #[arg(long, value_name = "FILE")]
        root_key: Option<PathBuf>,
    },
    /// Move a single-tier home (an earlier `init`: one self-signed CA) to a
    /// root + issuing CA + upstream-client CA, keeping every issued certificate valid.
    Migrate,
    /// Remove a previous CA from trust (refused while anything still depends on it).
    Retire {
        /// Fingerprint prefix (see `gatehouse ca list`), or `previous`.
        #[arg(required_unless_present = "upstream_client")]
        old: Option<String>,
        /// End the overlap of an upstream-client CA rotation instead.
        #[arg(long, conflicts_with = "old")]
        upstream_client: bool,
        /// The root key, to list the retired issuing CA in the root's CRL.
        #[arg(long, value_name = "FILE")]
        root_key: Option<PathBuf>,
    },
    /// The roots, issuing CAs and upstream-client CAs, and what depends on each.
    List {
        /// One JSON array, for scripts.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(home: &Home, cmd: CaCmd) -> CliResult {
    match cmd {
        CaCmd::Rotate {
            root,
            upstream_client,
            root_key,
        } => {
            let r = rollover::rotate(
                home,
                &RotateOptions {
                    root,
                    upstream_client,
                    root_key,
                },
            )?;
            print_rotation(home, &r);
        }
        CaCmd::Migrate => {
            let r = rollover::migrate(home)?;
            print_rotation(home, &r);
        }
        CaCmd::Retire {
            old,
            upstream_client,
            root_key,
        } => {
            let r = rollover::retire(home, old.as_deref(), upstream_client, root_key.as_deref())?;
            println!(
                "retired {} {}: no longer trusted; its certificate is kept in {}",
                r.what,
                short(&r.fingerprint),
                home.ca_retired_dir().display()
            );
        }
        CaCmd::List { json } => list(home, json)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// `ca list`: the roots, issuing CAs and upstream-client CAs, and how many
/// usable certificates depend on each; a table or JSON.
fn list(home: &Home, json: bool) -> Result<(), Box<dyn Error>> {
    let list = rollover::list(home)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        println!(
            "{:<14} {:<16} {:<9} {:<14} {:<20} {:>6}  SUBJECT",
            "CA", "KIND", "ROLE", "ISSUER", "NOT-AFTER", "DEPS"
        );
        for c in list {
            let kind = match c.key {
                Some(k) => format!("{} (key {k})", c.kind),
                None => c.kind.to_string(),
            };
            println!(
                "{:<14} {:<16} {:<9} {:<14} {:<20} {:>6}  {}",
                short(&c.fingerprint),
                kind,
                c.role,
                c.issuer.as_deref().map(short).unwrap_or("-"),
                rfc3339(c.not_after),
                c.usable_certs,
                c.subject
            );
        }
    }
    Ok(())
}

fn print_rotation(home: &Home, r: &RotateReport) {
    match r.kind {
        RotateKind::Issuing => {
            println!(
                "new issuing CA {} under the same root (was {}); both are trusted until `gatehouse ca retire {}`",
                short(&r.new_fingerprint),
                short(&r.old_fingerprint),
                short(&r.old_fingerprint)
            );
            println!("  broker server certificate re-issued by the new issuing CA");
            println!("  partners and upstreams: nothing to do (they trust the root)");
            println!(
                "next: renew partner certificates as usual (`gatehouse cert renew ID`, or the partners' agents), then retire the old issuing CA"
            );
        }
        RotateKind::Root => {
            println!(
                "new root {} and issuing CA {} (old root {}), the new root cross-signed by the old: {}",
                r.new_root.as_deref().map(short).unwrap_or(""),
                short(&r.new_fingerprint),
                short(&r.old_fingerprint),
                home.root_cross().display()
            );
            println!(
                "  partners holding only the old root keep verifying the broker; hand them {} (both roots) when convenient",
                home.ca_bundle().display()
            );
            println!(
                "  the new root key is {}: move it offline again if you keep it there",
                home.root_key().display()
            );
            println!(
                "next: retire the old issuing CA once its certificates are renewed, then the old root (`gatehouse ca retire {}`)",
                short(&r.old_fingerprint)
            );
        }
        RotateKind::UpstreamClient => {
            println!(
                "new upstream-client CA {} (was {}), cross-signed by the old one: {}",
                short(&r.new_fingerprint),
                short(&r.old_fingerprint),
                home.upstream_client_cross().display()
            );
            println!(
                "  upstreams trusting the old CA keep admitting the broker; add {} to each upstream's trust",
                home.upstream_client_ca_cert().display()
            );
            println!(
                "next: when every upstream trusts the new CA, `gatehouse ca retire --upstream-client`, then drop the old CA from the upstreams"
            );
        }
        RotateKind::Migration => {
            println!(
                "migrated to two tiers: root {} ({}), issuing CA {}, upstream-client CA {}",
                r.new_root.as_deref().map(short).unwrap_or(""),
                home.root_cert().display(),
                short(&r.new_fingerprint),
                home.upstream_client_ca_cert().display()
            );
            println!(
                "  the old CA {} stays trusted: every issued certificate keeps working, the broker keeps its certificates",
                short(&r.old_fingerprint)
            );
            println!(
                "  partners: add {} to their trust (it is in {} and every new ca.pem); upstreams: add {}",
                home.root_cert().display(),
                home.ca_bundle().display(),
                home.upstream_client_ca_cert().display()
            );
            println!(
                "next: once they have, `gatehouse cert server-renew`; renew partner certificates; then `gatehouse ca retire {}`",
                short(&r.old_fingerprint)
            );
        }
    }
    if r.root_key_given {
        println!("  (root key read from --root-key; not copied into the home)");
    }
}
