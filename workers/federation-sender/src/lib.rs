//! The `federation-sender` role: outbound federation transactions to other servers.
//!
//! Its features are not built yet. Until they are, the role starts, reports health, follows the
//! replication stream (so operators can deploy and scale it now), and serves no endpoint: the paths
//! the routing table sends it answer `M_UNRECOGNIZED`.
//!
//! Depends on the shared crates; never on another worker crate.

use std::sync::Arc;

use axum::Router;
use ganglion_replication::{Bus, Follower, StreamPosition};
use ganglion_storage::{Db, EventStore, follow_events};
use tokio::sync::watch;

/// A running `federation-sender` role.
#[derive(Debug)]
pub struct FederationSender {
    _follower: Follower,
    position: watch::Receiver<StreamPosition>,
}

impl FederationSender {
    /// Starts following the `events` stream from the database's current position.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn start(db: Db, bus: Arc<dyn Bus>) -> Result<Self, ganglion_storage::Error> {
        let (follower, position) = follow_events(&EventStore::new(db), bus).await?;
        Ok(Self { _follower: follower, position })
    }

    /// The position reached on the `events` stream.
    pub fn position(&self) -> watch::Receiver<StreamPosition> {
        self.position.clone()
    }

    /// The role's HTTP routes: none yet.
    pub fn router(&self) -> Router {
        Router::new()
    }
}
