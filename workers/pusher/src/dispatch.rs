//! Who to wake: the users with pushers (kept current by the `pushers` stream), woken when an
//! `events` batch notified them, when they send a read receipt (badge), at start and whenever the
//! shard ring changes (to take over another instance's users). Waking a user starts their task
//! in [`crate::deliver`] unless it is running.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ganglion_replication::{Bus, Follower, ShardRing, StreamName, StreamPosition, UserRow};
use ganglion_rpc::MainClient;
use ganglion_storage::{Db, EventStore, PusherStore, follow_events, follow_stream_with};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;

use crate::{PushSettings, StartError};

/// One user with pushers.
#[derive(Debug, Default)]
pub(crate) struct Slot {
    /// Something happened since the user's task last looked.
    pub(crate) dirty: AtomicBool,
    /// A receipt may have changed the badge.
    pub(crate) badge: AtomicBool,
    /// The user's task is running.
    pub(crate) running: AtomicBool,
    /// When a timer will wake the user for an email that is not due yet (ms since the epoch;
    /// 0: none), so repeated runs arm one timer, not one each.
    pub(crate) email_timer: std::sync::atomic::AtomicI64,
    pub(crate) wake: Notify,
}

/// What the user tasks share.
pub(crate) struct Shared {
    pub(crate) store: PusherStore,
    pub(crate) events: EventStore,
    pub(crate) threepids: ganglion_storage::ThreepidStore,
    pub(crate) ring: ShardRing,
    pub(crate) main: MainClient,
    pub(crate) http: reqwest::Client,
    pub(crate) settings: PushSettings,
    pub(crate) metrics: crate::metrics::PusherMetrics,
    slots: Mutex<HashMap<String, Arc<Slot>>>,
}

impl Shared {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Slot>>> {
        self.slots.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Wakes a user's task, starting it if it is not running. Users without pushers, and users
    /// another instance owns, are left alone.
    pub(crate) fn wake(self: &Arc<Self>, user: &str, badge: bool) {
        let Some(slot) = self.slots().get(user).cloned() else { return };
        if !self.ring.owns(user) {
            return;
        }
        if badge {
            slot.badge.store(true, Ordering::SeqCst);
        }
        slot.dirty.store(true, Ordering::SeqCst);
        slot.wake.notify_one();
        if !slot.running.swap(true, Ordering::SeqCst) {
            tokio::spawn(crate::deliver::user_task(self.clone(), user.to_owned(), slot));
        }
    }

    /// Counts the users with pushers this instance owns, for the gauge; returns the count.
    fn count_owned(&self) -> usize {
        let owned = self.slots().keys().filter(|u| self.ring.owns(u)).count();
        self.metrics.owned_users(owned);
        owned
    }

    fn wake_all(self: &Arc<Self>) {
        let users: Vec<String> = self.slots().keys().cloned().collect();
        let owned = self.count_owned();
        tracing::info!(
            owned,
            users = users.len(),
            members = self.ring.members().borrow().len(),
            "pushing for the users this instance owns"
        );
        for u in users {
            self.wake(&u, false);
        }
    }
}

/// The role's background tasks; they stop when this is dropped.
pub(crate) struct Dispatcher {
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").field("tasks", &self.tasks.len()).finish()
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Dispatcher {
    pub(crate) async fn start(
        db: Db,
        bus: Arc<dyn Bus>,
        ring: ShardRing,
        main: MainClient,
        settings: PushSettings,
        metrics: crate::metrics::PusherMetrics,
    ) -> Result<(Self, Vec<Follower>, watch::Receiver<StreamPosition>), StartError> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .user_agent(concat!("Ganglion/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StartError::Http(e.to_string()))?;
        let store = PusherStore::new(db.clone());
        let threepids = ganglion_storage::ThreepidStore::new(db.clone());
        let events = EventStore::new(db);
        let shared = Arc::new(Shared {
            store: store.clone(),
            events: events.clone(),
            threepids,
            ring: ring.clone(),
            main,
            http,
            settings,
            metrics,
            slots: Mutex::new(HashMap::new()),
        });

        // Pushers changes are applied one at a time, in stream order, so the last read wins.
        // Following starts before the initial load, so no change falls between the two.
        let (changes_tx, mut changes) = mpsc::unbounded_channel::<String>();
        let (pushers_follower, _) = follow_stream_with(
            &events,
            bus.clone(),
            StreamName::Pushers,
            move |row| {
                if let Ok(r) = UserRow::decode_bytes(&row.payload) {
                    let _ = changes_tx.send(r.user_id);
                }
            },
            |_| {},
        )
        .await?;
        for user in store.users_with_pushers().await? {
            shared.slots().entry(user).or_default();
        }
        let mut tasks = Vec::new();
        {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(user) = changes.recv().await {
                    refresh(&shared, &user).await;
                }
            }));
        }

        // Receipts change the badge.
        let (receipts_follower, _) = {
            let shared = shared.clone();
            follow_stream_with(
                &events,
                bus.clone(),
                StreamName::Receipts,
                move |row| {
                    if let Ok(r) = UserRow::decode_bytes(&row.payload)
                        && !r.user_id.is_empty()
                    {
                        shared.wake(&r.user_id, true);
                    }
                },
                |_| {},
            )
            .await?
        };

        // Events: who did each batch notify?
        let (events_follower, position) = follow_events(&events, bus).await?;
        {
            let shared = shared.clone();
            let mut position = position.clone();
            let mut last = position.borrow().0 as i64;
            tasks.push(tokio::spawn(async move {
                while position.changed().await.is_ok() {
                    let upto = position.borrow_and_update().0 as i64;
                    if upto <= last {
                        continue;
                    }
                    match shared.store.notified_users(last, upto).await {
                        Ok(users) => {
                            for u in users {
                                shared.wake(&u, false);
                            }
                            last = upto;
                        }
                        Err(e) => {
                            // Try the same range again on the next change (or shortly).
                            tracing::warn!(error = %e, "reading whom new events notified failed");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
            }));
        }

        // Membership changes move users between instances: look at everyone we now own.
        {
            let shared = shared.clone();
            let mut members = ring.members();
            tasks.push(tokio::spawn(async move {
                while members.changed().await.is_ok() {
                    shared.wake_all();
                }
            }));
        }
        // Start: catch every owned pusher up from its stored position.
        shared.wake_all();
        tracing::info!(users = shared.slots().len(), me = ring.me(), "pusher started");
        Ok((Self { tasks }, vec![pushers_follower, receipts_follower, events_follower], position))
    }
}

/// Re-reads a user's pushers after a change: a user with none is forgotten, one with some is
/// woken (a new pusher starts at the end of the stream, so this only checks).
async fn refresh(shared: &Arc<Shared>, user: &str) {
    for attempt in 0..5u32 {
        match shared.store.for_user(user).await {
            Ok(list) if list.is_empty() => {
                shared.slots().remove(user);
                shared.count_owned();
                return;
            }
            Ok(_) => {
                shared.slots().entry(user.to_owned()).or_default();
                shared.count_owned();
                shared.wake(user, false);
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, user, attempt, "reading a user's pushers failed");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
        }
    }
}
