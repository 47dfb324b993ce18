//! The files the CLI writes: a new partner file, a partner file's status
//! changed in place (comments kept), and the `gatehouse.toml` of `init`.

use std::time::Duration;

use serde::Serialize;

use super::common::InvalidValue;
use crate::timefmt::serde_duration;

use super::partner::*;

/// Renders a new partner file.
pub fn render_partner(partner: &Partner) -> String {
    #[derive(Serialize)]
    struct Out<'a> {
        id: &'a str,
        name: &'a str,
        status: PartnerStatus,
        #[serde(skip_serializing_if = "is_alert_only")]
        on_anomaly: OnAnomaly,
        #[serde(
            skip_serializing_if = "Option::is_none",
            with = "serde_duration::option"
        )]
        renewal_window: Option<Duration>,
        #[serde(skip_serializing_if = "is_empty_limits")]
        limits: &'a LimitSpec,
        routes: &'a [RouteSpec],
    }
    fn is_empty_limits(l: &&LimitSpec) -> bool {
        **l == LimitSpec::default()
    }
    let out = Out {
        id: &partner.id,
        name: &partner.name,
        status: partner.status,
        on_anomaly: partner.on_anomaly,
        renewal_window: partner.renewal_window,
        limits: &partner.limits,
        routes: &partner.routes,
    };
    let body = toml::to_string(&out).unwrap_or_default();
    format!(
        "# Partner {}: granted routes are deny-by-default; see the README, \"Onboard a partner\".\n{body}",
        partner.id
    )
}

/// Sets `status = "..."` in a partner file's text, keeping the operator's
/// comments and layout.
pub fn set_partner_status(text: &str, status: PartnerStatus) -> Result<String, InvalidValue> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| InvalidValue::PartnerToml(e.message().to_string()))?;
    doc["status"] = toml_edit::value(status.to_string());
    Ok(doc.to_string())
}

/// The `gatehouse.toml` that `init` writes.
pub fn default_gateway_toml(trust_domain: &str) -> String {
    format!(
        r#"# gatehouse configuration (see the README). Relative paths are relative to this folder.
trust_domain = "{trust_domain}"

[server]
listen = "127.0.0.1:8443"     # partners connect here
admin = "127.0.0.1:9090"      # metrics and health; loopback unless admin_public = true
node_id = "gatehouse-1"       # this broker's name in journal records
handshake_timeout = "10s"
header_timeout = "10s"        # slow-header (slowloris) cut-off
idle_timeout = "60s"          # keep-alive connections idle this long are closed
drain_timeout = "10s"         # on SIGTERM, in-flight requests get this long
max_connections = 10000
max_header_bytes = 16384      # larger header blocks get 431
max_body_bytes = 10485760     # default per-route request body limit (413 beyond)
write_timeout = "30s"         # a response the partner stops reading is abandoned after this
max_pending_handshakes_per_addr = 256   # TLS handshakes in progress per client address (IPv6: per /64)

[journal]
durability = "strict"         # "strict": a response ends only after its record is fsynced; or "relaxed"
flush_interval = "10ms"       # relaxed mode: how often records are fsynced (the loss window)
checkpoint_every = 10000      # a signed checkpoint every N records and at shutdown
checkpoint_interval = "60s"   # and at least this often while records come in
min_free = "256MiB"           # free space kept on data/'s file system: below it, 503 and alert disk_low ("2%": a share; "0": off)

[ca]
default_days = 90             # partner certificate lifetime
overlap = "24h"               # how long a renewed certificate's predecessor stays valid
crl_validity = "7d"           # CRL next-update; the broker re-signs it well before

[monitor]
expiry_warning_days = 14     # warn (log, alert) when a certificate without successor nears expiry
anomaly_factor = 10.0        # alert when a partner's rate exceeds this many times its baseline...
anomaly_floor_per_minute = 100.0   # ...and at least this many requests per minute
anomaly_warmup_minutes = 60  # a baseline needs this much history before it alerts
# webhook_url = "https://alerts.example.com/gatehouse"   # alerts are POSTed here as JSON
# webhook_ca = "certs/webhook-ca.pem"                     # CA for an https webhook

# Upstreams: the APIs partners reach through the broker, one [upstreams.NAME]
# table each; a partner's route names one. None is configured yet, so the
# broker serves but has nowhere to relay: every partner call is denied.
# An example to uncomment and point at your API (`cargo run --example
# echo-upstream` serves one and writes certs/upstream-ca.pem):
# [upstreams.orders]
# url = "https://127.0.0.1:9443"
# ca = "certs/upstream-ca.pem"    # verifies the upstream's server certificate
# server_name = "localhost"       # the name checked in that certificate
# # client_cert / client_key default to certs/broker-client.pem / .key
# connect_timeout = "5s"
# response_timeout = "30s"
#
# A legacy plain-HTTP upstream looks like this:
# [upstreams.legacy-billing]
# url = "http://127.0.0.1:8080"

# A fleet of several nodes shares limits, quotas, revocations and anomaly
# baselines through Redis (see the README, "Run a fleet"):
# [cluster]
# redis_url = "rediss://redis.internal:6379"
# redis_ca = "certs/redis-ca.pem"
# redis_password_file = "certs/redis.pass"
# on_store_failure = "local"  # or "deny"
"#
    )
}
