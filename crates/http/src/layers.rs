//! Middleware every role's router gets: a request id and span per request, HTTP metrics, CORS, the
//! body limit, and Matrix-shaped answers for unknown endpoints and methods.

use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use ganglion_telemetry::{Metrics, REQUEST_ID_HEADER, new_request_id};
use http::{HeaderValue, Method, header};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument as _;

use crate::MatrixError;
use crate::json::BodyLimit;

/// The id of the request being served: taken from `X-Request-Id` when a proxy set one, else new.
/// It is logged on every line of the request's span, sent back in the response, and passed on to
/// `main` in gRPC metadata and stream rows.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

#[derive(Clone)]
struct LayerConfig {
    role: &'static str,
    metrics: Metrics,
    body_limit: usize,
}

async fn observe(
    axum::extract::State(cfg): axum::extract::State<LayerConfig>,
    mut req: Request,
    next: Next,
) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty() && v.len() <= 64 && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let route = req.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().clone();
    req.extensions_mut().insert(RequestId(id.clone()));
    req.extensions_mut().insert(BodyLimit(cfg.body_limit));
    let span = tracing::info_span!("request", role = cfg.role, method = %method, route = %route, request_id = %id, user_id = tracing::field::Empty);
    let started = Instant::now();
    let mut resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    span.in_scope(|| tracing::debug!(status, elapsed_ms = started.elapsed().as_millis() as u64, "served"));
    cfg.metrics.record_http(cfg.role, &route, method.as_str(), status, started.elapsed().as_secs_f64());
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    resp
}

/// Unknown endpoints answer 404 and unknown methods 405, both `M_UNRECOGNIZED`.
pub fn matrix_fallbacks<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .fallback(|| async { MatrixError::unrecognized("Unrecognized request").into_response() })
        .method_not_allowed_fallback(|| async { MatrixError::method_not_allowed().into_response() })
}

/// Wraps a role's finished router with request ids, tracing, metrics, CORS and the body limit.
pub fn common_layers(router: Router, role: &'static str, metrics: Metrics, body_limit: usize) -> Router {
    // The spec's CORS headers, on every response including errors and preflights.
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::any())
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::HeaderName::from_static("x-requested-with"),
            header::CONTENT_TYPE,
            header::AUTHORIZATION,
        ]);
    router.layer(middleware::from_fn_with_state(LayerConfig { role, metrics, body_limit }, observe)).layer(cors)
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::routing::get;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;

    fn app() -> Router {
        let r = matrix_fallbacks(Router::new().route("/_matrix/client/versions", get(|| async { "{}" })));
        common_layers(r, "main", Metrics::new(), 1024)
    }

    async fn body_json(resp: Response) -> serde_json::Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn unknown_endpoint_is_404_unrecognized_with_cors() {
        let resp = app().oneshot(Request::get("/_matrix/client/v3/nope").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
        assert!(resp.headers().contains_key(REQUEST_ID_HEADER));
        assert_eq!(body_json(resp).await["errcode"], "M_UNRECOGNIZED");
    }

    #[tokio::test]
    async fn wrong_method_is_405_unrecognized() {
        let resp = app().oneshot(Request::post("/_matrix/client/versions").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(body_json(resp).await["errcode"], "M_UNRECOGNIZED");
    }

    #[tokio::test]
    async fn preflight_answers_cors() {
        let req = Request::builder()
            .method(Method::OPTIONS)
            .uri("/_matrix/client/versions")
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .body(Body::empty())
            .unwrap();
        let resp = app().oneshot(req).await.unwrap();
        assert!(resp.status().is_success());
        assert_eq!(resp.headers()["access-control-allow-origin"], "*");
        let methods = resp.headers()["access-control-allow-methods"].to_str().unwrap().to_owned();
        assert!(methods.contains("PUT") && methods.contains("DELETE"), "{methods}");
    }

    #[tokio::test]
    async fn a_proxy_request_id_is_kept() {
        let req =
            Request::get("/_matrix/client/versions").header(REQUEST_ID_HEADER, "abc-123").body(Body::empty()).unwrap();
        let resp = app().oneshot(req).await.unwrap();
        assert_eq!(resp.headers()[REQUEST_ID_HEADER], "abc-123");
    }
}
