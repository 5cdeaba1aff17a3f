//! The `federation-reader` role: inbound federation (`/_matrix/federation/*`, `/_matrix/key/*`).
//!
//! Built so far: the server's keys at `/_matrix/key/v2/server`, signed. Inbound transactions,
//! queries and joins are not built yet: the other paths the routing table sends here answer
//! `M_UNRECOGNIZED`. The role follows the replication stream so operators can deploy and scale
//! it now.
//!
//! Depends on the shared crates; never on another worker crate.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use ganglion_config::Config;
use ganglion_core::ServerSigningKey;
use ganglion_replication::{Bus, Follower, StreamPosition};
use ganglion_storage::{Db, EventStore, KeyStore, follow_events};
use ruma::OwnedServerName;
use serde_json::Value;
use tokio::sync::watch;

/// Why the role could not start.
#[derive(Debug)]
pub enum StartError {
    /// Bad configuration, or no signing key yet.
    Config(String),
    /// The database failed.
    Storage(ganglion_storage::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Config(m) => write!(f, "{m}"),
            Self::Storage(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

#[derive(Debug, Clone)]
struct KeyState {
    server_name: OwnedServerName,
    key: Arc<ServerSigningKey>,
}

/// A running `federation-reader` role.
#[derive(Debug)]
pub struct FederationReader {
    _follower: Follower,
    position: watch::Receiver<StreamPosition>,
    keys: KeyState,
}

impl FederationReader {
    /// Loads the server key and starts following the `events` stream from the database's current
    /// position.
    ///
    /// # Errors
    /// When the server name is invalid, no signing key exists yet, or the database cannot be read.
    pub async fn start(cfg: &Config, db: Db, bus: Arc<dyn Bus>) -> Result<Self, StartError> {
        let server_name = OwnedServerName::try_from(cfg.server_name.as_str())
            .map_err(|e| StartError::Config(format!("server_name: {e}")))?;
        let key =
            ganglion_federation::load_signing_key(&KeyStore::new(db.clone())).await.map_err(StartError::Config)?;
        let (follower, position) = follow_events(&EventStore::new(db), bus).await.map_err(StartError::Storage)?;
        Ok(Self { _follower: follower, position, keys: KeyState { server_name, key: Arc::new(key) } })
    }

    /// The position reached on the `events` stream.
    pub fn position(&self) -> watch::Receiver<StreamPosition> {
        self.position.clone()
    }

    /// The role's HTTP routes.
    pub fn router(&self) -> Router {
        router(self.keys.server_name.clone(), self.keys.key.clone())
    }
}

/// `/_matrix/key/v2/server` (and the deprecated `/{keyId}` form, which answers the same).
fn router(server_name: OwnedServerName, key: Arc<ServerSigningKey>) -> Router {
    Router::new()
        .route("/_matrix/key/v2/server", get(server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(server_keys))
        .with_state(KeyState { server_name, key })
}

async fn server_keys(State(s): State<KeyState>) -> axum::Json<Value> {
    axum::Json(ganglion_federation::server_keys_document(&s.server_name, &s.key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn server_keys_are_self_signed_and_current() {
        let key = Arc::new(ServerSigningKey::generate());
        let name = OwnedServerName::try_from("example.org").unwrap();
        let resp = router(name, key.clone())
            .oneshot(http::Request::get("/_matrix/key/v2/server").body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK);
        let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["server_name"], "example.org");
        let key_id = format!("ed25519:{}", key.version());
        assert_eq!(body["verify_keys"][&key_id]["key"], key.public_key_base64());
        let public = ruma::serde::Base64::parse(key.public_key_base64()).unwrap();
        let mut map = ruma::signatures::PublicKeyMap::new();
        map.insert("example.org".into(), [(key_id, public)].into());
        let object: ruma::CanonicalJsonObject = serde_json::from_value(body.clone()).unwrap();
        ruma::signatures::verify_json(&map, &object).expect("signed by the key it lists");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(body["valid_until_ts"].as_u64().unwrap() > now);
    }
}
