//! The value phase of a route with a `value`: reads the request body whole
//! (bounded), reads its amount and currency, checks the partner's
//! `[value_limits]` for that currency (`per_call`, then the UTC day's
//! running total, fleet-wide in a fleet) and reserves the amount. The
//! reservation gives the amount back when dropped unless the upstream
//! answered 2xx ([`Reservation::keep`]).

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use super::Gateway;
use super::membership::GiveBack;
use super::refusal::Refusal;
use crate::config::Partner;
use crate::reason::Reason;
use crate::risk::ledger::{day_of, secs_to_midnight};
use crate::risk::{CallValue, Unreadable, ValueSpec, read_value};

/// The most of a body the value phase reads (the route's or server's
/// `max_body_bytes` when smaller): the body is held in memory whole.
pub const MAX_VALUE_BODY: u64 = 1 << 20;

/// A reserved value (see the module doc).
pub struct Reservation {
    pub value: CallValue,
    give_back: Option<GiveBack>,
}

impl Reservation {
    /// The upstream answered 2xx: the amount stays in the day's total.
    pub fn keep(mut self) {
        self.give_back = None;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(give_back) = self.give_back.take() {
            give_back();
        }
    }
}

/// Reads the whole body, up to `max` bytes (413 past it).
pub async fn read_body(body: Incoming, max: u64) -> Result<Bytes, Refusal> {
    match Limited::new(body, max as usize).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(Refusal::new(Reason::BodyTooLarge).detail(format!(
                "a route with a value reads its body whole: at most {max} bytes"
            )))
        }
        Err(e) => Err(Refusal::new(Reason::BadBody)
            .detail(format!("the request body could not be read: {e}"))),
    }
}

fn unreadable(u: Unreadable) -> Refusal {
    Refusal::new(Reason::ValueUnreadable)
        .with("problem", u.to_string())
        .with("problem_kind", u.kind())
        .detail(u.to_string())
}

/// Reads, checks and reserves the value of `body` (see the module doc).
pub async fn check(
    gw: &Gateway,
    partner: &Partner,
    spec: &ValueSpec,
    body: &[u8],
) -> Result<Reservation, Refusal> {
    let value = read_value(body, spec).map_err(unreadable)?;
    let Some(limit) = partner.value_limits.get(&value.currency) else {
        return Err(unreadable(Unreadable::NoLimitFor(value.currency)));
    };
    if let Some(per_call) = limit.per_call
        && value.amount > per_call
    {
        return Err(Refusal::new(Reason::ValueLimitPerCall)
            .with("currency", value.currency.clone())
            .with("amount", value.amount.to_string())
            .with("per_call", per_call.to_string())
            .detail(format!(
                "{} {} is over per_call {}",
                value.currency, value.amount, per_call
            )));
    }
    let now_ms = crate::event::now_ms();
    let give_back: GiveBack = match &gw.fleet {
        Some(fleet) => {
            fleet
                .reserve_value(&partner.id, &value, limit.per_day, now_ms)
                .await?
        }
        None => reserve_locally(&gw.live.values, &partner.id, &value, limit.per_day, now_ms)?,
    };
    Ok(Reservation {
        value,
        give_back: Some(give_back),
    })
}

/// Reserves in this node's totals (a single node, or a fleet whose store
/// is down and whose settings say to go on locally).
pub fn reserve_locally(
    ledger: &Arc<crate::risk::Ledger>,
    partner: &str,
    value: &CallValue,
    per_day: Option<crate::risk::Amount>,
    now_ms: i64,
) -> Result<GiveBack, Refusal> {
    let day = day_of(now_ms);
    match ledger.reserve(partner, &value.currency, value.amount, per_day, day) {
        Ok(()) => {
            let ledger = ledger.clone();
            let (partner, value) = (partner.to_string(), value.clone());
            Ok(Box::new(move || {
                ledger.give_back(&partner, &value.currency, value.amount, day)
            }))
        }
        Err(over) => Err(daily_over(value, per_day, over.total, now_ms)),
    }
}

/// The 429 for a day's total that `value` would take past `per_day`.
pub fn daily_over(
    value: &CallValue,
    per_day: Option<crate::risk::Amount>,
    total: crate::risk::Amount,
    now_ms: i64,
) -> Refusal {
    let per_day = per_day.map(|p| p.to_string()).unwrap_or_default();
    Refusal::new(Reason::ValueLimitDaily)
        .retry_after(secs_to_midnight(now_ms))
        .with("currency", value.currency.clone())
        .with("amount", value.amount.to_string())
        .with("today", total.to_string())
        .with("per_day", per_day.clone())
        .detail(format!(
            "{} {} on top of today's {} is over per_day {}",
            value.currency, value.amount, total, per_day
        ))
}

/// Records read per step when the day's totals are rebuilt.
const RESTORE_PAGE: usize = 4096;

/// Rebuilds today's totals of a single node from its journal at start:
/// every exchange of today that was relayed with a 2xx answer and carries
/// a value adds to its partner's total (a fleet keeps its totals in the
/// store instead). Reads each valued partner's slice of the journal's
/// partner index, a page at a time. Returns how many calls were counted.
pub fn restore_totals(
    store: &crate::journal::Store,
    live: &crate::gateway::live::Live,
    now_ms: i64,
) -> Result<usize, crate::journal::JournalError> {
    use crate::event::{Decision, EventKind};
    use crate::journal::Query;
    let day = day_of(now_ms);
    let snapshot = live.snapshot();
    let mut counted = 0;
    for entry in snapshot.partners.values() {
        let p = &entry.partner;
        if p.value_limits.is_empty() {
            continue;
        }
        let mut since = day * 86_400_000;
        let mut last_seq = 0;
        loop {
            let page = store.query(&Query {
                partner: Some(p.id.clone()),
                since_ms: Some(since),
                until_ms: None,
                decision: Some(Decision::Allowed),
                status: None,
                kind: Some(EventKind::Exchange),
                limit: RESTORE_PAGE,
                reverse: false,
            })?;
            let full = page.len() == RESTORE_PAGE;
            let mut moved = false;
            for r in &page {
                if r.seq <= last_seq && r.event.time_ms == since {
                    continue;
                }
                moved = true;
                since = r.event.time_ms;
                last_seq = r.seq;
                let e = &r.event;
                if !e.status.is_some_and(|s| (200..300).contains(&s)) {
                    continue;
                }
                if let (Some(a), Some(c)) = (&e.value_amount, &e.value_currency)
                    && let Ok(amount) = crate::risk::Amount::parse(a)
                {
                    live.values.restore(&p.id, c, amount, day);
                    counted += 1;
                }
            }
            if !full || !moved {
                break;
            }
        }
    }
    Ok(counted)
}
