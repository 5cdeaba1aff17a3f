//! Calls into an application service (`/_matrix/app/v1/*`), authenticated with its `hs_token` in
//! the `Authorization` header as the spec asks since v1.4.

use std::time::Duration;

use serde_json::Value;

use crate::Registration;

/// Why a call to an application service failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The registration has `url: null`.
    #[error("application service {0} has no url")]
    NoUrl(String),
    /// The service could not be reached or did not answer in time.
    #[error("application service unreachable: {0}")]
    Unreachable(String),
    /// The service answered with an error status.
    #[error("application service answered {status}: {body}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The body, cut short.
        body: String,
    },
    /// The service answered 2xx with a body that is not what the API says.
    #[error("application service answered with a malformed body: {0}")]
    Malformed(String),
}

/// The HTTP client, cheap to clone.
#[derive(Debug, Clone)]
pub struct AppserviceClient {
    http: reqwest::Client,
}

impl AppserviceClient {
    /// A client whose requests give up after `timeout`.
    ///
    /// # Errors
    /// When the TLS backend cannot start.
    pub fn new(timeout: Duration) -> Result<Self, CallError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("Ganglion/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CallError::Unreachable(e.to_string()))?;
        Ok(Self { http })
    }

    fn url(reg: &Registration, segments: &[&str]) -> Result<reqwest::Url, CallError> {
        let base = reg.url.as_deref().ok_or_else(|| CallError::NoUrl(reg.id.clone()))?;
        let mut url = reqwest::Url::parse(base).map_err(|e| CallError::Unreachable(format!("bad url {base}: {e}")))?;
        url.path_segments_mut()
            .map_err(|()| CallError::Unreachable(format!("bad url {base}")))?
            .pop_if_empty()
            .extend(["_matrix", "app", "v1"])
            .extend(segments);
        Ok(url)
    }

    async fn call(&self, req: reqwest::RequestBuilder, reg: &Registration) -> Result<Value, CallError> {
        let resp = req
            .bearer_auth(&reg.hs_token)
            .send()
            .await
            .map_err(|e| CallError::Unreachable(e.without_url().to_string()))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| CallError::Unreachable(e.without_url().to_string()))?;
        if !status.is_success() {
            let body = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
            return Err(CallError::Status { status: status.as_u16(), body });
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Object(serde_json::Map::new()));
        }
        serde_json::from_slice(&bytes).map_err(|e| CallError::Malformed(e.to_string()))
    }

    /// `PUT /transactions/{txnId}`: `body` holds `events` and, where the service asked,
    /// `ephemeral` and the MSC3202 fields.
    ///
    /// # Errors
    /// Any failure; the caller retries with the same `txn_id` and body.
    pub async fn send_transaction(&self, reg: &Registration, txn_id: &str, body: &Value) -> Result<(), CallError> {
        let url = Self::url(reg, &["transactions", txn_id])?;
        self.call(self.http.put(url).json(body), reg).await.map(drop)
    }

    /// `GET /users/{userId}`: whether the service created (or has) the user.
    ///
    /// # Errors
    /// When the service cannot be asked; a 404 is `Ok(false)`.
    pub async fn query_user(&self, reg: &Registration, user_id: &str) -> Result<bool, CallError> {
        let url = Self::url(reg, &["users", user_id])?;
        match self.call(self.http.get(url), reg).await {
            Ok(_) => Ok(true),
            Err(CallError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /rooms/{roomAlias}`: whether the service created the alias (it creates the room
    /// through the Client-Server API before answering).
    ///
    /// # Errors
    /// When the service cannot be asked; a 404 is `Ok(false)`.
    pub async fn query_alias(&self, reg: &Registration, alias: &str) -> Result<bool, CallError> {
        let url = Self::url(reg, &["rooms", alias])?;
        match self.call(self.http.get(url), reg).await {
            Ok(_) => Ok(true),
            Err(CallError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `GET /thirdparty/{segments…}?query`: a third-party lookup, passed through.
    ///
    /// # Errors
    /// When the service cannot be asked or answers with an error.
    pub async fn thirdparty(
        &self,
        reg: &Registration,
        segments: &[&str],
        query: &[(String, String)],
    ) -> Result<Value, CallError> {
        let mut all = vec!["thirdparty"];
        all.extend_from_slice(segments);
        let url = Self::url(reg, &all)?;
        self.call(self.http.get(url).query(query), reg).await
    }

    /// `POST /ping` (MSC2659): checks the service can be reached and knows our `hs_token`.
    ///
    /// # Errors
    /// Any failure, for the client to see.
    pub async fn ping(&self, reg: &Registration, transaction_id: Option<&str>) -> Result<(), CallError> {
        let url = Self::url(reg, &["ping"])?;
        let body = match transaction_id {
            Some(t) => serde_json::json!({ "transaction_id": t }),
            None => serde_json::json!({}),
        };
        self.call(self.http.post(url).json(&body), reg).await.map(drop)
    }
}
