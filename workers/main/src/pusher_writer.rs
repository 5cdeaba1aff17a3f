//! The writer of pushers and of the `pushers` stream: `/pushers/set`, and the removals that follow
//! a deleted or logged-out device, a deactivated account, or a pushkey a gateway rejected.

use std::sync::Arc;

use ganglion_replication::{Bus, StreamName};
use ganglion_storage::{EventStore, Pusher, PusherStore, user_row};
use ruma::UserId;
use tokio::sync::Mutex;

/// Writes pushers; the only writer of the `pushers` stream.
pub(crate) struct PusherWriter {
    store: PusherStore,
    events: EventStore,
    bus: Arc<dyn Bus>,
    last: Mutex<i64>,
}

impl std::fmt::Debug for PusherWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PusherWriter").finish_non_exhaustive()
    }
}

impl PusherWriter {
    /// A writer continuing the stream.
    pub(crate) async fn new(
        store: PusherStore,
        events: EventStore,
        bus: Arc<dyn Bus>,
    ) -> Result<Arc<Self>, ganglion_storage::Error> {
        let last = store.max_position().await?;
        Ok(Arc::new(Self { store, events, bus, last: Mutex::new(last) }))
    }

    /// The user's pushers.
    pub(crate) async fn list(&self, user: &UserId) -> Result<Vec<Pusher>, ganglion_storage::Error> {
        self.store.for_user(user.as_str()).await
    }

    async fn publish(&self, logged: Vec<(i64, String)>) {
        for (position, user) in logged {
            if let Err(e) = self.bus.publish(user_row(StreamName::Pushers, position, &user, "")).await {
                tracing::warn!(error = %e, "publishing a pushers row failed; consumers will catch up");
            }
        }
    }

    /// Creates or updates a pusher. A new one starts at the current end of the events stream, so
    /// it pushes what comes next, not the user's history.
    pub(crate) async fn set(&self, mut pusher: Pusher, append: bool) -> Result<(), ganglion_storage::Error> {
        let mut last = self.last.lock().await;
        pusher.last_stream_ordering = self.events.max_stream_ordering().await?;
        let mut next = *last;
        let logged = self.store.set(&pusher, append, &mut next).await?;
        *last = next;
        self.publish(logged).await;
        Ok(())
    }

    /// Deletes one pusher; returns whether it existed.
    pub(crate) async fn remove(
        &self,
        user: &UserId,
        app_id: &str,
        pushkey: &str,
    ) -> Result<bool, ganglion_storage::Error> {
        let mut last = self.last.lock().await;
        let mut next = *last;
        let logged = self.store.remove(user, app_id, pushkey, &mut next).await?;
        *last = next;
        let removed = !logged.is_empty();
        self.publish(logged).await;
        Ok(removed)
    }

    /// Deletes the pushers set from `device_id`.
    pub(crate) async fn remove_for_device(
        &self,
        user: &UserId,
        device_id: &str,
    ) -> Result<(), ganglion_storage::Error> {
        let mut last = self.last.lock().await;
        let mut next = *last;
        let logged = self.store.remove_for_device(user, device_id, &mut next).await?;
        *last = next;
        self.publish(logged).await;
        Ok(())
    }

    /// Deletes every pusher of the user.
    pub(crate) async fn remove_for_user(&self, user: &UserId) -> Result<(), ganglion_storage::Error> {
        let mut last = self.last.lock().await;
        let mut next = *last;
        let logged = self.store.remove_for_user(user, &mut next).await?;
        *last = next;
        self.publish(logged).await;
        Ok(())
    }
}
