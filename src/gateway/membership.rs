//! What the gateway asks of the fleet it may belong to, as a trait the
//! gateway owns and `crate::fleet` implements: the admission check's fleet
//! part, the fleet-wide limit phase, and telling the other nodes of a
//! change made here (a self-service renewal). A single node has none, and
//! the gateway never names the fleet's types.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::Refusal;
use super::live::Snapshot;
use crate::guard::limits::Admission;
use crate::identity::PartnerIdentity;
use crate::risk::signature::nonce::NonceCheck;
use crate::risk::{Amount, CallValue};

/// The limit phase's answer, boxed so that the trait stays object-safe.
pub type LimitFuture<'a> = Pin<Box<dyn Future<Output = Result<Admission, Refusal>> + Send + 'a>>;

/// Gives a reserved value back (see [`Membership::reserve_value`]).
pub type GiveBack = Box<dyn FnOnce() + Send>;

/// The value reservation's answer: the give-back, or the refusal.
pub type ValueFuture<'a> = Pin<Box<dyn Future<Output = Result<GiveBack, Refusal>> + Send + 'a>>;

/// A node's membership in a fleet, as the request phases use it.
pub trait Membership: Send + Sync {
    /// Refuses a partner or certificate whose announced revocation or
    /// suspension this node's files do not show yet.
    fn admit(&self, id: &PartnerIdentity) -> Result<(), Refusal>;

    /// Rate, quota and concurrency, judged fleet-wide (falls back to the
    /// local limits as the fleet's settings say when its store is down).
    fn limit<'a>(
        &'a self,
        snapshot: &'a Snapshot,
        partner: &'a str,
        route_index: usize,
        now_ms: i64,
    ) -> LimitFuture<'a>;

    /// Reserves a call's value in the fleet's running total for the UTC
    /// day (`per_day`: the partner's limit for the currency, if any). On
    /// success, the answer gives the amount back when called (the upstream
    /// failed or answered non-2xx). Falls back to this node's totals as the
    /// fleet's settings say when its store is down.
    fn reserve_value<'a>(
        &'a self,
        partner: &'a str,
        value: &'a CallValue,
        per_day: Option<Amount>,
        now_ms: i64,
    ) -> ValueFuture<'a>;

    /// Today's fleet-wide total of `partner` in `currency` (`None`: the
    /// store does not answer).
    fn value_total<'a>(
        &'a self,
        partner: &'a str,
        currency: &'a str,
        now_ms: i64,
    ) -> Pin<Box<dyn Future<Output = Option<Amount>> + Send + 'a>>;

    /// Whether `nonce` of `partner` is used for the first time in the
    /// nonce window, fleet-wide (and remembers it). With the store down, as
    /// the fleet's settings say: this node's nonce log, or a refusal.
    fn first_use_of_nonce<'a>(
        &'a self,
        partner: &'a str,
        nonce: &'a str,
        now_secs: i64,
    ) -> Pin<Box<dyn Future<Output = Result<NonceCheck, Refusal>> + Send + 'a>>;

    /// Tells the other nodes that `partner`'s files changed here (returns
    /// at once; the announcement is sent in the background).
    fn partner_changed(self: Arc<Self>, partner: &str);
}
