//! Events, room state and forward extremities.
//!
//! `main` is the only writer: it allocates each event's `stream_ordering` (the `events` stream
//! position) and calls [`EventStore::persist`], which writes the event, its state change, the room's
//! new forward extremities and the client's transaction id in one transaction.

use ganglion_core::PageToken;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::state_groups::{self, GroupMeta, StateIds};
use crate::{Db, Error, PushAction, Result, now_ms};

/// An event ready to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Stream position allocated by the writer.
    pub stream_ordering: i64,
    /// The event ID.
    pub event_id: OwnedEventId,
    /// The room (for v12 create events, the ID derived from the event).
    pub room_id: OwnedRoomId,
    /// The sender.
    pub sender: OwnedUserId,
    /// `type`.
    pub event_type: String,
    /// `state_key` for state events.
    pub state_key: Option<String>,
    /// `content.membership` for `m.room.member` events.
    pub membership: Option<String>,
    /// `depth`.
    pub depth: i64,
    /// `origin_server_ts`.
    pub origin_server_ts: i64,
    /// The full signed event, canonical JSON.
    pub json: String,
    /// The events this one follows (they stop being forward extremities).
    pub prev_events: Vec<OwnedEventId>,
    /// `(device_id, txn_id)` of the client request that created it.
    pub txn: Option<(String, String)>,
    /// The request that created it, for tracing across processes.
    pub request_id: String,
    /// `Some((room_version, creator))` when this event creates the room.
    pub creates_room: Option<(String, OwnedUserId)>,
    /// `Some((target event ID, its redacted JSON))` when this is an allowed redaction: the target's
    /// stored JSON is replaced in the same transaction.
    pub redacts: Option<(OwnedEventId, String)>,
    /// Local members the event notifies, stored with it.
    pub push_actions: Vec<PushAction>,
    /// `Some((parent event ID, rel_type))` when the content's `m.relates_to` relates it to another
    /// event: indexed in `event_relations` for `/relations`, `/threads` and bundled aggregations.
    pub relation: Option<(OwnedEventId, String)>,
    /// `auth_events`.
    pub auth_events: Vec<OwnedEventId>,
    /// How the event takes part in the room.
    pub status: EventStatus,
    /// The room's state before the event.
    pub state_before: StateBefore,
    /// `Some(state)` when the room's current state becomes `state` (an event from another server,
    /// whose arrival the caller resolved against the room's other forward extremities).
    pub new_current_state: Option<StateIds>,
}

impl NewEvent {
    /// The state key this event sets: `None` for a non-state event, and for a rejected state
    /// event (the state after it is the state before it).
    fn state_change(&self) -> Option<(String, String)> {
        match (&self.state_key, &self.status) {
            (_, EventStatus::Rejected(_)) | (None, _) => None,
            (Some(key), _) => Some((self.event_type.clone(), key.clone())),
        }
    }

    /// The row of an ordinary event built on its room's current state, with nothing beside it
    /// (no transaction, push actions, redaction or room creation) and position 0 for the writer
    /// to fill in.
    pub fn ordinary(pdu: &ganglion_core::Pdu, room_id: &RoomId) -> Self {
        let content = pdu.content_value();
        let relation = content.get("m.relates_to").and_then(|rel| {
            // A rich reply (`m.in_reply_to` alone) has no `rel_type`, so it is no relation.
            let rel_type = rel.get("rel_type")?.as_str()?;
            let parent = OwnedEventId::try_from(rel.get("event_id")?.as_str()?).ok()?;
            Some((parent, rel_type.to_owned()))
        });
        Self {
            stream_ordering: 0,
            event_id: pdu.event_id.clone(),
            room_id: room_id.to_owned(),
            sender: pdu.sender.clone(),
            event_type: pdu.event_type.to_string(),
            state_key: pdu.state_key.clone(),
            membership: pdu.membership(),
            depth: i64::try_from(u64::from(pdu.depth)).unwrap_or(i64::MAX),
            origin_server_ts: i64::try_from(u64::from(pdu.origin_server_ts.get())).unwrap_or(0),
            json: pdu.json.clone(),
            prev_events: pdu.prev_events.clone(),
            txn: None,
            request_id: String::new(),
            creates_room: None,
            redacts: None,
            push_actions: Vec::new(),
            relation,
            auth_events: pdu.auth_events.clone(),
            status: EventStatus::Ordinary,
            state_before: StateBefore::Current,
            new_current_state: None,
        }
    }
}

/// How an event takes part in its room (the `status` column).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum EventStatus {
    /// Part of the room's timeline and state; shown to clients.
    #[default]
    Ordinary,
    /// Known only as another event's auth or state event; its own state is unknown.
    Outlier,
    /// Failed the auth rules; kept so it is not fetched again, never shown or part of state.
    Rejected(String),
    /// Valid at its place in the graph but not against the room's current state: never shown and
    /// never a forward extremity, but its state counts for events that follow it.
    SoftFailed(String),
}

impl EventStatus {
    fn column(&self) -> Option<&'static str> {
        match self {
            Self::Ordinary => None,
            Self::Outlier => Some("outlier"),
            Self::Rejected(_) => Some("rejected"),
            Self::SoftFailed(_) => Some("soft_failed"),
        }
    }

    fn reason(&self) -> Option<&str> {
        match self {
            Self::Rejected(r) | Self::SoftFailed(r) => Some(r),
            _ => None,
        }
    }
}

/// The room's state before an event, as the writer knows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StateBefore {
    /// The room's current state: a local event, built on all forward extremities. Its state
    /// change becomes the current state.
    #[default]
    Current,
    /// This state, computed (and resolved, where `prev_events` disagree) by the caller.
    Ids(StateIds),
    /// Unknown: an outlier.
    Unknown,
}

/// Unread counts of one user in one room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnreadCounts {
    /// Notifying events after the user's read receipt.
    pub notifications: i64,
    /// Of those, highlights.
    pub highlights: i64,
}

/// A user's read receipts in one room, as stream positions (0: none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadReceipts {
    /// The latest unthreaded receipt.
    pub unthreaded: i64,
    /// The latest receipt per thread (`""` the main timeline, else the thread root's ID).
    pub threads: Vec<(String, i64)>,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistedEvent {
    /// Position on the `events` stream.
    pub stream_ordering: i64,
    /// The event ID.
    pub event_id: OwnedEventId,
    /// The room.
    pub room_id: OwnedRoomId,
    /// The sender.
    pub sender: OwnedUserId,
    /// `type`.
    pub event_type: String,
    /// `state_key`, for state events.
    pub state_key: Option<String>,
    /// `content.membership`, for member events.
    pub membership: Option<String>,
    /// `depth`.
    pub depth: i64,
    /// `origin_server_ts`.
    pub origin_server_ts: i64,
    /// The full event JSON.
    pub json: String,
    /// The request that created it.
    pub request_id: String,
}

/// One entry of a room's current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateEntry {
    /// Event type.
    pub event_type: String,
    /// State key.
    pub state_key: String,
    /// The event holding this state.
    pub event_id: OwnedEventId,
}

/// A user's membership of a room, now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomMembership {
    /// The room.
    pub room_id: OwnedRoomId,
    /// `join`, `invite`, `leave`, `ban` or `knock`.
    pub membership: String,
    /// Stream position of the membership event.
    pub stream_ordering: i64,
}

pub(crate) const EVENT_COLUMNS: &str = "stream_ordering, event_id, room_id, sender, event_type, state_key, membership, \
     depth, origin_server_ts, json, request_id";

/// Events and room state.
#[derive(Debug, Clone)]
pub struct EventStore {
    db: Db,
}

pub(crate) fn decode_event(row: &AnyRow) -> Result<PersistedEvent> {
    let event_id: String = row.try_get(1)?;
    let room_id: String = row.try_get(2)?;
    let sender: String = row.try_get(3)?;
    Ok(PersistedEvent {
        stream_ordering: row.try_get(0)?,
        event_id: OwnedEventId::try_from(event_id.as_str()).map_err(|e| Error::Decode(format!("event id: {e}")))?,
        room_id: OwnedRoomId::try_from(room_id.as_str()).map_err(|e| Error::Decode(format!("room id: {e}")))?,
        sender: OwnedUserId::try_from(sender.as_str()).map_err(|e| Error::Decode(format!("sender: {e}")))?,
        event_type: row.try_get(4)?,
        state_key: row.try_get(5)?,
        membership: row.try_get(6)?,
        depth: row.try_get(7)?,
        origin_server_ts: row.try_get(8)?,
        json: row.try_get(9)?,
        request_id: row.try_get(10)?,
    })
}

pub(crate) fn decode_all(rows: Vec<AnyRow>) -> Result<Vec<PersistedEvent>> {
    rows.iter().map(decode_event).collect()
}

/// `($k, $k+1, …)` for an `IN` list of `n` values starting at placeholder `first`.
pub(crate) fn placeholders(first: usize, n: usize) -> String {
    let list: Vec<String> = (first..first + n).map(|i| format!("${i}")).collect();
    format!("({})", list.join(", "))
}

impl EventStore {
    /// A store on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The database this store reads.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The highest stream position written, 0 when there is none.
    ///
    /// # Errors
    /// On database failure.
    pub async fn max_stream_ordering(&self) -> Result<i64> {
        let v: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(stream_ordering), 0) FROM events")
            .fetch_one(self.db.pool())
            .await?;
        Ok(v)
    }

    /// Writes an event, its state change, the room's forward extremities and its transaction id in
    /// one transaction.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the event ID or position exists; database failures.
    pub async fn persist(&self, ev: &NewEvent) -> Result<()> {
        self.persist_batch(std::slice::from_ref(ev)).await
    }

    /// Writes several events in one transaction (group commit): all of them or none. Events of
    /// the same room must come in the order they were built.
    ///
    /// # Errors
    /// [`Error::Conflict`] when an event ID or position exists; database failures.
    #[tracing::instrument(skip_all, fields(events = batch.len()))]
    pub async fn persist_batch(&self, batch: &[NewEvent]) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        for ev in batch {
            self.persist_in(&mut tx, ev).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    #[tracing::instrument(skip_all, fields(room_id = %ev.room_id, event_id = %ev.event_id, position = ev.stream_ordering))]
    async fn persist_in(&self, tx: &mut sqlx::Transaction<'static, sqlx::Any>, ev: &NewEvent) -> Result<()> {
        if let Some((version, creator)) = &ev.creates_room {
            sqlx::query("INSERT INTO rooms (room_id, room_version, creator, created_ts) VALUES ($1, $2, $3, $4)")
                .bind(ev.room_id.as_str())
                .bind(version)
                .bind(creator.as_str())
                .bind(now_ms())
                .execute(&mut **tx)
                .await?;
        }
        let after = self.state_group_after(tx, ev).await?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO events ({EVENT_COLUMNS}, status, rejected_reason, state_group)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
             ON CONFLICT DO NOTHING"
        ))
        .bind(ev.stream_ordering)
        .bind(ev.event_id.as_str())
        .bind(ev.room_id.as_str())
        .bind(ev.sender.as_str())
        .bind(&ev.event_type)
        .bind(ev.state_key.as_deref())
        .bind(ev.membership.as_deref())
        .bind(ev.depth)
        .bind(ev.origin_server_ts)
        .bind(&ev.json)
        .bind(&ev.request_id)
        .bind(ev.status.column())
        .bind(ev.status.reason())
        .bind(after.map(|g| g.id))
        .execute(&mut **tx)
        .await?;
        if inserted.rows_affected() == 0 {
            return Err(Error::Conflict(format!("event {} or position {} exists", ev.event_id, ev.stream_ordering)));
        }
        for prev in &ev.prev_events {
            sqlx::query("INSERT INTO event_edges (event_id, prev_event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(ev.event_id.as_str())
                .bind(prev.as_str())
                .execute(&mut **tx)
                .await?;
        }
        for auth in &ev.auth_events {
            sqlx::query("INSERT INTO event_auth (event_id, auth_event_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(ev.event_id.as_str())
                .bind(auth.as_str())
                .execute(&mut **tx)
                .await?;
        }
        if ev.status != EventStatus::Ordinary {
            // Nothing below applies to an event clients never see.
            return Ok(());
        }
        self.move_current_state(tx, ev, after).await?;
        for prev in &ev.prev_events {
            sqlx::query("DELETE FROM forward_extremities WHERE room_id = $1 AND event_id = $2")
                .bind(ev.room_id.as_str())
                .bind(prev.as_str())
                .execute(&mut **tx)
                .await?;
        }
        sqlx::query("INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2)")
            .bind(ev.room_id.as_str())
            .bind(ev.event_id.as_str())
            .execute(&mut **tx)
            .await?;
        if let Some((device_id, txn_id)) = &ev.txn {
            sqlx::query(
                "INSERT INTO event_txns (user_id, device_id, txn_id, event_id, created_ts) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(ev.sender.as_str())
            .bind(device_id)
            .bind(txn_id)
            .bind(ev.event_id.as_str())
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
        }
        for a in &ev.push_actions {
            sqlx::query(
                "INSERT INTO event_push_actions (stream_ordering, room_id, user_id, highlight, thread_id, actions)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(ev.stream_ordering)
            .bind(ev.room_id.as_str())
            .bind(a.user_id.as_str())
            .bind(i64::from(a.highlight))
            .bind(&a.thread_id)
            .bind(&a.actions)
            .execute(&mut **tx)
            .await?;
        }
        if let Some((parent, rel_type)) = &ev.relation {
            crate::relations::insert_relation(tx, ev, parent, rel_type).await?;
        }
        if let Some((key, text)) = searchable(&ev.event_type, &ev.json) {
            let sql = match self.db.backend() {
                crate::Backend::Postgres => {
                    "INSERT INTO event_search (event_id, room_id, stream_ordering, origin_server_ts, key, vector)
                     VALUES ($1, $2, $3, $4, $5, to_tsvector('simple', $6))"
                }
                crate::Backend::Sqlite => {
                    "INSERT INTO event_search (event_id, room_id, stream_ordering, origin_server_ts, key, body)
                     VALUES ($1, $2, $3, $4, $5, $6)"
                }
            };
            sqlx::query(sql)
                .bind(ev.event_id.as_str())
                .bind(ev.room_id.as_str())
                .bind(ev.stream_ordering)
                .bind(ev.origin_server_ts)
                .bind(key)
                .bind(text)
                .execute(&mut **tx)
                .await?;
        }
        if let Some((target, redacted_json)) = &ev.redacts {
            // A redacted event no longer relates to anything (its content is gone).
            sqlx::query("DELETE FROM event_relations WHERE event_id = $1")
                .bind(target.as_str())
                .execute(&mut **tx)
                .await?;
            sqlx::query("UPDATE events SET json = $1 WHERE event_id = $2 AND room_id = $3")
                .bind(redacted_json)
                .bind(target.as_str())
                .bind(ev.room_id.as_str())
                .execute(&mut **tx)
                .await?;
            sqlx::query("DELETE FROM event_search WHERE event_id = $1")
                .bind(target.as_str())
                .execute(&mut **tx)
                .await?;
            sqlx::query(
                "INSERT INTO redactions (event_id, redacted_by, redacted_ts) VALUES ($1, $2, $3)
                 ON CONFLICT (event_id) DO NOTHING",
            )
            .bind(target.as_str())
            .bind(ev.event_id.as_str())
            .bind(now_ms())
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    /// Stores the state group the event sees after it and moves the room's current state on.
    /// The state group after the event (stored first, so the event row is written once, with
    /// it): `None` for an outlier, whose state is unknown.
    async fn state_group_after(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        ev: &NewEvent,
    ) -> Result<Option<GroupMeta>> {
        let room = ev.room_id.as_str();
        // A rejected state event changes nothing: the state after it is the state before it.
        let change = ev.state_change();
        let after: Option<GroupMeta> = match &ev.state_before {
            _ if ev.status == EventStatus::Outlier => None,
            StateBefore::Unknown => None,
            StateBefore::Current => match (change.clone(), current_group(tx, room).await?) {
                (Some(key), Some(base)) => {
                    let id = state_groups::store_group_with(tx, room, base, key, ev.event_id.as_str()).await?;
                    state_groups::group_meta(tx, id).await?
                }
                (Some(key), None) => {
                    let state = StateIds::from([(key, ev.event_id.to_string())]);
                    let id = state_groups::store_group(tx, room, None, None, &state).await?;
                    state_groups::group_meta(tx, id).await?
                }
                (None, base) => base,
            },
            StateBefore::Ids(before) => {
                let before_group = group_for_state(tx, room, &ev.prev_events, before).await?;
                match change.clone() {
                    Some(key) => {
                        let id =
                            state_groups::store_group_with(tx, room, before_group, key, ev.event_id.as_str()).await?;
                        state_groups::group_meta(tx, id).await?
                    }
                    None => Some(before_group),
                }
            }
        };
        Ok(after)
    }

    /// Moves the room's current state on after an ordinary event whose state after it is `after`.
    async fn move_current_state(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        ev: &NewEvent,
        after: Option<GroupMeta>,
    ) -> Result<()> {
        let room = ev.room_id.as_str();
        let change = ev.state_change();
        let current_group_id = match (&ev.new_current_state, &ev.state_before) {
            (Some(current), _) => {
                replace_current_state(tx, room, current).await?;
                // The event's own state is the likeliest base (it usually wins resolution).
                match after {
                    Some(a) => {
                        let own = state_groups::load_group(tx, a.id).await?;
                        if &own == current {
                            Some(a.id)
                        } else {
                            Some(state_groups::store_group(tx, room, Some(a), Some(&own), current).await?)
                        }
                    }
                    None => Some(group_for_state(tx, room, &ev.prev_events, current).await?.id),
                }
            }
            (None, StateBefore::Current) => {
                if let Some((ty, key)) = &change {
                    sqlx::query(
                        "INSERT INTO current_state (room_id, event_type, state_key, event_id, membership)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (room_id, event_type, state_key) DO UPDATE SET
                           event_id = excluded.event_id, membership = excluded.membership",
                    )
                    .bind(room)
                    .bind(ty)
                    .bind(key)
                    .bind(ev.event_id.as_str())
                    .bind(ev.membership.as_deref())
                    .execute(&mut **tx)
                    .await?;
                }
                after.map(|g| g.id)
            }
            (None, _) => None,
        };
        if let Some(g) = current_group_id {
            sqlx::query("UPDATE rooms SET state_group = $1 WHERE room_id = $2")
                .bind(g)
                .bind(room)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// The event that redacted `event_id`, if it was redacted.
    ///
    /// # Errors
    /// On database failure.
    pub async fn redacted_by(&self, event_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT redacted_by FROM redactions WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(self.db.pool())
            .await?)
    }

    /// Gives every redacted event stored without `unsigned.redacted_because` (redacted before the
    /// writer kept it there) its redaction, in client format. Idempotent; `main` runs it at
    /// start. Returns how many events it mended.
    ///
    /// # Errors
    /// On database failure.
    pub async fn backfill_redacted_because(&self) -> Result<u64> {
        let rows = sqlx::query(
            "SELECT e.event_id, e.json, r.event_id, r.room_id, r.json FROM redactions d
             JOIN events e ON e.event_id = d.event_id JOIN events r ON r.event_id = d.redacted_by
             WHERE e.json NOT LIKE '%\"redacted_because\"%'",
        )
        .fetch_all(self.db.pool())
        .await?;
        let mut mended = 0;
        for row in rows {
            let (target, json, by, room, by_json): (String, String, String, String, String) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?, row.try_get(4)?);
            let Ok(serde_json::Value::Object(mut event)) = serde_json::from_str(&json) else { continue };
            let because = ganglion_core::client_event(&by_json, &by, &room, None);
            event.insert("unsigned".into(), serde_json::json!({ "redacted_because": because }));
            let json = serde_json::to_string(&event).map_err(|e| Error::Decode(e.to_string()))?;
            sqlx::query("UPDATE events SET json = $1 WHERE event_id = $2")
                .bind(json)
                .bind(&target)
                .execute(self.db.pool())
                .await?;
            mended += 1;
        }
        Ok(mended)
    }

    /// A room's state as of stream position `upto`: the state after the room's latest visible
    /// event at or below it, read from that event's state group.
    ///
    /// # Errors
    /// On database failure.
    pub async fn state_at(&self, room_id: &RoomId, upto: i64) -> Result<Vec<PersistedEvent>> {
        self.state_at_filtered(room_id, upto, None).await
    }

    /// The member events of `users` in a room's state as of stream position `upto` (like
    /// [`Self::state_at`], reading only those keys).
    ///
    /// # Errors
    /// On database failure.
    pub async fn members_at(&self, room_id: &RoomId, upto: i64, users: &[&str]) -> Result<Vec<PersistedEvent>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut state = self.state_at_filtered(room_id, upto, Some(users)).await?;
        state.retain(|e| e.event_type == "m.room.member");
        Ok(state)
    }

    /// The state as of `upto`, all of it or only the member events of `members`.
    async fn state_at_filtered(
        &self,
        room_id: &RoomId,
        upto: i64,
        members: Option<&[&str]>,
    ) -> Result<Vec<PersistedEvent>> {
        let mut conn = self.db.pool().acquire().await?;
        let latest = "SELECT state_group FROM events WHERE room_id = $1 AND stream_ordering > 0
             AND stream_ordering <= $2 AND status IS NULL ORDER BY stream_ordering DESC LIMIT 1";
        // The chain of the latest event's group first, then its entries by group ID (see
        // `state_groups::chain_ids` for why not one statement).
        let sql = state_groups::chain_query(latest);
        let chain = state_groups::chain_ids(sqlx::query(&sql).bind(room_id.as_str()).bind(upto), &mut conn).await?;
        if !chain.is_empty() {
            let users = members.unwrap_or_default();
            let key_filter = match members {
                Some(users) => format!(
                    " AND s.event_type = 'm.room.member' AND s.state_key IN {}",
                    placeholders(chain.len() + 1, users.len())
                ),
                None => String::new(),
            };
            let cols = EVENT_COLUMNS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT {cols}, s.state_group FROM state_group_entries s JOIN events e ON e.event_id = s.event_id
                 WHERE s.state_group IN {}{key_filter}",
                placeholders(1, chain.len())
            );
            let mut q = sqlx::query(&sql);
            for (g, _) in &chain {
                q = q.bind(*g);
            }
            for u in users {
                q = q.bind(*u);
            }
            let rows = q.fetch_all(&mut *conn).await?;
            let hops: std::collections::HashMap<i64, i64> = chain.iter().copied().collect();
            let mut by_hop: Vec<(i64, &AnyRow)> = Vec::with_capacity(rows.len());
            for r in &rows {
                let g: i64 = r.try_get(11)?;
                by_hop.push((hops.get(&g).copied().unwrap_or(0), r));
            }
            by_hop.sort_by_key(|(hop, _)| std::cmp::Reverse(*hop));
            return nearest_per_key(by_hop.into_iter().map(|(_, r)| r));
        }
        // Nothing: no event at `upto`, no such members, or history from before state groups.
        let group: Option<Option<i64>> =
            sqlx::query_scalar(latest).bind(room_id.as_str()).bind(upto).fetch_optional(&mut *conn).await?;
        if !matches!(group, Some(None)) {
            return Ok(Vec::new());
        }
        // Written before state groups existed (schema 17): such history is linear, so the latest
        // event of each (type, state key) up to the position is the state.
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND e.state_key IS NOT NULL
             AND e.stream_ordering = (SELECT MAX(e2.stream_ordering) FROM events e2
                 WHERE e2.room_id = e.room_id AND e2.event_type = e.event_type
                 AND e2.state_key = e.state_key AND e2.stream_ordering <= $2 AND e2.stream_ordering > 0
                 AND e2.status IS NULL)
             ORDER BY e.stream_ordering"
        );
        let mut state = decode_all(sqlx::query(&sql).bind(room_id.as_str()).bind(upto).fetch_all(&mut *conn).await?)?;
        if let Some(users) = members {
            state.retain(|e| {
                e.event_type == "m.room.member" && e.state_key.as_deref().is_some_and(|k| users.contains(&k))
            });
        }
        Ok(state)
    }

    /// The state after an event, by IDs; `None` when it is unknown (an outlier, or an event written
    /// before state groups existed).
    ///
    /// # Errors
    /// On database failure.
    pub async fn state_ids_after(&self, event_id: &str) -> Result<Option<StateIds>> {
        let mut conn = self.db.pool().acquire().await?;
        let group: Option<Option<i64>> = sqlx::query_scalar("SELECT state_group FROM events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&mut *conn)
            .await?;
        match group.flatten() {
            Some(g) => Ok(Some(state_groups::load_group(&mut conn, g).await?)),
            None => Ok(None),
        }
    }

    /// Events by ID whatever their status (outliers, rejected and soft-failed too), for the auth
    /// rules and state resolution; missing ones are left out. With each, its status.
    ///
    /// # Errors
    /// On database failure.
    pub async fn pdus(&self, event_ids: &[&str]) -> Result<Vec<(PersistedEvent, EventStatus)>> {
        let mut out = Vec::with_capacity(event_ids.len());
        for chunk in event_ids.chunks(500) {
            let sql = format!(
                "SELECT {EVENT_COLUMNS}, status, rejected_reason FROM events WHERE event_id IN {}",
                placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all(self.db.pool()).await? {
                let status: Option<String> = row.try_get(11)?;
                let reason: Option<String> = row.try_get(12)?;
                let status = match status.as_deref() {
                    None => EventStatus::Ordinary,
                    Some("outlier") => EventStatus::Outlier,
                    Some("rejected") => EventStatus::Rejected(reason.unwrap_or_default()),
                    Some("soft_failed") => EventStatus::SoftFailed(reason.unwrap_or_default()),
                    Some(other) => return Err(Error::Decode(format!("event status {other}"))),
                };
                out.push((decode_event(&row)?, status));
            }
        }
        Ok(out)
    }

    /// The lowest stream position in use, 0 when none is below zero. Events kept off the live
    /// stream (outliers, rejected and soft-failed events) take positions below zero, downwards.
    ///
    /// # Errors
    /// On database failure.
    pub async fn min_stream_ordering(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MIN(stream_ordering), 0) FROM events WHERE stream_ordering < 0")
            .fetch_one(self.db.pool())
            .await?)
    }

    /// Records that a user forgot a room.
    ///
    /// # Errors
    /// On database failure.
    pub async fn forget_room(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        sqlx::query(
            "INSERT INTO room_forgotten (user_id, room_id, forgotten_ts) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, room_id) DO NOTHING",
        )
        .bind(user_id.as_str())
        .bind(room_id.as_str())
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Un-forgets a room (the user joined, was invited or knocked again).
    ///
    /// # Errors
    /// On database failure.
    pub async fn unforget_room(&self, user_id: &UserId, room_id: &RoomId) -> Result<()> {
        sqlx::query("DELETE FROM room_forgotten WHERE user_id = $1 AND room_id = $2")
            .bind(user_id.as_str())
            .bind(room_id.as_str())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// The rooms a user has forgotten.
    ///
    /// # Errors
    /// On database failure.
    pub async fn forgotten_rooms(&self, user_id: &UserId) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT room_id FROM room_forgotten WHERE user_id = $1")
            .bind(user_id.as_str())
            .fetch_all(self.db.pool())
            .await?)
    }

    /// Deletes an alias. Returns whether it existed.
    ///
    /// # Errors
    /// On database failure.
    pub async fn delete_alias(&self, alias: &str) -> Result<bool> {
        let res = sqlx::query("DELETE FROM room_aliases WHERE alias = $1").bind(alias).execute(self.db.pool()).await?;
        Ok(res.rows_affected() > 0)
    }

    /// Who created an alias.
    ///
    /// # Errors
    /// On database failure.
    pub async fn alias_creator(&self, alias: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT creator FROM room_aliases WHERE alias = $1")
            .bind(alias)
            .fetch_optional(self.db.pool())
            .await?)
    }

    /// The local aliases of a room.
    ///
    /// # Errors
    /// On database failure.
    pub async fn room_aliases(&self, room_id: &RoomId) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias")
            .bind(room_id.as_str())
            .fetch_all(self.db.pool())
            .await?)
    }

    /// The event a client transaction created, if any.
    ///
    /// # Errors
    /// On database failure.
    pub async fn event_for_txn(&self, user_id: &UserId, device_id: &str, txn_id: &str) -> Result<Option<OwnedEventId>> {
        let id: Option<String> =
            sqlx::query_scalar("SELECT event_id FROM event_txns WHERE user_id = $1 AND device_id = $2 AND txn_id = $3")
                .bind(user_id.as_str())
                .bind(device_id)
                .bind(txn_id)
                .fetch_optional(self.db.pool())
                .await?;
        id.map(|s| OwnedEventId::try_from(s.as_str()).map_err(|e| Error::Decode(e.to_string()))).transpose()
    }

    /// One event by ID.
    ///
    /// # Errors
    /// On database failure.
    pub async fn event(&self, event_id: &str) -> Result<Option<PersistedEvent>> {
        let row = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM events WHERE event_id = $1 AND status IS NULL"))
            .bind(event_id)
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(decode_event).transpose()
    }

    /// Several events by ID (missing ones are left out), in stream order.
    ///
    /// # Errors
    /// On database failure.
    pub async fn events(&self, event_ids: &[&str]) -> Result<Vec<PersistedEvent>> {
        if event_ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE event_id IN {} AND status IS NULL ORDER BY stream_ordering",
            placeholders(1, event_ids.len())
        );
        let mut q = sqlx::query(&sql);
        for id in event_ids {
            q = q.bind(*id);
        }
        decode_all(q.fetch_all(self.db.pool()).await?)
    }

    /// A room's version, or `None` when the room is unknown here.
    ///
    /// # Errors
    /// On database failure.
    pub async fn room_version(&self, room_id: &RoomId) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT room_version FROM rooms WHERE room_id = $1")
            .bind(room_id.as_str())
            .fetch_optional(self.db.pool())
            .await?)
    }

    /// A room's current state, as (type, state key) → event ID entries.
    ///
    /// # Errors
    /// On database failure.
    pub async fn current_state(&self, room_id: &RoomId) -> Result<Vec<StateEntry>> {
        let rows = sqlx::query("SELECT event_type, state_key, event_id FROM current_state WHERE room_id = $1")
            .bind(room_id.as_str())
            .fetch_all(self.db.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(2)?;
                Ok(StateEntry {
                    event_type: r.try_get(0)?,
                    state_key: r.try_get(1)?,
                    event_id: OwnedEventId::try_from(id.as_str()).map_err(|e| Error::Decode(e.to_string()))?,
                })
            })
            .collect()
    }

    /// The events making up a room's current state.
    ///
    /// # Errors
    /// On database failure.
    pub async fn current_state_events(&self, room_id: &RoomId) -> Result<Vec<PersistedEvent>> {
        let sql = format!(
            "SELECT {} FROM events e JOIN current_state c ON c.event_id = e.event_id
             WHERE c.room_id = $1 ORDER BY e.stream_ordering",
            EVENT_COLUMNS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ")
        );
        decode_all(sqlx::query(&sql).bind(room_id.as_str()).fetch_all(self.db.pool()).await?)
    }

    /// One piece of a room's current state.
    ///
    /// # Errors
    /// On database failure.
    pub async fn state_event(
        &self,
        room_id: &RoomId,
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<PersistedEvent>> {
        let sql = format!(
            "SELECT {} FROM events e JOIN current_state c ON c.event_id = e.event_id
             WHERE c.room_id = $1 AND c.event_type = $2 AND c.state_key = $3",
            EVENT_COLUMNS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ")
        );
        let row = sqlx::query(&sql)
            .bind(room_id.as_str())
            .bind(event_type)
            .bind(state_key)
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(decode_event).transpose()
    }

    /// A room's forward extremities with their depths.
    ///
    /// # Errors
    /// On database failure.
    pub async fn forward_extremities(&self, room_id: &RoomId) -> Result<Vec<(OwnedEventId, i64)>> {
        let rows = sqlx::query(
            "SELECT f.event_id, e.depth FROM forward_extremities f JOIN events e ON e.event_id = f.event_id
             WHERE f.room_id = $1 ORDER BY e.depth DESC",
        )
        .bind(room_id.as_str())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                Ok((OwnedEventId::try_from(id.as_str()).map_err(|e| Error::Decode(e.to_string()))?, r.try_get(1)?))
            })
            .collect()
    }

    /// A user's current membership of a room.
    ///
    /// # Errors
    /// On database failure.
    pub async fn membership(&self, room_id: &RoomId, user_id: &UserId) -> Result<Option<String>> {
        let m: Option<Option<String>> = sqlx::query_scalar(
            "SELECT membership FROM current_state WHERE room_id = $1 AND event_type = 'm.room.member' AND state_key = $2",
        )
        .bind(room_id.as_str())
        .bind(user_id.as_str())
        .fetch_optional(self.db.pool())
        .await?;
        Ok(m.flatten())
    }

    /// Every room a user has a membership in, with the position of their membership event.
    ///
    /// # Errors
    /// On database failure.
    pub async fn rooms_for_user(&self, user_id: &UserId) -> Result<Vec<RoomMembership>> {
        let rows = sqlx::query(
            "SELECT c.room_id, c.membership, e.stream_ordering FROM current_state c
             JOIN events e ON e.event_id = c.event_id
             WHERE c.event_type = 'm.room.member' AND c.state_key = $1 ORDER BY e.stream_ordering",
        )
        .bind(user_id.as_str())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(membership_row).collect()
    }

    /// [`Self::rooms_for_user`] and which of those rooms the user forgot, in one round trip.
    ///
    /// # Errors
    /// On database failure.
    pub async fn rooms_for_user_and_forgotten(
        &self,
        user_id: &UserId,
    ) -> Result<(Vec<RoomMembership>, std::collections::HashSet<String>)> {
        let rows = sqlx::query(
            "SELECT c.room_id, c.membership, e.stream_ordering,
                    CAST(CASE WHEN f.room_id IS NULL THEN 0 ELSE 1 END AS BIGINT)
             FROM current_state c
             JOIN events e ON e.event_id = c.event_id
             LEFT JOIN room_forgotten f ON f.user_id = c.state_key AND f.room_id = c.room_id
             WHERE c.event_type = 'm.room.member' AND c.state_key = $1 ORDER BY e.stream_ordering",
        )
        .bind(user_id.as_str())
        .fetch_all(self.db.pool())
        .await?;
        let mut forgotten = std::collections::HashSet::new();
        let mut rooms = Vec::with_capacity(rows.len());
        for r in &rows {
            let m = membership_row(r)?;
            if r.try_get::<i64, _>(3)? == 1 {
                forgotten.insert(m.room_id.to_string());
            }
            rooms.push(m);
        }
        Ok((rooms, forgotten))
    }

    /// A user's unread counts in a room: notifying events at or below `upto` that no read receipt
    /// (public or private) covers. See [`EventStore::unread_counts_by_thread`].
    ///
    /// # Errors
    /// On database failure.
    pub async fn unread_counts(&self, user_id: &UserId, room_id: &RoomId, upto: i64) -> Result<UnreadCounts> {
        let per_thread = self.unread_counts_by_thread(user_id, room_id, upto).await?;
        Ok(per_thread.into_iter().fold(UnreadCounts::default(), |total, (_, c)| UnreadCounts {
            notifications: total.notifications + c.notifications,
            highlights: total.highlights + c.highlights,
        }))
    }

    /// A user's unread counts in a room per thread (`""` is the main timeline, else the thread
    /// root's event ID), only threads with something unread. An event is read once an unthreaded
    /// receipt, or a receipt for its own thread (`main` for the main timeline), is at or after it.
    ///
    /// # Errors
    /// On database failure.
    pub async fn unread_counts_by_thread(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        upto: i64,
    ) -> Result<Vec<(String, UnreadCounts)>> {
        let receipts = self.read_receipts(user_id, room_id).await?;
        self.unread_counts_between(user_id, room_id, &receipts, 0, upto).await
    }

    /// The user's read receipts in a room as stream positions, which
    /// [`EventStore::unread_counts_between`] counts after. Read apart from the count, so the count
    /// compares each row with a constant instead of re-running a receipt lookup per unread row,
    /// and so a caller can keep them until the user's next receipt.
    ///
    /// # Errors
    /// On database failure.
    pub async fn read_receipts(&self, user_id: &UserId, room_id: &RoomId) -> Result<ReadReceipts> {
        // Per thread: '' unthreaded, 'main' the main timeline.
        let rows = sqlx::query(
            "SELECT r.thread_id, MAX(e.stream_ordering) FROM receipts r JOIN events e ON e.event_id = r.event_id
             WHERE r.room_id = $1 AND r.user_id = $2 AND r.receipt_type IN ('m.read', 'm.read.private')
             GROUP BY r.thread_id",
        )
        .bind(room_id.as_str())
        .bind(user_id.as_str())
        .fetch_all(self.db.pool())
        .await?;
        let mut receipts = ReadReceipts::default();
        for r in &rows {
            let thread: String = r.try_get(0)?;
            let position: Option<i64> = r.try_get(1)?;
            let position = position.unwrap_or(0);
            if thread.is_empty() {
                receipts.unthreaded = position;
            } else {
                // Push actions name the main timeline '' where receipts name it 'main'.
                receipts.threads.push((if thread == "main" { String::new() } else { thread }, position));
            }
        }
        Ok(receipts)
    }

    /// Unread counts per thread (as [`EventStore::unread_counts_by_thread`]) counting only the
    /// notifying events after `after` and at or below `upto`: with `after` above 0, what to add
    /// to counts a caller already has up to `after` under the same receipts.
    ///
    /// # Errors
    /// On database failure.
    pub async fn unread_counts_between(
        &self,
        user_id: &UserId,
        room_id: &RoomId,
        receipts: &ReadReceipts,
        after: i64,
        upto: i64,
    ) -> Result<Vec<(String, UnreadCounts)>> {
        // Each thread's rows count after the later of the unthreaded receipt and its own.
        let mut threshold = String::from("$4");
        let mut binds: Vec<(String, i64)> = Vec::new();
        if !receipts.threads.is_empty() {
            threshold = String::from("CASE p.thread_id");
            for (i, (thread, position)) in receipts.threads.iter().enumerate() {
                let n = 6 + i * 2;
                threshold.push_str(&format!(" WHEN ${n} THEN ${}", n + 1));
                binds.push((thread.clone(), (*position).max(receipts.unthreaded)));
            }
            threshold.push_str(" ELSE $4 END");
        }
        let sql = format!(
            "SELECT p.thread_id, COUNT(*), CAST(COALESCE(SUM(p.highlight), 0) AS BIGINT) FROM event_push_actions p
             WHERE p.user_id = $1 AND p.room_id = $2 AND p.stream_ordering <= $3 AND p.stream_ordering > $4
             AND p.stream_ordering > $5 AND p.stream_ordering > {threshold}
             GROUP BY p.thread_id ORDER BY p.thread_id"
        );
        let mut q = sqlx::query(&sql)
            .bind(user_id.as_str())
            .bind(room_id.as_str())
            .bind(upto)
            .bind(receipts.unthreaded)
            .bind(after);
        for (thread, position) in binds {
            q = q.bind(thread).bind(position);
        }
        let rows = q.fetch_all(self.db.pool()).await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, UnreadCounts { notifications: r.try_get(1)?, highlights: r.try_get(2)? })))
            .collect()
    }

    /// Publishes a room in the public directory, or withdraws it.
    ///
    /// # Errors
    /// On database failure.
    pub async fn set_room_published(&self, room_id: &RoomId, published: bool) -> Result<()> {
        if published {
            sqlx::query(
                "INSERT INTO room_directory (room_id, published_ts) VALUES ($1, $2) ON CONFLICT (room_id) DO NOTHING",
            )
            .bind(room_id.as_str())
            .bind(now_ms())
            .execute(self.db.pool())
            .await?;
        } else {
            sqlx::query("DELETE FROM room_directory WHERE room_id = $1")
                .bind(room_id.as_str())
                .execute(self.db.pool())
                .await?;
        }
        Ok(())
    }

    /// Whether a room is in the public directory.
    ///
    /// # Errors
    /// On database failure.
    pub async fn is_room_published(&self, room_id: &RoomId) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM room_directory WHERE room_id = $1")
            .bind(room_id.as_str())
            .fetch_one(self.db.pool())
            .await?;
        Ok(n > 0)
    }

    /// The published rooms with their joined member counts, most members first.
    ///
    /// # Errors
    /// On database failure.
    pub async fn published_rooms(&self) -> Result<Vec<(OwnedRoomId, i64)>> {
        let rows = sqlx::query(
            "SELECT d.room_id, (SELECT COUNT(*) FROM current_state c WHERE c.room_id = d.room_id
                AND c.event_type = 'm.room.member' AND c.membership = 'join') AS members
             FROM room_directory d ORDER BY members DESC, d.room_id",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                Ok((OwnedRoomId::try_from(id.as_str()).map_err(|e| Error::Decode(e.to_string()))?, r.try_get(1)?))
            })
            .collect()
    }

    /// Everyone who shares a joined room with `user_id` (the user included).
    ///
    /// # Errors
    /// On database failure.
    pub async fn users_sharing_rooms(&self, user_id: &UserId) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT b.state_key FROM current_state a JOIN current_state b ON a.room_id = b.room_id
             WHERE a.event_type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join'
               AND b.event_type = 'm.room.member' AND b.membership = 'join' ORDER BY b.state_key",
        )
        .bind(user_id.as_str())
        .fetch_all(self.db.pool())
        .await?)
    }

    /// Membership changes with `after < stream_ordering <= upto` in the rooms `user_id` has a
    /// membership in: `(room_id, member, membership)`, oldest first. Device-list tracking uses
    /// it to see who started or stopped sharing a room with the user.
    ///
    /// # Errors
    /// On database failure.
    pub async fn membership_changes_around(
        &self,
        user_id: &UserId,
        after: i64,
        upto: i64,
    ) -> Result<Vec<(String, String, String)>> {
        let rows = sqlx::query(
            "SELECT e.room_id, e.state_key, e.membership FROM events e
             WHERE e.stream_ordering > $2 AND e.stream_ordering <= $3 AND e.event_type = 'm.room.member'
               AND e.room_id IN (SELECT c.room_id FROM current_state c
                                 WHERE c.event_type = 'm.room.member' AND c.state_key = $1)
             ORDER BY e.stream_ordering",
        )
        .bind(user_id.as_str())
        .bind(after)
        .bind(upto)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let membership: Option<String> = r.try_get(2)?;
                Ok((r.try_get(0)?, r.try_get(1)?, membership.unwrap_or_default()))
            })
            .collect()
    }

    /// The user IDs with `membership` in a room now.
    ///
    /// # Errors
    /// On database failure.
    pub async fn members_with(&self, room_id: &RoomId, membership: &str) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT state_key FROM current_state WHERE room_id = $1 AND event_type = 'm.room.member'
             AND membership = $2 ORDER BY state_key",
        )
        .bind(room_id.as_str())
        .bind(membership)
        .fetch_all(self.db.pool())
        .await?)
    }

    /// Events of the given rooms with `after < stream_ordering <= upto`, oldest first, at most
    /// `limit` per call (callers page on). Used by incremental sync.
    ///
    /// # Errors
    /// On database failure.
    pub async fn events_in_rooms_between(
        &self,
        rooms: &[OwnedRoomId],
        after: i64,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<PersistedEvent>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_ordering > $1 AND stream_ordering <= $2
             AND room_id IN {} ORDER BY stream_ordering LIMIT $3",
            placeholders(4, rooms.len())
        );
        let mut q = sqlx::query(&sql).bind(after).bind(upto).bind(limit);
        for r in rooms {
            q = q.bind(r.as_str());
        }
        decode_all(q.fetch_all(self.db.pool()).await?)
    }

    /// The newest `limit` events of a room at or below `upto`, returned oldest first.
    ///
    /// # Errors
    /// On database failure.
    pub async fn latest_room_events(&self, room_id: &RoomId, upto: i64, limit: i64) -> Result<Vec<PersistedEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE room_id = $1 AND stream_ordering <= $2 AND status IS NULL
             ORDER BY stream_ordering DESC LIMIT $3"
        ))
        .bind(room_id.as_str())
        .bind(upto)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        let mut events = decode_all(rows)?;
        events.reverse();
        Ok(events)
    }

    /// Pages through a room in topological order, `(depth, stream_ordering)`, from the gap `from`
    /// names (see [`PageToken`]): `backwards` returns the events at or before it newest first;
    /// otherwise those after it, oldest first. Only events at or below `upto` (the caller's
    /// stream position) are visible.
    ///
    /// # Errors
    /// On database failure.
    pub async fn room_messages(
        &self,
        room_id: &RoomId,
        from: PageToken,
        backwards: bool,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<PersistedEvent>> {
        let order = if backwards { "DESC" } else { "ASC" };
        let (cmp, or_equal) = if backwards { ("<", "<=") } else { (">", ">") };
        let (bound, depth, stream) = match from {
            PageToken::Topological { depth, stream } => {
                (format!("(depth {cmp} $5 OR (depth = $5 AND stream_ordering {or_equal} $4))"), Some(depth), stream)
            }
            PageToken::Stream(stream) => (format!("stream_ordering {or_equal} $4"), None, stream),
        };
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE room_id = $1 AND stream_ordering <= $2 AND status IS NULL
             AND {bound} ORDER BY depth {order}, stream_ordering {order} LIMIT $3"
        );
        let mut query = sqlx::query(&sql).bind(room_id.as_str()).bind(upto).bind(limit).bind(stream);
        if let Some(depth) = depth {
            query = query.bind(depth);
        }
        let rows = query.fetch_all(self.db.pool()).await?;
        decode_all(rows)
    }

    /// Events of any room with `after < stream_ordering`, oldest first, at most `limit`: the
    /// database side of the `events` replication stream.
    ///
    /// # Errors
    /// On database failure.
    pub async fn events_after(&self, after: i64, limit: i64) -> Result<Vec<PersistedEvent>> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE stream_ordering > $1 ORDER BY stream_ordering LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        decode_all(rows)
    }

    /// Maps an alias to a room.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the alias is taken.
    pub async fn create_alias(&self, alias: &str, room_id: &RoomId, creator: &UserId) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3) ON CONFLICT (alias) DO NOTHING",
        )
        .bind(alias)
        .bind(room_id.as_str())
        .bind(creator.as_str())
        .execute(self.db.pool())
        .await?;
        if res.rows_affected() == 0 {
            return Err(Error::Conflict(format!("alias {alias} exists")));
        }
        Ok(())
    }

    /// The room an alias points to.
    ///
    /// # Errors
    /// On database failure.
    pub async fn alias_room(&self, alias: &str) -> Result<Option<OwnedRoomId>> {
        let id: Option<String> = sqlx::query_scalar("SELECT room_id FROM room_aliases WHERE alias = $1")
            .bind(alias)
            .fetch_optional(self.db.pool())
            .await?;
        id.map(|s| OwnedRoomId::try_from(s.as_str()).map_err(|e| Error::Decode(e.to_string()))).transpose()
    }

    /// A user's membership of every room as of stream position `upto`: the latest `m.room.member`
    /// event for them at or below it, per room. Sliding sync uses it to rebuild a list as it stood
    /// at an earlier `pos`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn memberships_at(&self, user_id: &UserId, upto: i64) -> Result<Vec<RoomMembership>> {
        // Driven from the user's current member rows (indexed by state key), so only the rooms the
        // user ever had a membership in are looked at, each through `events_room_state`.
        let rows = sqlx::query(
            "SELECT e.room_id, e.membership, e.stream_ordering FROM current_state c
             JOIN events e ON e.room_id = c.room_id AND e.event_type = 'm.room.member' AND e.state_key = $1
             WHERE c.event_type = 'm.room.member' AND c.state_key = $1
             AND e.stream_ordering = (SELECT MAX(e2.stream_ordering) FROM events e2
                 WHERE e2.room_id = c.room_id AND e2.event_type = 'm.room.member'
                 AND e2.state_key = $1 AND e2.stream_ordering <= $2)
             ORDER BY e.stream_ordering",
        )
        .bind(user_id.as_str())
        .bind(upto)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(membership_row).collect()
    }

    /// Per room, the stream position of the newest event at or below `upto` whose type is one of
    /// `types`, or that is `member`'s own membership event: sliding sync's `bump_stamp`. Only rooms
    /// `member` has a membership in are looked at; rooms without such an event are left out.
    ///
    /// # Errors
    /// On database failure.
    pub async fn latest_of_types(
        &self,
        rooms: &[OwnedRoomId],
        types: &[&str],
        member: &UserId,
        upto: i64,
    ) -> Result<Vec<(OwnedRoomId, i64)>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        // Per room, walk `events_room_stream` backwards to the first matching event: cheap, as
        // bumps are frequent, where a MAX over all matching events would read the whole history.
        let sql = format!(
            "SELECT c.room_id, (SELECT e.stream_ordering FROM events e WHERE e.room_id = c.room_id
                 AND e.stream_ordering <= $1
                 AND (e.event_type IN {} OR (e.event_type = 'm.room.member' AND e.state_key = $2))
                 ORDER BY e.stream_ordering DESC LIMIT 1)
             FROM current_state c WHERE c.event_type = 'm.room.member' AND c.state_key = $2
             AND c.room_id IN {}",
            placeholders(3, types.len().max(1)),
            placeholders(3 + types.len().max(1), rooms.len())
        );
        let mut q = sqlx::query(&sql).bind(upto).bind(member.as_str());
        if types.is_empty() {
            q = q.bind("");
        }
        for t in types {
            q = q.bind(*t);
        }
        for r in rooms {
            q = q.bind(r.as_str());
        }
        q.fetch_all(self.db.pool())
            .await?
            .iter()
            .filter_map(|r| {
                let decoded = (|| -> Result<Option<(OwnedRoomId, i64)>> {
                    let room: String = r.try_get(0)?;
                    let Some(at) = r.try_get::<Option<i64>, _>(1)? else { return Ok(None) };
                    Ok(Some((OwnedRoomId::try_from(room.as_str()).map_err(|e| Error::Decode(e.to_string()))?, at)))
                })();
                decoded.transpose()
            })
            .collect()
    }
}

/// The text an event contributes to search: `(key, text)` for message bodies, room names and
/// topics.
fn searchable(event_type: &str, json: &str) -> Option<(&'static str, String)> {
    let (key, field) = match event_type {
        "m.room.message" => ("content.body", "body"),
        "m.room.name" => ("content.name", "name"),
        "m.room.topic" => ("content.topic", "topic"),
        _ => return None,
    };
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let text = v.get("content")?.get(field)?.as_str()?;
    (!text.trim().is_empty()).then(|| (key, text.to_owned()))
}

/// One search hit.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    /// The matching event.
    pub event_id: String,
    /// Higher is better.
    pub rank: f64,
}

impl EventStore {
    /// Full-text search of `term` among events of `rooms` whose `key` is in `keys`; ordered by
    /// rank or by recency; `offset`/`limit` page through. Returns the page and the total count.
    ///
    /// # Errors
    /// On database failure.
    pub async fn search(
        &self,
        term: &str,
        rooms: &[String],
        keys: &[&str],
        by_rank: bool,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<SearchHit>, i64)> {
        let words: Vec<String> = term
            .split_whitespace()
            .map(|w| w.chars().filter(|c| c.is_alphanumeric()).collect::<String>())
            .filter(|w| !w.is_empty())
            .collect();
        if rooms.is_empty() || keys.is_empty() || words.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let n = rooms.len();
        let room_list: Vec<String> = (2..2 + n).map(|i| format!("${i}")).collect();
        let key_list: Vec<String> = (2 + n..2 + n + keys.len()).map(|i| format!("${i}")).collect();
        let (query_text, matches, rank) = match self.db.backend() {
            crate::Backend::Postgres => (
                words.join(" & "),
                "vector @@ to_tsquery('simple', $1)".to_owned(),
                "CAST(ts_rank(vector, to_tsquery('simple', $1)) AS DOUBLE PRECISION)".to_owned(),
            ),
            // Quoted words, implicitly ANDed; bm25 is lower for better matches.
            crate::Backend::Sqlite => (
                words.iter().map(|w| format!("\"{w}\"")).collect::<Vec<_>>().join(" "),
                "event_search MATCH $1".to_owned(),
                "CAST(-bm25(event_search) AS REAL)".to_owned(),
            ),
        };
        let filter =
            format!("{matches} AND room_id IN ({}) AND key IN ({})", room_list.join(", "), key_list.join(", "));
        let order = if by_rank { "2 DESC, 3 DESC" } else { "3 DESC" };
        let page_sql = format!(
            "SELECT event_id, {rank}, CAST(stream_ordering AS BIGINT) FROM event_search WHERE {filter} ORDER BY {order} LIMIT {limit} OFFSET {offset}",
            limit = limit.max(0),
            offset = offset.max(0),
        );
        let count_sql = format!("SELECT COUNT(*) FROM event_search WHERE {filter}");
        fn bind_all<'q>(
            sql: &'q str,
            text: &str,
            rooms: &[String],
            keys: &[&str],
        ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
            let mut q = sqlx::query(sql).bind(text.to_owned());
            for r in rooms {
                q = q.bind(r.clone());
            }
            for k in keys {
                q = q.bind((*k).to_owned());
            }
            q
        }
        let rows = bind_all(&page_sql, &query_text, rooms, keys).fetch_all(self.db.pool()).await?;
        let hits = rows
            .iter()
            .map(|r| Ok(SearchHit { event_id: r.try_get(0)?, rank: r.try_get(1)? }))
            .collect::<Result<Vec<_>>>()?;
        let total: i64 = bind_all(&count_sql, &query_text, rooms, keys).fetch_one(self.db.pool()).await?.try_get(0)?;
        Ok((hits, total))
    }
}

/// One entry of a user's notification list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotificationEntry {
    /// The notifying event.
    pub event: PersistedEvent,
    /// Whether it highlights.
    pub highlight: bool,
    /// Whether the user's read receipt in the room has passed it.
    pub read: bool,
    /// The actions the user's push rules gave, a JSON array.
    pub actions: String,
}

impl EventStore {
    /// A user's notifications, newest first, before stream position `before` (exclusive), at most
    /// `limit`; `only_highlight` keeps highlights only.
    ///
    /// # Errors
    /// On database failure.
    pub async fn notifications(
        &self,
        user_id: &UserId,
        before: i64,
        limit: i64,
        only_highlight: bool,
    ) -> Result<Vec<NotificationEntry>> {
        let cols = EVENT_COLUMNS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT {cols}, p.highlight, CAST(CASE WHEN p.stream_ordering <= COALESCE((SELECT MAX(e2.stream_ordering) FROM receipts r
                 JOIN events e2 ON e2.event_id = r.event_id
                 WHERE r.room_id = p.room_id AND r.user_id = p.user_id AND r.receipt_type IN ('m.read', 'm.read.private')), 0)
               THEN 1 ELSE 0 END AS BIGINT), p.actions
             FROM event_push_actions p JOIN events e ON e.stream_ordering = p.stream_ordering
             WHERE p.user_id = $1 AND p.stream_ordering < $2 AND ($3 = 0 OR p.highlight = 1)
             ORDER BY p.stream_ordering DESC LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(user_id.as_str())
            .bind(before)
            .bind(i64::from(only_highlight))
            .bind(limit)
            .fetch_all(self.db.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let highlight: i64 = r.try_get(11)?;
                let read: i64 = r.try_get(12)?;
                Ok(NotificationEntry {
                    event: decode_event(r)?,
                    highlight: highlight != 0,
                    read: read != 0,
                    actions: r.try_get(13)?,
                })
            })
            .collect()
    }
}

/// `(room_id, membership, stream_ordering)` as a [`RoomMembership`].
fn membership_row(r: &sqlx::any::AnyRow) -> Result<RoomMembership> {
    let room: String = r.try_get(0)?;
    let membership: Option<String> = r.try_get(1)?;
    Ok(RoomMembership {
        room_id: OwnedRoomId::try_from(room.as_str()).map_err(|e| Error::Decode(e.to_string()))?,
        membership: membership.unwrap_or_default(),
        stream_ordering: r.try_get(2)?,
    })
}

/// The group of a room's current state. A room written before state groups existed gets a snapshot
/// of its current state on first use; `None` for a room with no state yet.
async fn current_group(tx: &mut sqlx::Transaction<'static, sqlx::Any>, room: &str) -> Result<Option<GroupMeta>> {
    // Every event of the room passes here: one query for the group and its bookkeeping.
    let row = sqlx::query(
        "SELECT g.id, g.chain_length, g.size FROM rooms r JOIN state_groups g ON g.id = r.state_group
         WHERE r.room_id = $1",
    )
    .bind(room)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(r) = row {
        return Ok(Some(GroupMeta { id: r.try_get(0)?, chain_length: r.try_get(1)?, size: r.try_get(2)? }));
    }
    let rows = sqlx::query("SELECT event_type, state_key, event_id FROM current_state WHERE room_id = $1")
        .bind(room)
        .fetch_all(&mut **tx)
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut state = StateIds::new();
    for r in rows {
        state.insert((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?);
    }
    let id = state_groups::store_group(tx, room, None, None, &state).await?;
    sqlx::query("UPDATE rooms SET state_group = $1 WHERE room_id = $2").bind(id).bind(room).execute(&mut **tx).await?;
    state_groups::group_meta(tx, id).await
}

/// A group holding `state`: the group of one of `near` (events whose state is likely close) when it
/// is equal, else a new group stored as a delta over it.
async fn group_for_state(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    room: &str,
    near: &[OwnedEventId],
    state: &StateIds,
) -> Result<GroupMeta> {
    let mut base = None;
    if !near.is_empty() {
        let sql = format!(
            "SELECT state_group FROM events WHERE event_id IN {} AND state_group IS NOT NULL",
            placeholders(1, near.len())
        );
        let mut q = sqlx::query_scalar::<_, i64>(&sql);
        for id in near {
            q = q.bind(id.as_str());
        }
        for g in q.fetch_all(&mut **tx).await? {
            let loaded = state_groups::load_group(tx, g).await?;
            if &loaded == state {
                return state_groups::group_meta(tx, g).await?.ok_or_else(|| Error::Decode("state group".into()));
            }
            if base.is_none() {
                base = Some((g, loaded));
            }
        }
    }
    let id = match &base {
        Some((g, loaded)) => {
            let meta = state_groups::group_meta(tx, *g).await?;
            state_groups::store_group(tx, room, meta, Some(loaded), state).await?
        }
        None => state_groups::store_group(tx, room, None, None, state).await?,
    };
    state_groups::group_meta(tx, id).await?.ok_or_else(|| Error::Decode("state group".into()))
}

/// Makes the `current_state` rows of a room equal to `state` (entries are only added or replaced).
async fn replace_current_state(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    room: &str,
    state: &StateIds,
) -> Result<()> {
    let rows = sqlx::query("SELECT event_type, state_key, event_id FROM current_state WHERE room_id = $1")
        .bind(room)
        .fetch_all(&mut **tx)
        .await?;
    let mut existing = StateIds::new();
    for r in rows {
        existing.insert((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?);
    }
    for ((ty, key), id) in state {
        if existing.get(&(ty.clone(), key.clone())) == Some(id) {
            continue;
        }
        sqlx::query(
            "INSERT INTO current_state (room_id, event_type, state_key, event_id, membership)
             SELECT room_id, event_type, state_key, event_id, membership FROM events WHERE event_id = $1
             ON CONFLICT (room_id, event_type, state_key) DO UPDATE SET
               event_id = excluded.event_id, membership = excluded.membership",
        )
        .bind(id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Rows of a state group's chain, oldest group first: the nearest group's event per key, in
/// stream order.
fn nearest_per_key<'r>(rows: impl Iterator<Item = &'r AnyRow>) -> Result<Vec<PersistedEvent>> {
    let mut by_key: std::collections::HashMap<(String, String), PersistedEvent> = std::collections::HashMap::new();
    for row in rows {
        let e = decode_event(row)?;
        by_key.insert((e.event_type.clone(), e.state_key.clone().unwrap_or_default()), e);
    }
    let mut events: Vec<PersistedEvent> = by_key.into_values().collect();
    events.sort_by_key(|e| e.stream_ordering);
    Ok(events)
}
