//! The writer of the `account_data` stream: positions allocated under one lock (so they stay
//! contiguous), the write committed, then the row published.

use std::sync::Arc;

use ganglion_replication::Bus;
use ganglion_storage::{AccountDataEntry, AccountDataStore, account_data_row};
use ruma::UserId;
use tokio::sync::Mutex;

/// Writes account data; the only writer of the `account_data` stream.
pub(crate) struct AccountDataWriter {
    store: AccountDataStore,
    bus: Arc<dyn Bus>,
    last_position: Mutex<i64>,
}

impl std::fmt::Debug for AccountDataWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountDataWriter").finish_non_exhaustive()
    }
}

impl AccountDataWriter {
    /// A writer continuing after the database's highest position.
    pub(crate) async fn new(store: AccountDataStore, bus: Arc<dyn Bus>) -> Result<Self, ganglion_storage::Error> {
        let last = store.max_position().await?;
        Ok(Self { store, bus, last_position: Mutex::new(last) })
    }

    /// Stores `content` as `user`'s account data of `data_type` (in `room_id`, or global when
    /// empty) and publishes it. Returns the position.
    pub(crate) async fn put(
        &self,
        user: &UserId,
        room_id: &str,
        data_type: &str,
        content: &serde_json::Value,
    ) -> Result<i64, ganglion_storage::Error> {
        let mut last = self.last_position.lock().await;
        let entry = AccountDataEntry {
            position: *last + 1,
            user_id: user.to_string(),
            room_id: room_id.to_owned(),
            data_type: data_type.to_owned(),
            content: content.to_string(),
        };
        self.store.write(&entry).await?;
        *last = entry.position;
        if let Err(e) = self.bus.publish(account_data_row(&entry)).await {
            tracing::warn!(error = %e, position = entry.position, "publishing account data failed; consumers will catch up from the database");
        }
        Ok(entry.position)
    }
}
