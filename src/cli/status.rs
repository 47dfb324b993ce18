//! `gatehouse status`: asks the running broker's admin listener for
//! `GET /status` (found through `data/admin.sock`, whatever address
//! `serve` bound) and shows it per partner (a table, or the JSON with
//! `--json`). Owns nothing but the HTTP call and the rendering; the numbers
//! come from the monitor inside the broker.

use std::error::Error;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use crate::home::Home;

/// How long `gatehouse status` waits for the broker.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest status document accepted (bytes).
const MAX_STATUS_BYTES: usize = 16 * 1024 * 1024;

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Print the broker's status document as JSON.
    #[arg(long)]
    pub json: bool,
    /// The broker's admin address (default: asked of the running broker
    /// through data/admin.sock, else [server] admin in gatehouse.toml).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// The whole fleet, from its Redis store (`[cluster]`): live nodes,
    /// versions, configuration generations, per-partner totals.
    #[arg(long)]
    pub fleet: bool,
}

/// Why the status could not be fetched.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("the broker is not running (nothing answers on the admin address {0})")]
    NotRunning(SocketAddr),
    #[error("the broker at {0} did not answer within {1:?}")]
    Timeout(SocketAddr, Duration),
    #[error("the admin listener at {0} answered {1}: {2}")]
    Status(SocketAddr, u16, String),
    #[error("talking to the admin listener at {0}: {1}")]
    Http(SocketAddr, String),
}

pub fn run(home: &Home, args: StatusArgs) -> Result<ExitCode, Box<dyn Error>> {
    if args.fleet {
        let view = crate::fleet::status::read(home)?;
        crate::fleet::status::print(&view, args.json)?;
        return Ok(ExitCode::SUCCESS);
    }
    let admin = match args.admin {
        Some(a) => a,
        None => match crate::control::socket::admin_address(home) {
            Ok(Some(a)) => reachable(a),
            Ok(None) => crate::config::load_gateway(home)?.server.admin,
            Err(e) => {
                tracing::debug!("admin socket: {e}");
                crate::config::load_gateway(home)?.server.admin
            }
        },
    };
    // A public admin listener wants the bearer token from [server] admin_token_file.
    let token = match crate::config::load_gateway(home)
        .ok()
        .and_then(|g| g.server.admin_token_file)
    {
        Some(f) => {
            let path = home.resolve(&f);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("admin token file {}: {e}", path.display()))?;
            Some(text.trim().to_string())
        }
        None => None,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let doc = match runtime.block_on(fetch(admin, token.as_deref())) {
        Ok(doc) => doc,
        Err(e) => {
            eprintln!("gatehouse: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print!("{}", render_table(&doc));
    }
    Ok(ExitCode::SUCCESS)
}

/// An address to connect to for a listener bound to `addr`: a wildcard
/// bind (`0.0.0.0`, `[::]`) is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

async fn fetch(admin: SocketAddr, token: Option<&str>) -> Result<Value, FetchError> {
    match tokio::time::timeout(STATUS_TIMEOUT, fetch_inner(admin, token)).await {
        Ok(r) => r,
        Err(_) => Err(FetchError::Timeout(admin, STATUS_TIMEOUT)),
    }
}

async fn fetch_inner(admin: SocketAddr, token: Option<&str>) -> Result<Value, FetchError> {
    let http = |e: &dyn std::fmt::Display| FetchError::Http(admin, e.to_string());
    let tcp = tokio::net::TcpStream::connect(admin)
        .await
        .map_err(|_| FetchError::NotRunning(admin))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| http(&e))?;
    let conn_task = tokio::spawn(conn);
    let mut req = http::Request::get("/status")
        .header(http::header::HOST, admin.to_string())
        .header(http::header::ACCEPT, "application/json");
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| http(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| http(&e))?;
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), MAX_STATUS_BYTES)
        .collect()
        .await
        .map_err(|e| http(&*e))?
        .to_bytes();
    conn_task.abort();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(FetchError::Status(
            admin,
            status.as_u16(),
            text.trim().chars().take(200).collect(),
        ));
    }
    serde_json::from_slice(&body).map_err(|e| http(&e))
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => other.to_string(),
    }
}

/// A compact view of the limits in force and how close the partner is:
/// `rpm 600 (49 left) day 120/10000 conc 1/8 THROTTLED 250/min`, or `-`.
fn limits_cell(v: &Value) -> String {
    let Value::Object(m) = v else { return cell(v) };
    // The broker's live snapshot nests the configured limits under "limits";
    // a bare partner-file limits table is the fallback.
    let conf = m.get("limits").filter(|l| l.is_object()).unwrap_or(v);
    let num = |x: &Value| x.as_f64();
    let mut parts = Vec::new();
    if let Some(rpm) = num(&conf["requests_per_minute"]) {
        match num(&v["tokens_left"]) {
            Some(left) => parts.push(format!("rpm {rpm} ({} left)", left.floor())),
            None => parts.push(format!("rpm {rpm}")),
        }
    }
    if let Some(day) = num(&conf["requests_per_day"]) {
        let used = num(&v["quota_used"]).unwrap_or(0.0);
        parts.push(format!("day {used}/{day}"));
    }
    if let Some(c) = num(&conf["max_concurrent"]) {
        let used = num(&v["in_flight"]).unwrap_or(0.0);
        parts.push(format!("conc {used}/{c}"));
    }
    if let Some(t) = num(&v["throttle_per_minute"]) {
        parts.push(format!("THROTTLED {t:.0}/min"));
    }
    let routes = v["routes"]
        .as_array()
        .map(|r| r.iter().filter(|r| r["configured"] == true).count())
        .unwrap_or(0);
    if routes > 0 {
        parts.push(format!("+{routes} route limit(s)"));
    }
    if let Some(b) = num(&v["anomaly"]["baseline_per_minute"]) {
        parts.push(format!("baseline {b:.1}/min"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn certs_cell(v: &Value) -> String {
    let Some(list) = v.as_array().filter(|l| !l.is_empty()) else {
        return "none usable".into();
    };
    list.iter()
        .map(|c| {
            let serial = c["serial"].as_str().unwrap_or("?");
            let short: String = serial.chars().take(8).collect();
            let warn = if c["expiring"].as_bool() == Some(true) {
                "!"
            } else {
                ""
            };
            let own = if c["issuer"].is_string() {
                " (own CA)"
            } else {
                ""
            };
            format!("{short}:{}d{warn}{own}", cell(&c["days_to_expiry"]))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The status document as a table for people.
fn render_table(doc: &Value) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "gatehouse status at {} (last hour)\n",
        cell(&doc["generated_at"])
    ));
    out.push_str(&format!(
        "{:<20} {:<10} {:>8} {:>8} {:>8} {:>8}  {:<32}  CERTS (days to expiry; ! = expiring)\n",
        "PARTNER", "STATUS", "REQS", "DENIED", "P50ms", "P99ms", "LIMITS"
    ));
    let empty = Vec::new();
    let partners = doc["partners"].as_array().unwrap_or(&empty);
    for p in partners {
        let w = &p["last_hour"];
        out.push_str(&format!(
            "{:<20} {:<10} {:>8} {:>8} {:>8} {:>8}  {:<32}  {}\n",
            cell(&p["id"]),
            cell(&p["status"]),
            cell(&w["requests"]),
            cell(&w["denials"]),
            cell(&w["p50_ms"]),
            cell(&w["p99_ms"]),
            limits_cell(&p["limits"]),
            certs_cell(&p["certificates"]),
        ));
    }
    if partners.is_empty() {
        out.push_str("(no partners configured)\n");
    }
    let upstreams = doc["upstreams"].as_array().unwrap_or(&empty);
    if !upstreams.is_empty() {
        out.push_str(&format!(
            "{:<20} {:<40} {:<10} {:>9} {:>9} {:>9} {:>9}\n",
            "UPSTREAM", "ENDPOINT", "STATE", "INFLIGHT", "OK", "FAILED", "EJECTED"
        ));
    }
    for u in upstreams {
        let eps = u["endpoints"].as_array().unwrap_or(&empty);
        if eps.is_empty() {
            out.push_str(&format!(
                "{:<20} (no endpoint: every request gets 503)\n",
                cell(&u["name"])
            ));
        }
        for e in eps {
            out.push_str(&format!(
                "{:<20} {:<40} {:<10} {:>9} {:>9} {:>9} {:>9}\n",
                cell(&u["name"]),
                cell(&e["address"]),
                cell(&e["state"]),
                cell(&e["in_flight"]),
                cell(&e["success"]),
                cell(&e["failure"]),
                cell(&e["ejections"]),
            ));
        }
        let queued = u["queue_depth"].as_u64().unwrap_or(0);
        if queued > 0 {
            out.push_str(&format!(
                "{:<20} {queued} waiting for a place\n",
                cell(&u["name"])
            ));
        }
    }
    let mut value_lines = Vec::new();
    for p in partners {
        for v in p["value_today"].as_array().unwrap_or(&empty) {
            value_lines.push(format!(
                "  {:<20} {:<8} {:>20} of {:<20} per call {}\n",
                cell(&p["id"]),
                cell(&v["currency"]),
                cell(&v["today"]),
                cell(&v["per_day"]),
                cell(&v["per_call"]),
            ));
        }
    }
    if !value_lines.is_empty() {
        out.push_str("value today (UTC day; total of per_day):\n");
        out.extend(value_lines);
    }
    for s in doc["splits"].as_array().unwrap_or(&empty) {
        let sides: Vec<String> = s["sides"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .map(|side| {
                let pinned = side["pinned"].as_array().map_or(0, Vec::len);
                format!(
                    "{} {}{}",
                    cell(&side["side"]),
                    cell(&side["weight"]),
                    if pinned > 0 {
                        format!(" (+{pinned} pinned)")
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        out.push_str(&format!(
            "split {}: {}\n",
            cell(&s["name"]),
            sides.join(", ")
        ));
    }
    out.push_str(&mirrors_table(&doc["mirrors"]));
    let pending: Vec<&str> = doc["restart_pending"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .filter_map(|k| k.as_str())
        .collect();
    if !pending.is_empty() {
        out.push_str(&format!(
            "restart pending: {} (changed in the files; takes effect at restart)\n",
            pending.join(", ")
        ));
    }
    let alerts = doc["alerts"].as_array().unwrap_or(&empty);
    if alerts.is_empty() {
        out.push_str("open alerts: none\n");
    } else {
        out.push_str("open alerts:\n");
        for a in alerts {
            out.push_str(&format!(
                "  {} {} {}\n",
                cell(&a["kind"]),
                cell(&a["partner"]),
                cell(&a["detail"])
            ));
        }
    }
    out
}

/// The mirrors: per mirrored upstream and route, the last hour's results
/// and match rate, then the noise learned for the route.
fn mirrors_table(m: &Value) -> String {
    let empty = Vec::new();
    let upstreams = m["upstreams"].as_array().unwrap_or(&empty);
    if upstreams.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "{:<28} {:<20} {:>8} {:>9} {:>7} {:>8} {:>7}\n",
        "MIRROR (upstream -> to)", "ROUTE", "MATCH", "MISMATCH", "ERROR", "DROPPED", "RATE"
    );
    for u in upstreams {
        let name = format!("{} -> {}", cell(&u["upstream"]), cell(&u["candidate"]));
        let t = &u["totals"];
        out.push_str(&format!(
            "{:<28} {:<20} {:>8} {:>9} {:>7} {:>8} {:>7}\n",
            name,
            "(all, since start)",
            cell(&t["match"]),
            cell(&t["mismatch"]),
            cell(&t["error"]),
            cell(&t["dropped"]),
            "",
        ));
        for r in u["routes"].as_array().unwrap_or(&empty) {
            let h = &r["last_hour"];
            let rate = r["match_rate"]
                .as_f64()
                .map(|x| format!("{:.1}%", x * 100.0))
                .unwrap_or_else(|| "-".into());
            out.push_str(&format!(
                "{:<28} {:<20} {:>8} {:>9} {:>7} {:>8} {:>7}\n",
                "",
                cell(&r["route"]),
                cell(&h["match"]),
                cell(&h["mismatch"]),
                cell(&h["error"]),
                cell(&h["dropped"]),
                rate,
            ));
            let noise: Vec<String> = r["noise"]["pointers"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(cell)
                .chain(
                    r["noise"]["headers"]
                        .as_array()
                        .unwrap_or(&empty)
                        .iter()
                        .map(|h| format!("header {}", cell(h))),
                )
                .collect();
            if !noise.is_empty() {
                out.push_str(&format!(
                    "{:<28} noise on {} (not counted): {}\n",
                    "",
                    cell(&r["route"]),
                    noise.join(", ")
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_partners_limits_certs_and_alerts() {
        let doc = serde_json::json!({
            "generated_at": "2026-06-01T12:00:00Z",
            "partners": [{
                "id": "acme", "name": "Acme", "status": "active",
                "last_hour": {"requests": 12, "denials": 3, "p50_ms": 5.0, "p99_ms": null},
                "limits": {"requests_per_minute": 600, "burst": 50},
                "certificates": [{"serial": "0123456789abcdef", "days_to_expiry": 5, "expiring": true}],
                "alerts": []
            }],
            "alerts": [{"kind": "traffic_spike", "partner": "acme", "detail": "x10"}]
        });
        let t = render_table(&doc);
        assert!(t.contains("acme"), "{t}");
        assert!(t.contains("rpm 600"), "{t}");
        assert!(t.contains("01234567:5d!"), "{t}");
        assert!(t.contains("traffic_spike acme x10"), "{t}");
        assert!(render_table(&serde_json::json!({})).contains("no partners"));
        assert!(!t.contains("restart pending"), "{t}");
        let t = render_table(&serde_json::json!({"restart_pending": ["server.listen"]}));
        assert!(t.contains("restart pending: server.listen"), "{t}");
    }

    #[test]
    fn table_shows_mirror_results_and_learned_noise() {
        let doc = serde_json::json!({"mirrors": {"upstreams": [{
            "upstream": "orders", "candidate": "orders-v2",
            "totals": {"match": 9, "mismatch": 1, "error": 0, "dropped": 2},
            "routes": [{"route": "/v1/orders", "match_rate": 0.9,
                "last_hour": {"match": 9, "mismatch": 1, "error": 0, "dropped": 2},
                "noise": {"pointers": ["/generated_at"], "headers": ["x-trace"]}}]
        }]}});
        let t = render_table(&doc);
        assert!(t.contains("orders -> orders-v2"), "{t}");
        let route = t
            .lines()
            .find(|l| l.contains("/v1/orders") && l.contains("90.0%"));
        assert!(route.is_some(), "{t}");
        assert!(
            t.contains("noise on /v1/orders (not counted): /generated_at, header x-trace"),
            "{t}"
        );
        assert!(!render_table(&serde_json::json!({})).contains("MIRROR"));
    }

    #[test]
    fn table_shows_each_upstream_endpoint_and_its_state() {
        let doc = serde_json::json!({
            "upstreams": [{
                "name": "orders", "in_flight": 1, "queue_depth": 4,
                "endpoints": [
                    {"address": "10.0.0.11:9443", "state": "up", "in_flight": 1, "success": 90, "failure": 0, "ejections": 0},
                    {"address": "10.0.0.12:9443", "state": "ejected", "in_flight": 0, "success": 10, "failure": 5, "ejections": 1}
                ]
            }, {"name": "empty", "endpoints": []}]
        });
        let t = render_table(&doc);
        assert!(t.contains("10.0.0.12:9443"), "{t}");
        let ejected = t
            .lines()
            .find(|l| l.contains("10.0.0.12"))
            .unwrap_or_default();
        assert!(
            ejected.contains("ejected") && ejected.contains("orders"),
            "{t}"
        );
        assert!(t.contains("4 waiting"), "{t}");
        assert!(t.contains("no endpoint"), "{t}");
    }
}
