//! The Matrix error body: an HTTP status, an `errcode`, a human-readable `error`, and extra fields
//! some codes carry (`retry_after_ms`, `soft_logout`).

use axum::Json;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::{Map, Value, json};

/// An error answered to a client. Internal failures carry a generic message; their detail is logged
/// once, here, where they become responses.
#[derive(Debug, Clone)]
pub struct MatrixError {
    /// HTTP status.
    pub status: StatusCode,
    /// `errcode`, e.g. `M_FORBIDDEN`.
    pub errcode: &'static str,
    /// `error`.
    pub message: String,
    /// Extra top-level fields.
    pub extra: Map<String, Value>,
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $status:ident, $code:literal;)*) => {
        impl MatrixError {
            $($(#[$doc])* pub fn $name(message: impl Into<String>) -> Self {
                Self::new(StatusCode::$status, $code, message)
            })*
        }
    };
}

constructors! {
    /// 403 `M_FORBIDDEN`.
    forbidden => FORBIDDEN, "M_FORBIDDEN";
    /// 404 `M_NOT_FOUND`.
    not_found => NOT_FOUND, "M_NOT_FOUND";
    /// 404 `M_UNRECOGNIZED`: no such endpoint.
    unrecognized => NOT_FOUND, "M_UNRECOGNIZED";
    /// 400 `M_NOT_JSON`.
    not_json => BAD_REQUEST, "M_NOT_JSON";
    /// 400 `M_BAD_JSON`.
    bad_json => BAD_REQUEST, "M_BAD_JSON";
    /// 400 `M_INVALID_PARAM`.
    invalid_param => BAD_REQUEST, "M_INVALID_PARAM";
    /// 400 `M_MISSING_PARAM`.
    missing_param => BAD_REQUEST, "M_MISSING_PARAM";
    /// 401 `M_MISSING_TOKEN`.
    missing_token => UNAUTHORIZED, "M_MISSING_TOKEN";
    /// 400 `M_USER_IN_USE`.
    user_in_use => BAD_REQUEST, "M_USER_IN_USE";
    /// 400 `M_INVALID_USERNAME`.
    invalid_username => BAD_REQUEST, "M_INVALID_USERNAME";
    /// 400 `M_UNKNOWN` for a client mistake without a better code.
    bad_request => BAD_REQUEST, "M_UNKNOWN";
    /// 413 `M_TOO_LARGE`.
    too_large => PAYLOAD_TOO_LARGE, "M_TOO_LARGE";
    /// 400 `M_UNSUPPORTED_ROOM_VERSION`.
    unsupported_room_version => BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION";
    /// 400 `M_ROOM_IN_USE`.
    room_in_use => BAD_REQUEST, "M_ROOM_IN_USE";
    /// 400 `M_INVALID_ROOM_STATE`.
    invalid_room_state => BAD_REQUEST, "M_INVALID_ROOM_STATE";
    /// 403 `M_GUEST_ACCESS_FORBIDDEN`: guests may not do this.
    guest_access_forbidden => FORBIDDEN, "M_GUEST_ACCESS_FORBIDDEN";
    /// 400 `M_EXCLUSIVE`: an application service claims this user or alias alone.
    exclusive => BAD_REQUEST, "M_EXCLUSIVE";
    /// 400 `M_URL_NOT_SET`: the application service has no URL (ping).
    url_not_set => BAD_REQUEST, "M_URL_NOT_SET";
    /// 502 `M_CONNECTION_FAILED`: the application service could not be reached (ping).
    connection_failed => BAD_GATEWAY, "M_CONNECTION_FAILED";
    /// 504 `M_CONNECTION_TIMEOUT`: the application service did not answer in time (ping).
    connection_timeout => GATEWAY_TIMEOUT, "M_CONNECTION_TIMEOUT";
    /// 502 `M_BAD_STATUS`: the application service answered with an error (ping).
    bad_status => BAD_GATEWAY, "M_BAD_STATUS";
    /// 403 `M_USER_DEACTIVATED`.
    user_deactivated => FORBIDDEN, "M_USER_DEACTIVATED";
    /// 400 `M_UNKNOWN_POS`-style invalid tokens are `M_INVALID_PARAM`; this is `M_UNKNOWN` 404 for gone things.
    gone => NOT_FOUND, "M_UNKNOWN";
}

impl MatrixError {
    /// An error with any status and code.
    pub fn new(status: StatusCode, errcode: &'static str, message: impl Into<String>) -> Self {
        Self { status, errcode, message: message.into(), extra: Map::new() }
    }

    /// 401 `M_UNKNOWN_TOKEN` (`soft_logout: false`).
    pub fn unknown_token(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN", message);
        e.extra.insert("soft_logout".into(), Value::Bool(false));
        e
    }

    /// 405 `M_UNRECOGNIZED`: the endpoint exists, the method does not.
    pub fn method_not_allowed() -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "M_UNRECOGNIZED", "Unrecognized request: method not allowed")
    }

    /// 429 `M_LIMIT_EXCEEDED` with `retry_after_ms`.
    pub fn limit_exceeded(retry_after_ms: u64) -> Self {
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED", "Too many requests");
        e.extra.insert("retry_after_ms".into(), json!(retry_after_ms));
        e
    }

    /// 500 `M_UNKNOWN`. `detail` is logged, never sent.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", "Internal server error")
    }

    /// Adds an extra top-level field.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }
}

impl std::fmt::Display for MatrixError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.errcode, self.message)
    }
}

impl IntoResponse for MatrixError {
    fn into_response(self) -> Response {
        let mut body = self.extra;
        body.insert("errcode".into(), Value::String(self.errcode.to_owned()));
        body.insert("error".into(), Value::String(self.message));
        let retry = body.get("retry_after_ms").and_then(Value::as_u64);
        let mut resp = (self.status, Json(Value::Object(body))).into_response();
        if let Some(ms) = retry
            && let Ok(v) = http::HeaderValue::from_str(&ms.div_ceil(1000).to_string())
        {
            resp.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        resp
    }
}

impl From<ganglion_storage::Error> for MatrixError {
    fn from(e: ganglion_storage::Error) -> Self {
        Self::internal(e)
    }
}
