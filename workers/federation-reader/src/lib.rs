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
    /// Keys no longer signing, with when they expired.
    old: Arc<Vec<(ServerSigningKey, i64)>>,
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
        let store = KeyStore::new(db.clone());
        let key = ganglion_federation::load_signing_key(&store).await.map_err(StartError::Config)?;
        let old = ganglion_federation::load_expired_keys(&store).await.map_err(StartError::Config)?;
        let (follower, position) = follow_events(&EventStore::new(db), bus).await.map_err(StartError::Storage)?;
        let keys = KeyState { server_name, key: Arc::new(key), old: Arc::new(old) };
        Ok(Self { _follower: follower, position, keys })
    }

    /// The position reached on the `events` stream.
    pub fn position(&self) -> watch::Receiver<StreamPosition> {
        self.position.clone()
    }

    /// The role's HTTP routes.
    pub fn router(&self) -> Router {
        router(self.keys.clone())
    }
}

/// `/_matrix/key/v2/server` (and the deprecated `/{keyId}` form, which answers the same).
fn router(keys: KeyState) -> Router {
    Router::new()
        .route("/_matrix/key/v2/server", get(server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(server_keys))
        .with_state(keys)
}

async fn server_keys(State(s): State<KeyState>) -> axum::Json<Value> {
    axum::Json(ganglion_federation::server_keys_document(&s.server_name, &s.key, &s.old))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    #[tokio::test]
    async fn server_keys_are_self_signed_and_current() {
        let key = Arc::new(ServerSigningKey::generate());
        let retired = ServerSigningKey::generate();
        let retired_public = retired.public_key_base64();
        let retired_id = format!("ed25519:{}", retired.version());
        let name = OwnedServerName::try_from("example.org").unwrap();
        let state = KeyState { server_name: name, key: key.clone(), old: Arc::new(vec![(retired, 1_700_000_000_000)]) };
        let resp = router(state)
            .oneshot(http::Request::get("/_matrix/key/v2/server").body(axum::body::Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), http::StatusCode::OK);
        let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["server_name"], "example.org");
        let key_id = format!("ed25519:{}", key.version());
        assert_eq!(body["verify_keys"][&key_id]["key"], key.public_key_base64());
        assert_eq!(
            body["old_verify_keys"][&retired_id],
            serde_json::json!({"key": retired_public, "expired_ts": 1_700_000_000_000_i64})
        );
        let public = ruma::serde::Base64::parse(key.public_key_base64()).unwrap();
        let mut map = ruma::signatures::PublicKeyMap::new();
        map.insert("example.org".into(), [(key_id, public)].into());
        let object: ruma::CanonicalJsonObject = serde_json::from_value(body.clone()).unwrap();
        ruma::signatures::verify_json(&map, &object).expect("signed by the key it lists");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        assert!(body["valid_until_ts"].as_u64().unwrap() > now);
    }
}
