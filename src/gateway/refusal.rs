//! The refusals of the layers below the gateway, as the one [`Refusal`]:
//! the target check, the route policy, the limits and the upstream leg
//! each name their [`Reason`]; the check that refused adds what only it
//! knows (a limit's exact `Retry-After` and scope).

use crate::gateway::relay::UpstreamError;
use crate::guard::limits::{LimitDenied, LimitScope};
use crate::policy::{Denial, TargetError};
pub use crate::refusal::Refusal;

impl From<TargetError> for Refusal {
    fn from(e: TargetError) -> Refusal {
        Refusal::new(e.reason())
    }
}

impl From<Denial> for Refusal {
    fn from(d: Denial) -> Refusal {
        Refusal::new(d.reason())
    }
}

impl From<LimitDenied> for Refusal {
    fn from(denied: LimitDenied) -> Refusal {
        let r = Refusal::new(denied.limit.reason())
            .retry_after(denied.retry_after_secs)
            .with("retry_after_secs", denied.retry_after_secs);
        match denied.scope {
            LimitScope::Partner => r.with("scope", "partner"),
            LimitScope::Route(i) => r.with("scope", "route").with("route_index", i),
        }
    }
}

impl From<UpstreamError> for Refusal {
    fn from(e: UpstreamError) -> Refusal {
        let r = Refusal::new(e.reason());
        match e.retry_after_secs() {
            Some(secs) => r.retry_after(secs),
            None => r,
        }
    }
}
