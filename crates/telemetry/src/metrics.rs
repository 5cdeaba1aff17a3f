//! [`Metrics`]: the process's Prometheus registry, the built-in HTTP metrics, and [`metrics_router`].

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::Router;
use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// `Content-Type` of `GET /metrics`: the OpenMetrics text format.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Latency buckets in seconds, up to the longest `/sync` long-poll (300 s by default).
const HTTP_DURATION_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    role: String,
    route: String,
    method: String,
    status: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DurationLabels {
    role: String,
    route: String,
    method: String,
}

type HistogramFamily = Family<DurationLabels, Histogram, fn() -> Histogram>;

/// The process's metrics: one Prometheus registry (every metric name starts `ganglion_`) plus the
/// HTTP request metrics every listener records. Cheap to clone; clones share the registry.
///
/// Crates register their own families at start-up under their subsystem's prefix, keeping
/// the family handles (which are themselves cheap clones) in their own `Metrics` struct:
///
/// ```
/// use prometheus_client::metrics::counter::Counter;
///
/// let metrics = ganglion_telemetry::Metrics::new();
/// let published = Counter::<u64>::default();
/// metrics.registry().sub_registry_with_prefix("replication").register(
///     "rows_published",
///     "Rows published to the replication stream",
///     published.clone(),
/// );
/// published.inc();
/// assert!(metrics.render().contains("ganglion_replication_rows_published_total 1"));
/// ```
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    http_requests: Family<RequestLabels, Counter>,
    http_duration: HistogramFamily,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with the built-in HTTP metrics registered:
    /// `ganglion_http_requests_total{role,route,method,status}` and
    /// `ganglion_http_request_duration_seconds{role,route,method}`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ganglion");
        let http_requests = Family::<RequestLabels, Counter>::default();
        let http_duration: HistogramFamily = Family::new_with_constructor(|| Histogram::new(HTTP_DURATION_BUCKETS));
        let http = registry.sub_registry_with_prefix("http");
        http.register("requests", "HTTP requests answered", http_requests.clone());
        http.register_with_unit(
            "request_duration",
            "Time from receiving an HTTP request to sending its response head",
            Unit::Seconds,
            http_duration.clone(),
        );
        Self { registry: Arc::new(Mutex::new(registry)), http_requests, http_duration }
    }

    /// The registry, locked, for registering families; names get the `ganglion_` prefix, and crates
    /// add their subsystem with [`Registry::sub_registry_with_prefix`]. Hold it only briefly (at
    /// start-up): rendering `/metrics` waits for it.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while registering cannot leave the registry half-written in a way that matters
        // for rendering, so a poisoned lock is still usable.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `register` on the sub-registry for `subsystem`, so its metrics are named
    /// `ganglion_<subsystem>_…`.
    pub fn register_subsystem<R>(&self, subsystem: &str, register: impl FnOnce(&mut Registry) -> R) -> R {
        register(self.registry().sub_registry_with_prefix(subsystem))
    }

    /// Records one answered HTTP request. `route` must be the route template (`/_matrix/client/v3/rooms/{room_id}/send/...`),
    /// never the raw path, and `role` the process role, so label sets stay bounded.
    pub fn record_http(&self, role: &str, route: &str, method: &str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&RequestLabels {
                role: role.to_owned(),
                route: route.to_owned(),
                method: method.to_owned(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&DurationLabels {
                role: role.to_owned(),
                route: route.to_owned(),
                method: method.to_owned(),
            })
            .observe(seconds);
    }

    /// Every registered metric in the OpenMetrics text format, ending in `# EOF`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry())
            .expect("writing OpenMetrics text to a String cannot fail");
        out
    }
}

/// `GET /metrics`, answering [`Metrics::render`] with [`OPENMETRICS_CONTENT_TYPE`]. Mount it on the
/// listener that serves the `metrics` resource.
pub fn metrics_router(metrics: Metrics) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move { ([(CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], metrics.render()) }
        }),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    #[test]
    fn http_metrics_render() {
        let metrics = Metrics::new();
        metrics.record_http("main", "/_matrix/client/versions", "GET", 200, 0.003);
        metrics.record_http("main", "/_matrix/client/versions", "GET", 200, 0.2);
        metrics.record_http("main", "/_matrix/client/versions", "GET", 429, 0.001);
        let text = metrics.render();
        assert!(text.contains("# TYPE ganglion_http_requests counter"), "{text}");
        assert!(
            text.contains(
                "ganglion_http_requests_total{role=\"main\",route=\"/_matrix/client/versions\",\
                 method=\"GET\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("status=\"429\"} 1"), "{text}");
        assert!(text.contains("# TYPE ganglion_http_request_duration_seconds histogram"), "{text}");
        assert!(text.contains("# UNIT ganglion_http_request_duration_seconds seconds"), "{text}");
        assert!(
            text.contains(
                "ganglion_http_request_duration_seconds_count{role=\"main\",\
                 route=\"/_matrix/client/versions\",method=\"GET\"} 3"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn subsystems_register_under_their_prefix() {
        let metrics = Metrics::new();
        let clone = metrics.clone();
        let rows = Counter::<u64>::default();
        clone.register_subsystem("storage", |r| r.register("queries", "Queries run", rows.clone()));
        rows.inc_by(3);
        assert!(metrics.render().contains("ganglion_storage_queries_total 3"));
    }

    #[tokio::test]
    async fn metrics_route_serves_openmetrics() {
        let metrics = Metrics::new();
        metrics.record_http("sync", "/_matrix/client/v3/sync", "GET", 200, 1.5);
        let response =
            metrics_router(metrics).oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()[CONTENT_TYPE], OPENMETRICS_CONTENT_TYPE);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let text = std::str::from_utf8(&body).unwrap();
        assert!(text.contains("route=\"/_matrix/client/v3/sync\""), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
