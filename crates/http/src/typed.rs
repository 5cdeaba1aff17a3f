//! ruma's request and response types at the HTTP edge: [`Ruma<T>`] parses any
//! `IncomingRequest` (path arguments, query, headers, body) with Matrix errors as rejections,
//! and [`RumaResponse<T>`] answers any `OutgoingResponse`. Handlers take and return the spec's
//! types; nothing in between hand-builds JSON.

use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::response::{IntoResponse, Response};
use ruma::api::{IncomingRequest, OutgoingResponse};

use crate::MatrixError;
use crate::json::{BodyLimit, FALLBACK_LIMIT};

/// A request of type `T`, parsed by ruma.
#[derive(Debug, Clone)]
pub struct Ruma<T>(pub T);

/// Reads `req`'s path arguments and body (up to the body limit).
///
/// # Errors
/// `M_TOO_LARGE` over the limit; `M_UNRECOGNIZED` when the route has no path arguments to give.
pub async fn read_request<S: Send + Sync>(
    req: Request,
    state: &S,
) -> Result<(http::request::Parts, bytes::Bytes, Vec<String>), MatrixError> {
    let limit = req.extensions().get::<BodyLimit>().map_or(FALLBACK_LIMIT, |l| l.0);
    let (mut parts, body) = req.into_parts();
    let args = RawPathParams::from_request_parts(&mut parts, state)
        .await
        .map_err(|e| MatrixError::invalid_param(format!("Bad path: {e}")))?;
    let args: Vec<String> = args.iter().map(|(_, v)| v.to_owned()).collect();
    let bytes =
        axum::body::to_bytes(body, limit).await.map_err(|_| MatrixError::too_large("Request body too large"))?;
    Ok((parts, bytes, args))
}

/// Parses `T` from a request already read: a body that is not JSON is `M_NOT_JSON`, JSON of
/// the wrong shape (an array where an object belongs, a missing field) `M_BAD_JSON`, and a bad
/// path or query argument `M_INVALID_PARAM`.
///
/// # Errors
/// As above.
pub fn parse_request<T: IncomingRequest>(
    parts: &http::request::Parts,
    body: &[u8],
    path_args: &[String],
) -> Result<T, MatrixError> {
    let has_body = !body.iter().all(u8::is_ascii_whitespace);
    if has_body && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_err() {
        return Err(MatrixError::not_json("Content not JSON"));
    }
    let mut builder = http::Request::builder().method(parts.method.clone()).uri(parts.uri.clone());
    for (name, value) in &parts.headers {
        builder = builder.header(name, value);
    }
    let request = builder.body(body).map_err(|e| MatrixError::bad_request(e.to_string()))?;
    T::try_from_http_request(request, path_args).map_err(|e| {
        use ruma::api::error::{DeserializationError, FromHttpRequestError};
        match e {
            FromHttpRequestError::Deserialization(DeserializationError::Json(e)) => {
                MatrixError::bad_json(e.to_string())
            }
            FromHttpRequestError::Deserialization(e) => MatrixError::invalid_param(e.to_string()),
            other => MatrixError::unrecognized(other.to_string()),
        }
    })
}

impl<T: IncomingRequest, S: Send + Sync> FromRequest<S> for Ruma<T> {
    type Rejection = MatrixError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body, args) = read_request(req, state).await?;
        parse_request(&parts, &body, &args).map(Ruma)
    }
}

/// A response of type `T`, serialised by ruma.
#[derive(Debug, Clone)]
pub struct RumaResponse<T>(pub T);

impl<T: OutgoingResponse> IntoResponse for RumaResponse<T> {
    fn into_response(self) -> Response {
        match self.0.try_into_http_response::<Vec<u8>>() {
            Ok(resp) => resp.map(axum::body::Body::from).into_response(),
            Err(e) => MatrixError::internal(format!("serialising a response: {e}")).into_response(),
        }
    }
}
