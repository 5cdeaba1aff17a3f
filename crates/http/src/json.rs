//! `MatrixJson<T>`: a JSON body extractor whose rejections are Matrix errors.

use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::MatrixError;

/// A JSON request body. Not JSON → `M_NOT_JSON`; JSON that is not an object, or an object of the
/// wrong shape → `M_BAD_JSON` (the spec's and Synapse's split: the body parsed, its content is wrong); over the
/// body limit → `M_TOO_LARGE`. An empty body reads as `{}`, as several clients send bodiless POSTs.
#[derive(Debug, Clone)]
pub struct MatrixJson<T>(pub T);

/// Largest body read by the extractor when no limit layer is set.
pub(crate) const FALLBACK_LIMIT: usize = 1 << 20;

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for MatrixJson<T> {
    type Rejection = MatrixError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let limit = req.extensions().get::<BodyLimit>().map_or(FALLBACK_LIMIT, |l| l.0);
        let bytes = axum::body::to_bytes(req.into_body(), limit)
            .await
            .map_err(|_| MatrixError::too_large("Request body too large"))?;
        let bytes = if bytes.iter().all(u8::is_ascii_whitespace) { bytes::Bytes::from_static(b"{}") } else { bytes };
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| MatrixError::not_json(format!("Content not JSON: {e}")))?;
        if !value.is_object() {
            return Err(MatrixError::bad_json("Content must be a JSON object"));
        }
        serde_json::from_value(value).map(MatrixJson).map_err(|e| MatrixError::bad_json(e.to_string()))
    }
}

/// The body limit for this request, set by [`crate::common_layers`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimit(pub(crate) usize);
