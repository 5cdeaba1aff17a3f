//! The database side of the replication stream: rows a consumer missed are rebuilt from the tables,
//! byte for byte the rows `main` published.

use std::sync::Arc;

use async_trait::async_trait;
use ganglion_replication::{
    AccountDataRow, Bus, CatchUpSource, EventRow, Follower, ReplicationError, StreamName, StreamPosition, StreamRow,
    UserRow,
};
use tokio::sync::watch;

use crate::{
    AccountDataEntry, AccountDataStore, E2eeStore, EphemeralStore, EventStore, PersistedEvent, PresenceStore,
    PusherStore,
};

/// A `to_device` or `device_lists` stream row.
pub fn user_row(stream: StreamName, position: i64, user_id: &str, device_id: &str) -> StreamRow {
    UserRow { version: 1, position: position as u64, user_id: user_id.to_owned(), device_id: device_id.to_owned() }
        .to_stream_row(stream)
}

/// The `account_data` stream row for a write; like [`event_row`], the same bytes whether published
/// live or rebuilt by catch-up.
pub fn account_data_row(e: &AccountDataEntry) -> StreamRow {
    AccountDataRow {
        version: 1,
        position: e.position as u64,
        user_id: e.user_id.clone(),
        room_id: e.room_id.clone(),
        data_type: e.data_type.clone(),
        content_json: e.content.clone(),
    }
    .to_stream_row()
}

/// The `events` stream row for a stored event. `main` publishes exactly this after commit, and
/// catch-up rebuilds it from the database, so both paths deliver the same bytes.
pub fn event_row(ev: &PersistedEvent) -> StreamRow {
    let row = EventRow {
        version: 1,
        position: ev.stream_ordering as u64,
        room_id: ev.room_id.to_string(),
        event_id: ev.event_id.to_string(),
        sender: ev.sender.to_string(),
        event_type: ev.event_type.clone(),
        state_key: ev.state_key.clone(),
        membership: ev.membership.clone(),
        event_json: ev.json.clone(),
        request_id: ev.request_id.clone(),
    };
    StreamRow {
        stream: StreamName::Events,
        position: StreamPosition(ev.stream_ordering as u64),
        payload: row.encode_to_bytes(),
    }
}

/// Serves [`CatchUpSource`] reads from the database.
#[derive(Debug, Clone)]
pub struct DbCatchUp {
    events: EventStore,
    account_data: AccountDataStore,
    e2ee: E2eeStore,
    ephemeral: EphemeralStore,
}

impl DbCatchUp {
    /// A source over `events`.
    pub fn new(events: EventStore) -> Arc<Self> {
        let account_data = AccountDataStore::new(events.db().clone());
        let e2ee = E2eeStore::new(events.db().clone());
        let ephemeral = EphemeralStore::new(events.db().clone());
        Arc::new(Self { events, account_data, e2ee, ephemeral })
    }
}

#[async_trait]
impl CatchUpSource for DbCatchUp {
    async fn rows_after(
        &self,
        stream: StreamName,
        after: StreamPosition,
        limit: usize,
    ) -> Result<Vec<StreamRow>, ReplicationError> {
        match stream {
            StreamName::Events => {
                let events = self
                    .events
                    .events_after(after.0 as i64, limit as i64)
                    .await
                    .map_err(|e| ReplicationError::Source(e.to_string()))?;
                Ok(events.iter().map(event_row).collect())
            }
            StreamName::AccountData => {
                let entries = self
                    .account_data
                    .log_after(after.0 as i64, limit as i64)
                    .await
                    .map_err(|e| ReplicationError::Source(e.to_string()))?;
                Ok(entries.iter().map(account_data_row).collect())
            }
            StreamName::ToDevice => {
                let messages = self
                    .e2ee
                    .to_device_after(after.0 as i64, limit as i64)
                    .await
                    .map_err(|e| ReplicationError::Source(e.to_string()))?;
                // Acknowledged messages are deleted, which leaves holes; a consumer only needs to
                // know how far the stream has moved, so the holes are filled with empty rows.
                Ok(fill_holes(
                    stream,
                    after.0 as i64,
                    messages.iter().map(|m| (m.position, m.user_id.clone(), m.device_id.clone())).collect(),
                    &self.e2ee,
                    limit,
                )
                .await?)
            }
            StreamName::DeviceLists => {
                let changes = self
                    .e2ee
                    .device_changes_after(after.0 as i64, limit as i64)
                    .await
                    .map_err(|e| ReplicationError::Source(e.to_string()))?;
                Ok(changes.iter().map(|(p, u)| user_row(stream, *p, u, "")).collect())
            }
            StreamName::Receipts => {
                let receipts = self
                    .ephemeral
                    .receipts_after(after.0 as i64, limit as i64)
                    .await
                    .map_err(|e| ReplicationError::Source(e.to_string()))?;
                Ok(receipts.iter().map(|r| user_row(stream, r.position, &r.user_id, &r.room_id)).collect())
            }
            StreamName::Typing => {
                let rows = self
                    .ephemeral
                    .typing_after(after.0 as i64, limit as i64)
                    .await
                    .map_err(|e| ReplicationError::Source(e.to_string()))?;
                Ok(rows.iter().map(|(p, room)| user_row(stream, *p, "", room)).collect())
            }
            StreamName::Presence => {
                let rows = PresenceStore::new(self.events.db().clone())
                    .log_after(after.0 as i64, limit as i64)
                    .await
                    .map_err(|e| ReplicationError::Source(e.to_string()))?;
                Ok(rows.iter().map(|(p, u)| user_row(stream, *p, u, "")).collect())
            }
            StreamName::Pushers => {
                let rows = PusherStore::new(self.events.db().clone())
                    .log_after(after.0 as i64, limit as i64)
                    .await
                    .map_err(|e| ReplicationError::Source(e.to_string()))?;
                Ok(rows.iter().map(|(p, u)| user_row(stream, *p, u, "")).collect())
            }
            // Nothing writes these streams durably yet.
            _ => Ok(Vec::new()),
        }
    }

    async fn max_position(&self, stream: StreamName) -> Result<StreamPosition, ReplicationError> {
        match stream {
            StreamName::Events => self
                .events
                .max_stream_ordering()
                .await
                .map(|p| StreamPosition(p as u64))
                .map_err(|e| ReplicationError::Source(e.to_string())),
            StreamName::AccountData => self
                .account_data
                .max_position()
                .await
                .map(|p| StreamPosition(p as u64))
                .map_err(|e| ReplicationError::Source(e.to_string())),
            StreamName::ToDevice => self
                .e2ee
                .max_to_device_position()
                .await
                .map(|p| StreamPosition(p as u64))
                .map_err(|e| ReplicationError::Source(e.to_string())),
            StreamName::DeviceLists => self
                .e2ee
                .max_device_list_position()
                .await
                .map(|p| StreamPosition(p as u64))
                .map_err(|e| ReplicationError::Source(e.to_string())),
            StreamName::Receipts => self
                .ephemeral
                .max_receipt_position()
                .await
                .map(|p| StreamPosition(p as u64))
                .map_err(|e| ReplicationError::Source(e.to_string())),
            StreamName::Typing => self
                .ephemeral
                .max_typing_position()
                .await
                .map(|p| StreamPosition(p as u64))
                .map_err(|e| ReplicationError::Source(e.to_string())),
            StreamName::Presence => PresenceStore::new(self.events.db().clone())
                .max_position()
                .await
                .map(|p| StreamPosition(p as u64))
                .map_err(|e| ReplicationError::Source(e.to_string())),
            StreamName::Pushers => PusherStore::new(self.events.db().clone())
                .max_position()
                .await
                .map(|p| StreamPosition(p as u64))
                .map_err(|e| ReplicationError::Source(e.to_string())),
            _ => Ok(StreamPosition(0)),
        }
    }
}

/// Follows `stream` from the database's current position, the way every role that does not need
/// the rows themselves does: the rows are drained, and the returned position is where this process
/// stands (for long-poll wake-ups and readiness). A position is published once its row is handed
/// on, so a reader of the position can query the database up to it.
///
/// # Errors
/// When the database cannot be read.
pub async fn follow_stream(
    events: &EventStore,
    bus: Arc<dyn Bus>,
    stream: StreamName,
) -> crate::Result<(Follower, watch::Receiver<StreamPosition>)> {
    follow_stream_with(events, bus, stream, |_| {}, |_| {}).await
}

/// [`follow_stream`], handing each row to `on_row` before its position is published, so a reader
/// woken by the position finds whatever `on_row` kept of the row (a cache of recent events, say),
/// and to `published` after (to wake whoever the row concerns, say). The returned position is
/// also where such a cache starts: rows after it arrive in order.
///
/// # Errors
/// When the database cannot be read.
pub async fn follow_stream_with(
    events: &EventStore,
    bus: Arc<dyn Bus>,
    stream: StreamName,
    mut on_row: impl FnMut(&StreamRow) + Send + 'static,
    mut published: impl FnMut(&StreamRow) + Send + 'static,
) -> crate::Result<(Follower, watch::Receiver<StreamPosition>)> {
    let source = DbCatchUp::new(events.clone());
    let start = source.max_position(stream).await.map_err(|e| crate::Error::Decode(e.to_string()))?;
    let (follower, mut rows) = Follower::spawn(bus, source, stream, start);
    let (tx, rx) = watch::channel(start);
    tokio::spawn(async move {
        while let Some(row) = rows.recv().await {
            on_row(&row);
            tx.send_replace(row.position);
            published(&row);
        }
    });
    Ok((follower, rx))
}

/// [`follow_stream`] for the `events` stream.
///
/// # Errors
/// When the database cannot be read.
pub async fn follow_events(
    events: &EventStore,
    bus: Arc<dyn Bus>,
) -> crate::Result<(Follower, watch::Receiver<StreamPosition>)> {
    follow_stream(events, bus, StreamName::Events).await
}

/// Rows after `after` for a stream whose acknowledged rows are deleted: every position up to the
/// last one found (or the stream's maximum, when nothing is left) gets a row, real or empty, so
/// the follower sees a contiguous stream.
async fn fill_holes(
    stream: StreamName,
    after: i64,
    found: Vec<(i64, String, String)>,
    e2ee: &E2eeStore,
    limit: usize,
) -> Result<Vec<StreamRow>, ReplicationError> {
    let top = match found.last() {
        Some((p, _, _)) => *p,
        None => e2ee.max_to_device_position().await.map_err(|e| ReplicationError::Source(e.to_string()))?,
    };
    let mut rows = Vec::new();
    let mut found = found.into_iter().peekable();
    for pos in (after + 1)..=top {
        if rows.len() >= limit {
            break;
        }
        match found.peek() {
            Some((p, _, _)) if *p == pos => {
                let (p, u, d) = found.next().unwrap_or_default();
                rows.push(user_row(stream, p, &u, &d));
            }
            _ => rows.push(user_row(stream, pos, "", "")),
        }
    }
    Ok(rows)
}
