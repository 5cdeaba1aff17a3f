//! Persisting events from other servers: the part of federation that belongs to the event graph.
//!
//! The federation reader checks an incoming PDU's format, hashes and
//! signatures, fetches what it lacks, and hands the PDU here. This module computes the state
//! before it (resolving its `prev_events`' states when they differ), runs the auth checks on
//! receipt (`ganglion-state`), and persists it through the writer's committer as accepted,
//! rejected or soft-failed, moving the room's forward extremities and current state on. Outliers
//! (auth and state events of others, whose own place in the graph is unknown) are checked against
//! their auth events only.

use std::collections::HashMap;

use ganglion_core::{Pdu, StateMap};
use ganglion_state::{EventSource, ResolveError, StateIds, Verdict};
use ganglion_storage::{EventStatus, EventStore, NewEvent, StateBefore};
use ruma::{OwnedEventId, OwnedRoomId};

use crate::writer::{EventWriter, WriteError};

/// What became of a received PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Received {
    /// Accepted, rejected or soft-failed (outliers: accepted or rejected).
    pub(crate) verdict: Verdict,
    /// Its stream position: above zero for accepted events, below for the others.
    pub(crate) position: i64,
}

/// Why a PDU could not be taken in yet; the transport fetches what is named and tries again.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReceiveError {
    /// Events the PDU cites that are not stored (auth events), or whose state is unknown
    /// (`prev_events` missing or outliers): fetch them (`/event_auth`, `/get_missing_events`,
    /// `/state_ids`) first.
    #[error("missing events: {0:?}")]
    Missing(Vec<OwnedEventId>),
    /// The write itself failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

impl From<ganglion_storage::Error> for ReceiveError {
    fn from(e: ganglion_storage::Error) -> Self {
        Self::Write(WriteError::Storage(e))
    }
}

impl From<ResolveError> for ReceiveError {
    fn from(e: ResolveError) -> Self {
        match e {
            ResolveError::MissingEvents(ids) => Self::Missing(ids),
            other => Self::Write(WriteError::Invalid(other.to_string())),
        }
    }
}

/// Stored events as state resolution loads them; rejected ones are marked so the auth rules
/// refuse them as auth events.
pub(crate) struct StoredEvents<'a>(pub(crate) &'a EventStore);

impl StoredEvents<'_> {
    pub(crate) async fn load(&self, ids: &[OwnedEventId]) -> Result<HashMap<OwnedEventId, Pdu>, ReceiveError> {
        let refs: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
        let mut out = HashMap::with_capacity(ids.len());
        for (e, status) in self.0.pdus(&refs).await? {
            let mut pdu = Pdu::from_json(e.event_id.clone(), &e.json)
                .map_err(|err| WriteError::Invalid(format!("stored event {}: {err}", e.event_id)))?;
            pdu.rejected = matches!(status, EventStatus::Rejected(_));
            out.insert(e.event_id, pdu);
        }
        Ok(out)
    }
}

impl EventSource for StoredEvents<'_> {
    async fn events(&self, ids: Vec<OwnedEventId>) -> Result<Vec<Pdu>, ResolveError> {
        self.load(&ids).await.map(|m| m.into_values().collect()).map_err(|e| ResolveError::Source(e.to_string()))
    }
}

fn to_storage(ids: &StateIds) -> ganglion_storage::StateIds {
    ids.iter().map(|(k, v)| (k.clone(), v.to_string())).collect()
}

fn from_storage(ids: ganglion_storage::StateIds) -> Result<StateIds, ReceiveError> {
    ids.into_iter()
        .map(|(k, v)| {
            OwnedEventId::try_from(v.as_str())
                .map(|id| (k, id))
                .map_err(|e| ReceiveError::Write(WriteError::Invalid(format!("stored state: {e}"))))
        })
        .collect()
}

fn state_ids_of(state: &StateMap) -> StateIds {
    state.iter().map(|(k, p)| (k.clone(), p.event_id.clone())).collect()
}

impl EventWriter {
    /// Takes in a PDU from another server whose signatures and hashes the transport has checked.
    /// Receiving one already stored returns what became of it.
    ///
    /// # Errors
    /// [`ReceiveError::Missing`] when cited events are not here yet; write failures.
    pub(crate) async fn receive_pdu(&self, mut pdu: Pdu) -> Result<Received, ReceiveError> {
        pdu.drop_unsigned();
        let room_id = self.room_of(&pdu)?;
        let version = self.room_version(&room_id).await?;
        let rules = version.rules().ok_or_else(|| WriteError::UnsupportedVersion(version.to_string()))?;
        let _room = self.lock_room(&room_id).await;
        if let Some(done) = self.already_received(&pdu).await? {
            return Ok(done);
        }
        let events = self.store();
        let source = StoredEvents(events);

        // The state before the event: its prev_events' states, resolved.
        let mut state_sets = Vec::with_capacity(pdu.prev_events.len());
        let mut unknown = Vec::new();
        for prev in &pdu.prev_events {
            match events.state_ids_after(prev.as_str()).await? {
                Some(s) => state_sets.push(from_storage(s)?),
                None => unknown.push(prev.clone()),
            }
        }
        if !unknown.is_empty() {
            return Err(ReceiveError::Missing(unknown));
        }
        let before_ids = ganglion_state::resolve_from(&version, state_sets, &source).await?;

        let mut needed: Vec<OwnedEventId> = pdu.auth_events.clone();
        needed.extend(before_ids.values().cloned());
        if let Some(create) = create_event_of(&room_id, &rules) {
            needed.push(create);
        }
        let loaded = source.load(&needed).await?;
        let missing: Vec<OwnedEventId> =
            pdu.auth_events.iter().filter(|id| !loaded.contains_key(*id)).cloned().collect();
        if !missing.is_empty() {
            return Err(ReceiveError::Missing(missing));
        }
        let before = ganglion_state::state_map(&before_ids, &loaded)?;
        let current = self.room_state(&room_id).await?;
        let verdict = ganglion_state::check_incoming(&rules.authorization, &pdu, &loaded, &before, &current);

        let status = match &verdict {
            Verdict::Accepted => EventStatus::Ordinary,
            Verdict::Rejected(r) => EventStatus::Rejected(r.clone()),
            Verdict::SoftFailed(r) => EventStatus::SoftFailed(r.clone()),
        };
        let mut new_current = None;
        let mut push_actions = Vec::new();
        let mut redacts = None;
        if status == EventStatus::Ordinary {
            let mut after_ids = before_ids.clone();
            if let Some(key) = &pdu.state_key {
                after_ids.insert((pdu.event_type.to_string(), key.clone()), pdu.event_id.clone());
            }
            let extremities: Vec<OwnedEventId> =
                events.forward_extremities(&room_id).await?.into_iter().map(|(id, _)| id).collect();
            let extends_all = extremities.iter().all(|e| pdu.prev_events.contains(e));
            let current_ids = state_ids_of(&current);
            let resolved = if extends_all {
                after_ids.clone()
            } else {
                // A fork: the room's state is now the resolution of both sides. The new event is
                // in neither side's store yet, so it joins the source for this one resolution.
                let mut with_new: HashMap<OwnedEventId, Pdu> = loaded.clone();
                with_new.insert(pdu.event_id.clone(), pdu.clone());
                let both = BothSources { stored: &source, extra: &with_new };
                ganglion_state::resolve_from(&version, vec![current_ids, after_ids], &both).await?
            };
            new_current = Some(to_storage(&resolved));
            push_actions =
                crate::push::push_actions(self.account_data(), self.server_name(), &before, &pdu, &room_id, &rules)
                    .await;
            if let Some(target) =
                pdu.redacts.as_ref().filter(|_| pdu.event_type == ruma::events::TimelineEventType::RoomRedaction)
            {
                // A redaction the sender may not apply is kept as an event but redacts nothing.
                redacts = self.redaction_of(&room_id, &version, &before, &pdu, target).await.unwrap_or(None);
            }
        }
        let off_stream = status != EventStatus::Ordinary;
        let row = NewEvent::ordinary(&pdu, &room_id);
        let new = NewEvent {
            push_actions,
            redacts,
            relation: if off_stream { None } else { row.relation.clone() },
            status,
            state_before: StateBefore::Ids(to_storage(&before_ids)),
            new_current_state: new_current,
            ..row
        };
        let position = self.commit_row(new, off_stream).await?;
        if !off_stream {
            // The room's state may have changed in more than one place: reload it on next use.
            self.forget_state(&room_id);
        }
        tracing::info!(event_id = %pdu.event_id, room_id = %room_id, ?verdict, position, "received event");
        Ok(Received { verdict, position })
    }

    /// Takes in an outlier: an event known only as another's auth or state event. It is checked
    /// against its own auth events, which must be here.
    ///
    /// # Errors
    /// [`ReceiveError::Missing`] when its auth events are not here; write failures.
    pub(crate) async fn receive_outlier(&self, mut pdu: Pdu) -> Result<Received, ReceiveError> {
        pdu.drop_unsigned();
        let room_id = self.room_of(&pdu)?;
        let version = self.room_version(&room_id).await?;
        let rules = version.rules().ok_or_else(|| WriteError::UnsupportedVersion(version.to_string()))?;
        if let Some(done) = self.already_received(&pdu).await? {
            return Ok(done);
        }
        let mut needed = pdu.auth_events.clone();
        needed.extend(create_event_of(&room_id, &rules));
        let loaded = StoredEvents(self.store()).load(&needed).await?;
        let missing: Vec<OwnedEventId> =
            pdu.auth_events.iter().filter(|id| !loaded.contains_key(*id)).cloned().collect();
        if !missing.is_empty() {
            return Err(ReceiveError::Missing(missing));
        }
        let (verdict, status) = match ganglion_state::check_auth_events(&rules.authorization, &pdu, &loaded) {
            Ok(()) => (Verdict::Accepted, EventStatus::Outlier),
            Err(r) => (Verdict::Rejected(r.clone()), EventStatus::Rejected(r)),
        };
        let new = NewEvent { status, state_before: StateBefore::Unknown, ..NewEvent::ordinary(&pdu, &room_id) };
        let position = self.commit_row(new, true).await?;
        Ok(Received { verdict, position })
    }

    /// Takes in this server's own join to a room another server hosts, with the room's state
    /// before the join and its auth chain as `send_join` answered (checked by the caller):
    /// the state and auth events are stored as outliers (the create event first, which also
    /// records the room), then the join, on that state, as the room's first event here.
    ///
    /// # Errors
    /// [`WriteError::Forbidden`] when the join does not pass the auth rules on that state;
    /// [`ReceiveError::Missing`] when the state lacks the create event; write failures.
    pub(crate) async fn receive_remote_join(
        &self,
        version: &ruma::RoomVersionId,
        mut join: Pdu,
        state: Vec<Pdu>,
        auth_chain: Vec<Pdu>,
    ) -> Result<Received, ReceiveError> {
        join.drop_unsigned();
        let room_id = self.room_of(&join)?;
        let rules = version.rules().ok_or_else(|| WriteError::UnsupportedVersion(version.to_string()))?;
        let _room = self.lock_room(&room_id).await;
        let state_ids: Vec<OwnedEventId> = state.iter().map(|p| p.event_id.clone()).collect();
        let mut all: HashMap<OwnedEventId, Pdu> = HashMap::new();
        for mut p in auth_chain.into_iter().chain(state) {
            p.drop_unsigned();
            all.insert(p.event_id.clone(), p);
        }
        let create = all
            .values()
            .find(|p| p.event_type == ruma::events::TimelineEventType::RoomCreate && p.state_key.as_deref() == Some(""))
            .cloned()
            .ok_or_else(|| ReceiveError::Write(WriteError::Invalid("the room's state has no create event".into())))?;
        // The room may be known already (an invite came first, or a user here was in it once).
        let room_known = self.store().room_version(&room_id).await?.is_some();
        if !room_known || self.already_received(&create).await?.is_none() {
            ganglion_state::check_auth_events(&rules.authorization, &create, &HashMap::new())
                .map_err(|why| WriteError::Forbidden(format!("the room's create event: {why}")))?;
            let new = NewEvent {
                status: EventStatus::Outlier,
                state_before: StateBefore::Unknown,
                creates_room: (!room_known).then(|| (version.to_string(), create.sender.clone())),
                ..NewEvent::ordinary(&create, &room_id)
            };
            self.commit_row(new, true).await?;
        }
        // Auth events before the events they authorise.
        let mut rest: Vec<Pdu> = all.values().filter(|p| p.event_id != create.event_id).cloned().collect();
        rest.sort_by_key(|p| (p.depth, p.origin_server_ts));
        for p in rest {
            let id = p.event_id.clone();
            match self.receive_outlier(p).await {
                Ok(r) if r.verdict != Verdict::Accepted => {
                    tracing::info!(event_id = %id, ?r.verdict, "a state or auth event of a joined room was rejected");
                }
                Ok(_) => {}
                Err(ReceiveError::Missing(m)) => {
                    tracing::info!(event_id = %id, missing = ?m, "a state or auth event of a joined room lacks its auth events");
                }
                Err(e) => return Err(e),
            }
        }
        // The state before the join: what was stored and not rejected.
        let refs: Vec<&str> = state_ids.iter().map(|i| i.as_str()).collect();
        let mut before = StateMap::new();
        for (e, status) in self.store().pdus(&refs).await? {
            if matches!(status, EventStatus::Rejected(_)) {
                continue;
            }
            if let (Some(key), Some(p)) = (e.state_key.clone(), all.get(&e.event_id)) {
                before.insert((e.event_type.clone(), key), p.clone());
            }
        }
        let mut needed = join.auth_events.clone();
        needed.extend(create_event_of(&room_id, &rules));
        let loaded = StoredEvents(self.store()).load(&needed).await?;
        let verdict = ganglion_state::check_incoming(&rules.authorization, &join, &loaded, &before, &before);
        if verdict != Verdict::Accepted {
            return Err(ReceiveError::Write(WriteError::Forbidden(format!(
                "the join does not pass the auth rules: {verdict:?}"
            ))));
        }
        let before_ids = state_ids_of(&before);
        let mut after_ids = before_ids.clone();
        if let Some(key) = &join.state_key {
            after_ids.insert((join.event_type.to_string(), key.clone()), join.event_id.clone());
        }
        let new = NewEvent {
            state_before: StateBefore::Ids(to_storage(&before_ids)),
            new_current_state: Some(to_storage(&after_ids)),
            ..NewEvent::ordinary(&join, &room_id)
        };
        let position = self.commit_row(new, false).await?;
        self.forget_state(&room_id);
        tracing::info!(event_id = %join.event_id, %room_id, state = before.len(), position, "joined a room over federation");
        Ok(Received { verdict, position })
    }

    /// Takes in a membership event of a room whose state this server may not hold: an invite
    /// of a local user by another server (`/invite`), or a local user's leave sent through
    /// another server (rejecting such an invite). The auth rules cannot be run without the
    /// room's state, so the event is stored against whatever this server knows of the room,
    /// records the room when it is new here (of `version`), and sets the user's membership,
    /// which is what sync shows. `unsigned.invite_room_state` is kept for the invite's stripped
    /// state. A room this server is in takes the event through the graph instead.
    ///
    /// # Errors
    /// [`WriteError::Invalid`] for anything but a member event; write failures.
    pub(crate) async fn receive_out_of_band(
        &self,
        pdu: Pdu,
        version: &ruma::RoomVersionId,
    ) -> Result<Received, ReceiveError> {
        let room_id = self.room_of(&pdu)?;
        if pdu.event_type != ruma::events::TimelineEventType::RoomMember || pdu.state_key.is_none() {
            return Err(ReceiveError::Write(WriteError::Invalid("only member events come out of band".into())));
        }
        if self.store().room_version(&room_id).await?.is_some() && self.resident(&room_id).await? {
            match self.receive_pdu(pdu.clone()).await {
                Err(ReceiveError::Missing(_)) => {}
                done => return done,
            }
        }
        let _room = self.lock_room(&room_id).await;
        if let Some(done) = self.already_received(&pdu).await? {
            return Ok(done);
        }
        let creates_room = match self.store().room_version(&room_id).await? {
            Some(_) => None,
            None => Some((version.to_string(), invite_state_creator(&pdu).unwrap_or_else(|| pdu.sender.clone()))),
        };
        let new = NewEvent { creates_room, ..NewEvent::ordinary(&pdu, &room_id) };
        let position = self.commit_row(new, false).await?;
        self.forget_state(&room_id);
        tracing::info!(event_id = %pdu.event_id, %room_id, membership = ?pdu.membership(), position, "stored a membership out of band");
        Ok(Received { verdict: Verdict::Accepted, position })
    }

    /// Whether a local user is joined to the room, so its state here is current.
    pub(crate) async fn resident(&self, room_id: &ruma::RoomId) -> Result<bool, ReceiveError> {
        let ours = format!(":{}", self.server_name());
        Ok(self.store().members_with(room_id, "join").await?.iter().any(|m| m.ends_with(&ours)))
    }

    fn room_of(&self, pdu: &Pdu) -> Result<OwnedRoomId, ReceiveError> {
        pdu.room_id
            .clone()
            .ok_or_else(|| ReceiveError::Write(WriteError::Invalid("a received event must name its room".into())))
    }

    async fn already_received(&self, pdu: &Pdu) -> Result<Option<Received>, ReceiveError> {
        let found = self.store().pdus(&[pdu.event_id.as_str()]).await?;
        Ok(found.into_iter().next().map(|(e, status)| Received {
            verdict: match status {
                EventStatus::Rejected(r) => Verdict::Rejected(r),
                EventStatus::SoftFailed(r) => Verdict::SoftFailed(r),
                EventStatus::Ordinary | EventStatus::Outlier => Verdict::Accepted,
            },
            position: e.stream_ordering,
        }))
    }
}

/// The room's creator as an invite's `unsigned.invite_room_state` shows it.
fn invite_state_creator(pdu: &Pdu) -> Option<ruma::OwnedUserId> {
    let full: serde_json::Value = serde_json::from_str(&pdu.json).ok()?;
    let create = full["unsigned"]["invite_room_state"].as_array()?.iter().find(|e| e["type"] == "m.room.create")?;
    ruma::OwnedUserId::try_from(create["sender"].as_str()?).ok()
}

/// Keeps only `unsigned.invite_room_state` of an out-of-band event's JSON, as an array of
/// stripped events: what the inviting server says of the room is shown, nothing else it added.
pub(crate) fn keep_invite_room_state(json: &str) -> Option<String> {
    let mut full: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json).ok()?;
    let carried = full.remove("unsigned").and_then(|mut u| u.get_mut("invite_room_state").map(serde_json::Value::take));
    if let Some(serde_json::Value::Array(events)) = carried {
        let stripped: Vec<serde_json::Value> =
            events.iter().filter(|e| e["type"].is_string()).map(ganglion_core::stripped_state_event).collect();
        full.insert("unsigned".into(), serde_json::json!({ "invite_room_state": stripped }));
    }
    serde_json::to_string(&full).ok()
}

/// From room v12 the create event is not cited but the auth rules still look it up.
fn create_event_of(room_id: &OwnedRoomId, rules: &ruma::room_version_rules::RoomVersionRules) -> Option<OwnedEventId> {
    if rules.authorization.room_create_event_id_as_room_id { ganglion_state::create_event_id(room_id) } else { None }
}

/// The store plus events not stored yet.
struct BothSources<'a> {
    stored: &'a StoredEvents<'a>,
    extra: &'a HashMap<OwnedEventId, Pdu>,
}

impl EventSource for BothSources<'_> {
    async fn events(&self, ids: Vec<OwnedEventId>) -> Result<Vec<Pdu>, ResolveError> {
        let (here, elsewhere): (Vec<OwnedEventId>, Vec<OwnedEventId>) =
            ids.into_iter().partition(|id| self.extra.contains_key(id));
        let mut out: Vec<Pdu> = here.iter().filter_map(|id| self.extra.get(id).cloned()).collect();
        out.extend(self.stored.events(elsewhere).await?);
        Ok(out)
    }
}
