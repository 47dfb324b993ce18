//! The pools' metrics: per upstream and endpoint, health (0/1), requests
//! in flight, requests by outcome, ejections, retries by reason, queue
//! depth and healthy endpoints. The pools count in their own atomics; these
//! families are brought up to date from them at each scrape.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Pool, RETRY_REASONS};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    upstream: String,
    endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    upstream: String,
    endpoint: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    upstream: String,
    reason: String,
}

/// The pools' metric families (registered once in the broker's registry).
#[derive(Debug, Default)]
pub struct PoolMetrics {
    healthy: Family<EndpointLabels, Gauge>,
    endpoint_in_flight: Family<EndpointLabels, Gauge>,
    requests: Family<OutcomeLabels, Counter>,
    ejections: Family<EndpointLabels, Counter>,
    retries: Family<ReasonLabels, Counter>,
    budget_exhausted: Family<UpstreamLabels, Counter>,
    queue_depth: Family<UpstreamLabels, Gauge>,
    in_flight: Family<UpstreamLabels, Gauge>,
    healthy_endpoints: Family<UpstreamLabels, Gauge>,
    /// Endpoint gauge series shown now (gone endpoints' series are removed).
    shown: Mutex<HashSet<EndpointLabels>>,
}

/// Brings a counter up to `value` (a pool rebuilt by a reload starts its
/// own count again: the series never goes down).
fn catch_up(c: &Counter, value: u64) {
    let now = c.get();
    if value > now {
        c.inc_by(value - now);
    }
}

impl PoolMetrics {
    /// Registers the families under the registry's prefix.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "upstream_endpoint_healthy",
            "Whether an upstream endpoint takes traffic now (1) or is ejected, failed by health checks or draining (0)",
            self.healthy.clone(),
        );
        registry.register(
            "upstream_endpoint_in_flight",
            "Requests in flight to an upstream endpoint",
            self.endpoint_in_flight.clone(),
        );
        registry.register(
            "upstream_endpoint_requests",
            "Attempts sent to an upstream endpoint by outcome (success, or failure: connect error, reset, timeout, 5xx)",
            self.requests.clone(),
        );
        registry.register(
            "upstream_endpoint_ejections",
            "Times the outlier detector ejected an upstream endpoint",
            self.ejections.clone(),
        );
        registry.register(
            "upstream_retries",
            "Retries by upstream and reason (not_sent, reset, per_try_timeout, status_5xx)",
            self.retries.clone(),
        );
        registry.register(
            "upstream_retry_budget_exhausted",
            "Retries the upstream's retry budget did not allow",
            self.budget_exhausted.clone(),
        );
        registry.register(
            "upstream_queue_depth",
            "Requests waiting for a max_in_flight place, by upstream",
            self.queue_depth.clone(),
        );
        registry.register(
            "upstream_in_flight",
            "Requests in flight to an upstream from this node",
            self.in_flight.clone(),
        );
        registry.register(
            "upstream_healthy_endpoints",
            "Endpoints of an upstream that take traffic now",
            self.healthy_endpoints.clone(),
        );
    }

    /// Updates every family from the pools now configured.
    pub fn observe(&self, pools: &HashMap<String, Arc<Pool>>) {
        let mut fresh = HashSet::new();
        for (name, pool) in pools {
            let up = UpstreamLabels {
                upstream: name.clone(),
            };
            self.queue_depth
                .get_or_create(&up)
                .set(i64::from(pool.queue_depth()));
            self.in_flight
                .get_or_create(&up)
                .set(i64::from(pool.in_flight()));
            for (i, reason) in RETRY_REASONS.iter().enumerate() {
                catch_up(
                    &self.retries.get_or_create(&ReasonLabels {
                        upstream: name.clone(),
                        reason: reason.to_string(),
                    }),
                    pool.stats.retries[i].load(Ordering::Relaxed),
                );
            }
            catch_up(
                &self.budget_exhausted.get_or_create(&up),
                pool.stats.budget_exhausted.load(Ordering::Relaxed),
            );
            let view = pool.view();
            self.healthy_endpoints
                .get_or_create(&up)
                .set(view.iter().filter(|e| e.healthy).count() as i64);
            for e in view {
                let labels = EndpointLabels {
                    upstream: name.clone(),
                    endpoint: e.address.clone(),
                };
                self.healthy
                    .get_or_create(&labels)
                    .set(i64::from(e.healthy));
                self.endpoint_in_flight
                    .get_or_create(&labels)
                    .set(i64::from(e.in_flight));
                catch_up(&self.ejections.get_or_create(&labels), e.ejections);
                for (outcome, n) in [("success", e.success), ("failure", e.failure)] {
                    catch_up(
                        &self.requests.get_or_create(&OutcomeLabels {
                            upstream: name.clone(),
                            endpoint: e.address.clone(),
                            outcome: outcome.to_string(),
                        }),
                        n,
                    );
                }
                fresh.insert(labels);
            }
        }
        let Ok(mut shown) = self.shown.lock() else {
            return;
        };
        for gone in shown.difference(&fresh) {
            self.healthy.remove(gone);
            self.endpoint_in_flight.remove(gone);
        }
        *shown = fresh;
    }
}
