//! The command line (README, "Operator's guide"): clap definitions and the dispatch to
//! the modules that do the work. Output for people by default, `--json` for
//! scripts; exit 0 on success, non-zero with one clear line on stderr.

pub mod agent;
mod announce;
pub mod log;
pub mod shell;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use serde_json::json;
use time::OffsetDateTime;

use crate::ca::inventory::{CertState, Inventory, RevocationReason};
use crate::ca::lifecycle::{self, InitOptions, IssueOptions};
use crate::config::{self, PartnerStatus, parse_route_arg};
use crate::home::Home;
use crate::partners;
use crate::timefmt::{parse_duration, rfc3339};

pub mod status;

type CliResult = Result<ExitCode, Box<dyn std::error::Error>>;

#[derive(Parser, Debug)]
#[command(
    name = "gatehouse",
    version,
    about = "A mutual-TLS broker for B2B APIs: CA, gateway, policy, relay, journal"
)]
pub struct Cli {
    /// The gatehouse home folder (config, partners, certs, data).
    #[arg(long, global = true, env = "GATEHOUSE_HOME", default_value = ".")]
    pub home: PathBuf,
    /// This node's data folder (journal, admin socket); default HOME/data.
    /// In a fleet each node has its own while the home is shared.
    #[arg(long, global = true, env = "GATEHOUSE_DATA")]
    pub data: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create the CA, the broker's certificates, gatehouse.toml and the folders.
    Init(InitArgs),
    /// Validate gatehouse.toml, every partner file and the CA material, offline.
    Check,
    /// Onboard and manage partner companies.
    #[command(subcommand)]
    Partner(PartnerCmd),
    /// Issue, renew, revoke and list partner certificates.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Run the broker: terminate mTLS, authorize, relay, record.
    Serve(ServeArgs),
    /// Read, export, verify and prune the exchange journal.
    #[command(subcommand)]
    Log(log::LogCmd),
    /// The running broker's view per partner: traffic, limits, certificates, alerts.
    Status(status::StatusArgs),
    /// CA rollover: rotate the issuing CA, the root or the upstream-client CA; migrate; retire.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Partner side: renew this partner's certificate at the broker (no home needed).
    #[command(subcommand)]
    Agent(agent::AgentCmd),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(shell::CompletionsArgs),
    /// Print the man page gatehouse(1), or write every command's page with --dir.
    Man(shell::ManArgs),
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Partner listener (default from gatehouse.toml). Port 0 picks a free port.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Admin listener for health and metrics (default from gatehouse.toml).
    #[arg(long)]
    admin: Option<std::net::SocketAddr>,
    /// This node's name in records, heartbeats and alerts (default: `[server] node_id`).
    #[arg(long, env = "GATEHOUSE_NODE_ID")]
    node_id: Option<String>,
    /// Broker log format on stderr.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Trust domain in partner identities (spiffe://<D>/partner/<id>).
    #[arg(long)]
    trust_domain: Option<String>,
    /// Name or IP for the broker's server certificate (repeatable).
    #[arg(long = "hostname")]
    hostnames: Vec<String>,
    /// Replace an existing CA (every certificate it issued stops working).
    #[arg(long)]
    force: bool,
    /// Adopt an existing CA certificate (e.g. an intermediate of your PKI)...
    #[arg(long, requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// ...and its private key.
    #[arg(long, requires = "ca_cert")]
    ca_key: Option<PathBuf>,
}

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
    /// Offboard a partner: revokes its certificates and deletes its file.
    Remove {
        /// The partner's id.
        id: String,
    },
}

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

/// Entry point for the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gatehouse: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn existing(home: &std::path::Path) -> Result<Home, Box<dyn std::error::Error>> {
    Ok(Home::existing(home)?)
}

pub fn run(cli: Cli) -> CliResult {
    let data = cli.data.clone();
    let existing = |home: &std::path::Path| existing(home).map(|h| h.with_data(data.clone()));
    // A fleet hears of partner and certificate changes made here (after the
    // files are written; nothing to do without `[cluster]`).
    let announce = announce::of_command(&cli.command);
    let result = match cli.command {
        Command::Init(a) => cmd_init(Home::new(&cli.home), a),
        Command::Check => cmd_check(&existing(&cli.home)?),
        Command::Partner(p) => cmd_partner(&existing(&cli.home)?, p),
        Command::Cert(c) => cmd_cert(&existing(&cli.home)?, c),
        Command::Serve(a) => cmd_serve(existing(&cli.home)?, a),
        Command::Log(c) => log::run(&existing(&cli.home)?, c),
        Command::Status(a) => status::run(&existing(&cli.home)?, a),
        Command::Ca(c) => cmd_ca(&existing(&cli.home)?, c),
        Command::Agent(c) => agent::run(c),
        Command::Completions(a) => shell::completions(a),
        Command::Man(a) => shell::man(a),
    };
    if let (Ok(code), Some(change)) = (&result, announce)
        && *code == ExitCode::SUCCESS
        && let Ok(home) = existing(&cli.home)
    {
        crate::fleet::announce::publish_from_cli(&home, &change);
    }
    result
}

fn cmd_serve(home: Home, a: ServeArgs) -> CliResult {
    init_tracing(a.log_format);
    let gateway = config::load_gateway(&home)?;
    let journal = crate::journal::Journal::open(&home, &gateway.journal)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(crate::server::serve(
        home,
        crate::server::ServeOptions {
            listen: a.listen,
            admin: a.admin,
            node_id: a.node_id,
        },
        journal.clone(),
    ));
    drop(runtime);
    // Final signed checkpoint and flush, whatever happened above.
    let closed = journal.shutdown();
    result?;
    closed?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: a log file or a journald
    // pipe gets no ANSI escape codes.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn cmd_init(home: Home, a: InitArgs) -> CliResult {
    let report = lifecycle::init(
        &home,
        &InitOptions {
            trust_domain: a.trust_domain,
            hostnames: a.hostnames,
            force: a.force,
            ca_cert: a.ca_cert,
            ca_key: a.ca_key,
        },
    )?;
    println!(
        "initialized gatehouse home {} (trust domain {})",
        home.root().display(),
        report.trust_domain
    );
    if report.adopted {
        println!(
            "  issuing CA: adopted {} (its chain's top, {}, is what partners trust)",
            home.ca_cert().display(),
            home.root_cert().display()
        );
    } else {
        println!(
            "  root CA: created {} (key {}: may be moved offline; only `ca rotate` needs it)",
            home.root_cert().display(),
            home.root_key().display()
        );
        println!(
            "  issuing CA: created {} (signs partner and server certificates)",
            home.ca_cert().display()
        );
    }
    println!(
        "  issuing CA fingerprint (SHA-256): {}",
        report.ca_fingerprint
    );
    println!(
        "  upstream-client CA: created {} (upstreams trust this, and only this, to admit the broker)",
        home.upstream_client_ca_cert().display()
    );
    if report.config_written {
        println!("  config: {}", home.config_file().display());
    }
    println!(
        "next: add your API as an [upstreams.NAME] table in gatehouse.toml (a commented example is there), then gatehouse partner add ID --route \"GET /v1/orders -> NAME\" and gatehouse cert issue ID"
    );
    Ok(ExitCode::SUCCESS)
}

fn cmd_check(home: &Home) -> CliResult {
    let problems = crate::check::check_home(home);
    for line in crate::check::describe_pki(home) {
        println!("{line}");
    }
    if problems.is_empty() {
        let loaded = config::load_all(home)?;
        println!(
            "ok: {} and {} partner file(s) are valid; CA material checks out",
            home.config_file().display(),
            loaded.partners.len()
        );
        if loaded.gateway.upstreams.is_empty() {
            println!(
                "note: no [upstreams.NAME] is configured yet: the broker serves, but every partner call is denied until one is (see the commented example in gatehouse.toml)"
            );
        }
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("{p}");
        }
        eprintln!("gatehouse: check found {} problem(s)", problems.len());
        Ok(ExitCode::FAILURE)
    }
}

fn cmd_partner(home: &Home, cmd: PartnerCmd) -> CliResult {
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
        PartnerCmd::List { json } => {
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
        }
        PartnerCmd::Show { id, json } => {
            let p = partners::show(home, &id)?;
            let inv = Inventory::load(home)?;
            let now = OffsetDateTime::now_utc();
            let certs = inv.for_partner(&id);
            if json {
                let certs: Vec<_> = certs.iter().map(|c| cert_json(c, now)).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({"partner": p, "certificates": certs}))?
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
        }
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

fn cert_json(c: &crate::ca::inventory::IssuedCert, now: OffsetDateTime) -> serde_json::Value {
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

fn cmd_cert(home: &Home, cmd: CertCmd) -> CliResult {
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
            let r = lifecycle::issue(home, &id, &opts)?;
            print_issue(&id, &r);
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
            let overlap = overlap.as_deref().map(parse_duration).transpose()?;
            let opts = IssueOptions {
                csr,
                days,
                out,
                p12,
                p12_legacy,
            };
            let r = lifecycle::renew(home, &id, &opts, overlap)?;
            print_issue(&id, &r);
            for s in &r.superseded {
                println!("  superseded: {s} (valid until the overlap ends)");
            }
        }
        CertCmd::Revoke {
            serial,
            partner,
            reason,
        } => {
            let reason = RevocationReason::parse(&reason)?;
            let revoked = match (serial, partner) {
                (Some(s), None) => lifecycle::revoke(home, &[s], reason)?,
                (None, Some(p)) => lifecycle::revoke_partner(home, &p, reason)?,
                _ => return Err("give a serial or --partner ID".into()),
            };
            if revoked.is_empty() {
                println!(
                    "nothing to revoke (already revoked, or no usable certificate); CRL re-signed"
                );
            }
            for s in revoked {
                println!(
                    "revoked {s} ({}); CRL updated: {}",
                    reason.name(),
                    home.crl().display()
                );
            }
        }
        CertCmd::List { id, expiring, json } => {
            let inv = Inventory::load(home)?;
            let now = OffsetDateTime::now_utc();
            let window = expiring.as_deref().map(parse_duration).transpose()?;
            let certs: Vec<_> = inv
                .sorted()
                .into_iter()
                .filter(|c| id.as_deref().is_none_or(|p| c.partner == p))
                .filter(|c| match window {
                    Some(w) => c.state(now).usable() && c.not_after <= now + w,
                    None => true,
                })
                .collect();
            if json {
                let v: Vec<_> = certs.iter().map(|c| cert_json(c, now)).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
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
            }
        }
        CertCmd::ServerRenew {
            hostnames,
            identity_key,
            json,
        } => {
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
            } else {
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
            }
        }
        CertCmd::Crl { refresh } => {
            if refresh {
                let n = lifecycle::refresh_crl(home)?;
                println!("CRL #{n} signed: {}", home.crl().display());
            } else {
                print!("{}", crate::home::read_to_string(&home.crl())?);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cmd_ca(home: &Home, cmd: CaCmd) -> CliResult {
    use crate::ca::rollover::{self, RotateOptions, short};
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
        CaCmd::List { json } => {
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
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_rotation(home: &Home, r: &crate::ca::rollover::RotateReport) {
    use crate::ca::rollover::{RotateKind, short};
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
