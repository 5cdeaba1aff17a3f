//! The HTTP pieces every role shares: Matrix errors, the access-token extractor, a JSON body
//! extractor that answers with Matrix errors, and the common middleware (request ids, CORS, metrics,
//! Matrix-shaped 404/405).
//!
//! Depends on `ganglion-storage` (token look-ups) and `ganglion-telemetry`. Worker crates depend on it;
//! it never depends on a worker.

mod auth;
mod error;
mod json;
mod layers;
mod rate_limit;
mod typed;

pub use auth::{
    AccessToken, AuthUser, Authenticator, guest_may_use, hash_token, new_access_token, now_ms, query_pairs, query_param,
};
pub use error::MatrixError;
pub use json::MatrixJson;
pub use layers::{RequestId, common_layers, matrix_fallbacks};
pub use rate_limit::{ClientIp, RateLimiter};
pub use typed::{Ruma, RumaResponse, parse_request, read_request};
