//! Checking inbound federation requests: the `X-Matrix` signature must be by a current key of the
//! origin server, addressed to us.

use std::collections::BTreeMap;

use ganglion_http::MatrixError;
use http::StatusCode;
use ruma::api::federation::authentication::XMatrix;
use ruma::signatures::PublicKeyMap;
use ruma::{OwnedServerName, ServerName};

use crate::keys::KeyFetcher;

fn unauthorized(message: impl Into<String>) -> MatrixError {
    MatrixError::new(StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED", message)
}

/// Authenticates requests from other servers to `server_name`.
#[derive(Debug, Clone)]
pub struct InboundAuth {
    server_name: OwnedServerName,
    keys: KeyFetcher,
}

impl InboundAuth {
    /// Checks requests addressed to `server_name`, fetching origins' keys through `keys`.
    pub fn new(server_name: OwnedServerName, keys: KeyFetcher) -> Self {
        Self { server_name, keys }
    }

    /// The origin server of a signed request (`parts` and its `body`).
    ///
    /// # Errors
    /// 401 `M_UNAUTHORIZED` when the header is missing or malformed, names another destination,
    /// or the signature does not verify with the origin's key (or that key cannot be fetched).
    pub async fn authenticate(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> Result<OwnedServerName, MatrixError> {
        let header = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| unauthorized("Missing X-Matrix Authorization header"))?;
        let x = XMatrix::parse(header).map_err(|e| unauthorized(format!("Malformed X-Matrix header: {e}")))?;
        if x.destination.as_deref().is_some_and(|d| d != self.server_name) {
            return Err(unauthorized("The request is addressed to another server"));
        }
        if x.origin == self.server_name {
            return Err(unauthorized("A server does not send federation requests to itself"));
        }
        let public = self
            .keys
            .public_key(&x.origin, x.key.as_str())
            .await
            .map_err(|e| unauthorized(format!("Could not fetch {}'s key {}: {e}", x.origin, x.key)))?;
        let public = ruma::serde::Base64::parse(&public).map_err(|_| unauthorized("The origin's key is not base64"))?;
        let mut map = PublicKeyMap::new();
        map.insert(x.origin.to_string(), BTreeMap::from([(x.key.to_string(), public)]));
        let mut request = http::Request::builder().method(parts.method.clone()).uri(parts.uri.clone());
        for (name, value) in &parts.headers {
            request = request.header(name, value);
        }
        let request = request.body(body.to_vec()).map_err(|e| unauthorized(e.to_string()))?;
        x.verify_request(&request, &self.server_name, &map)
            .map_err(|e| unauthorized(format!("Invalid signature: {e}")))?;
        Ok(x.origin)
    }

    /// This server's name.
    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }
}
