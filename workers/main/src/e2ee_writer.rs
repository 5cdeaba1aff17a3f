//! The writer of the `to_device` and `device_lists` streams. Each stream's positions are
//! allocated under its own lock, so they stay contiguous; rows are published after commit.

use std::sync::Arc;

use ganglion_replication::{Bus, StreamName};
use ganglion_storage::{E2eeStore, ToDeviceMessage, user_row};
use ruma::UserId;
use tokio::sync::Mutex;

/// Queues to-device messages and records device-list changes.
pub(crate) struct E2eeWriter {
    store: E2eeStore,
    bus: Arc<dyn Bus>,
    to_device: Mutex<i64>,
    device_lists: Mutex<i64>,
}

impl std::fmt::Debug for E2eeWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("E2eeWriter").finish_non_exhaustive()
    }
}

/// A message to queue: recipient user and device, sender, type, content.
pub(crate) struct OutgoingToDevice {
    pub(crate) user_id: String,
    pub(crate) device_id: String,
    pub(crate) sender: String,
    pub(crate) event_type: String,
    pub(crate) content: String,
}

impl E2eeWriter {
    pub(crate) async fn new(store: E2eeStore, bus: Arc<dyn Bus>) -> Result<Self, ganglion_storage::Error> {
        let to_device = store.max_to_device_position().await?;
        let device_lists = store.max_device_list_position().await?;
        Ok(Self { store, bus, to_device: Mutex::new(to_device), device_lists: Mutex::new(device_lists) })
    }

    /// Queues messages in order, each at its own position.
    pub(crate) async fn send_to_device(&self, messages: Vec<OutgoingToDevice>) -> Result<(), ganglion_storage::Error> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut last = self.to_device.lock().await;
        let rows: Vec<ToDeviceMessage> = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| ToDeviceMessage {
                position: *last + 1 + i as i64,
                user_id: m.user_id,
                device_id: m.device_id,
                sender: m.sender,
                event_type: m.event_type,
                content: m.content,
            })
            .collect();
        self.store.queue_to_device(&rows).await?;
        *last += rows.len() as i64;
        for r in &rows {
            if let Err(e) = self.bus.publish(user_row(StreamName::ToDevice, r.position, &r.user_id, &r.device_id)).await
            {
                tracing::warn!(error = %e, position = r.position, "publishing a to-device row failed; consumers will catch up");
            }
        }
        Ok(())
    }

    /// Records that `user`'s devices or keys changed.
    pub(crate) async fn device_list_changed(&self, user: &UserId) -> Result<(), ganglion_storage::Error> {
        let mut last = self.device_lists.lock().await;
        let position = *last + 1;
        self.store.log_device_change(position, user).await?;
        *last = position;
        if let Err(e) = self.bus.publish(user_row(StreamName::DeviceLists, position, user.as_str(), "")).await {
            tracing::warn!(error = %e, position, "publishing a device-list row failed; consumers will catch up");
        }
        Ok(())
    }

    /// Deletes a device's acknowledged messages.
    pub(crate) async fn ack(&self, user: &UserId, device_id: &str, upto: i64) -> Result<u64, ganglion_storage::Error> {
        self.store.ack_to_device(user, device_id, upto).await
    }
}
