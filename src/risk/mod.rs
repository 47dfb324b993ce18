//! Risk-based protection for high-value routes: what a call is worth
//! (`value`: the amount and currency read from its body), exact amounts
//! (`amount`), and the running daily totals a partner's `[value_limits]`
//! are checked against (`ledger`). The gateway's value phase uses them;
//! the fleet keeps the totals in its store.

pub mod amount;
pub mod ledger;
pub mod signature;
pub mod value;

pub use amount::Amount;
pub use ledger::Ledger;
pub use value::{CallValue, Unreadable, ValueSpec, read_value};

/// A partner's limits for one currency (`[value_limits] EUR = { ... }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrencyLimit {
    /// The most one call may carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_call: Option<Amount>,
    /// The most the calls of one UTC day may carry together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_day: Option<Amount>,
}
