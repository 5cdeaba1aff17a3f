//! [`Health`]: named readiness checks, and [`health_router`] serving `/health/live` and
//! `/health/ready`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

/// The process's readiness: a set of named checks (`storage`, `redis`, `rpc`, …), each ready or not.
/// The process is ready when every registered check is. Cheap to clone; clones share state.
#[derive(Debug, Clone, Default)]
pub struct Health {
    // A std mutex: every critical section is a map lookup or insert, never held across `.await`.
    checks: Arc<Mutex<BTreeMap<String, bool>>>,
}

impl Health {
    /// No checks: ready until one is registered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `check` as not ready yet, unless it is already registered. Register every check
    /// before serving, so the process never looks ready before a subsystem has started.
    pub fn register(&self, check: &str) {
        self.lock().entry(check.to_owned()).or_insert(false);
    }

    /// Marks `check` ready or not, registering it if needed.
    pub fn set_ready(&self, check: &str, ready: bool) {
        self.lock().insert(check.to_owned(), ready);
    }

    /// Whether every registered check is ready.
    pub fn is_ready(&self) -> bool {
        self.lock().values().all(|ready| *ready)
    }

    /// The checks that are not ready, in name order.
    pub fn failing(&self) -> Vec<String> {
        self.lock().iter().filter(|(_, ready)| !**ready).map(|(name, _)| name.clone()).collect()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, bool>> {
        // Each write is a single insert, so a poisoned map is still consistent.
        self.checks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// `GET /health/live`: 200 `{"status":"ok"}` while the process runs.
/// `GET /health/ready`: 200 `{"status":"ok"}` when every check is ready, else 503
/// `{"status":"unavailable","failing":["storage",…]}`.
pub fn health_router(health: Health) -> Router {
    Router::new().route("/health/live", get(|| async { Json(json!({ "status": "ok" })) })).route(
        "/health/ready",
        get(move || {
            let failing = health.failing();
            async move {
                if failing.is_empty() {
                    (StatusCode::OK, Json(json!({ "status": "ok" })))
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "status": "unavailable", "failing": failing })))
                }
            }
        }),
    )
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt as _;
    use serde_json::Value;
    use tower::ServiceExt as _;

    use super::*;

    async fn get_json(router: Router, path: &str) -> (StatusCode, Value) {
        let response = router.oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn live_is_always_ok() {
        let health = Health::new();
        health.register("storage");
        let (status, body) = get_json(health_router(health), "/health/live").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({ "status": "ok" }));
    }

    #[tokio::test]
    async fn ready_names_failing_checks() {
        let health = Health::new();
        let (status, _) = get_json(health_router(health.clone()), "/health/ready").await;
        assert_eq!(status, StatusCode::OK, "no checks registered means ready");

        health.register("storage");
        health.register("redis");
        health.set_ready("storage", true);
        // Registering again does not reset a check.
        health.register("storage");
        let (status, body) = get_json(health_router(health.clone()), "/health/ready").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, json!({ "status": "unavailable", "failing": ["redis"] }));
        assert!(!health.is_ready());

        health.set_ready("redis", true);
        let (status, body) = get_json(health_router(health.clone()), "/health/ready").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, json!({ "status": "ok" }));

        health.set_ready("storage", false);
        assert_eq!(health.failing(), ["storage"]);
    }
}
