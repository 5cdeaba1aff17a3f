//! Ganglion's logs, traces, metrics, health endpoints and request ids.
//!
//! Map:
//! - `init.rs`: [`init`] installs the process's `tracing` subscriber (env filter from config, text or
//!   JSON lines on stderr, optional OTLP/gRPC span export) and returns a [`TelemetryGuard`] that
//!   flushes traces on drop.
//! - `metrics.rs`: [`Metrics`], the Prometheus registry every crate registers its families in under
//!   `ganglion_<subsystem>_`, with the built-in HTTP request metrics, and [`metrics_router`].
//! - `health.rs`: [`Health`] readiness checks and [`health_router`] (`/health/live`, `/health/ready`).
//! - `lib.rs`: request ids ([`REQUEST_ID_HEADER`], [`new_request_id`]).
//!
//! Depends on `ganglion-config` for [`TelemetryConfig`](ganglion_config::TelemetryConfig) only. Nothing
//! here is a global registry: the binary builds one [`Metrics`] and one [`Health`] per process and
//! passes clones down. The `tracing` subscriber (and, with OTLP, the W3C trace-context propagator)
//! are process-global by their libraries' design.

#![warn(missing_docs)]

use rand::Rng;

mod health;
mod init;
mod metrics;

pub use health::{Health, health_router};
pub use init::{TelemetryError, TelemetryGuard, init};
pub use metrics::{Metrics, OPENMETRICS_CONTENT_TYPE, metrics_router};

/// Header carrying the request id, set by the first Ganglion process a request reaches and passed on
/// to every process (gRPC metadata, stream rows) that works on it.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A fresh request id: 16 random lowercase hex characters (64 bits).
pub fn new_request_id() -> String {
    format!("{:016x}", rand::thread_rng().r#gen::<u64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_16_hex_chars_and_differ() {
        let a = new_request_id();
        let b = new_request_id();
        assert_eq!(a.len(), 16);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()), "{a}");
        assert_ne!(a, b);
    }
}
