//! The writer of the `receipts` and `typing` streams. Typing is kept in memory here (who types
//! where, until when) and every change of a room's set is logged, so workers that follow the
//! stream, or catch up from the database, see the same sets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use ganglion_replication::{Bus, StreamName};
use ganglion_storage::{EphemeralStore, Receipt, user_row};
use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::sync::Mutex;

/// Longest typing notification honoured; clients renew theirs.
const MAX_TYPING: Duration = Duration::from_secs(120);

/// Writes receipts and typing changes.
pub(crate) struct EphemeralWriter {
    store: EphemeralStore,
    bus: Arc<dyn Bus>,
    receipts: Mutex<i64>,
    typing_position: Mutex<i64>,
    /// Room → user → typing until. A std mutex: held for map updates only, never across `.await`.
    typing: StdMutex<HashMap<OwnedRoomId, HashMap<OwnedUserId, Instant>>>,
}

impl std::fmt::Debug for EphemeralWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EphemeralWriter").finish_non_exhaustive()
    }
}

impl EphemeralWriter {
    pub(crate) async fn new(store: EphemeralStore, bus: Arc<dyn Bus>) -> Result<Arc<Self>, ganglion_storage::Error> {
        let receipts = store.max_receipt_position().await?;
        let typing_position = store.max_typing_position().await?;
        Ok(Arc::new(Self {
            store,
            bus,
            receipts: Mutex::new(receipts),
            typing_position: Mutex::new(typing_position),
            typing: StdMutex::new(HashMap::new()),
        }))
    }

    /// Stores and publishes a receipt.
    pub(crate) async fn put_receipt(&self, mut receipt: Receipt) -> Result<(), ganglion_storage::Error> {
        let mut last = self.receipts.lock().await;
        receipt.position = *last + 1;
        self.store.put_receipt(&receipt).await?;
        *last = receipt.position;
        if let Err(e) =
            self.bus.publish(user_row(StreamName::Receipts, receipt.position, &receipt.user_id, &receipt.room_id)).await
        {
            tracing::warn!(error = %e, "publishing a receipt row failed; consumers will catch up");
        }
        Ok(())
    }

    /// The users typing in a room now, sorted, dropping expired entries.
    fn current(&self, room: &RoomId) -> Vec<String> {
        let mut map = self.typing.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let Some(users) = map.get_mut(room) else { return Vec::new() };
        users.retain(|_, until| *until > now);
        let mut list: Vec<String> = users.keys().map(|u| u.to_string()).collect();
        list.sort();
        list
    }

    /// Starts or stops `user` typing in `room`; publishes the room's new set when it changed.
    pub(crate) async fn set_typing(
        self: &Arc<Self>,
        room: &RoomId,
        user: &UserId,
        typing: bool,
        timeout: Duration,
    ) -> Result<(), ganglion_storage::Error> {
        let before = self.current(room);
        {
            let mut map = self.typing.lock().unwrap_or_else(|p| p.into_inner());
            let users = map.entry(room.to_owned()).or_default();
            if typing {
                users.insert(user.to_owned(), Instant::now() + timeout.min(MAX_TYPING));
            } else {
                users.remove(user);
            }
        }
        if typing {
            // Expire the notification when its timeout passes without a renewal.
            let this = Arc::clone(self);
            let room = room.to_owned();
            let wait = timeout.min(MAX_TYPING) + Duration::from_millis(50);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let set = this.current(&room);
                if let Err(e) = this.publish_if_changed(&room, None, set).await {
                    tracing::warn!(error = %e, "could not publish a typing expiry");
                }
            });
        }
        let after = self.current(room);
        self.publish_if_changed(room, Some(before), after).await
    }

    async fn publish_if_changed(
        &self,
        room: &RoomId,
        before: Option<Vec<String>>,
        after: Vec<String>,
    ) -> Result<(), ganglion_storage::Error> {
        let mut last = self.typing_position.lock().await;
        let previous = match before {
            Some(b) => b,
            // An expiry: compare with the last set written for the room.
            None => self
                .store
                .typing_in_rooms(&[room.to_string()], 0, *last)
                .await?
                .pop()
                .map(|(_, u)| u)
                .unwrap_or_default(),
        };
        if previous == after {
            return Ok(());
        }
        let position = *last + 1;
        self.store.put_typing(position, room, &after).await?;
        *last = position;
        if let Err(e) = self.bus.publish(user_row(StreamName::Typing, position, "", room.as_str())).await {
            tracing::warn!(error = %e, "publishing a typing row failed; consumers will catch up");
        }
        Ok(())
    }
}
