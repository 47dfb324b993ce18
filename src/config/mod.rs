//! The operator's configuration: `gatehouse.toml` and `partners/<id>.toml`
//! (docs/architecture.md). This module reads, validates and reports; it owns the file
//! formats and the validated types the rest of the crate works from.
//!
//! Every problem is reported with its file and line, and loading reports all
//! problems it finds, not just the first, so `gatehouse check` can list them.

use crate::home::Home;

pub mod cluster;
mod common;
mod gateway;
pub mod min_free;
pub mod mirror;
mod partner;
mod render;
pub mod settings;
mod upstream;

pub use cluster::{ClusterSettings, OnStoreFailure};
pub use common::*;
pub use gateway::*;
pub use mirror::MirrorSettings;
pub use partner::*;
pub use render::*;
pub use upstream::*;

/// The whole validated configuration of a home.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub gateway: GatewayConfig,
    pub partners: Vec<Partner>,
}

/// Loads `gatehouse.toml` and every partner file, or reports every problem.
pub fn load_all(home: &Home) -> Result<Loaded, ConfigErrors> {
    let gateway = load_gateway(home)?;
    let partners = load_partners(home, &gateway)?;
    Ok(Loaded { gateway, partners })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The default configuration with an upstream `orders` added.
    fn gw() -> GatewayConfig {
        let text = default_gateway_toml("gatehouse.local")
            + "\n[upstreams.orders]\nurl = \"http://127.0.0.1:8080\"\n";
        parse_gateway(Path::new("gatehouse.toml"), &text).unwrap()
    }

    #[test]
    fn own_ca_needs_one_name_never_in_our_trust_domain_and_sha256_pins() {
        let file = |own: &str| format!("id = \"acme\"\n[own_ca]\nca = \"bank.pem\"\n{own}");
        let parse = |own: &str| parse_partner(Path::new("partners/acme.toml"), &file(own), &gw());
        let p = parse("match_subject_cn = \"acme-api\"\npin_spki = [\"AB:CD\"]");
        assert!(p.is_err(), "a short pin");
        let p = parse(&format!(
            "match_subject_cn = \"acme-api\"\npin_spki = [\"{}\"]",
            "AB".repeat(32)
        ))
        .unwrap();
        let own = p.own_ca.unwrap();
        assert_eq!(own.name, NameMatch::SubjectCn("acme-api".into()));
        assert_eq!(own.pin_spki, vec!["ab".repeat(32)]);
        assert!(parse("").is_err(), "no name to match");
        assert!(parse("match_subject_cn = \"a\"\nmatch_san_dns = \"a.example\"").is_err());
        let err = parse("match_san_uri = \"spiffe://gatehouse.local/partner/globex\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("trust domain"), "{err}");
    }

    #[test]
    fn default_config_parses() {
        let g = parse_gateway(
            Path::new("gatehouse.toml"),
            &default_gateway_toml("gatehouse.local"),
        )
        .unwrap();
        assert_eq!(g.trust_domain, "gatehouse.local");
        // A fresh home has no upstream: nothing it names can be missing.
        assert!(g.upstreams.is_empty());
        assert_eq!(g.journal.durability, Durability::Strict);
    }

    #[test]
    fn partner_ids() {
        assert!(valid_id("acme"));
        assert!(valid_id("0-a"));
        assert!(!valid_id("-acme"));
        assert!(!valid_id("Acme"));
        assert!(!valid_id("ac_me"));
        assert!(!valid_id(""));
        assert!(valid_id(&"a".repeat(63)));
        assert!(!valid_id(&"a".repeat(64)));
    }

    #[test]
    fn route_args() {
        let r = parse_route_arg("GET,post /v1/orders -> orders").unwrap();
        assert_eq!(r.methods, vec!["GET", "POST"]);
        assert_eq!(r.path, "/v1/orders");
        assert_eq!(r.upstream, "orders");
        assert!(parse_route_arg("GET v1/orders -> orders").is_err());
        assert!(parse_route_arg("FETCH /v1 -> orders").is_err());
        assert!(parse_route_arg("GET /v1/orders").is_err());
        assert!(parse_route_arg("GET /v1/../x -> orders").is_err());
    }

    #[test]
    fn partner_errors_name_the_line() {
        let text = "id = \"acme\"\n\n[[routes]]\nmethods = [\"GET\"]\npath = \"/v1\"\nupstream = \"nope\"\n";
        let e = parse_partner(Path::new("partners/acme.toml"), text, &gw()).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].line, Some(6));
        assert!(e.0[0].message.contains("nope"), "{}", e.0[0].message);
        let bad = "id = \"acme\"\nstatus = \n";
        let e = parse_partner(Path::new("partners/acme.toml"), bad, &gw()).unwrap_err();
        assert_eq!(e.0[0].line, Some(2), "{e}");
    }

    #[test]
    fn status_edit_keeps_comments() {
        let text = "# keep me\nid = \"acme\"\nstatus = \"active\"\n";
        let out = set_partner_status(text, PartnerStatus::Suspended).unwrap();
        assert!(out.contains("# keep me"));
        assert!(out.contains("status = \"suspended\""));
    }

    #[test]
    fn rendered_partner_round_trips() {
        let p = Partner {
            id: "acme".into(),
            name: "Acme Logistics".into(),
            status: PartnerStatus::Active,
            limits: LimitSpec::default(),
            on_anomaly: Default::default(),
            renewal_window: None,
            own_ca: None,
            pin: Default::default(),
            routes: vec![parse_route_arg("GET /v1/orders -> orders").unwrap()],
            value_limits: Default::default(),
            signing: false,
            signing_keys: Vec::new(),
        };
        let text = render_partner(&p);
        let back = parse_partner(Path::new("partners/acme.toml"), &text, &gw()).unwrap();
        assert_eq!(back, p);
    }
}
