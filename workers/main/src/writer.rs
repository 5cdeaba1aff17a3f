//! The event writer: the one place events are built, authorised, persisted and published.
//!
//! Writes to one room are serialised by a per-room lock held from loading the room's state until
//! the event is committed, so each event is built on the one before it. Writes to different rooms
//! run concurrently and meet at the committer, one task that gives them stream positions and
//! commits whatever has queued up in one transaction (group commit): positions stay contiguous, so
//! a consumer that sees position N+2 after N knows to fetch N+1 from the database. Rows are
//! published only after their transaction commits, in position order.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use ganglion_core::{
    BuildError, EventTemplate, Pdu, RoomContext, ServerSigningKey, StateMap, build_event, client_event,
};
use ganglion_replication::Bus;
use ganglion_storage::{EventStore, NewEvent, PersistedEvent, event_row};
use ruma::{OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId, UserId};
use tokio::sync::{Mutex, mpsc, oneshot};

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
    /// `origin_server_ts` an application service asked for (`?ts=`), instead of now.
    pub(crate) ts: Option<u64>,
}

/// What is written in the same transaction as an event, beside it.
#[derive(Debug, Default)]
struct PersistExtras {
    /// The room version, when the event creates the room.
    creates_room: Option<String>,
    /// The redacted form of the event a redaction removes.
    redacts: Option<(OwnedEventId, String)>,
    /// The local members the event notifies.
    push_actions: Vec<ganglion_storage::PushAction>,
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
    key: Arc<ServerSigningKey>,
    server_name: OwnedServerName,
    /// One lock per room with a write in progress.
    room_locks: RoomLocks,
    /// The current state of recently written rooms.
    state_cache: StateCache,
    /// Events built and waiting for the committer.
    commits: mpsc::Sender<Commit>,
    /// The last position committed.
    position: Arc<AtomicI64>,
    /// `origin_server_ts` of the last create event built here.
    last_create_ts: std::sync::atomic::AtomicU64,
}

/// State entries the writer's state cache holds at most, over all rooms.
const STATE_CACHE_ENTRIES: usize = 200_000;

/// The current state of recently written rooms, so a send into a room with thousands of members
/// does not reload and re-parse every member event. Only the writer changes room state, under the
/// room's lock, and it updates an entry after each commit, so a cached state is never stale.
/// Bounded by entries; the least recently used rooms go first.
struct StateCache(std::sync::Mutex<StateCacheInner>);

struct StateCacheInner {
    rooms: HashMap<OwnedRoomId, (Arc<StateMap>, u64)>,
    entries: usize,
    limit: usize,
    tick: u64,
}

impl Default for StateCache {
    fn default() -> Self {
        Self::with_limit(STATE_CACHE_ENTRIES)
    }
}

impl StateCache {
    fn with_limit(limit: usize) -> Self {
        Self(std::sync::Mutex::new(StateCacheInner { rooms: HashMap::new(), entries: 0, limit, tick: 0 }))
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, StateCacheInner> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn get(&self, room_id: &RoomId) -> Option<Arc<StateMap>> {
        let mut inner = self.inner();
        inner.tick += 1;
        let tick = inner.tick;
        inner.rooms.get_mut(room_id).map(|(state, used)| {
            *used = tick;
            state.clone()
        })
    }

    fn put(&self, room_id: &RoomId, state: Arc<StateMap>) {
        let mut inner = self.inner();
        inner.tick += 1;
        let tick = inner.tick;
        let size = state.len();
        if let Some((old, _)) = inner.rooms.insert(room_id.to_owned(), (state, tick)) {
            inner.entries -= old.len();
        }
        inner.entries += size;
        while inner.entries > inner.limit && inner.rooms.len() > 1 {
            let Some(oldest) = inner
                .rooms
                .iter()
                .filter(|(r, _)| r.as_str() != room_id.as_str())
                .min_by_key(|(_, (_, used))| *used)
                .map(|(r, _)| r.clone())
            else {
                break;
            };
            if let Some((old, _)) = inner.rooms.remove(&oldest) {
                inner.entries -= old.len();
            }
        }
    }

    #[cfg_attr(not(test), allow(dead_code))]
    fn forget(&self, room_id: &RoomId) {
        let mut inner = self.inner();
        if let Some((old, _)) = inner.rooms.remove(room_id) {
            inner.entries -= old.len();
        }
    }

    /// Applies a committed state event to the room's cached state, if it is cached.
    fn apply(&self, room_id: &RoomId, pdu: &Pdu) {
        let Some(key) = pdu.state_key.clone().map(|k| (pdu.event_type.to_string(), k)) else { return };
        let taken = {
            let mut inner = self.inner();
            let taken = inner.rooms.remove(room_id);
            if let Some((old, _)) = &taken {
                inner.entries -= old.len();
            }
            taken
        };
        if let Some((mut state, _)) = taken {
            // Usually the only reference by now, so this does not copy the state.
            Arc::make_mut(&mut state).insert(key, pdu.clone());
            self.put(room_id, state);
        }
    }
}

/// Events the committer takes into one transaction at most.
const MAX_GROUP_COMMIT: usize = 64;

/// An event handed to the committer, and where to send its position.
struct Commit {
    event: NewEvent,
    /// Kept off the live stream (an outlier, rejected or soft-failed event): a position below zero,
    /// never published.
    off_stream: bool,
    done: oneshot::Sender<Result<i64, ganglion_storage::Error>>,
}

/// Per-room write locks. Entries nobody holds or waits for are pruned as the map grows.
#[derive(Default)]
struct RoomLocks(std::sync::Mutex<HashMap<OwnedRoomId, Arc<Mutex<()>>>>);

impl RoomLocks {
    async fn lock(&self, room_id: &RoomId) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if map.len() >= 1024 {
                // Only the map holds these: no write is in progress or waiting.
                map.retain(|_, l| Arc::strong_count(l) > 1);
            }
            map.entry(room_id.to_owned()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// The committer: takes built events in arrival order, gives them positions and commits them in
/// groups. A group that fails is retried one event at a time, so one bad event does not fail the
/// others that happened to share its transaction.
async fn run_committer(
    events: EventStore,
    bus: Arc<dyn Bus>,
    mut rx: mpsc::Receiver<Commit>,
    position: Arc<AtomicI64>,
) {
    let mut lowest = match events.min_stream_ordering().await {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "reading the lowest stream position failed; the event committer stops");
            return;
        }
    };
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP_COMMIT {
            match rx.try_recv() {
                Ok(c) => group.push(c),
                Err(_) => break,
            }
        }
        let start = position.load(Ordering::Acquire);
        let (mut last, low) = assign_positions(&mut group, start, lowest);
        let rows: Vec<NewEvent> = group.iter().map(|c| c.event.clone()).collect();
        let results: Vec<Result<i64, ganglion_storage::Error>> = match events.persist_batch(&rows).await {
            Ok(()) => {
                lowest = low;
                group.iter().map(|c| Ok(c.event.stream_ordering)).collect()
            }
            Err(e) if group.len() == 1 => {
                last = start;
                vec![Err(e)]
            }
            Err(e) => {
                tracing::warn!(error = %e, events = group.len(), "group commit failed; committing one at a time");
                last = start;
                let mut out = Vec::with_capacity(group.len());
                for c in &mut group {
                    let (l, low) = assign_positions(std::slice::from_mut(c), last, lowest);
                    match events.persist(&c.event).await {
                        Ok(()) => {
                            last = l;
                            lowest = low;
                            out.push(Ok(c.event.stream_ordering));
                        }
                        Err(e) => out.push(Err(e)),
                    }
                }
                out
            }
        };
        position.store(last, Ordering::Release);
        for (c, result) in group.into_iter().zip(results) {
            if result.is_ok() && !c.off_stream {
                // Published after commit. If this fails, consumers still get the row from the database.
                if let Err(e) = bus.publish(event_row(&persisted(&c.event))).await {
                    tracing::warn!(error = %e, position = c.event.stream_ordering, "publishing an event row failed; consumers will catch up from the database");
                }
            }
            let _ = c.done.send(result);
        }
    }
}

/// Gives each event of a group its position: the next ones after `last` on the live stream, or the
/// next ones below `lowest` off it. Returns the new `(last, lowest)`.
fn assign_positions(group: &mut [Commit], mut last: i64, mut lowest: i64) -> (i64, i64) {
    for c in group {
        if c.off_stream {
            lowest -= 1;
            c.event.stream_ordering = lowest;
        } else {
            last += 1;
            c.event.stream_ordering = last;
        }
    }
    (last, lowest)
}

fn persisted(ev: &NewEvent) -> PersistedEvent {
    PersistedEvent {
        stream_ordering: ev.stream_ordering,
        event_id: ev.event_id.clone(),
        room_id: ev.room_id.clone(),
        sender: ev.sender.clone(),
        event_type: ev.event_type.clone(),
        state_key: ev.state_key.clone(),
        membership: ev.membership.clone(),
        depth: ev.depth,
        origin_server_ts: ev.origin_server_ts,
        json: ev.json.clone(),
        request_id: ev.request_id.clone(),
    }
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
        let position = Arc::new(AtomicI64::new(events.max_stream_ordering().await?));
        let account_data = ganglion_storage::AccountDataStore::new(events.db().clone());
        let (commits, rx) = mpsc::channel(1024);
        tokio::spawn(run_committer(events.clone(), bus, rx, position.clone()));
        Ok(Self {
            events,
            account_data,
            key,
            server_name,
            room_locks: RoomLocks::default(),
            state_cache: StateCache::default(),
            commits,
            position,
            last_create_ts: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The server name events are signed as.
    pub(crate) fn server_name(&self) -> &OwnedServerName {
        &self.server_name
    }

    /// The last position committed.
    pub(crate) fn position(&self) -> i64 {
        self.position.load(Ordering::Acquire)
    }

    async fn load_state(&self, room_id: &RoomId) -> Result<Arc<StateMap>, WriteError> {
        if let Some(state) = self.state_cache.get(room_id) {
            return Ok(state);
        }
        let events = self.events.current_state_events(room_id).await?;
        let mut state = HashMap::with_capacity(events.len());
        for e in events {
            let pdu =
                Pdu::from_json(e.event_id.clone(), &e.json).map_err(|err| WriteError::Invalid(err.to_string()))?;
            state.insert((e.event_type.clone(), e.state_key.clone().unwrap_or_default()), pdu);
        }
        let state = Arc::new(state);
        if !state.is_empty() {
            self.state_cache.put(room_id, state.clone());
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
        let ctx = RoomContext { room_id, version, state: &state, prev_events: Vec::new(), max_prev_depth: 0 };
        // From room v12 the room ID is the create event's hash: two rooms created by one user in
        // the same millisecond with the same content would get one ID. Each create takes a
        // timestamp after the previous one's.
        let mut previous = self.last_create_ts.load(Ordering::Acquire);
        let ts = loop {
            let ts = now_ms().max(previous + 1);
            match self.last_create_ts.compare_exchange(previous, ts, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => break ts,
                Err(p) => previous = p,
            }
        };
        let (pdu, room_id) = build_event(&template, creator, &ctx, &self.server_name, &self.key, ts)?;
        let extras = PersistExtras { creates_room: Some(version.to_string()), ..PersistExtras::default() };
        // A new room: nobody else can write to it yet, so no room lock.
        self.persist(pdu, room_id, extras, origin).await
    }

    /// Sends an event into an existing room. A retried transaction returns the first event.
    pub(crate) async fn send(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        template: EventTemplate,
        origin: &WriteOrigin,
    ) -> Result<Written, WriteError> {
        let _room = self.room_locks.lock(room_id).await;
        if let Some((device, txn)) = &origin.txn
            && let Some(existing) = self.events.event_for_txn(sender, device, txn).await?
        {
            let position = self.events.event(existing.as_str()).await?.map_or(0, |e| e.stream_ordering);
            return Ok(Written { event_id: existing, room_id: room_id.to_owned(), position });
        }
        let (pdu, room_id, version, state) = self.build_locked(room_id, sender, &template, origin.ts).await?;
        let rules = version.rules().ok_or_else(|| WriteError::UnsupportedVersion(version.to_string()))?;
        let push_actions =
            crate::push::push_actions(&self.account_data, &self.server_name, &state, &pdu, &room_id, &rules).await;
        let redacts = match &pdu.redacts {
            Some(target) if pdu.event_type == ruma::events::TimelineEventType::RoomRedaction => {
                self.redaction_of(&room_id, &version, &state, &pdu, target).await?
            }
            _ => None,
        };
        drop(state);
        let state_change = pdu.state_key.is_some().then(|| pdu.clone());
        let written =
            self.persist(pdu, room_id, PersistExtras { creates_room: None, redacts, push_actions }, origin).await?;
        if let Some(pdu) = state_change {
            self.state_cache.apply(&written.room_id, &pdu);
        }
        Ok(written)
    }

    /// An event built and signed on the room's current state, checked by the auth rules, and
    /// not stored: for an invite, which the invitee's server countersigns first. With the
    /// room's version.
    pub(crate) async fn build(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        template: &EventTemplate,
    ) -> Result<(Pdu, RoomVersionId), WriteError> {
        let _room = self.room_locks.lock(room_id).await;
        let (pdu, _, version, _) = self.build_locked(room_id, sender, template, None).await?;
        Ok((pdu, version))
    }

    /// Builds an event on the room's current state; the caller holds the room's lock.
    async fn build_locked(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        template: &EventTemplate,
        ts: Option<u64>,
    ) -> Result<(Pdu, OwnedRoomId, RoomVersionId, Arc<StateMap>), WriteError> {
        let version = self.room_version(room_id).await?;
        let state = self.load_state(room_id).await?;
        let extremities = self.events.forward_extremities(room_id).await?;
        let max_prev_depth = extremities.iter().map(|(_, d)| *d).max().unwrap_or(0).max(0) as u64;
        // Cap prev_events like other servers do, so a room with many extremities still builds
        // bounded events.
        let prev_events: Vec<OwnedEventId> = extremities.into_iter().take(10).map(|(id, _)| id).collect();
        let ctx = RoomContext { room_id: Some(room_id), version: &version, state: &state, prev_events, max_prev_depth };
        let (pdu, room_id) =
            build_event(template, sender, &ctx, &self.server_name, &self.key, ts.unwrap_or_else(now_ms))?;
        Ok((pdu, room_id, version, state))
    }

    /// The redacted form of `target` when the sender of `redaction` may redact it: their own
    /// event, or anyone's with the room's `redact` power. The auth rules only check the event
    /// itself; this check is the server's, done before the redaction is applied. The redacted
    /// form keeps the redaction in `unsigned.redacted_because` (in client format), so every
    /// endpoint that serves the event shows why it was redacted without another query.
    pub(crate) async fn redaction_of(
        &self,
        room_id: &RoomId,
        version: &RoomVersionId,
        state: &StateMap,
        redaction: &Pdu,
        target: &OwnedEventId,
    ) -> Result<Option<(OwnedEventId, String)>, WriteError> {
        let sender = &redaction.sender;
        let rules = version.rules().ok_or_else(|| WriteError::UnsupportedVersion(version.to_string()))?;
        let Some(original) = self.events.event(target.as_str()).await? else {
            // Redacting an unknown event is allowed and does nothing (it may arrive later).
            return Ok(None);
        };
        if original.room_id != room_id {
            return Err(WriteError::Invalid("the event to redact is in another room".into()));
        }
        let own = original.sender == *sender;
        let power = ganglion_core::user_power_level(state, sender, &rules);
        if !own && power < ganglion_core::required_level(state, "redact", 50) {
            return Err(WriteError::Forbidden("You don't have permission to redact events".into()));
        }
        let obj: ruma::CanonicalJsonObject =
            serde_json::from_str(&original.json).map_err(|e| WriteError::Invalid(format!("stored event: {e}")))?;
        let because = client_event(&redaction.json, redaction.event_id.as_str(), room_id.as_str(), None);
        let because: ruma::CanonicalJsonObject =
            serde_json::from_value(because).map_err(|e| WriteError::Invalid(format!("redaction event: {e}")))?;
        let because = ruma::canonical_json::RedactedBecause::from_json(because);
        let redacted = ruma::canonical_json::redact(obj, &rules.redaction, Some(because))
            .map_err(|e| WriteError::Invalid(format!("redaction: {e}")))?;
        let json = serde_json::to_string(&redacted).map_err(|e| WriteError::Invalid(e.to_string()))?;
        Ok(Some((target.clone(), json)))
    }

    /// A room's current state, as the auth rules see it.
    pub(crate) async fn room_state(&self, room_id: &RoomId) -> Result<Arc<StateMap>, WriteError> {
        self.load_state(room_id).await
    }

    /// Hands a built event to the committer and waits until it is committed and published.
    async fn persist(
        &self,
        pdu: Pdu,
        room_id: OwnedRoomId,
        extras: PersistExtras,
        origin: &WriteOrigin,
    ) -> Result<Written, WriteError> {
        let PersistExtras { creates_room, redacts, push_actions } = extras;
        let new = NewEvent {
            txn: origin.txn.clone(),
            request_id: origin.request_id.clone(),
            creates_room: creates_room.map(|v| (v, pdu.sender.clone())),
            redacts,
            push_actions,
            ..NewEvent::ordinary(&pdu, &room_id)
        };
        let position = self.commit_row(new, false).await?;
        tracing::debug!(event_id = %pdu.event_id, room_id = %room_id, position, "persisted event");
        Ok(Written { event_id: pdu.event_id, room_id, position })
    }

    /// A room's version; [`WriteError::UnknownRoom`] when the room is not known here.
    pub(crate) async fn room_version(&self, room_id: &RoomId) -> Result<RoomVersionId, WriteError> {
        let version = self.events.room_version(room_id).await?.ok_or(WriteError::UnknownRoom)?;
        RoomVersionId::try_from(version.as_str()).map_err(|e| WriteError::Invalid(e.to_string()))
    }

    /// The event store the writer writes to.
    pub(crate) fn store(&self) -> &EventStore {
        &self.events
    }

    /// The account data the writer reads push rules from.
    pub(crate) fn account_data(&self) -> &ganglion_storage::AccountDataStore {
        &self.account_data
    }

    /// Takes the room's write lock (held until the guard drops).
    pub(crate) async fn lock_room(&self, room_id: &RoomId) -> tokio::sync::OwnedMutexGuard<()> {
        self.room_locks.lock(room_id).await
    }

    /// Drops the room's cached state, after a write that may have changed it in several places.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn forget_state(&self, room_id: &RoomId) {
        self.state_cache.forget(room_id);
    }

    /// Queues an event for the committer and waits for its position.
    pub(crate) async fn commit_row(&self, event: NewEvent, off_stream: bool) -> Result<i64, WriteError> {
        let (done, rx) = oneshot::channel();
        let closed = || WriteError::Storage(ganglion_storage::Error::Decode("the event committer stopped".into()));
        self.commits.send(Commit { event, off_stream, done }).await.map_err(|_| closed())?;
        Ok(rx.await.map_err(|_| closed())??)
    }
}

/// A random string of lowercase letters and digits.
pub(crate) fn random_localpart(n: usize) -> String {
    use rand::Rng as _;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::thread_rng();
    (0..n).map(|_| CHARS[rng.gen_range(0..CHARS.len())] as char).collect()
}

#[cfg(test)]
mod state_cache_tests {
    use super::*;

    fn state_of(room: &str, n: usize) -> (OwnedRoomId, Arc<StateMap>) {
        let room_id = OwnedRoomId::try_from(format!("!{room}:example.org")).unwrap();
        let mut state = StateMap::new();
        for i in 0..n {
            let json = format!(
                r#"{{"type":"m.room.member","state_key":"@u{i}:example.org","sender":"@u{i}:example.org","room_id":"{room_id}","origin_server_ts":1,"content":{{"membership":"join"}},"prev_events":[],"auth_events":[],"depth":1}}"#
            );
            let id = OwnedEventId::try_from(format!("${room}{i}")).unwrap();
            let pdu = Pdu::from_json(id, &json).unwrap();
            state.insert(("m.room.member".into(), format!("@u{i}:example.org")), pdu);
        }
        (room_id, Arc::new(state))
    }

    #[test]
    fn keeps_within_its_limit_and_drops_the_least_recently_used() {
        let cache = StateCache::with_limit(10);
        let (a, sa) = state_of("a", 4);
        let (b, sb) = state_of("b", 4);
        let (c, sc) = state_of("c", 4);
        cache.put(&a, sa);
        cache.put(&b, sb);
        assert!(cache.get(&a).is_some(), "a is now more recently used than b");
        cache.put(&c, sc);
        assert!(cache.get(&b).is_none(), "b was the least recently used");
        assert!(cache.get(&a).is_some() && cache.get(&c).is_some());
        assert_eq!(cache.inner().entries, 8);
    }

    #[test]
    fn applies_state_events_to_cached_rooms_only() {
        let cache = StateCache::with_limit(100);
        let (a, sa) = state_of("a", 2);
        let (_, extra) = state_of("a", 3);
        let newcomer = extra.get(&("m.room.member".to_owned(), "@u2:example.org".to_owned())).unwrap().clone();
        cache.apply(&a, &newcomer);
        assert!(cache.get(&a).is_none(), "an uncached room stays uncached");
        cache.put(&a, sa);
        cache.apply(&a, &newcomer);
        assert_eq!(cache.get(&a).unwrap().len(), 3);
        assert_eq!(cache.inner().entries, 3);
    }
}
