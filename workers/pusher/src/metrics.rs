//! The pusher role's metrics: `ganglion_pusher_pushes_total{kind,outcome}` (what became of each
//! push or email), `ganglion_pusher_push_retries_total` (failed attempts that will be retried) and
//! `ganglion_pusher_owned_users` (users this instance pushes for).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PushLabels {
    /// `http`, `badge` or `email`.
    kind: &'static str,
    /// `accepted`, `rejected` (the gateway dropped the pushkey), `dropped` (refused for good or
    /// for too long), `failed` (an email that will be tried again).
    outcome: &'static str,
}

/// Handles on the role's metric families. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub(crate) struct PusherMetrics {
    pushes: Family<PushLabels, Counter>,
    retries: Counter,
    owned_users: Gauge,
}

impl PusherMetrics {
    /// Registers the families in `metrics` under `ganglion_pusher_`.
    pub(crate) fn register(metrics: &ganglion_telemetry::Metrics) -> Self {
        let this = Self::default();
        metrics.register_subsystem("pusher", |r| {
            r.register("pushes", "Pushes and notification emails, by what became of them", this.pushes.clone());
            r.register("push_retries", "Failed push attempts that will be retried", this.retries.clone());
            r.register("owned_users", "Users with pushers this instance pushes for", this.owned_users.clone());
        });
        this
    }

    pub(crate) fn push(&self, kind: &'static str, outcome: &'static str) {
        self.pushes.get_or_create(&PushLabels { kind, outcome }).inc();
    }

    pub(crate) fn retry(&self) {
        self.retries.inc();
    }

    pub(crate) fn owned_users(&self, n: usize) {
        self.owned_users.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
}
