//! Partner onboarding on disk: `partners/<id>.toml` files created, listed,
//! suspended, resumed and removed by the `partner` commands. Edits keep the
//! operator's comments (toml_edit) and are validated before they are
//! written, atomically; a running broker picks them up by itself.

use crate::ca::CaError;
use crate::ca::inventory::RevocationReason;
use crate::ca::lifecycle;
use crate::config::OwnCa;
use crate::config::{
    self, LimitSpec, Partner, PartnerStatus, RouteSpec, parse_partner, render_partner,
    set_partner_status, validate_partner_id,
};
use crate::home::{Home, read_to_string, write_public};

/// Errors of the partner commands.
#[derive(Debug, thiserror::Error)]
pub enum PartnerError {
    #[error("{0}")]
    Invalid(String),
    #[error("partner `{0}` already exists ({1}); edit that file or remove the partner first")]
    Duplicate(String, String),
    #[error("unknown partner `{0}` (see `gatehouse partner list`)")]
    Unknown(String),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Home(#[from] crate::home::HomeError),
}

/// `gatehouse partner add`.
pub fn add(
    home: &Home,
    id: &str,
    name: Option<&str>,
    routes: Vec<RouteSpec>,
) -> Result<Partner, PartnerError> {
    validate_partner_id(id).map_err(|e| PartnerError::Invalid(e.to_string()))?;
    let gateway = config::load_gateway(home).map_err(|e| PartnerError::Invalid(e.to_string()))?;
    let path = home.partner_file(id);
    if path.exists() {
        return Err(PartnerError::Duplicate(
            id.to_string(),
            path.display().to_string(),
        ));
    }
    for r in &routes {
        if !gateway.upstreams.contains_key(&r.upstream) {
            return Err(PartnerError::Invalid(format!(
                "route `{}` names upstream `{}`, which is not defined in gatehouse.toml",
                r.describe(),
                r.upstream
            )));
        }
    }
    let partner = Partner {
        id: id.to_string(),
        name: name.unwrap_or(id).to_string(),
        status: PartnerStatus::Active,
        limits: LimitSpec::default(),
        on_anomaly: Default::default(),
        renewal_window: None,
        own_ca: None,
        pin: Default::default(),
        routes,
        value_limits: Default::default(),
        signing: false,
        signing_keys: Vec::new(),
    };
    let text = render_partner(&partner);
    // Validate exactly what will be on disk before writing it.
    parse_partner(&path, &text, &gateway).map_err(|e| PartnerError::Invalid(e.to_string()))?;
    crate::home::ensure_dir(&home.partners_dir())?;
    write_public(&path, text.as_bytes())?;
    Ok(partner)
}

/// Reads one partner (validated).
pub fn show(home: &Home, id: &str) -> Result<Partner, PartnerError> {
    validate_partner_id(id).map_err(|e| PartnerError::Invalid(e.to_string()))?;
    let gateway = config::load_gateway(home).map_err(|e| PartnerError::Invalid(e.to_string()))?;
    let path = home.partner_file(id);
    if !path.is_file() {
        return Err(PartnerError::Unknown(id.to_string()));
    }
    let text = read_to_string(&path)?;
    parse_partner(&path, &text, &gateway).map_err(|e| PartnerError::Invalid(e.to_string()))
}

/// Every partner (validated; any broken file is an error naming it).
pub fn list(home: &Home) -> Result<Vec<Partner>, PartnerError> {
    let loaded = config::load_all(home).map_err(|e| PartnerError::Invalid(e.to_string()))?;
    Ok(loaded.partners)
}

/// `partner suspend` / `partner resume`: sets the status in place.
pub fn set_status(home: &Home, id: &str, status: PartnerStatus) -> Result<Partner, PartnerError> {
    show(home, id)?;
    let path = home.partner_file(id);
    let text = read_to_string(&path)?;
    let new_text = set_partner_status(&text, status)
        .map_err(|e| PartnerError::Invalid(format!("{}: {e}", path.display())))?;
    let gateway = config::load_gateway(home).map_err(|e| PartnerError::Invalid(e.to_string()))?;
    let partner = parse_partner(&path, &new_text, &gateway)
        .map_err(|e| PartnerError::Invalid(e.to_string()))?;
    write_public(&path, new_text.as_bytes())?;
    Ok(partner)
}

/// `partner trust`: the partner brings its own CA. Writes `[own_ca]` into
/// its file (keeping the rest), after checking the result parses (the
/// caller checks that the CA and CRL files can be used). Paths are kept
/// absolute, so the operator can refresh the CRL where it lies.
pub fn trust(home: &Home, id: &str, own: &OwnCa) -> Result<Partner, PartnerError> {
    show(home, id)?;
    let absolute = |p: &std::path::Path| {
        std::fs::canonicalize(p).map_err(|e| PartnerError::Invalid(format!("{}: {e}", p.display())))
    };
    let own = OwnCa {
        ca: absolute(&own.ca)?,
        crl: own.crl.as_deref().map(absolute).transpose()?,
        ..own.clone()
    };
    let path = home.partner_file(id);
    let text = read_to_string(&path)?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e| PartnerError::Invalid(format!("{}: {e}", path.display())))?;
    let mut t = toml_edit::Table::new();
    t["ca"] = toml_edit::value(own.ca.display().to_string());
    t[own.name.key()] = toml_edit::value(own.name.value());
    if !own.pin_spki.is_empty() {
        let mut a = toml_edit::Array::new();
        for p in &own.pin_spki {
            a.push(p.as_str());
        }
        t["pin_spki"] = toml_edit::value(a);
    }
    if let Some(crl) = &own.crl {
        t["crl"] = toml_edit::value(crl.display().to_string());
    }
    doc["own_ca"] = toml_edit::Item::Table(t);
    let new_text = doc.to_string();
    let gateway = config::load_gateway(home).map_err(|e| PartnerError::Invalid(e.to_string()))?;
    let partner = parse_partner(&path, &new_text, &gateway)
        .map_err(|e| PartnerError::Invalid(e.to_string()))?;
    write_public(&path, new_text.as_bytes())?;
    Ok(partner)
}

/// `partner remove`: revokes the partner's certificates, then deletes its file.
pub fn remove(home: &Home, id: &str) -> Result<Vec<String>, PartnerError> {
    validate_partner_id(id).map_err(|e| PartnerError::Invalid(e.to_string()))?;
    let path = home.partner_file(id);
    if !path.is_file() {
        return Err(PartnerError::Unknown(id.to_string()));
    }
    let revoked = lifecycle::revoke_partner(home, id, RevocationReason::CessationOfOperation)?;
    std::fs::remove_file(&path).map_err(|e| crate::home::HomeError::io(&path, e))?;
    Ok(revoked)
}
