//! The `sync` role: `/sync`, answered from the database and woken by the replication stream.
//!
//! Stateless: any instance serves any user, so the proxy needs no sticky routing. Each instance
//! follows the `events` stream; a long-poll waits on the stream position and answers as soon as a row
//! for one of the user's rooms arrives. A token names stream positions; an instance asked for a
//! token ahead of its own position waits until it has caught up, so a client moving between
//! instances never goes back in time.
//!
//! Depends on the shared crates; never on another worker crate.

mod sync_v3;
mod token;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::get;
use ganglion_http::Authenticator;
use ganglion_replication::{Bus, Follower, StreamName, StreamPosition};
use ganglion_storage::{AccountDataStore, Db, EventStore, UserStore, follow_stream};
use tokio::sync::watch;

pub use token::SyncToken;

/// What `/sync` handlers need.
#[derive(Clone)]
pub(crate) struct SyncContext {
    events: EventStore,
    account_data: AccountDataStore,
    users: UserStore,
    position: watch::Receiver<StreamPosition>,
    account_data_position: watch::Receiver<StreamPosition>,
    max_timeout: Duration,
}

/// The sync role's state.
#[derive(Clone)]
pub struct SyncState {
    auth: Authenticator,
    sync: SyncContext,
    // Keeps the stream followers alive as long as any router clone lives.
    _followers: Arc<[Follower; 2]>,
}

impl std::fmt::Debug for SyncState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncState").finish_non_exhaustive()
    }
}

impl FromRef<SyncState> for Authenticator {
    fn from_ref(s: &SyncState) -> Self {
        s.auth.clone()
    }
}
impl FromRef<SyncState> for SyncContext {
    fn from_ref(s: &SyncState) -> Self {
        s.sync.clone()
    }
}

impl SyncState {
    /// Starts following the `events` stream from the database's current position.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn start(db: Db, bus: Arc<dyn Bus>, max_timeout: Duration) -> Result<Self, ganglion_storage::Error> {
        let events = EventStore::new(db.clone());
        let (events_follower, position) = follow_stream(&events, bus.clone(), StreamName::Events).await?;
        let (account_data_follower, account_data_position) =
            follow_stream(&events, bus, StreamName::AccountData).await?;
        let users = UserStore::new(db.clone());
        Ok(Self {
            auth: Authenticator::new(users.clone()),
            sync: SyncContext {
                events,
                account_data: AccountDataStore::new(db),
                users,
                position,
                account_data_position,
                max_timeout,
            },
            _followers: Arc::new([events_follower, account_data_follower]),
        })
    }

    /// The position this instance has reached on the `events` stream.
    pub fn position(&self) -> watch::Receiver<StreamPosition> {
        self.sync.position.clone()
    }
}

/// The sync role's router.
pub fn router(state: SyncState) -> Router {
    let mut r = Router::new();
    for v in ["r0", "v3"] {
        r = r.route(&format!("/_matrix/client/{v}/sync"), get(sync_v3::sync));
    }
    r.with_state(state)
}
