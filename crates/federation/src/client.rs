//! The outbound federation HTTP client: requests signed with our server key (`X-Matrix`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ganglion_config::FederationConfig;
use ganglion_core::ServerSigningKey;
use ruma::api::federation::authentication::{ServerSignaturesInput, XMatrix};
use ruma::{OwnedServerName, ServerName};
use tokio::sync::Mutex;

use crate::resolve::{Destination, resolve_destination};

/// How long a resolved destination is reused.
const RESOLVE_TTL: Duration = Duration::from_secs(3600);

/// Why an outbound federation request failed.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    /// The server could not be reached, or the connection broke.
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// It answered, but not as the spec says.
    #[error("bad response: {0}")]
    BadResponse(String),
    /// The request could not be signed.
    #[error("signing: {0}")]
    Signing(String),
}

/// Sends requests to other servers as `origin`. Cheap to clone.
#[derive(Clone)]
pub struct FederationClient {
    http: reqwest::Client,
    origin: OwnedServerName,
    key: Arc<ServerSigningKey>,
    resolved: Arc<Mutex<HashMap<OwnedServerName, (Destination, Instant)>>>,
}

impl std::fmt::Debug for FederationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FederationClient").field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl FederationClient {
    /// A client for `origin`, signing with `key`.
    ///
    /// # Errors
    /// When the TLS stack cannot be set up.
    pub fn new(
        cfg: &FederationConfig,
        origin: OwnedServerName,
        key: Arc<ServerSigningKey>,
    ) -> Result<Self, FederationError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.request_timeout_ms))
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .danger_accept_invalid_certs(!cfg.verify_tls)
            .user_agent(concat!("ganglion/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, origin, key, resolved: Arc::default() })
    }

    /// The server this client speaks for.
    pub fn origin(&self) -> &ServerName {
        &self.origin
    }

    /// The underlying HTTP client (for following a redirect a server answers with).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn destination(&self, server: &ServerName) -> Destination {
        if let Some((d, at)) = self.resolved.lock().await.get(server)
            && at.elapsed() < RESOLVE_TTL
        {
            return d.clone();
        }
        let d = resolve_destination(&self.http, server).await;
        self.resolved.lock().await.insert(server.to_owned(), (d.clone(), Instant::now()));
        d
    }

    /// `GET path_and_query` on `server`, signed. Any HTTP status is returned to the caller.
    ///
    /// # Errors
    /// When the request cannot be signed or sent.
    pub async fn get(&self, server: &ServerName, path_and_query: &str) -> Result<reqwest::Response, FederationError> {
        let request = http::Request::builder()
            .method(http::Method::GET)
            .uri(path_and_query)
            .body(Vec::<u8>::new())
            .map_err(|e| FederationError::Signing(e.to_string()))?;
        let input = ServerSignaturesInput::new(self.origin.clone(), server.to_owned(), self.key.pair());
        let header =
            XMatrix::try_from_http_request(&request, input).map_err(|e| FederationError::Signing(e.to_string()))?;
        let base = self.destination(server).await.base_url;
        Ok(self
            .http
            .get(format!("{base}{path_and_query}"))
            .header(http::header::AUTHORIZATION, http::HeaderValue::from(&header))
            .send()
            .await?)
    }

    /// `GET path` on `server` without signing (the key endpoints).
    ///
    /// # Errors
    /// When the request cannot be sent, or the answer is not a success.
    pub async fn get_unsigned(&self, server: &ServerName, path: &str) -> Result<reqwest::Response, FederationError> {
        let base = self.destination(server).await.base_url;
        let resp = self.http.get(format!("{base}{path}")).send().await?;
        if !resp.status().is_success() {
            return Err(FederationError::BadResponse(format!("{server} answered {} for {path}", resp.status())));
        }
        Ok(resp)
    }
}
