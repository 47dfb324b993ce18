//! The console's JSON: `/api/overview` (partners, their routes, limits,
//! certificates, per-minute traffic and denial reasons over the last hour,
//! open alerts, health), `/api/journal` (the records `log query` would
//! list, plus a request-id filter) and `/api/journal/record?seq=N` (one
//! record, its place in the hash chain and the signed checkpoint covering
//! it, if any). The journal is read through the broker's admin socket, off
//! the async threads, with bounded answers.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use time::OffsetDateTime;

use super::{error, json};
use crate::control::socket::{self as admin, Reply, Request};
use crate::control::view::AdminView;
use crate::event::{Decision, EventKind, now_ms};
use crate::journal::{JournalError, Query};
use crate::reason::Reason;

/// Records one journal answer may hold.
const MAX_LIMIT: usize = 1000;
/// Records scanned (newest first) to find a request id.
const REQUEST_ID_SCAN: usize = 20_000;
/// Denied records read for the last hour's denial reasons.
const REASON_SCAN: usize = 5_000;
/// Lines read after a record while looking for the checkpoint covering it.
const CHECKPOINT_SCAN: usize = 50_000;
/// How long one admin-socket answer may take.
const SOCKET_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn overview(shared: &Arc<AdminView>) -> Response<Full<Bytes>> {
    let home = shared.live.home.clone();
    let inventory =
        match tokio::task::spawn_blocking(move || crate::ca::inventory::Inventory::load(&home))
            .await
        {
            Ok(Ok(inv)) => inv,
            _ => {
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "inventory_unreadable",
                    "the certificate inventory cannot be read",
                );
            }
        };
    let snapshot = shared.live.snapshot();
    let partners: Vec<_> = snapshot
        .partners
        .values()
        .map(|e| e.partner.clone())
        .collect();
    let now = now_ms();
    let mut limits = HashMap::new();
    for p in &partners {
        let mut v = snapshot
            .limits
            .snapshot(&p.id, now)
            .and_then(|s| serde_json::to_value(s).ok())
            .unwrap_or(Value::Null);
        if let Some(a) = shared.events.detector().status(&p.id, now)
            && let Ok(a) = serde_json::to_value(a)
            && let Some(obj) = v.as_object_mut()
        {
            obj.insert("anomaly".into(), a);
        }
        limits.insert(p.id.clone(), v);
    }
    let warn_days = snapshot.gateway.monitor.expiry_warning_days;
    let mut status = crate::guard::monitor::status_json(
        shared.events.monitor(),
        &partners,
        &inventory,
        &limits,
        OffsetDateTime::now_utc(),
        warn_days,
    );
    // Denial reasons over the last hour, per partner, from the journal.
    let reasons = denial_reasons(shared, now - 3_600_000).await;
    if let Some(rows) = status["partners"].as_array_mut() {
        for row in rows {
            let id = row["id"].as_str().unwrap_or_default().to_string();
            if let Some(p) = partners.iter().find(|p| p.id == id) {
                row["routes"] = p.routes.iter().map(|r| Value::from(r.describe())).collect();
                row["high_risk_routes"] = p
                    .routes
                    .iter()
                    .filter(|r| r.risk == crate::config::Risk::High)
                    .map(|r| Value::from(r.describe()))
                    .collect();
                row["value_today"] = crate::control::view::value_today(&shared.live.values, p, now);
                // Whose CA the partner's certificates come from.
                if let Some(own) = &p.own_ca {
                    let issuer = snapshot
                        .partner_cas
                        .iter()
                        .find(|c| c.partner == p.id)
                        .map(|c| c.issuer.clone());
                    row["own_ca"] = json!({
                        "issuer": issuer,
                        "ca": own.ca.display().to_string(),
                        "name": own.name.describe(),
                        "pinned_keys": own.pin_spki.len(),
                        "crl": own.crl.as_ref().map(|c| c.display().to_string()),
                    });
                }
            }
            row["series"] = json!(shared.events.monitor().recent_series(&id, now));
            row["denial_reasons"] = json!(reasons.get(&id).cloned().unwrap_or_default());
        }
    }
    let journal = shared.events.writable();
    let listening = shared.connections.listening();
    status["upstreams"] = crate::upstream::status_json(&snapshot.upstreams);
    status["mirrors"] = shared.live.mirrors.status_json(now);
    status["node"] = json!(shared.events.node());
    status["expiry_warning_days"] = json!(warn_days);
    // Settings changed in the files that only a restart puts in force.
    status["restart_pending"] = json!(snapshot.restart_pending);
    status["health"] = json!({
        "ready": journal && listening,
        "journal_writable": journal,
        "listening": listening,
    });
    json(StatusCode::OK, &status)
}

async fn denial_reasons(
    shared: &Arc<AdminView>,
    since_ms: i64,
) -> HashMap<String, BTreeMap<String, u64>> {
    let query = Query {
        since_ms: Some(since_ms),
        decision: Some(Decision::Denied),
        kind: Some(EventKind::Exchange),
        limit: REASON_SCAN,
        reverse: true,
        ..Query::default()
    };
    let mut out: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
    if let Ok(records) = ask(shared, Request::Query { query }, usize::MAX).await {
        for r in records {
            if let Reply::Record(r) = r
                && let Some(p) = r.event.partner.clone()
            {
                let reason = r.event.reason.clone().unwrap_or_else(|| "other".into());
                *out.entry(p).or_default().entry(reason).or_default() += 1;
            }
        }
    }
    out
}

/// A journal filter parameter that cannot be read (named in the message).
#[derive(Debug)]
struct BadParam(String);

/// `/api/journal?partner=&kind=&decision=&status=&since=&until=&request_id=&limit=&order=`
pub async fn journal(shared: &Arc<AdminView>, raw_query: &str) -> Response<Full<Bytes>> {
    let q = params(raw_query);
    let parsed = (|| -> Result<(Query, Option<String>), BadParam> {
        let now = OffsetDateTime::now_utc();
        let instant = |k: &str| -> Result<Option<i64>, BadParam> {
            match q.get(k).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => crate::timefmt::parse_instant(v, now)
                    .map(|t| Some((t.unix_timestamp_nanos() / 1_000_000) as i64))
                    .map_err(|e| BadParam(format!("{k}: {e}"))),
            }
        };
        let nonempty = |k: &str| q.get(k).filter(|v| !v.is_empty()).cloned();
        let decision = match nonempty("decision").as_deref() {
            None => None,
            Some("allowed") => Some(Decision::Allowed),
            Some("denied") => Some(Decision::Denied),
            Some(d) => {
                return Err(BadParam(format!(
                    "decision: `{d}` is not allowed or denied"
                )));
            }
        };
        let kind = match nonempty("kind").as_deref() {
            None => None,
            Some("exchange") => Some(EventKind::Exchange),
            Some("handshake") => Some(EventKind::Handshake),
            Some("alert") => Some(EventKind::Alert),
            Some("admin") => Some(EventKind::Admin),
            Some("mirror_diff") => Some(EventKind::MirrorDiff),
            Some(k) => {
                return Err(BadParam(format!(
                    "kind: `{k}` is not exchange, handshake, alert, admin or mirror_diff"
                )));
            }
        };
        let status = nonempty("status")
            .map(|s| {
                s.parse::<u16>()
                    .map_err(|_| BadParam(format!("status: `{s}` is not an HTTP status")))
            })
            .transpose()?;
        let limit = nonempty("limit")
            .map(|s| {
                s.parse::<usize>()
                    .map_err(|_| BadParam(format!("limit: `{s}` is not a number")))
            })
            .transpose()?
            .unwrap_or(100)
            .clamp(1, MAX_LIMIT);
        let request_id = nonempty("request_id");
        let query = Query {
            partner: nonempty("partner"),
            since_ms: instant("since")?,
            until_ms: instant("until")?,
            decision,
            status,
            kind,
            // A request id is looked for among the newest records.
            limit: if request_id.is_some() {
                REQUEST_ID_SCAN
            } else {
                limit
            },
            reverse: request_id.is_some() || nonempty("order").as_deref() != Some("oldest"),
        };
        Ok((query, request_id))
    })();
    let (query, request_id) = match parsed {
        Ok(x) => x,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_filter", &e.0),
    };
    let limit = query.limit.min(MAX_LIMIT);
    let scanned_limit = query.limit;
    let rid = request_id.clone();
    let replies = ask(shared, Request::Query { query }, usize::MAX).await;
    let replies = match replies {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::JournalUnavailable.code(),
                &e.to_string(),
            );
        }
    };
    let scanned = replies.len();
    let records: Vec<Value> = replies
        .into_iter()
        .filter_map(|r| match r {
            Reply::Record(r) => Some(r),
            _ => None,
        })
        .filter(|r| {
            rid.as_deref()
                .is_none_or(|id| r.event.request_id.as_deref() == Some(id))
        })
        .take(limit)
        .filter_map(|r| serde_json::to_value(&*r).ok())
        .collect();
    json(
        StatusCode::OK,
        &json!({
            "records": records,
            "scanned": scanned,
            // More records may match than were read.
            "truncated": scanned >= scanned_limit,
        }),
    )
}

/// `/api/journal/record?seq=N`
pub async fn record(shared: &Arc<AdminView>, raw_query: &str) -> Response<Full<Bytes>> {
    let q = params(raw_query);
    let Some(seq) = q
        .get("seq")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
    else {
        return error(StatusCode::BAD_REQUEST, "bad_seq", "give ?seq=N (N >= 1)");
    };
    // The record, then the first checkpoint at or after it.
    #[derive(Default)]
    struct Found {
        record: Option<Box<crate::journal::record::RecordLine>>,
        checkpoint: Option<crate::journal::checkpoint::CheckpointLine>,
        read: usize,
    }
    let export = Request::Export {
        after_seq: seq - 1,
        follow: false,
    };
    let result = ask_with(shared, export, Found::default(), move |f: &mut Found, r| {
        f.read += 1;
        match r {
            // The first record must be the one asked for (else it was pruned).
            Reply::Record(rec) if f.record.is_none() => {
                if rec.seq != seq {
                    return false;
                }
                f.record = Some(rec);
            }
            Reply::Checkpoint(c) if f.record.is_some() && c.seq >= seq => {
                f.checkpoint = Some(c);
                return false;
            }
            _ => {}
        }
        f.read < CHECKPOINT_SCAN
    })
    .await;
    let (record, checkpoint) = match result {
        Ok(Found {
            record: Some(r),
            checkpoint,
            ..
        }) => (r, checkpoint),
        Ok(_) => {
            return error(
                StatusCode::NOT_FOUND,
                "no_such_record",
                &format!("no record with seq {seq} (pruned, or not written yet)"),
            );
        }
        Err(e) => {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                Reason::JournalUnavailable.code(),
                &e.to_string(),
            );
        }
    };
    let stats = match ask(shared, Request::Status, 1).await {
        Ok(replies) => replies.into_iter().find_map(|r| match r {
            Reply::Status(s) => Some(s.store),
            _ => None,
        }),
        Err(_) => None,
    };
    json(
        StatusCode::OK,
        &json!({
            "record": record,
            "chain": {
                "seq": record.seq,
                "prev_hash": record.prev_hash,
                "hash": record.hash,
                "first_seq": stats.as_ref().map(|s| s.base_seq + 1),
                "last_seq": stats.as_ref().map(|s| s.last_seq),
            },
            "checkpoint": checkpoint.map(|c| json!({
                "seq": c.seq,
                "time": c.time,
                "kind": c.kind,
                "hash": c.hash,
                "signature": c.signature,
            })),
        }),
    )
}

/// Runs one admin-socket request, collecting at most `max` replies.
async fn ask(
    shared: &Arc<AdminView>,
    req: Request,
    max: usize,
) -> Result<Vec<Reply>, JournalError> {
    ask_with(shared, req, Vec::new(), move |out: &mut Vec<Reply>, r| {
        out.push(r);
        out.len() < max
    })
    .await
}

/// Runs one admin-socket request off the async threads: `step` folds each
/// reply into `state` and says whether to read on; the state comes back at
/// the end of the answer or when `step` stops.
async fn ask_with<S, F>(
    shared: &Arc<AdminView>,
    req: Request,
    mut state: S,
    mut step: F,
) -> Result<S, JournalError>
where
    S: Send + 'static,
    F: FnMut(&mut S, Reply) -> bool + Send + 'static,
{
    let path = shared.live.home.admin_socket();
    let joined = tokio::task::spawn_blocking(move || {
        let stream = UnixStream::connect(&path).map_err(|e| {
            JournalError::Message(format!(
                "the journal's admin socket {}: {e}",
                path.display()
            ))
        })?;
        let _ = stream.set_read_timeout(Some(SOCKET_TIMEOUT));
        admin::request(stream, &path, &req, &mut |r| Ok(step(&mut state, r)))?;
        Ok(state)
    })
    .await;
    match joined {
        Ok(r) => r,
        Err(e) => Err(JournalError::Message(format!(
            "journal read task failed: {e}"
        ))),
    }
}

/// `a=1&b=x%20y` → map (percent- and `+`-decoded; later keys win).
fn params(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let p = params("partner=acme&since=1h&request_id=ab%2Fcd&x=a+b&empty=&bad=%zz&end=%4");
        assert_eq!(p["partner"], "acme");
        assert_eq!(p["request_id"], "ab/cd");
        assert_eq!(p["x"], "a b");
        assert_eq!(p["empty"], "");
        assert_eq!(p["bad"], "%zz");
        assert_eq!(p["end"], "%4");
    }
}
