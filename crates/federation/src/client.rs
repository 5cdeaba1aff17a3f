//! The outbound federation HTTP client: requests signed with our server key (`X-Matrix`), over
//! rustls trusting the system's roots plus `federation.extra_ca_paths`, and only to addresses
//! the egress policy allows (public ones, plus `federation.ip_range_allowlist`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ganglion_config::FederationConfig;
use ganglion_core::ServerSigningKey;
use ganglion_egress::AddressPolicy;
use ruma::api::auth_scheme::AuthScheme;
use ruma::api::federation::authentication::{ServerSignaturesInput, XMatrix};
use ruma::api::path_builder::PathBuilder;
use ruma::api::{IncomingResponse, OutgoingRequest};
use ruma::{OwnedServerName, ServerName};
use tokio::sync::Mutex;

use crate::resolve::{Destination, resolve_destination};

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
    /// The destination's address is private, loopback or reserved and not allow-listed.
    #[error("refused: {0}")]
    Blocked(String),
    /// The client could not be set up (a CA file that does not read).
    #[error("setup: {0}")]
    Setup(String),
    /// The server answered with a Matrix error.
    #[error("{server} answered {status} {errcode}: {error}")]
    Remote {
        /// Who answered.
        server: OwnedServerName,
        /// The HTTP status.
        status: u16,
        /// `errcode` (`M_UNKNOWN` when the body had none).
        errcode: String,
        /// `error`.
        error: String,
    },
}

impl FederationError {
    fn from_send(e: reqwest::Error) -> Self {
        match ganglion_egress::blocked_in(&e) {
            Some(b) => Self::Blocked(b.to_string()),
            None => Self::Http(e),
        }
    }
}

/// Sends requests to other servers as `origin`. Cheap to clone.
#[derive(Clone)]
pub struct FederationClient {
    http: reqwest::Client,
    origin: OwnedServerName,
    key: Arc<ServerSigningKey>,
    policy: AddressPolicy,
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
    /// When an allow-list entry is not a CIDR range, a CA file does not read, or the TLS stack
    /// cannot be set up.
    pub fn new(
        cfg: &FederationConfig,
        origin: OwnedServerName,
        key: Arc<ServerSigningKey>,
    ) -> Result<Self, FederationError> {
        let policy = AddressPolicy::new(&cfg.ip_range_allowlist, "federation.ip_range_allowlist")
            .map_err(FederationError::Setup)?;
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(cfg.request_timeout_ms))
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(policy.resolver())
            .danger_accept_invalid_certs(!cfg.verify_tls)
            .user_agent(concat!("ganglion/", env!("CARGO_PKG_VERSION")));
        for path in &cfg.extra_ca_paths {
            let pem = std::fs::read(path)
                .map_err(|e| FederationError::Setup(format!("federation.extra_ca_paths: {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| FederationError::Setup(format!("federation.extra_ca_paths: {}: {e}", path.display())))?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build()?;
        Ok(Self { http, origin, key, policy, resolved: Arc::default() })
    }

    /// The server this client speaks for.
    pub fn origin(&self) -> &ServerName {
        &self.origin
    }

    async fn destination(&self, server: &ServerName) -> Destination {
        if let Some((d, at)) = self.resolved.lock().await.get(server)
            && at.elapsed() < d.ttl
        {
            return d.clone();
        }
        let d = resolve_destination(&self.http, server).await;
        let mut resolved = self.resolved.lock().await;
        // Bounded: a stranger's transactions name servers; forgetting them costs a lookup.
        if resolved.len() >= 10_000 {
            resolved.clear();
        }
        resolved.insert(server.to_owned(), (d.clone(), Instant::now()));
        d
    }

    /// The URL of `path_and_query` on `server`, refused when it is an address not allowed.
    async fn url(&self, server: &ServerName, path_and_query: &str) -> Result<reqwest::Url, FederationError> {
        let base = self.destination(server).await.base_url;
        let url: reqwest::Url = format!("{base}{path_and_query}")
            .parse()
            .map_err(|e| FederationError::BadResponse(format!("{server}: bad URL: {e}")))?;
        self.check(&url)?;
        Ok(url)
    }

    fn check(&self, url: &reqwest::Url) -> Result<(), FederationError> {
        self.policy.check_url(url).map_err(|b| {
            tracing::warn!(url = %url, reason = %b, "refused an outbound federation request (see federation.ip_range_allowlist)");
            FederationError::Blocked(b.0)
        })
    }

    /// A signed request: `method path_and_query` on `server`, with `body` as JSON. Any HTTP
    /// status is returned to the caller.
    ///
    /// # Errors
    /// When the request cannot be signed, is refused by the address policy, or cannot be sent.
    pub async fn request(
        &self,
        method: http::Method,
        server: &ServerName,
        path_and_query: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<reqwest::Response, FederationError> {
        let bytes = body.map(serde_json::to_vec).transpose().map_err(|e| FederationError::Signing(e.to_string()))?;
        let request = http::Request::builder()
            .method(method.clone())
            .uri(path_and_query)
            .body(bytes.clone().unwrap_or_default())
            .map_err(|e| FederationError::Signing(e.to_string()))?;
        let input = ServerSignaturesInput::new(self.origin.clone(), server.to_owned(), self.key.pair());
        let header =
            XMatrix::try_from_http_request(&request, input).map_err(|e| FederationError::Signing(e.to_string()))?;
        let url = self.url(server, path_and_query).await?;
        let mut req =
            self.http.request(method, url).header(http::header::AUTHORIZATION, http::HeaderValue::from(&header));
        if let Some(bytes) = bytes {
            req = req.header(http::header::CONTENT_TYPE, "application/json").body(bytes);
        }
        req.send().await.map_err(FederationError::from_send)
    }

    /// Sends a ruma federation request to `server`, signed, and reads its typed answer. An
    /// error status becomes [`FederationError::Remote`] with the server's `errcode`.
    ///
    /// # Errors
    /// As [`Self::request`], plus an answer that does not parse.
    pub async fn send<R>(&self, server: &ServerName, request: R) -> Result<R::IncomingResponse, FederationError>
    where
        R: OutgoingRequest,
        for<'a> R::Authentication: AuthScheme<Input<'a> = ServerSignaturesInput<'a>>,
        for<'a> R::PathBuilder: PathBuilder<Input<'a> = ()>,
    {
        let base = self.destination(server).await.base_url;
        let input = ServerSignaturesInput::new(self.origin.clone(), server.to_owned(), self.key.pair());
        let req: http::Request<Vec<u8>> =
            request.try_into_http_request(&base, input, ()).map_err(|e| FederationError::Signing(e.to_string()))?;
        let url: reqwest::Url = req
            .uri()
            .to_string()
            .parse()
            .map_err(|e| FederationError::BadResponse(format!("{server}: bad URL: {e}")))?;
        self.check(&url)?;
        let (parts, body) = req.into_parts();
        let mut out = self.http.request(parts.method, url).headers(parts.headers);
        if !body.is_empty() {
            out = out.body(body);
        }
        let resp = out.send().await.map_err(FederationError::from_send)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.map_err(FederationError::from_send)?;
        if !status.is_success() {
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            let text = |k: &str, d: &str| body.get(k).and_then(|v| v.as_str()).unwrap_or(d).to_owned();
            return Err(FederationError::Remote {
                server: server.to_owned(),
                status: status.as_u16(),
                errcode: text("errcode", "M_UNKNOWN"),
                error: text("error", ""),
            });
        }
        let mut http_resp = http::Response::builder().status(status);
        if let Some(h) = http_resp.headers_mut() {
            *h = headers;
        }
        let http_resp = http_resp.body(bytes).map_err(|e| FederationError::BadResponse(e.to_string()))?;
        R::IncomingResponse::try_from_http_response(http_resp)
            .map_err(|e| FederationError::BadResponse(format!("{server}: {e}")))
    }

    /// `GET path_and_query` on `server`, signed. Any HTTP status is returned to the caller.
    ///
    /// # Errors
    /// When the request cannot be signed or sent.
    pub async fn get(&self, server: &ServerName, path_and_query: &str) -> Result<reqwest::Response, FederationError> {
        self.request(http::Method::GET, server, path_and_query, None).await
    }

    /// `GET path` on `server` without signing (the key endpoints).
    ///
    /// # Errors
    /// When the request cannot be sent, or the answer is not a success.
    pub async fn get_unsigned(&self, server: &ServerName, path: &str) -> Result<reqwest::Response, FederationError> {
        let url = self.url(server, path).await?;
        let resp = self.http.get(url).send().await.map_err(FederationError::from_send)?;
        if !resp.status().is_success() {
            return Err(FederationError::BadResponse(format!("{server} answered {} for {path}", resp.status())));
        }
        Ok(resp)
    }

    /// `GET url` without signing, under the same address policy: where a server redirects a
    /// download to.
    ///
    /// # Errors
    /// When the URL is malformed or refused, or the request cannot be sent.
    pub async fn get_url(&self, url: &str) -> Result<reqwest::Response, FederationError> {
        let url: reqwest::Url = url.parse().map_err(|e| FederationError::BadResponse(format!("bad URL {url}: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FederationError::BadResponse(format!("{url} is not http(s)")));
        }
        self.check(&url)?;
        self.http.get(url).send().await.map_err(FederationError::from_send)
    }
}
