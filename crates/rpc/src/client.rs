//! A client for `main`'s write API that connects lazily and retries while `main` restarts.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::v1::write_api_client::WriteApiClient;
use crate::v1::{
    AckToDeviceRequest, ReceivePdusRequest, ReceivePdusResponse, RemovePusherRequest, SendEventRequest,
    SendEventResponse, ServerInfoRequest, ServerInfoResponse, SetPresenceRequest,
};

/// The metadata key carrying the originating request id.
pub const REQUEST_ID_METADATA: &str = "x-request-id";

/// Calls `main`. Cheap to clone; clones share one HTTP/2 connection.
#[derive(Debug, Clone)]
pub struct MainClient {
    inner: WriteApiClient<Channel>,
}

/// A failed call.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The URL is invalid.
    #[error("invalid main url: {0}")]
    Url(String),
    /// `main` answered with an error status.
    #[error("main answered {code:?}: {message}")]
    Status {
        /// The gRPC code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
}

impl From<tonic::Status> for RpcError {
    fn from(s: tonic::Status) -> Self {
        Self::Status { code: s.code(), message: s.message().to_owned() }
    }
}

impl MainClient {
    /// A client for `url` (`http://host:port`). Connects on first use.
    ///
    /// # Errors
    /// When the URL is malformed.
    pub fn new(url: &str) -> Result<Self, RpcError> {
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| RpcError::Url(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(60))
            .tcp_nodelay(true);
        Ok(Self { inner: WriteApiClient::new(endpoint.connect_lazy()) })
    }

    fn request<T>(msg: T, request_id: &str) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        if let Ok(v) = request_id.parse() {
            req.metadata_mut().insert(REQUEST_ID_METADATA, v);
        }
        req
    }

    /// `ServerInfo`, retried with backoff for up to `patience` while `main` is unreachable.
    ///
    /// # Errors
    /// When `main` stays unreachable or answers an error.
    pub async fn server_info(&self, patience: Duration) -> Result<ServerInfoResponse, RpcError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut delay = Duration::from_millis(100);
        loop {
            match self.inner.clone().server_info(ServerInfoRequest {}).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(s) if s.code() == tonic::Code::Unavailable && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %s, "main not reachable yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(s) => return Err(s.into()),
            }
        }
    }

    /// `SendEvent`. Not retried here: the caller's txn id makes a retry safe, and the caller decides.
    ///
    /// # Errors
    /// When `main` refuses the event or is unreachable.
    pub async fn send_event(&self, req: SendEventRequest, request_id: &str) -> Result<SendEventResponse, RpcError> {
        Ok(self.inner.clone().send_event(Self::request(req, request_id)).await?.into_inner())
    }

    /// `AckToDevice`: deletes a device's acknowledged to-device messages.
    ///
    /// # Errors
    /// When `main` is unreachable or refuses.
    pub async fn ack_to_device(&self, req: AckToDeviceRequest, request_id: &str) -> Result<u64, RpcError> {
        Ok(self.inner.clone().ack_to_device(Self::request(req, request_id)).await?.into_inner().deleted)
    }

    /// `SetPresence`: reports a user's presence as seen by their sync.
    ///
    /// # Errors
    /// When `main` is unreachable or refuses.
    pub async fn set_presence(&self, req: SetPresenceRequest, request_id: &str) -> Result<(), RpcError> {
        self.inner.clone().set_presence(Self::request(req, request_id)).await?;
        Ok(())
    }

    /// `RemovePusher`: deletes a pusher whose pushkey the gateway rejected. Returns whether it existed.
    ///
    /// # Errors
    /// When `main` is unreachable or refuses.
    pub async fn remove_pusher(&self, req: RemovePusherRequest, request_id: &str) -> Result<bool, RpcError> {
        Ok(self.inner.clone().remove_pusher(Self::request(req, request_id)).await?.into_inner().removed)
    }

    /// `ReceivePdus`: hands checked PDUs of one room to `main`. Not retried: receiving is
    /// idempotent, and the caller decides.
    ///
    /// # Errors
    /// When `main` is unreachable or refuses.
    pub async fn receive_pdus(
        &self,
        req: ReceivePdusRequest,
        request_id: &str,
    ) -> Result<ReceivePdusResponse, RpcError> {
        Ok(self.inner.clone().receive_pdus(Self::request(req, request_id)).await?.into_inner())
    }
}
