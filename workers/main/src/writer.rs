//! The event writer: the one place events are built, authorised, persisted and published.
//!
//! Writes are serialised (one lock for now; per-room locks with group commit come with the rooms
//! work) so stream positions stay contiguous: a consumer that sees position N+2 after N knows to
//! fetch N+1 from the database. A row is published only after its transaction commits.

use std::collections::HashMap;
use std::sync::Arc;

use ganglion_core::{BuildError, EventTemplate, Pdu, RoomContext, ServerSigningKey, StateMap, build_event};
use ganglion_replication::Bus;
use ganglion_storage::{EventStore, NewEvent, PersistedEvent, event_row};
use ruma::{OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId, UserId};
use tokio::sync::Mutex;

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WriteError {
    /// The room is not known here.
    #[error("unknown room")]
    UnknownRoom,
    /// The auth rules or a policy refuse it.
    #[error("{0}")]
    Forbidden(String),
    /// Over the size limit.
    #[error("event too large")]
    TooLarge,
    /// Malformed event.
    #[error("{0}")]
    Invalid(String),
    /// Unsupported room version.
    #[error("unsupported room version {0}")]
    UnsupportedVersion(String),
    /// Storage failure.
    #[error(transparent)]
    Storage(#[from] ganglion_storage::Error),
}

impl From<BuildError> for WriteError {
    fn from(e: BuildError) -> Self {
        match e {
            BuildError::Forbidden(r) => Self::Forbidden(r),
            BuildError::TooLarge => Self::TooLarge,
            BuildError::UnsupportedRoomVersion(v) => Self::UnsupportedVersion(v),
            other => Self::Invalid(other.to_string()),
        }
    }
}

impl From<WriteError> for ganglion_http::MatrixError {
    fn from(e: WriteError) -> Self {
        use ganglion_http::MatrixError as M;
        match e {
            WriteError::UnknownRoom => M::forbidden("You are not a member of this room"),
            WriteError::Forbidden(r) => M::forbidden(r),
            WriteError::TooLarge => M::too_large("Event too large"),
            WriteError::Invalid(r) => M::bad_json(r),
            WriteError::UnsupportedVersion(v) => {
                M::unsupported_room_version(format!("Room version {v} is not supported"))
            }
            WriteError::Storage(s) => M::internal(s),
        }
    }
}

/// Where a write comes from: its transaction id (for idempotent retries) and request id.
#[derive(Debug, Clone, Default)]
pub(crate) struct WriteOrigin {
    /// `(device_id, txn_id)`.
    pub(crate) txn: Option<(String, String)>,
    /// The client request's id.
    pub(crate) request_id: String,
}

/// What is written in the same transaction as an event, beside it.
#[derive(Debug, Default)]
struct PersistExtras {
    /// The room version, when the event creates the room.
    creates_room: Option<String>,
    /// The redacted form of the event a redaction removes.
    redacts: Option<(OwnedEventId, String)>,
    /// The local members the event notifies.
    push_actions: Vec<(ruma::OwnedUserId, bool, String)>,
}

/// A persisted event's coordinates.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    pub(crate) event_id: OwnedEventId,
    pub(crate) room_id: OwnedRoomId,
    pub(crate) position: i64,
}

/// Builds and persists events; the only writer of the `events` stream.
pub(crate) struct EventWriter {
    events: EventStore,
    account_data: ganglion_storage::AccountDataStore,
    bus: Arc<dyn Bus>,
    key: Arc<ServerSigningKey>,
    server_name: OwnedServerName,
    /// The last position written. Held across build + persist, which serialises writes.
    last_position: Mutex<i64>,
}

impl std::fmt::Debug for EventWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWriter").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl EventWriter {
    /// A writer starting after the highest position in the database.
    pub(crate) async fn new(
        events: EventStore,
        bus: Arc<dyn Bus>,
        key: Arc<ServerSigningKey>,
        server_name: OwnedServerName,
    ) -> Result<Self, ganglion_storage::Error> {
        let last = events.max_stream_ordering().await?;
        let account_data = ganglion_storage::AccountDataStore::new(events.db().clone());
        Ok(Self { events, account_data, bus, key, server_name, last_position: Mutex::new(last) })
    }

    /// The server name events are signed as.
    pub(crate) fn server_name(&self) -> &OwnedServerName {
        &self.server_name
    }

    /// The last position written.
    pub(crate) async fn position(&self) -> i64 {
        *self.last_position.lock().await
    }

    async fn load_state(&self, room_id: &RoomId) -> Result<StateMap, WriteError> {
        let events = self.events.current_state_events(room_id).await?;
        let mut state = HashMap::with_capacity(events.len());
        for e in events {
            let pdu =
                Pdu::from_json(e.event_id.clone(), &e.json).map_err(|err| WriteError::Invalid(err.to_string()))?;
            state.insert((e.event_type.clone(), e.state_key.clone().unwrap_or_default()), pdu);
        }
        Ok(state)
    }

    /// Creates a room: builds its `m.room.create` event and persists it. Returns the new room ID.
    pub(crate) async fn create_room(
        &self,
        version: &RoomVersionId,
        creator: &UserId,
        create_content: serde_json::Value,
        origin: &WriteOrigin,
    ) -> Result<Written, WriteError> {
        let rules = version.rules().ok_or_else(|| WriteError::UnsupportedVersion(version.to_string()))?;
        let random_room_id;
        let room_id = if rules.authorization.room_create_event_id_as_room_id {
            None
        } else {
            random_room_id = OwnedRoomId::try_from(format!("!{}:{}", random_localpart(18), self.server_name))
                .map_err(|e| WriteError::Invalid(e.to_string()))?;
            Some(random_room_id.as_ref())
        };
        let template = EventTemplate {
            event_type: "m.room.create".into(),
            state_key: Some(String::new()),
            content: create_content,
        };
        let state = StateMap::new();
        let mut last = self.last_position.lock().await;
        let ctx = RoomContext { room_id, version, state: &state, prev_events: Vec::new(), max_prev_depth: 0 };
        let (pdu, room_id) = build_event(&template, creator, &ctx, &self.server_name, &self.key, now_ms())?;
        let extras = PersistExtras { creates_room: Some(version.to_string()), ..PersistExtras::default() };
        self.persist(&mut last, pdu, room_id, extras, origin).await
    }

    /// Sends an event into an existing room. A retried transaction returns the first event.
    pub(crate) async fn send(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        template: EventTemplate,
        origin: &WriteOrigin,
    ) -> Result<Written, WriteError> {
        let mut last = self.last_position.lock().await;
        if let Some((device, txn)) = &origin.txn
            && let Some(existing) = self.events.event_for_txn(sender, device, txn).await?
        {
            let position = self.events.event(existing.as_str()).await?.map_or(0, |e| e.stream_ordering);
            return Ok(Written { event_id: existing, room_id: room_id.to_owned(), position });
        }
        let version = self.events.room_version(room_id).await?.ok_or(WriteError::UnknownRoom)?;
        let version = RoomVersionId::try_from(version.as_str()).map_err(|e| WriteError::Invalid(e.to_string()))?;
        let state = self.load_state(room_id).await?;
        let extremities = self.events.forward_extremities(room_id).await?;
        let max_prev_depth = extremities.iter().map(|(_, d)| *d).max().unwrap_or(0).max(0) as u64;
        // Cap prev_events like other servers do, so a room with many extremities still builds
        // bounded events.
        let prev_events: Vec<OwnedEventId> = extremities.into_iter().take(10).map(|(id, _)| id).collect();
        let ctx = RoomContext { room_id: Some(room_id), version: &version, state: &state, prev_events, max_prev_depth };
        let (pdu, room_id) = build_event(&template, sender, &ctx, &self.server_name, &self.key, now_ms())?;
        let rules = version.rules().ok_or_else(|| WriteError::UnsupportedVersion(version.to_string()))?;
        let push_actions =
            crate::push::push_actions(&self.account_data, &self.server_name, &state, &pdu, &room_id, &rules).await;
        let redacts = match &pdu.redacts {
            Some(target) if pdu.event_type == ruma::events::TimelineEventType::RoomRedaction => {
                self.redaction_of(&room_id, &version, &state, sender, target).await?
            }
            _ => None,
        };
        self.persist(&mut last, pdu, room_id, PersistExtras { creates_room: None, redacts, push_actions }, origin).await
    }

    /// The redacted form of `target` when `sender` may redact it: their own event, or anyone's
    /// with the room's `redact` power. The auth rules only check the event itself; this check is
    /// the server's, done before the redaction is applied.
    async fn redaction_of(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        state: &StateMap,
        sender: &UserId,
        target: &OwnedEventId,
    ) -> Result<Option<(OwnedEventId, String)>, WriteError> {
        let rules = version.rules().ok_or_else(|| WriteError::UnsupportedVersion(version.to_string()))?;
        let Some(original) = self.events.event(target.as_str()).await? else {
            // Redacting an unknown event is allowed and does nothing (it may arrive later).
            return Ok(None);
        };
        if original.room_id != room_id {
            return Err(WriteError::Invalid("the event to redact is in another room".into()));
        }
        let own = original.sender == sender;
        let power = ganglion_core::user_power_level(state, sender, &rules);
        if !own && power < ganglion_core::required_level(state, "redact", 50) {
            return Err(WriteError::Forbidden("You don't have permission to redact events".into()));
        }
        let obj: ruma::CanonicalJsonObject =
            serde_json::from_str(&original.json).map_err(|e| WriteError::Invalid(format!("stored event: {e}")))?;
        let redacted = ruma::canonical_json::redact(obj, &rules.redaction, None)
            .map_err(|e| WriteError::Invalid(format!("redaction: {e}")))?;
        let json = serde_json::to_string(&redacted).map_err(|e| WriteError::Invalid(e.to_string()))?;
        Ok(Some((target.clone(), json)))
    }

    /// A room's current state, as the auth rules see it.
    pub(crate) async fn room_state(&self, room_id: &RoomId) -> Result<StateMap, WriteError> {
        self.load_state(room_id).await
    }

    async fn persist(
        &self,
        last: &mut i64,
        pdu: Pdu,
        room_id: OwnedRoomId,
        extras: PersistExtras,
        origin: &WriteOrigin,
    ) -> Result<Written, WriteError> {
        let PersistExtras { creates_room, redacts, push_actions } = extras;
        let position = *last + 1;
        let new = NewEvent {
            stream_ordering: position,
            event_id: pdu.event_id.clone(),
            room_id: room_id.clone(),
            sender: pdu.sender.clone(),
            event_type: pdu.event_type.to_string(),
            state_key: pdu.state_key.clone(),
            membership: pdu.membership(),
            depth: i64::try_from(u64::from(pdu.depth)).unwrap_or(i64::MAX),
            origin_server_ts: i64::try_from(u64::from(pdu.origin_server_ts.get())).unwrap_or(0),
            json: pdu.json.clone(),
            prev_events: pdu.prev_events.clone(),
            txn: origin.txn.clone(),
            request_id: origin.request_id.clone(),
            creates_room: creates_room.map(|v| (v, pdu.sender.clone())),
            redacts,
            push_actions,
            relation: relation_of(&pdu),
        };
        self.events.persist(&new).await?;
        *last = position;
        let persisted = PersistedEvent {
            stream_ordering: position,
            event_id: new.event_id.clone(),
            room_id: room_id.clone(),
            sender: new.sender,
            event_type: new.event_type,
            state_key: new.state_key,
            membership: new.membership,
            depth: new.depth,
            origin_server_ts: new.origin_server_ts,
            json: new.json,
            request_id: new.request_id,
        };
        // Published after commit. If this fails, consumers still get the row from the database.
        if let Err(e) = self.bus.publish(event_row(&persisted)).await {
            tracing::warn!(error = %e, position, "publishing an event row failed; consumers will catch up from the database");
        }
        tracing::debug!(event_id = %new.event_id, room_id = %room_id, position, "persisted event");
        Ok(Written { event_id: new.event_id, room_id, position })
    }
}

/// The parent and `rel_type` of an event's `content.m.relates_to`, for the relations index. A
/// rich reply (`m.in_reply_to` alone) has no `rel_type`, so it is no relation.
fn relation_of(pdu: &Pdu) -> Option<(OwnedEventId, String)> {
    let content = pdu.content_value();
    let rel = content.get("m.relates_to")?;
    let rel_type = rel.get("rel_type")?.as_str()?;
    let parent = OwnedEventId::try_from(rel.get("event_id")?.as_str()?).ok()?;
    Some((parent, rel_type.to_owned()))
}

/// A random string of lowercase letters and digits.
pub(crate) fn random_localpart(n: usize) -> String {
    use rand::Rng as _;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::thread_rng();
    (0..n).map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char).collect()
}
