//! The `sync` role: `/sync` and simplified sliding sync (`sliding`), answered from the database
//! and woken by the replication stream.
//!
//! Stateless: any instance serves any user, so the proxy needs no sticky routing. Each instance
//! follows the `events` stream; a long-poll waits on the stream position and answers as soon as a row
//! for one of the user's rooms arrives. A token names stream positions; an instance asked for a
//! token ahead of its own position waits until it has caught up, so a client moving between
//! instances never goes back in time.
//!
//! Depends on the shared crates; never on another worker crate.

mod filters;
mod legacy;
mod presence_reports;
mod recent;
mod sliding;
mod sync_v3;
mod unread;
mod waiters;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post};
use ganglion_http::Authenticator;
use ganglion_replication::{Bus, Follower, StreamName, StreamPosition};
use ganglion_rpc::MainClient;
use ganglion_storage::{
    AccountDataStore, Db, E2eeStore, EphemeralStore, EventStore, PresenceStore, UserStore, follow_stream,
    follow_stream_with,
};
use tokio::sync::watch;

pub use ganglion_replication::SyncToken;

/// What `/sync` handlers need.
#[derive(Clone)]
pub(crate) struct SyncContext {
    events: EventStore,
    account_data: AccountDataStore,
    e2ee: E2eeStore,
    ephemeral: EphemeralStore,
    presence: PresenceStore,
    users: UserStore,
    positions: Positions,
    main: MainClient,
    max_timeout: Duration,
    /// The latest events and caches checked against them.
    recent: Arc<recent::Recent>,
    /// Unread counts kept per user and room, checked against the `receipts` stream.
    unread: Arc<unread::UnreadCache>,
    /// The presence last reported to main per user.
    presence_reports: Arc<presence_reports::PresenceReports>,
    /// Long-polls waiting for events of their rooms.
    waiters: Arc<waiters::Waiters>,
}

/// Where this instance stands on each stream a sync token names.
#[derive(Clone)]
pub(crate) struct Positions {
    events: watch::Receiver<StreamPosition>,
    account_data: watch::Receiver<StreamPosition>,
    to_device: watch::Receiver<StreamPosition>,
    device_lists: watch::Receiver<StreamPosition>,
    receipts: watch::Receiver<StreamPosition>,
    typing: watch::Receiver<StreamPosition>,
    presence: watch::Receiver<StreamPosition>,
}

impl Positions {
    /// The current positions, marking them seen for [`Positions::changed`].
    pub(crate) fn current(&mut self) -> SyncToken {
        SyncToken {
            events: self.events.borrow_and_update().0,
            account_data: self.account_data.borrow_and_update().0,
            to_device: self.to_device.borrow_and_update().0,
            device_lists: self.device_lists.borrow_and_update().0,
            receipts: self.receipts.borrow_and_update().0,
            typing: self.typing.borrow_and_update().0,
            presence: self.presence.borrow_and_update().0,
        }
    }

    /// For a first sync (no token): waits, at most two seconds, until this instance has followed
    /// the `events` stream as far as the database has it, so a client's own writes (a join just
    /// made, say) are in its first sync even when the stream reaches this worker a moment later.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub(crate) async fn catch_up_with_database(&mut self, events: &EventStore) -> Result<(), ganglion_storage::Error> {
        let written = u64::try_from(events.max_stream_ordering().await?).unwrap_or(0);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while self.current().events < written {
            if !matches!(tokio::time::timeout_at(deadline, self.changed()).await, Ok(Ok(()))) {
                break;
            }
        }
        Ok(())
    }

    /// Resolves when any stream but `events` moves; errors when the followers stopped.
    async fn changed_besides_events(&mut self) -> Result<(), watch::error::RecvError> {
        tokio::select! {
            r = self.account_data.changed() => r,
            r = self.to_device.changed() => r,
            r = self.device_lists.changed() => r,
            r = self.receipts.changed() => r,
            r = self.typing.changed() => r,
            r = self.presence.changed() => r,
        }
    }

    /// Waits, at most until `deadline`, for news that may concern `user`: a move of any stream
    /// but `events`, or an event in one of `rooms` or about the user (see [`waiters`]).
    /// `events_seen` is the `events` position the caller's last pass looked at. Returns `false`
    /// at the deadline or when the followers stopped.
    pub(crate) async fn wait_for_news(
        &mut self,
        waiters: &waiters::Waiters,
        user: &ruma::UserId,
        rooms: impl IntoIterator<Item = String>,
        events_seen: u64,
        deadline: tokio::time::Instant,
    ) -> bool {
        let registration = waiters.register(rooms.into_iter().chain([user.to_string()]).collect());
        // An event published between the pass and the registration woke nobody: look again.
        if self.events.borrow().0 > events_seen {
            return true;
        }
        tokio::select! {
            () = registration.notified() => true,
            r = self.changed_besides_events() => r.is_ok(),
            () = tokio::time::sleep_until(deadline) => false,
        }
    }

    /// Resolves when any stream moves; errors when the followers stopped.
    pub(crate) async fn changed(&mut self) -> Result<(), watch::error::RecvError> {
        let mut events = self.events.clone();
        tokio::select! {
            r = events.changed() => {
                // The clone saw the move: mark it seen on the original too.
                self.events.borrow_and_update();
                r
            }
            r = self.changed_besides_events() => r,
        }
    }
}

/// The sync role's state.
#[derive(Clone)]
pub struct SyncState {
    auth: Authenticator,
    sync: SyncContext,
    // Keeps the stream followers alive as long as any router clone lives.
    _followers: Arc<Vec<Follower>>,
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
    pub async fn start(
        db: Db,
        bus: Arc<dyn Bus>,
        main: MainClient,
        max_timeout: Duration,
        appservices: ganglion_appservice::Appservices,
    ) -> Result<Self, ganglion_storage::Error> {
        let events = EventStore::new(db.clone());
        let mut followers = Vec::new();
        // The events stream's rows also fill the window of recent events, before each position
        // is published (so a woken long-poll finds its event there).
        let recent = Arc::new(recent::Recent::new());
        let waiters = Arc::new(waiters::Waiters::default());
        let (sink, wake) = (recent.clone(), waiters.clone());
        let (events_follower, events_position) = follow_stream_with(
            &events,
            bus.clone(),
            StreamName::Events,
            move |row| sink.push(row),
            move |row| wake.wake(row),
        )
        .await?;
        recent.start_at(events_position.borrow().0 as i64);
        followers.push(events_follower);
        let unread = Arc::new(unread::UnreadCache::default());
        let sink = unread.clone();
        let (receipts_follower, receipts_position) =
            follow_stream_with(&events, bus.clone(), StreamName::Receipts, move |row| sink.push(row), |_| {}).await?;
        followers.push(receipts_follower);
        let presence_reports = Arc::new(presence_reports::PresenceReports::default());
        let sink = presence_reports.clone();
        let (presence_follower, presence_position) =
            follow_stream_with(&events, bus.clone(), StreamName::Presence, move |row| sink.push(row), |_| {}).await?;
        followers.push(presence_follower);
        let mut follow = async |stream| -> Result<watch::Receiver<StreamPosition>, ganglion_storage::Error> {
            let (f, p) = follow_stream(&events, bus.clone(), stream).await?;
            followers.push(f);
            Ok(p)
        };
        let positions = Positions {
            events: events_position,
            account_data: follow(StreamName::AccountData).await?,
            to_device: follow(StreamName::ToDevice).await?,
            device_lists: follow(StreamName::DeviceLists).await?,
            receipts: receipts_position,
            typing: follow(StreamName::Typing).await?,
            presence: presence_position,
        };
        let users = UserStore::new(db.clone());
        Ok(Self {
            auth: Authenticator::new(users.clone(), appservices),
            sync: SyncContext {
                events,
                account_data: AccountDataStore::new(db.clone()),
                e2ee: E2eeStore::new(db.clone()),
                ephemeral: EphemeralStore::new(db.clone()),
                presence: PresenceStore::new(db),
                users,
                positions,
                main,
                max_timeout,
                recent,
                unread,
                presence_reports,
                waiters,
            },
            _followers: Arc::new(followers),
        })
    }

    /// The position this instance has reached on the `events` stream.
    pub fn position(&self) -> watch::Receiver<StreamPosition> {
        self.sync.positions.events.clone()
    }
}

/// The sync role's router.
pub fn router(state: SyncState) -> Router {
    let mut r = Router::new();
    for v in ["r0", "v3"] {
        r = r.route(&format!("/_matrix/client/{v}/sync"), get(sync_v3::sync));
    }
    for v in ["api/v1", "r0", "v3"] {
        r = r
            .route(&format!("/_matrix/client/{v}/events"), get(legacy::events))
            .route(&format!("/_matrix/client/{v}/initialSync"), get(legacy::initial_sync))
            .route(&format!("/_matrix/client/{v}/rooms/{{room_id}}/initialSync"), get(legacy::room_initial_sync));
    }
    r = r.route("/_matrix/client/unstable/org.matrix.simplified_msc3575/sync", post(sliding::sliding_sync));
    r.with_state(state)
}

/// `(changed, left)` device lists between two sync tokens.
pub(crate) async fn device_list_changes(
    ctx: &SyncContext,
    user: &ruma::UserId,
    since: &SyncToken,
    upto: &SyncToken,
) -> Result<(Vec<String>, Vec<String>), ganglion_http::MatrixError> {
    let window = ganglion_storage::DeviceListWindow {
        device_lists_after: since.device_lists as i64,
        device_lists_upto: upto.device_lists as i64,
        events_after: since.events as i64,
        events_upto: upto.events as i64,
    };
    Ok(ganglion_storage::device_list_changes(&ctx.events, &ctx.e2ee, user, window).await?)
}
