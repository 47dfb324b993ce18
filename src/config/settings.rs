//! The inventory of every setting in `gatehouse.toml` and the partner
//! files, each either applied by a reload (`Live`) or waiting for a
//! restart (`Restart`), with what it does. It is the one place that
//! decides: the reload path, `gatehouse check`, the status view and the
//! README's configuration reference all read this table.
//!
//! [`flatten_gateway`] and [`flatten_partner`] take every field of the
//! configuration types apart by exhaustive destructuring (no `..`), so a
//! field added to a configuration struct does not compile until it is
//! given a key here, and the tests below fail until that key has a row
//! in [`SETTINGS`].

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::cluster::ClusterSettings;
use super::gateway::*;
use super::partner::*;
use super::upstream::{HealthSettings, OutlierSettings, QueueSettings, UpstreamSettings};
use crate::timefmt::format_duration;

/// When a changed setting takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Apply {
    /// A reload (SIGHUP, or the file watcher) puts it in force.
    Live,
    /// Only a restart puts it in force; a reload says so.
    Restart,
}

/// Which file a setting lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SettingsFile {
    Gateway,
    Partner,
}

/// One row of the inventory.
#[derive(Debug)]
pub struct Setting {
    pub file: SettingsFile,
    /// The key as written, `*` standing for an upstream name and `[]` for
    /// any route: `server.listen`, `upstreams.*.url`, `routes[].path`.
    pub key: &'static str,
    pub apply: Apply,
    /// What it sets, and how a reload applies it.
    pub what: &'static str,
    /// Its value is a secret (a password may sit in it): never shown.
    pub secret: bool,
    /// The end-to-end test (`module::function` in `tests/e2e/`) that proves
    /// the row on a running broker: a live key is changed, SIGHUP, and the
    /// new behaviour is observed with the reload's record naming the key;
    /// a restart key is reported pending until a restart puts it in force.
    pub proved_by: &'static str,
}

const fn live(
    file: SettingsFile,
    key: &'static str,
    what: &'static str,
    proved_by: &'static str,
) -> Setting {
    Setting {
        file,
        key,
        apply: Apply::Live,
        what,
        secret: false,
        proved_by,
    }
}

const fn restart(
    file: SettingsFile,
    key: &'static str,
    what: &'static str,
    proved_by: &'static str,
) -> Setting {
    Setting {
        file,
        key,
        apply: Apply::Restart,
        what,
        secret: false,
        proved_by,
    }
}

/// The end-to-end tests the rows name as their proof.
mod proof {
    pub const SERVER: &str = "reload_settings::live_server_settings_take_effect_on_sighup";
    pub const MIXED: &str = "reload_settings::live_upstream_partner_monitor_journal_and_trust_settings_take_effect_on_sighup";
    pub const RESTART: &str =
        "reload_settings::a_restart_setting_waits_and_says_so_until_the_restart";
    pub const TIMEOUTS: &str =
        "reload_settings::live_timeouts_new_upstreams_and_ca_defaults_take_effect_on_sighup";
    pub const TOKEN: &str =
        "reload_settings::the_admin_token_file_is_read_from_the_live_configuration";
    pub const JOURNAL: &str = "reload_settings::live_journal_settings_take_effect_on_sighup";
    pub const LEG: &str = "reload_settings::live_upstream_leg_settings_take_effect_on_sighup";
    pub const CA_LIVE: &str = "reload_settings::live_ca_settings_take_effect_on_sighup";
    pub const MONITOR: &str =
        "reload_settings::live_monitor_thresholds_and_webhook_take_effect_on_sighup";
    pub const LISTENERS: &str =
        "reload_restart::listener_addresses_and_admin_exposure_take_effect_at_restart";
    pub const STORE_MOVE: &str =
        "reload_restart::joining_a_fleet_and_moving_its_store_take_effect_at_restart";
    pub const PARTNER: &str = "reload_settings::live_partner_settings_take_effect_on_sighup";
    pub const POOL_ADMISSION: &str =
        "reload_pools::live_pool_admission_balance_and_retries_take_effect_on_sighup";
    pub const POOL_HEALTH: &str =
        "reload_pools::live_pool_health_outlier_and_dns_settings_take_effect_on_sighup";
    pub const SPLIT_WEIGHTS: &str =
        "split::forty_partners_over_90_10_stay_on_their_side_and_50_50_moves_only_those_that_must";
    pub const PIN: &str =
        "split::a_pinned_partner_always_reaches_its_side_and_a_pin_applies_on_reload";
    pub const STORE_TIMEOUT: &str = "reload_settings::live_store_timeout_takes_effect_on_sighup";
    pub const SIGNING_KEYS: &str = "reload_settings::live_signing_keys_take_effect_on_sighup";
    pub const OWN_CA_TRUSTED: &str =
        "partner_ca::an_own_ca_trusted_while_running_is_in_force_and_its_crl_is_watched";
    pub const OWN_CA: &str = "reload_settings::live_own_ca_settings_take_effect_on_sighup";
    pub const MIRROR: &str = "reload_settings::live_mirror_settings_take_effect_on_sighup";
    pub const FLEET_DENY: &str =
        "fleet::fleet_on_store_failure_changed_by_reload_denies_on_every_node";
}
use proof::*;

use SettingsFile::{Gateway as G, Partner as P};

/// Every key of `gatehouse.toml` and of a partner file.
#[rustfmt::skip]
pub const SETTINGS: &[Setting] = &[
    live(G, "trust_domain", "SPIFFE trust domain of partner identities; the partner-facing TLS configuration is rebuilt", MIXED),
    restart(G, "server.listen", "address partners connect to (the listener is bound at start)", LISTENERS),
    restart(G, "server.admin", "address of the admin listener (metrics, health, console)", LISTENERS),
    restart(G, "server.admin_public", "allow a non-loopback admin address", LISTENERS),
    live(G, "server.admin_token_file", "bearer token file the console, /status and the journal API require; read at each request", TOKEN),
    restart(G, "server.node_id", "this node's name in records, heartbeats and alerts", RESTART),
    live(G, "server.handshake_timeout", "longest TLS handshake; new handshakes", SERVER),
    live(G, "server.header_timeout", "longest wait for a request head; new connections", TIMEOUTS),
    live(G, "server.idle_timeout", "idle connection lifetime; new connections", SERVER),
    live(G, "server.drain_timeout", "how long a stop waits for requests in flight", TIMEOUTS),
    restart(G, "server.max_connections", "partner connections at once (sizes the connection slots and the open-files limit)", RESTART),
    live(G, "server.max_header_bytes", "largest request head; new connections", SERVER),
    live(G, "server.max_body_bytes", "default largest request body; next request", SERVER),
    live(G, "server.h2_max_concurrent_streams", "HTTP/2 streams per connection; new connections", TIMEOUTS),
    live(G, "server.write_timeout", "a partner that stops reading is dropped after this; new connections", LEG),
    live(G, "server.max_pending_handshakes_per_addr", "unfinished handshakes per client address; next handshake", SERVER),
    restart(G, "journal.durability", "strict or relaxed (the journal writer is opened with it)", RESTART),
    live(G, "journal.flush_interval", "relaxed durability's flush period; the writer is retuned", RESTART),
    live(G, "journal.checkpoint_every", "a signed checkpoint every this many records; the writer is retuned", MIXED),
    live(G, "journal.checkpoint_interval", "a signed checkpoint at least this often; the writer is retuned", JOURNAL),
    live(G, "journal.handshake_refusals_per_interval", "refused handshakes per address before they are aggregated; the writer is retuned", JOURNAL),
    live(G, "journal.handshake_aggregate_interval", "the aggregation period of refused handshakes; the writer is retuned", JOURNAL),
    live(G, "journal.min_free", "free space kept on the journal's file system; the writer measures against it at its next write", MIXED),
    live(G, "ca.default_days", "lifetime of issued certificates (read by each `cert` command)", TIMEOUTS),
    live(G, "ca.overlap", "how long a renewed certificate stays valid beside its successor (read by each `cert renew`)", CA_LIVE),
    live(G, "ca.crl_validity", "CRL validity; the next re-signing uses it", CA_LIVE),
    live(G, "monitor.expiry_warning_days", "certificate expiry warnings; next status and upkeep", MIXED),
    live(G, "monitor.anomaly_factor", "spike factor over a partner's baseline; the detector is retuned", MONITOR),
    live(G, "monitor.anomaly_floor_per_minute", "rate under which no spike is raised; the detector is retuned", MONITOR),
    live(G, "monitor.anomaly_warmup_minutes", "history a baseline needs before it alerts; the detector is retuned", MONITOR),
    Setting { secret: true, ..live(G, "monitor.webhook_url", "where alerts are POSTed; the webhook client is rebuilt", MONITOR) },
    live(G, "monitor.webhook_ca", "CA verifying an https webhook; the webhook client is rebuilt", MONITOR),
    live(G, "upstreams.*", "an upstream added or removed; new requests use the new set, requests in flight finish on the old", TIMEOUTS),
    live(G, "upstreams.*.url", "where the upstream is; its client is rebuilt", MIXED),
    live(G, "upstreams.*.ca", "CA verifying the upstream; its client is rebuilt", MIXED),
    live(G, "upstreams.*.server_name", "name checked in the upstream's certificate; its client is rebuilt", MIXED),
    live(G, "upstreams.*.client_cert", "the broker's certificate toward this upstream; its client is rebuilt", LEG),
    live(G, "upstreams.*.client_key", "its key; its client is rebuilt", LEG),
    live(G, "upstreams.*.connect_timeout", "longest connect; its client is rebuilt", LEG),
    live(G, "upstreams.*.response_timeout", "longest wait for the response head; next request", TIMEOUTS),
    live(G, "upstreams.*.signed_identity", "add the signed identity token; next request", MIXED),
    live(G, "upstreams.*.endpoints", "the pool's endpoints; the pool is rebuilt", POOL_ADMISSION),
    live(G, "upstreams.*.split", "weights of a split's sides (sticky per partner); next request", SPLIT_WEIGHTS),
    live(G, "upstreams.*.mirror", "mirroring on or off; the next request is mirrored by the new setting", MIRROR),
    live(G, "upstreams.*.mirror.to", "the candidate upstream the copies go to; next request", MIRROR),
    live(G, "upstreams.*.mirror.percent", "share of eligible requests mirrored; next request", MIRROR),
    live(G, "upstreams.*.mirror.methods", "methods mirrored (default GET, HEAD, OPTIONS); next request", MIRROR),
    live(G, "upstreams.*.mirror.compare", "compare the candidate's answer with the live one; next request", MIRROR),
    live(G, "upstreams.*.mirror.ignore_headers", "response headers left out of the comparison; next request", MIRROR),
    live(G, "upstreams.*.mirror.ignore_json", "JSON pointers left out of the comparison (`*`: any array element); next request", MIRROR),
    live(G, "upstreams.*.mirror.max_in_flight", "mirrored requests in flight at most (beyond: dropped); next request", MIRROR),
    live(G, "upstreams.*.mirror.timeout", "longest a mirrored request may take; next request", MIRROR),
    live(G, "upstreams.*.mirror.baseline", "the side sampled twice to learn noise; next request (learned noise is kept per route)", MIRROR),
    live(G, "upstreams.*.balance", "least_request or round_robin; the pool is rebuilt", POOL_ADMISSION),
    live(G, "upstreams.*.max_in_flight", "requests the backend sees at once; the pool is rebuilt", POOL_ADMISSION),
    live(G, "upstreams.*.queue.size", "requests waiting for a place; the pool is rebuilt", POOL_ADMISSION),
    live(G, "upstreams.*.queue.timeout", "longest wait for a place; the pool is rebuilt", POOL_ADMISSION),
    live(G, "upstreams.*.retries", "retries on other endpoints; next request", POOL_ADMISSION),
    live(G, "upstreams.*.per_try_timeout", "longest wait per attempt; next request", POOL_ADMISSION),
    live(G, "upstreams.*.retry_budget", "share of retries among requests in flight; the pool is rebuilt", POOL_ADMISSION),
    live(G, "upstreams.*.health", "active health checks on or off; the pool is rebuilt", POOL_HEALTH),
    live(G, "upstreams.*.health.path", "path probed; the pool is rebuilt", POOL_HEALTH),
    live(G, "upstreams.*.health.interval", "probe period; the pool is rebuilt", POOL_HEALTH),
    live(G, "upstreams.*.health.timeout", "probe timeout; the pool is rebuilt", POOL_HEALTH),
    live(G, "upstreams.*.health.healthy", "successes that bring an endpoint back; the pool is rebuilt", POOL_HEALTH),
    live(G, "upstreams.*.health.unhealthy", "failures that take an endpoint out; the pool is rebuilt", POOL_HEALTH),
    live(G, "upstreams.*.outlier.consecutive_failures", "failures in a row that eject an endpoint; the pool is rebuilt", POOL_HEALTH),
    live(G, "upstreams.*.outlier.base_ejection", "first ejection's length; the pool is rebuilt", POOL_HEALTH),
    live(G, "upstreams.*.outlier.max_ejected_percent", "most of the pool ejected at once; the pool is rebuilt", POOL_HEALTH),
    live(G, "upstreams.*.dns_refresh", "how often host names are re-resolved; the pool is rebuilt", POOL_HEALTH),
    restart(G, "cluster", "the [cluster] section itself: joining or leaving a fleet", STORE_MOVE),
    Setting { secret: true, ..restart(G, "cluster.redis_url", "the fleet's Redis store (the connection is made at start)", STORE_MOVE) },
    restart(G, "cluster.redis_ca", "CA verifying a rediss:// store", STORE_MOVE),
    restart(G, "cluster.redis_password_file", "the store's password", STORE_MOVE),
    restart(G, "cluster.redis_username", "the store's ACL user", STORE_MOVE),
    live(G, "cluster.on_store_failure", "local or deny while the store does not answer; next request", FLEET_DENY),
    restart(G, "cluster.key_prefix", "prefix of every key and channel in the store", STORE_MOVE),
    live(G, "cluster.store_timeout", "how long a request waits for the store; next request", STORE_TIMEOUT),
    live(P, "id", "the partner's id (a new id is a new partner)", PARTNER),
    live(P, "name", "display name", PARTNER),
    live(P, "status", "active or suspended; open connections too, within a second", PARTNER),
    live(P, "limits.requests_per_minute", "rate limit", MIXED),
    live(P, "limits.burst", "burst above the rate", MIXED),
    live(P, "limits.requests_per_day", "daily quota", PARTNER),
    live(P, "limits.max_concurrent", "requests in flight at once", PARTNER),
    live(P, "on_anomaly", "alert or throttle on a traffic spike", PARTNER),
    live(P, "renewal_window", "when self-service renewal opens", PARTNER),
    live(P, "pin", "the side of a split this partner always reaches; next request", PIN),
    live(P, "value_limits.*.per_call", "the most one call may carry in this currency", PARTNER),
    live(P, "value_limits.*.per_day", "the most one UTC day's calls may carry together in this currency", PARTNER),
    live(P, "signing", "the partner signs its requests: its high-risk routes require a signature", PARTNER),
    live(P, "signing_keys[].id", "the keyid a signature names this key by", SIGNING_KEYS),
    live(P, "signing_keys[].public_key", "PEM file of a key the partner signs with; read at reload", SIGNING_KEYS),
    live(P, "own_ca.ca", "the partner's own CA (its roots, PEM): its certificates are verified against it; the partner-facing TLS configuration is rebuilt, and again whenever the file changes", OWN_CA_TRUSTED),
    live(P, "own_ca.match_san_uri", "the URI SAN its certificates must carry; next handshake", OWN_CA),
    live(P, "own_ca.match_san_dns", "the DNS SAN its certificates must carry; next handshake", OWN_CA),
    live(P, "own_ca.match_subject_cn", "the subject CN its certificates must carry; next handshake", OWN_CA),
    live(P, "own_ca.pin_spki", "SHA-256 pins of the keys accepted from its CA; next handshake", OWN_CA),
    live(P, "own_ca.crl", "the partner's CRL (PEM): checked at each handshake and request, re-read whenever the file changes", OWN_CA),
    live(P, "routes[].methods", "methods the route grants", TIMEOUTS),
    live(P, "routes[].path", "path prefix the route grants", TIMEOUTS),
    live(P, "routes[].upstream", "upstream the route relays to", TIMEOUTS),
    live(P, "routes[].strip_prefix", "drop the route's path before relaying", PARTNER),
    live(P, "routes[].risk", "normal or high", PARTNER),
    live(P, "routes[].limits.requests_per_minute", "the route's rate limit", PARTNER),
    live(P, "routes[].limits.burst", "the route's burst", PARTNER),
    live(P, "routes[].limits.requests_per_day", "the route's daily quota", PARTNER),
    live(P, "routes[].limits.max_concurrent", "the route's requests in flight at once", PARTNER),
    live(P, "routes[].max_body_bytes", "the route's largest request body", PARTNER),
    live(P, "routes[].value.amount", "JSON pointer to the call's amount; counts against value_limits", PARTNER),
    live(P, "routes[].value.currency", "JSON pointer to the call's currency code", PARTNER),
    live(P, "routes[].require_signature", "calls must carry an RFC 9421 signature (unset: high-risk routes of a signing partner)", PARTNER),
];

/// The row for `key` in `file`.
pub fn setting(file: SettingsFile, key: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.file == file && s.key == key)
}

/// One concrete key's value, with the row it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlatValue {
    /// The inventory key (`upstreams.*.url`).
    pub pattern: &'static str,
    pub value: String,
}

/// A configuration taken apart into concrete keys (`upstreams.orders.url`,
/// `partners/acme.toml routes[0].path`) and their values as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flat(pub BTreeMap<String, FlatValue>);

impl Flat {
    fn put(&mut self, key: String, pattern: &'static str, value: String) {
        self.0.insert(key, FlatValue { pattern, value });
    }

    /// Key to value, with secret values replaced by a digest: what may be
    /// shown, sent over the admin socket and compared.
    pub fn public(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(k, v)| {
                let secret = SETTINGS.iter().any(|s| s.key == v.pattern && s.secret);
                let shown = if secret {
                    let digest = sha2::Sha256::digest(v.value.as_bytes());
                    format!("(secret, sha256 {})", &hex::encode(digest)[..16])
                } else {
                    v.value.clone()
                };
                (k.clone(), shown)
            })
            .collect()
    }
}

fn text(s: &str) -> String {
    format!("{s:?}")
}

fn dur(d: &Duration) -> String {
    format!("\"{}\"", format_duration(*d))
}

fn opt<T>(v: &Option<T>, f: impl Fn(&T) -> String) -> String {
    v.as_ref().map_or_else(|| "(unset)".to_string(), f)
}

fn path(p: &std::path::Path) -> String {
    text(&p.display().to_string())
}

fn ser<T: Serialize>(v: &T) -> String {
    toml::Value::try_from(v).map_or_else(|_| "(unset)".to_string(), |v| v.to_string())
}

/// Every key of `gatehouse.toml` with its value.
pub fn flatten_gateway(g: &GatewayConfig) -> Flat {
    let GatewayConfig {
        trust_domain,
        server,
        journal,
        ca,
        monitor,
        upstreams,
        cluster,
    } = g;
    let mut f = Flat::default();
    let mut put = |key: &'static str, value: String| f.put(key.to_string(), key, value);
    put("trust_domain", text(trust_domain));
    let ServerSettings {
        listen,
        admin,
        admin_public,
        admin_token_file,
        node_id,
        handshake_timeout,
        header_timeout,
        idle_timeout,
        drain_timeout,
        max_connections,
        max_header_bytes,
        max_body_bytes,
        h2_max_concurrent_streams,
        write_timeout,
        max_pending_handshakes_per_addr,
    } = server;
    put("server.listen", text(&listen.to_string()));
    put("server.admin", text(&admin.to_string()));
    put("server.admin_public", admin_public.to_string());
    put(
        "server.admin_token_file",
        opt(admin_token_file, |p| path(p)),
    );
    put("server.node_id", text(node_id));
    put("server.handshake_timeout", dur(handshake_timeout));
    put("server.header_timeout", dur(header_timeout));
    put("server.idle_timeout", dur(idle_timeout));
    put("server.drain_timeout", dur(drain_timeout));
    put("server.max_connections", max_connections.to_string());
    put("server.max_header_bytes", max_header_bytes.to_string());
    put("server.max_body_bytes", max_body_bytes.to_string());
    put(
        "server.h2_max_concurrent_streams",
        h2_max_concurrent_streams.to_string(),
    );
    put("server.write_timeout", dur(write_timeout));
    put(
        "server.max_pending_handshakes_per_addr",
        max_pending_handshakes_per_addr.to_string(),
    );
    let JournalSettings {
        durability,
        flush_interval,
        checkpoint_every,
        checkpoint_interval,
        handshake_refusals_per_interval,
        handshake_aggregate_interval,
        min_free,
    } = journal;
    put("journal.durability", ser(durability));
    put("journal.flush_interval", dur(flush_interval));
    put("journal.checkpoint_every", checkpoint_every.to_string());
    put("journal.checkpoint_interval", dur(checkpoint_interval));
    put(
        "journal.handshake_refusals_per_interval",
        handshake_refusals_per_interval.to_string(),
    );
    put(
        "journal.handshake_aggregate_interval",
        dur(handshake_aggregate_interval),
    );
    put("journal.min_free", text(&min_free.to_string()));
    let CaSettings {
        default_days,
        overlap,
        crl_validity,
    } = ca;
    put("ca.default_days", default_days.to_string());
    put("ca.overlap", dur(overlap));
    put("ca.crl_validity", dur(crl_validity));
    let MonitorSettings {
        expiry_warning_days,
        anomaly_factor,
        anomaly_floor_per_minute,
        anomaly_warmup_minutes,
        webhook_url,
        webhook_ca,
    } = monitor;
    put(
        "monitor.expiry_warning_days",
        expiry_warning_days.to_string(),
    );
    put("monitor.anomaly_factor", anomaly_factor.to_string());
    put(
        "monitor.anomaly_floor_per_minute",
        anomaly_floor_per_minute.to_string(),
    );
    put(
        "monitor.anomaly_warmup_minutes",
        anomaly_warmup_minutes.to_string(),
    );
    put("monitor.webhook_url", opt(webhook_url, |u| text(u)));
    put("monitor.webhook_ca", opt(webhook_ca, |p| path(p)));
    match cluster {
        None => put("cluster", "(absent)".into()),
        Some(c) => {
            put("cluster", "(present)".into());
            let ClusterSettings {
                redis_url,
                redis_ca,
                redis_password_file,
                redis_username,
                on_store_failure,
                key_prefix,
                store_timeout,
            } = c;
            put("cluster.redis_url", text(redis_url));
            put("cluster.redis_ca", opt(redis_ca, |p| path(p)));
            put(
                "cluster.redis_password_file",
                opt(redis_password_file, |p| path(p)),
            );
            put("cluster.redis_username", opt(redis_username, |u| text(u)));
            put("cluster.on_store_failure", ser(on_store_failure));
            put("cluster.key_prefix", text(key_prefix));
            put("cluster.store_timeout", dur(store_timeout));
        }
    }
    for (name, u) in upstreams {
        flatten_upstream(&mut f, name, u);
    }
    f
}

fn flatten_upstream(f: &mut Flat, name: &str, u: &UpstreamSettings) {
    let UpstreamSettings {
        url,
        endpoints,
        ca,
        server_name,
        client_cert,
        client_key,
        connect_timeout,
        response_timeout,
        signed_identity,
        balance,
        max_in_flight,
        queue,
        retries,
        per_try_timeout,
        retry_budget,
        health,
        outlier,
        dns_refresh,
        split,
        mirror,
    } = u;
    let mut put = |field: &str, pattern: &'static str, value: String| {
        let key = if field.is_empty() {
            format!("upstreams.{name}")
        } else {
            format!("upstreams.{name}.{field}")
        };
        f.put(key, pattern, value)
    };
    put("", "upstreams.*", "(present)".into());
    put("url", "upstreams.*.url", opt(url, |u| text(u)));
    put(
        "endpoints",
        "upstreams.*.endpoints",
        format!("{endpoints:?}"),
    );
    put("ca", "upstreams.*.ca", opt(ca, |p| path(p)));
    put(
        "server_name",
        "upstreams.*.server_name",
        opt(server_name, |s| text(s)),
    );
    put(
        "client_cert",
        "upstreams.*.client_cert",
        opt(client_cert, |p| path(p)),
    );
    put(
        "client_key",
        "upstreams.*.client_key",
        opt(client_key, |p| path(p)),
    );
    put(
        "connect_timeout",
        "upstreams.*.connect_timeout",
        dur(connect_timeout),
    );
    put(
        "response_timeout",
        "upstreams.*.response_timeout",
        dur(response_timeout),
    );
    put(
        "signed_identity",
        "upstreams.*.signed_identity",
        signed_identity.to_string(),
    );
    put("balance", "upstreams.*.balance", ser(balance));
    put(
        "max_in_flight",
        "upstreams.*.max_in_flight",
        opt(max_in_flight, |n| n.to_string()),
    );
    let QueueSettings { size, timeout } = queue;
    put("queue.size", "upstreams.*.queue.size", size.to_string());
    put("queue.timeout", "upstreams.*.queue.timeout", dur(timeout));
    put("retries", "upstreams.*.retries", retries.to_string());
    put(
        "per_try_timeout",
        "upstreams.*.per_try_timeout",
        opt(per_try_timeout, dur),
    );
    put(
        "retry_budget",
        "upstreams.*.retry_budget",
        retry_budget.to_string(),
    );
    match health {
        None => put("health", "upstreams.*.health", "(unset)".into()),
        Some(h) => {
            put("health", "upstreams.*.health", "(set)".into());
            let HealthSettings {
                path: probe,
                interval,
                timeout,
                healthy,
                unhealthy,
            } = h;
            put("health.path", "upstreams.*.health.path", text(probe));
            put(
                "health.interval",
                "upstreams.*.health.interval",
                dur(interval),
            );
            put("health.timeout", "upstreams.*.health.timeout", dur(timeout));
            put(
                "health.healthy",
                "upstreams.*.health.healthy",
                healthy.to_string(),
            );
            put(
                "health.unhealthy",
                "upstreams.*.health.unhealthy",
                unhealthy.to_string(),
            );
        }
    }
    let OutlierSettings {
        consecutive_failures,
        base_ejection,
        max_ejected_percent,
    } = outlier;
    put(
        "outlier.consecutive_failures",
        "upstreams.*.outlier.consecutive_failures",
        consecutive_failures.to_string(),
    );
    put(
        "outlier.base_ejection",
        "upstreams.*.outlier.base_ejection",
        dur(base_ejection),
    );
    put(
        "outlier.max_ejected_percent",
        "upstreams.*.outlier.max_ejected_percent",
        max_ejected_percent.to_string(),
    );
    put("dns_refresh", "upstreams.*.dns_refresh", dur(dns_refresh));
    put("split", "upstreams.*.split", format!("{split:?}"));
    match mirror {
        None => put("mirror", "upstreams.*.mirror", "(unset)".into()),
        Some(m) => {
            put("mirror", "upstreams.*.mirror", "(set)".into());
            let crate::config::MirrorSettings {
                to,
                percent,
                methods,
                compare,
                ignore_headers,
                ignore_json,
                max_in_flight,
                timeout,
                baseline,
            } = m;
            put("mirror.to", "upstreams.*.mirror.to", text(to));
            put(
                "mirror.percent",
                "upstreams.*.mirror.percent",
                percent.to_string(),
            );
            put(
                "mirror.methods",
                "upstreams.*.mirror.methods",
                format!("{methods:?}"),
            );
            put(
                "mirror.compare",
                "upstreams.*.mirror.compare",
                compare.to_string(),
            );
            put(
                "mirror.ignore_headers",
                "upstreams.*.mirror.ignore_headers",
                format!("{ignore_headers:?}"),
            );
            put(
                "mirror.ignore_json",
                "upstreams.*.mirror.ignore_json",
                format!("{ignore_json:?}"),
            );
            put(
                "mirror.max_in_flight",
                "upstreams.*.mirror.max_in_flight",
                max_in_flight.to_string(),
            );
            put("mirror.timeout", "upstreams.*.mirror.timeout", dur(timeout));
            put(
                "mirror.baseline",
                "upstreams.*.mirror.baseline",
                opt(baseline, |b| text(b)),
            );
        }
    }
}

/// Every key of one partner file, as `partners/<id>.toml <key>`.
pub fn flatten_partner(p: &Partner) -> Flat {
    let Partner {
        id,
        name,
        status,
        limits,
        on_anomaly,
        renewal_window,
        routes,
        pin,
        value_limits,
        signing,
        signing_keys,
        own_ca,
    } = p;
    let mut f = Flat::default();
    let file = format!("partners/{id}.toml");
    let mut put = |key: String, pattern: &'static str, value: String| {
        f.put(format!("{file} {key}"), pattern, value)
    };
    put("id".into(), "id", text(id));
    put("name".into(), "name", text(name));
    put("status".into(), "status", ser(status));
    flatten_limits(limits, "limits", &mut |key, pattern, value| {
        put(key, pattern, value)
    });
    put("on_anomaly".into(), "on_anomaly", ser(on_anomaly));
    put(
        "renewal_window".into(),
        "renewal_window",
        opt(renewal_window, dur),
    );
    put("pin".into(), "pin", format!("{pin:?}"));
    for (currency, limit) in value_limits {
        let crate::risk::CurrencyLimit { per_call, per_day } = limit;
        put(
            format!("value_limits.{currency}.per_call"),
            "value_limits.*.per_call",
            opt(per_call, ser),
        );
        put(
            format!("value_limits.{currency}.per_day"),
            "value_limits.*.per_day",
            opt(per_day, ser),
        );
    }
    put("signing".into(), "signing", signing.to_string());
    for (i, key) in signing_keys.iter().enumerate() {
        let SigningKey {
            id,
            public_key,
            spki,
        } = key;
        put(
            format!("signing_keys[{i}].id"),
            "signing_keys[].id",
            text(id),
        );
        // The file's name and what it held when read: a key replaced in
        // place is a change too.
        let digest = hex::encode(sha2::Sha256::digest(spki));
        put(
            format!("signing_keys[{i}].public_key"),
            "signing_keys[].public_key",
            format!("{} (sha256 {})", text(public_key), &digest[..16]),
        );
    }
    if let Some(own) = own_ca {
        let OwnCa {
            ca,
            name,
            pin_spki,
            crl,
        } = own;
        put("own_ca.ca".into(), "own_ca.ca", path(ca));
        let pattern = match name {
            NameMatch::SanUri(_) => "own_ca.match_san_uri",
            NameMatch::SanDns(_) => "own_ca.match_san_dns",
            NameMatch::SubjectCn(_) => "own_ca.match_subject_cn",
        };
        put(pattern.into(), pattern, text(name.value()));
        put(
            "own_ca.pin_spki".into(),
            "own_ca.pin_spki",
            format!("{pin_spki:?}"),
        );
        put("own_ca.crl".into(), "own_ca.crl", opt(crl, |p| path(p)));
    }
    for (i, r) in routes.iter().enumerate() {
        let RouteSpec {
            methods,
            path,
            upstream,
            strip_prefix,
            risk,
            limits,
            max_body_bytes,
            value,
            require_signature,
        } = r;
        let k = |field: &str| format!("routes[{i}].{field}");
        put(k("methods"), "routes[].methods", format!("{methods:?}"));
        put(k("path"), "routes[].path", text(path));
        put(k("upstream"), "routes[].upstream", text(upstream));
        put(
            k("strip_prefix"),
            "routes[].strip_prefix",
            strip_prefix.to_string(),
        );
        put(k("risk"), "routes[].risk", ser(risk));
        let limits = limits.clone().unwrap_or_default();
        flatten_limits(
            &limits,
            &format!("routes[{i}].limits"),
            &mut |key, pattern, value| {
                let pattern = match pattern {
                    "limits.requests_per_minute" => "routes[].limits.requests_per_minute",
                    "limits.burst" => "routes[].limits.burst",
                    "limits.requests_per_day" => "routes[].limits.requests_per_day",
                    _ => "routes[].limits.max_concurrent",
                };
                put(key, pattern, value)
            },
        );
        put(
            k("max_body_bytes"),
            "routes[].max_body_bytes",
            opt(max_body_bytes, |b| b.to_string()),
        );
        put(
            k("value.amount"),
            "routes[].value.amount",
            opt(value, |v| text(&v.amount)),
        );
        put(
            k("value.currency"),
            "routes[].value.currency",
            opt(value, |v| text(&v.currency)),
        );
        put(
            k("require_signature"),
            "routes[].require_signature",
            opt(require_signature, |b| b.to_string()),
        );
    }
    f
}

fn flatten_limits(l: &LimitSpec, prefix: &str, put: &mut dyn FnMut(String, &'static str, String)) {
    let LimitSpec {
        requests_per_minute,
        burst,
        requests_per_day,
        max_concurrent,
    } = l;
    let n = |v: &Option<u32>| opt(v, |x| x.to_string());
    put(
        format!("{prefix}.requests_per_minute"),
        "limits.requests_per_minute",
        n(requests_per_minute),
    );
    put(format!("{prefix}.burst"), "limits.burst", n(burst));
    put(
        format!("{prefix}.requests_per_day"),
        "limits.requests_per_day",
        opt(requests_per_day, |x| x.to_string()),
    );
    put(
        format!("{prefix}.max_concurrent"),
        "limits.max_concurrent",
        n(max_concurrent),
    );
}

/// A home's whole configuration taken apart: `gatehouse.toml` keys as
/// they are, partner keys prefixed with their file.
pub fn flatten(gateway: &GatewayConfig, partners: &[&Partner]) -> Flat {
    let mut f = flatten_gateway(gateway);
    for p in partners {
        f.0.extend(flatten_partner(p).0);
    }
    f
}

/// One changed key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingChange {
    /// The concrete key (`upstreams.orders.url`, `partners/acme.toml limits.burst`).
    pub key: String,
    pub apply: Apply,
}

fn file_of(key: &str) -> SettingsFile {
    if key.starts_with("partners/") {
        SettingsFile::Partner
    } else {
        SettingsFile::Gateway
    }
}

/// How a change of `pattern` applies; a key without a row waits for a
/// restart (the tests keep that from happening).
pub fn apply_of(file: SettingsFile, pattern: &str) -> Apply {
    setting(file, pattern).map_or(Apply::Restart, |s| s.apply)
}

/// The keys whose values differ between `old` and `new` (added and
/// removed keys too), each with how it applies. Joining or leaving a
/// fleet makes every `[cluster]` key wait for the restart with it.
pub fn changes(old: &BTreeMap<String, String>, new_: &Flat) -> Vec<SettingChange> {
    let new_public = new_.public();
    let mut keys: Vec<&String> = old.keys().chain(new_public.keys()).collect();
    keys.sort();
    keys.dedup();
    let cluster_moved = old.get("cluster") != new_public.get("cluster");
    keys.into_iter()
        .filter(|k| old.get(*k) != new_public.get(*k))
        .map(|k| {
            let pattern = new_
                .0
                .get(k)
                .map(|v| v.pattern)
                .unwrap_or_else(|| pattern_of(k));
            let mut apply = apply_of(file_of(k), pattern);
            if cluster_moved && (k == "cluster" || k.starts_with("cluster.")) {
                apply = Apply::Restart;
            }
            SettingChange {
                key: k.clone(),
                apply,
            }
        })
        .collect()
}

/// What a running broker would make of the files: the changed keys a
/// reload applies (the files against what it runs now), and those that
/// need a restart (the files against what it started with).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgainstRunning {
    pub on_reload: Vec<String>,
    pub on_restart: Vec<String>,
}

/// Compares the files (`files`) with a running broker's settings: those
/// it started with (`started`, `gatehouse.toml` only) and those in force
/// (`applied`), as [`Flat::public`] shows them.
pub fn against_running(
    started: &BTreeMap<String, String>,
    applied: &BTreeMap<String, String>,
    files: &Flat,
) -> AgainstRunning {
    let on_reload = changes(applied, files)
        .into_iter()
        .filter(|c| c.apply == Apply::Live)
        .map(|c| c.key)
        .collect();
    let on_restart = changes(started, files)
        .into_iter()
        .filter(|c| c.apply == Apply::Restart)
        .map(|c| c.key)
        .collect();
    AgainstRunning {
        on_reload,
        on_restart,
    }
}

/// The inventory key of a concrete key that is gone from the new files.
fn pattern_of(key: &str) -> &'static str {
    let file = file_of(key);
    let bare = match file {
        SettingsFile::Partner => key.split_once(' ').map_or(key, |(_, k)| k),
        SettingsFile::Gateway => key,
    };
    let generic: String = if let Some(rest) = bare.strip_prefix("upstreams.") {
        match rest.split_once('.') {
            Some((_, field)) => format!("upstreams.*.{field}"),
            None => "upstreams.*".into(),
        }
    } else if let Some(rest) = bare.strip_prefix("routes[") {
        match rest.split_once("].") {
            Some((_, field)) => format!("routes[].{field}"),
            None => bare.to_string(),
        }
    } else if let Some(rest) = bare.strip_prefix("signing_keys[") {
        match rest.split_once("].") {
            Some((_, field)) => format!("signing_keys[].{field}"),
            None => bare.to_string(),
        }
    } else if let Some(rest) = bare.strip_prefix("value_limits.") {
        match rest.split_once('.') {
            Some((_, field)) => format!("value_limits.*.{field}"),
            None => bare.to_string(),
        }
    } else {
        bare.to_string()
    };
    setting(file, &generic).map_or("(unknown)", |s| s.key)
}

/// The README's configuration reference: one table per file.
pub fn reference_markdown() -> String {
    let mut out = String::new();
    for (file, title) in [
        (SettingsFile::Gateway, "`gatehouse.toml`"),
        (SettingsFile::Partner, "`partners/<id>.toml`"),
    ] {
        out.push_str(&format!(
            "\n{title}:\n\n| key | on reload | what |\n| --- | --- | --- |\n"
        ));
        for s in SETTINGS.iter().filter(|s| s.file == file) {
            let when = match s.apply {
                Apply::Live => "applied",
                Apply::Restart => "**restart**",
            };
            out.push_str(&format!("| `{}` | {when} | {} |\n", s.key, s.what));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    /// A configuration with every optional field and section set.
    fn populated() -> (GatewayConfig, Partner) {
        let text = r#"
trust_domain = "gatehouse.local"
[server]
admin_token_file = "token"
[monitor]
webhook_url = "https://alerts.example:8443/hook"
webhook_ca = "certs/hook-ca.pem"
[cluster]
redis_url = "rediss://:pw@redis:6380"
redis_ca = "ca.pem"
redis_password_file = "pw"
redis_username = "gh"
[upstreams.orders]
url = "https://127.0.0.1:9443"
ca = "ca.pem"
server_name = "localhost"
client_cert = "c.pem"
client_key = "c.key"
max_in_flight = 10
per_try_timeout = "1s"
health = { path = "/healthz" }
mirror = { to = "orders-v2", percent = 5, methods = ["GET", "POST"], compare = true, ignore_headers = ["x-trace"], ignore_json = ["/generated_at"], max_in_flight = 8, timeout = "2s", baseline = "orders-legacy" }
[upstreams.orders-v2]
url = "http://127.0.0.1:9444"
[upstreams.orders-legacy]
url = "http://127.0.0.1:9445"
"#;
        let g = parse_gateway(Path::new("gatehouse.toml"), text).unwrap();
        let p = Partner {
            id: "acme".into(),
            name: "Acme".into(),
            status: PartnerStatus::Active,
            limits: LimitSpec {
                requests_per_minute: Some(1),
                burst: Some(1),
                requests_per_day: Some(1),
                max_concurrent: Some(1),
            },
            on_anomaly: OnAnomaly::Throttle,
            renewal_window: Some(Duration::from_secs(60)),
            pin: [("orders".to_string(), "orders-v2".to_string())].into(),
            routes: vec![RouteSpec {
                methods: vec!["GET".into()],
                path: "/v1".into(),
                upstream: "orders".into(),
                strip_prefix: true,
                risk: Risk::High,
                limits: Some(LimitSpec::default()),
                max_body_bytes: Some(1),
                value: Some(crate::risk::ValueSpec {
                    amount: "/amount".into(),
                    currency: "/currency".into(),
                }),
                require_signature: Some(true),
            }],
            value_limits: [(
                "EUR".to_string(),
                crate::risk::CurrencyLimit {
                    per_call: Some("10.00".parse().unwrap()),
                    per_day: Some("100.00".parse().unwrap()),
                },
            )]
            .into(),
            signing: true,
            signing_keys: vec![SigningKey {
                id: "k1".into(),
                public_key: "keys/k1.pem".into(),
                spki: vec![1, 2, 3],
            }],
            own_ca: Some(OwnCa {
                ca: "pki/bank-root.pem".into(),
                name: NameMatch::SanUri("https://bank.example/clients/acme".into()),
                pin_spki: vec!["ab".repeat(32)],
                crl: Some("pki/bank-crl.pem".into()),
            }),
        };
        (g, p)
    }

    /// `p` once per kind of name its own CA may match (one kind a file).
    fn with_every_name_match(p: &Partner) -> Vec<Partner> {
        [
            NameMatch::SanUri("https://bank.example/clients/acme".into()),
            NameMatch::SanDns("acme.example".into()),
            NameMatch::SubjectCn("acme-api".into()),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let mut q = p.clone();
            q.id = format!("{}{i}", p.id);
            if let Some(own) = &mut q.own_ca {
                own.name = name;
            }
            q
        })
        .collect()
    }

    /// Leaf keys of a serialized value, `*` for upstream names and `[]`
    /// for array elements.
    fn leaves(v: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
        // Tables whose keys are names the operator picks (a split's
        // sides, a partner's pins) are one setting each.
        let named_map = prefix == "pin" || prefix.ends_with(".split");
        match v {
            toml::Value::Table(t) if !named_map => {
                for (k, v) in t {
                    let k = if prefix == "upstreams" || prefix == "value_limits" {
                        "*"
                    } else {
                        k.as_str()
                    };
                    let key = if prefix.is_empty() {
                        k.to_string()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(v, &key, out);
                }
            }
            toml::Value::Array(a) if a.iter().any(|x| x.is_table()) => {
                for x in a {
                    leaves(x, &format!("{prefix}[]"), out);
                }
            }
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }

    #[test]
    fn every_key_has_a_decision_and_every_decision_a_key() {
        let (g, p) = populated();
        let variants = with_every_name_match(&p);
        let partners: Vec<&Partner> = variants.iter().collect();
        let flat = flatten(&g, &partners);
        let mut emitted = BTreeSet::new();
        for (key, v) in &flat.0 {
            let file = file_of(key);
            assert!(
                setting(file, v.pattern).is_some(),
                "`{key}` ({}) has no row in SETTINGS: decide whether a reload applies it",
                v.pattern
            );
            emitted.insert((file, v.pattern));
        }
        for s in SETTINGS {
            assert!(
                emitted.contains(&(s.file, s.key)),
                "SETTINGS names `{}`, which no configuration field produces",
                s.key
            );
        }
    }

    #[test]
    fn every_serialized_key_is_in_the_inventory() {
        let (g, p) = populated();
        let mut keys = BTreeSet::new();
        leaves(&toml::Value::try_from(&g).unwrap(), "", &mut keys);
        for k in &keys {
            assert!(
                setting(SettingsFile::Gateway, k).is_some(),
                "gatehouse.toml key `{k}` is not in SETTINGS"
            );
        }
        let mut keys = BTreeSet::new();
        for p in with_every_name_match(&p) {
            leaves(&toml::Value::try_from(&p).unwrap(), "", &mut keys);
        }
        for k in &keys {
            assert!(
                setting(SettingsFile::Partner, k).is_some(),
                "partner key `{k}` is not in SETTINGS"
            );
        }
    }

    #[test]
    fn changes_classify_each_key() {
        let (g, p) = populated();
        let before = flatten(&g, &[&p]).public();
        let mut g2 = g.clone();
        g2.server.listen = "127.0.0.1:1".parse().unwrap();
        g2.server.idle_timeout = Duration::from_secs(1);
        let mut p2 = p.clone();
        p2.limits.burst = Some(9);
        let c = changes(&before, &flatten(&g2, &[&p2]));
        assert_eq!(
            c,
            vec![
                SettingChange {
                    key: "partners/acme.toml limits.burst".into(),
                    apply: Apply::Live
                },
                SettingChange {
                    key: "server.idle_timeout".into(),
                    apply: Apply::Live
                },
                SettingChange {
                    key: "server.listen".into(),
                    apply: Apply::Restart
                },
            ]
        );
        // Leaving the fleet: every [cluster] key waits for the restart.
        let mut g3 = g.clone();
        g3.cluster = None;
        let c = changes(&before, &flatten(&g3, &[&p]));
        assert!(!c.is_empty());
        assert!(c.iter().all(|c| c.apply == Apply::Restart), "{c:?}");
        // A removed upstream is a live change.
        let mut g4 = g.clone();
        g4.upstreams.clear();
        let c = changes(&before, &flatten(&g4, &[&p]));
        assert!(
            c.iter()
                .any(|c| c.key == "upstreams.orders.url" && c.apply == Apply::Live)
        );
    }

    #[test]
    fn against_a_running_broker_reload_and_restart_keys_are_told_apart() {
        let (g, p) = populated();
        let started = flatten_gateway(&g).public();
        // A reload already applied an idle_timeout change and saw a listen
        // change (pending); the files now also change a partner's burst.
        let mut applied_g = g.clone();
        applied_g.server.idle_timeout = Duration::from_secs(5);
        applied_g.server.listen = "127.0.0.1:1".parse().unwrap();
        let applied = flatten(&applied_g, &[&p]).public();
        let mut p2 = p.clone();
        p2.limits.burst = Some(7);
        let files = flatten(&applied_g, &[&p2]);
        let d = against_running(&started, &applied, &files);
        assert_eq!(d.on_reload, vec!["partners/acme.toml limits.burst"]);
        assert_eq!(d.on_restart, vec!["server.listen"]);
        // Files equal to what runs: nothing to say.
        let d = against_running(&started, &applied, &flatten(&applied_g, &[&p]));
        assert!(d.on_reload.is_empty());
        assert_eq!(d.on_restart, vec!["server.listen"]);
        let d = against_running(&started, &flatten(&g, &[&p]).public(), &flatten(&g, &[&p]));
        assert_eq!(d, AgainstRunning::default());
    }

    /// Why a setting's `proved_by` does not name an end-to-end test.
    #[derive(Debug, thiserror::Error)]
    enum ProofError {
        #[error("`{0}` is not `module::function`")]
        NotAPath(String),
        #[error("cannot read tests/e2e/{file}: {source}")]
        Read {
            file: String,
            source: std::io::Error,
        },
        #[error("tests/e2e/main.rs does not list `mod {0};`")]
        ModuleNotListed(String),
        #[error("tests/e2e/{module}.rs has no `fn {function}(`")]
        NoFunction { module: String, function: String },
        #[error("tests/e2e/{module}.rs `{function}` is not a test")]
        NotATest { module: String, function: String },
    }

    /// The source of the e2e test `module::function` (`tests/e2e/`): its
    /// attributes and body, or what is wrong with the name.
    fn e2e_test_source(proof: &str) -> Result<String, ProofError> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
        let read = |file: String| {
            std::fs::read_to_string(dir.join(&file))
                .map_err(|source| ProofError::Read { file, source })
        };
        let (module, function) = proof
            .split_once("::")
            .ok_or_else(|| ProofError::NotAPath(proof.to_string()))?;
        let main = read("main.rs".to_string())?;
        if !main.lines().any(|l| l.trim() == format!("mod {module};")) {
            return Err(ProofError::ModuleNotListed(module.to_string()));
        }
        let text = read(format!("{module}.rs"))?;
        let start =
            text.find(&format!("fn {function}("))
                .ok_or_else(|| ProofError::NoFunction {
                    module: module.to_string(),
                    function: function.to_string(),
                })?;
        let item_start = text[..start].rfind("\n}\n").map_or(0, |i| i + 3);
        let end = text[start..]
            .find("\n}\n")
            .map_or(text.len(), |i| start + i + 3);
        let source = &text[item_start..end];
        if !(source.contains("#[tokio::test") || source.contains("#[test]")) {
            return Err(ProofError::NotATest {
                module: module.to_string(),
                function: function.to_string(),
            });
        }
        Ok(source.to_string())
    }

    #[test]
    fn every_setting_names_an_end_to_end_test_that_changes_it() {
        let mut problems = Vec::new();
        for s in SETTINGS {
            match e2e_test_source(s.proved_by) {
                Err(e) => problems.push(format!("`{}`: {e}", s.key)),
                Ok(source) => {
                    // The test names the key it changes (its last part).
                    let leaf = s.key.rsplit('.').next().unwrap_or(s.key);
                    let leaf = leaf.trim_start_matches("routes[]").trim_end_matches("[]");
                    if leaf != "*" && !source.contains(leaf) {
                        problems.push(format!(
                            "`{}`: {} never mentions `{leaf}`",
                            s.key, s.proved_by
                        ));
                    }
                }
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn secrets_are_never_shown() {
        let (g, _) = populated();
        let shown = flatten_gateway(&g).public();
        assert!(!shown["cluster.redis_url"].contains("pw"));
        assert!(shown["cluster.redis_url"].starts_with("(secret"));
    }

    #[test]
    fn the_readme_reference_is_the_inventory() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
                .unwrap();
        let begin = "<!-- settings reference: generated from src/config/settings.rs -->";
        let end = "<!-- end of settings reference -->";
        let start = readme.find(begin).map(|i| i + begin.len());
        let stop = readme.find(end);
        let (Some(start), Some(stop)) = (start, stop) else {
            panic!("README.md lacks the settings reference markers:\n{begin}\n{end}");
        };
        let expected = reference_markdown();
        if std::env::var_os("GATEHOUSE_WRITE_SETTINGS_REFERENCE").is_some() {
            // Regenerate: GATEHOUSE_WRITE_SETTINGS_REFERENCE=1 cargo test --lib readme_reference
            let text = format!(
                "{}\n{}\n{}",
                &readme[..start],
                expected.trim(),
                &readme[stop..]
            );
            std::fs::write(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"),
                text,
            )
            .unwrap();
            return;
        }
        assert_eq!(
            readme[start..stop].trim(),
            expected.trim(),
            "README.md's settings reference is out of date: run GATEHOUSE_WRITE_SETTINGS_REFERENCE=1 cargo test --lib readme_reference"
        );
    }
}
