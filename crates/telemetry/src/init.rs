//! [`init`]: the process's `tracing` subscriber and, when configured, OTLP trace export.

use std::time::Duration;

use ganglion_config::{LogFormat, TelemetryConfig};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// `service.name` of every exported span.
const SERVICE_NAME: &str = "ganglion";

/// How long one OTLP export may take before it is abandoned.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// `telemetry.log_level` is not a valid `tracing` filter directive.
    #[error("telemetry.log_level: {directive:?} is not a valid filter directive: {source}")]
    InvalidLogLevel {
        /// The configured directive.
        directive: String,
        /// The parser's complaint.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The OTLP exporter could not be built (for example, the endpoint is not a URI).
    #[error("telemetry.otlp_endpoint: cannot export to {endpoint:?}: {source}")]
    Exporter {
        /// The configured endpoint.
        endpoint: String,
        /// The exporter's complaint.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// OTLP export was configured but [`init`] was called outside a Tokio runtime, which the gRPC
    /// client needs.
    #[error("telemetry.otlp_endpoint: OTLP export needs a Tokio runtime; call telemetry::init inside one")]
    NoRuntime,
}

/// Keeps trace export alive; dropping it flushes buffered spans and shuts the exporter down.
///
/// Drop it after the server has stopped, on a multi-threaded Tokio runtime or outside any runtime:
/// the final export runs on the batch processor's thread and needs the runtime's I/O driver, so
/// dropping it while blocking the only thread of a current-thread runtime delays exit until the
/// export times out.
#[derive(Debug)]
#[must_use = "dropping the guard shuts down trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    installed: bool,
}

impl TelemetryGuard {
    /// A guard that owns nothing: what [`init`] returns when a subscriber was already installed.
    pub fn noop() -> Self {
        Self { provider: None, installed: false }
    }

    /// Whether this call to [`init`] installed the global subscriber (false for the no-op guard).
    pub fn is_installed(&self) -> bool {
        self.installed
    }

    /// Whether spans are being exported over OTLP.
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            // Logs still reach stderr: only trace export is gone.
            tracing::warn!(error = %e, "shutting down OTLP trace export failed");
        }
    }
}

/// Installs the global `tracing` subscriber for a process playing `role` (`main`, `sync`, `serve`,
/// …): an [`EnvFilter`] built from `cfg.log_level` only (`RUST_LOG` is not read), log lines on stderr
/// in `cfg.log_format`, and, when `cfg.otlp_endpoint` is set, an OTLP/gRPC span exporter with
/// `service.name = "ganglion"` and `ganglion.role = role`, plus the W3C trace-context propagator
/// so trace ids can cross process boundaries.
///
/// If a global subscriber is already installed (several servers started in one test process), this
/// installs nothing and returns [`TelemetryGuard::noop`].
///
/// # Errors
///
/// [`TelemetryError::InvalidLogLevel`] for a bad directive; with OTLP configured,
/// [`TelemetryError::NoRuntime`] outside a Tokio runtime and [`TelemetryError::Exporter`] if the
/// exporter cannot be built. These are checked even when a subscriber is already installed.
pub fn init(cfg: &TelemetryConfig, role: &str) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::builder()
        .parse(&cfg.log_level)
        .map_err(|source| TelemetryError::InvalidLogLevel { directive: cfg.log_level.clone(), source })?;
    if cfg.otlp_endpoint.is_some() && tokio::runtime::Handle::try_current().is_err() {
        return Err(TelemetryError::NoRuntime);
    }
    if tracing::dispatcher::has_been_set() {
        return Ok(TelemetryGuard::noop());
    }

    let provider = cfg.otlp_endpoint.as_deref().map(|e| tracer_provider(e, role)).transpose()?;
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(SERVICE_NAME)).with_filter(export_filter()));
    let fmt_layer = match cfg.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
    };

    let installed = tracing_subscriber::registry().with(otel_layer).with(fmt_layer).with(filter).try_init().is_ok();
    if !installed {
        // Lost a race with another initialiser: keep theirs, and stop our exporter.
        if let Some(provider) = provider {
            let _ = provider.shutdown();
        }
        return Ok(TelemetryGuard::noop());
    }
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    }
    Ok(TelemetryGuard { provider, installed })
}

/// Keeps the exporter's own transport out of the exported traces: at `debug`/`trace`, tonic, h2 and
/// hyper open spans for every export, which would otherwise be exported in turn, forever.
fn export_filter() -> Targets {
    Targets::new().with_default(LevelFilter::TRACE).with_targets(
        ["opentelemetry", "opentelemetry_sdk", "opentelemetry_otlp", "tonic", "h2", "hyper", "hyper_util", "tower"]
            .map(|t| (t, LevelFilter::OFF)),
    )
}

/// The OTLP/gRPC tracer provider. Must run inside a Tokio runtime: the tonic channel is created
/// lazily on it. Spans are batched on the SDK's background thread and exported through that channel.
fn tracer_provider(endpoint: &str, role: &str) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|source| TelemetryError::Exporter { endpoint: endpoint.to_owned(), source })?;
    let resource = Resource::builder_empty()
        .with_service_name(SERVICE_NAME)
        .with_attributes([
            KeyValue::new("ganglion.role", role.to_owned()),
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
        ])
        .build();
    Ok(SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(log_level: &str, otlp_endpoint: Option<&str>) -> TelemetryConfig {
        TelemetryConfig {
            log_level: log_level.to_owned(),
            otlp_endpoint: otlp_endpoint.map(str::to_owned),
            ..TelemetryConfig::default()
        }
    }

    #[test]
    fn bad_log_level_is_rejected() {
        let error = init(&cfg("info,[", None), "test").unwrap_err();
        assert!(matches!(error, TelemetryError::InvalidLogLevel { .. }));
        assert!(error.to_string().starts_with("telemetry.log_level: \"info,[\""), "{error}");
    }

    #[test]
    fn otlp_needs_a_runtime() {
        let error = init(&cfg("info", Some("http://127.0.0.1:4317")), "test").unwrap_err();
        assert!(matches!(error, TelemetryError::NoRuntime));
    }

    /// The only test in this binary that installs the global subscriber.
    #[test]
    fn second_init_is_a_noop() {
        let first = init(&cfg("info", None), "test").unwrap();
        assert!(first.is_installed());
        assert!(!first.is_exporting());
        tracing::info!("telemetry installed");
        let second = init(&cfg("debug", None), "test").unwrap();
        assert!(!second.is_installed());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn otlp_provider_builds_and_shuts_down() {
        use opentelemetry::trace::{Tracer as _, TracerProvider as _};

        // Nothing listens on port 9: the export fails, which must not panic or hang past the timeout.
        let provider = tracer_provider("http://127.0.0.1:9", "test").unwrap();
        provider.tracer("test").in_span("span", |_| {});
        tokio::task::spawn_blocking(move || drop(provider.shutdown())).await.unwrap();

        let error = tracer_provider("not a uri", "test").unwrap_err();
        assert!(matches!(error, TelemetryError::Exporter { .. }), "{error}");
    }
}
