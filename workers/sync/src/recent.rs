//! What a sync worker keeps of the `events` stream, so that a woken long-poll reads memory instead
//! of the database: the latest events (a bounded window), and two caches checked against that
//! window before each use: every user's room memberships, and the member events lazy loading
//! sends. Nothing here needs invalidating from outside: a cache entry remembers the stream
//! position it was read at and is used only when the window covers everything since then and
//! shows nothing in it that could have changed the entry. When the window does not reach back
//! far enough (a long-idle client, a worker just started), the caller reads the database.
//!
//! An event can change a room's state by more than itself only when it does not simply follow
//! the room's previous event (a merge of forks, or an event from another server built on an
//! older part of the room): state resolution then decides the new state. Such events are marked
//! on arrival and invalidate every cached entry of their room.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};

use ganglion_replication::{EventRow, StreamRow};
use ganglion_storage::{EventStore, PersistedEvent, RoomMembership};
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId};
use serde::Deserialize;

/// Events kept in the window.
const WINDOW_EVENTS: usize = 10_000;
/// Users whose memberships are cached; the cache starts over when it is full.
const MEMBERSHIP_USERS: usize = 50_000;
/// `(room, user)` member events cached for lazy loading; starts over when full.
const LAZY_MEMBERS: usize = 50_000;
/// Rooms whose latest event ID is remembered (to recognise linear events); starts over when full.
const ROOMS_TRACKED: usize = 100_000;

/// The window and the caches checked against it.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    window: RwLock<Window>,
    memberships: Mutex<HashMap<OwnedUserId, CachedMemberships>>,
    members: Mutex<HashMap<(OwnedRoomId, String), CachedMember>>,
}

#[derive(Debug, Default)]
struct Window {
    /// Every event after this position, up to `last`, is in `events`.
    complete_after: i64,
    /// The last position received.
    last: i64,
    events: VecDeque<Entry>,
    /// The latest event seen in each room.
    latest_in_room: HashMap<OwnedRoomId, OwnedEventId>,
}

#[derive(Debug)]
struct Entry {
    event: PersistedEvent,
    /// The room's state after this event may differ from before it by more than the event.
    resolves: bool,
}

#[derive(Debug, Clone)]
struct CachedMemberships {
    as_of: i64,
    rooms: Arc<Vec<RoomMembership>>,
    forgotten: Arc<HashSet<String>>,
}

#[derive(Debug, Clone)]
struct CachedMember {
    as_of: i64,
    event: Option<PersistedEvent>,
}

/// The parts of an event's JSON a stream row does not carry as fields.
#[derive(Deserialize)]
struct PduFields {
    #[serde(default)]
    depth: i64,
    #[serde(default)]
    origin_server_ts: i64,
    /// Event IDs (room versions 3 and later) or `[id, hashes]` pairs (1 and 2).
    #[serde(default)]
    prev_events: Vec<serde_json::Value>,
    /// A redaction's target before room version 11.
    #[serde(default)]
    redacts: Option<String>,
    #[serde(default)]
    content: RedactsContent,
}

/// A redaction's target from room version 11 on.
#[derive(Deserialize, Default)]
struct RedactsContent {
    #[serde(default)]
    redacts: Option<String>,
}

impl Recent {
    /// An empty window, complete nowhere until [`Recent::start_at`].
    pub(crate) fn new() -> Self {
        let recent = Self::default();
        if let Ok(mut w) = recent.window.write() {
            w.complete_after = i64::MAX;
        }
        recent
    }

    /// Says where the stream is followed from: every row after `start` arrives here, in order
    /// (some may have arrived already).
    pub(crate) fn start_at(&self, start: i64) {
        if let Ok(mut w) = self.window.write() {
            w.complete_after = w.complete_after.min(start);
            w.last = w.last.max(start);
        }
    }

    /// Takes in one `events` stream row (in stream order).
    pub(crate) fn push(&self, row: &StreamRow) {
        let Ok(mut w) = self.window.write() else { return };
        let position = row.position.0 as i64;
        if position <= w.last {
            // The stream went back (a reset): start over from here.
            w.events.clear();
            w.latest_in_room.clear();
            w.complete_after = position - 1;
        }
        w.last = position;
        let Some((event, prev_events, redacts)) = decode(row) else {
            // An event this build cannot read: the window is complete only after it.
            w.events.clear();
            w.complete_after = position;
            return;
        };
        // A redaction rewrites its target as stored: the window gives up that event and what is
        // older, so readers of that range go to the database, which has the redacted form.
        if let Some(target) = redacts
            && let Some(i) = w.events.iter().position(|e| e.event.event_id.as_str() == target)
        {
            w.complete_after = w.events[i].event.stream_ordering;
            w.events.drain(..=i);
        }
        if w.latest_in_room.len() >= ROOMS_TRACKED {
            w.latest_in_room.clear();
        }
        let previous = w.latest_in_room.insert(event.room_id.clone(), event.event_id.clone());
        // A redaction also counts: cached member events of the room may be its target.
        let resolves = event.event_type == "m.room.redaction"
            || !(prev_events.len() == 1 && previous.as_ref().is_some_and(|p| p.as_str() == prev_events[0]));
        w.events.push_back(Entry { event, resolves });
        while w.events.len() > WINDOW_EVENTS {
            if let Some(old) = w.events.pop_front() {
                w.complete_after = old.event.stream_ordering;
            }
        }
    }

    /// Events of `rooms` after `after` up to `upto`, oldest first, at most `limit`; `None` when
    /// the window does not hold all of that range.
    pub(crate) fn events_in_rooms_between(
        &self,
        rooms: &[OwnedRoomId],
        after: i64,
        upto: i64,
        limit: usize,
    ) -> Option<Vec<PersistedEvent>> {
        let w = self.window.read().ok()?;
        if after < w.complete_after || upto > w.last {
            return None;
        }
        let rooms: HashSet<&str> = rooms.iter().map(|r| r.as_str()).collect();
        Some(
            w.range(after, upto)
                .filter(|e| rooms.contains(e.event.room_id.as_str()))
                .take(limit)
                .map(|e| e.event.clone())
                .collect(),
        )
    }

    /// Whether the window covers `(as_of, upto]` and nothing in it matches `changes`.
    fn unchanged(&self, as_of: i64, upto: i64, changes: impl Fn(&Entry) -> bool) -> bool {
        let Ok(w) = self.window.read() else { return false };
        as_of >= w.complete_after && upto <= w.last && !w.range(as_of, upto).any(changes)
    }

    /// The user's memberships (every room's current one) and the rooms they forgot, as the
    /// database would answer for a reader at `upto`: from the cache when no member event of the
    /// user, and no resolving event in one of their rooms, arrived since it was read.
    pub(crate) async fn memberships(
        &self,
        events: &EventStore,
        user: &UserId,
        upto: i64,
    ) -> Result<(Arc<Vec<RoomMembership>>, Arc<HashSet<String>>), ganglion_storage::Error> {
        let cached = self.memberships.lock().ok().and_then(|m| m.get(user).cloned());
        if let Some(c) = cached {
            let touches = |e: &Entry| {
                (e.event.event_type == "m.room.member" && e.event.state_key.as_deref() == Some(user.as_str()))
                    || (e.resolves && c.rooms.iter().any(|m| m.room_id == e.event.room_id))
            };
            if upto <= c.as_of || self.unchanged(c.as_of, upto, touches) {
                if upto > c.as_of
                    && let Ok(mut m) = self.memberships.lock()
                    && let Some(entry) = m.get_mut(user)
                    && Arc::ptr_eq(&entry.rooms, &c.rooms)
                {
                    // Checked up to here: the next check scans only what is newer.
                    entry.as_of = upto;
                }
                return Ok((c.rooms, c.forgotten));
            }
        }
        self.memberships_from_database(events, user, upto).await
    }

    /// [`Recent::memberships`] read from the database (refreshing the cache).
    pub(crate) async fn memberships_from_database(
        &self,
        events: &EventStore,
        user: &UserId,
        upto: i64,
    ) -> Result<(Arc<Vec<RoomMembership>>, Arc<HashSet<String>>), ganglion_storage::Error> {
        let (rooms, forgotten) = events.rooms_for_user_and_forgotten(user).await?;
        let (rooms, forgotten) = (Arc::new(rooms), Arc::new(forgotten));
        if let Ok(mut m) = self.memberships.lock() {
            if m.len() >= MEMBERSHIP_USERS {
                m.clear();
            }
            // Read at `upto` or later: anything after `upto` that changed them is re-checked.
            m.insert(
                user.to_owned(),
                CachedMemberships { as_of: upto, rooms: rooms.clone(), forgotten: forgotten.clone() },
            );
        }
        Ok((rooms, forgotten))
    }

    /// The member events of `users` in the room's state at `upto` (see
    /// [`EventStore::members_at`]), reading the database only for those not cached or changed.
    pub(crate) async fn members_at(
        &self,
        events: &EventStore,
        room_id: &RoomId,
        upto: i64,
        users: &[&str],
    ) -> Result<Vec<PersistedEvent>, ganglion_storage::Error> {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for &user in users {
            let cached = self.members.lock().ok().and_then(|m| m.get(&(room_id.to_owned(), user.to_owned())).cloned());
            let valid = cached.as_ref().is_some_and(|c| {
                c.as_of == upto
                    || (c.as_of < upto
                        && self.unchanged(c.as_of, upto, |e| {
                            e.event.room_id == room_id
                                && (e.resolves
                                    || (e.event.event_type == "m.room.member"
                                        && e.event.state_key.as_deref() == Some(user)))
                        }))
            });
            match cached {
                Some(c) if valid => found.extend(c.event),
                _ => missing.push(user),
            }
        }
        if missing.is_empty() {
            return Ok(found);
        }
        let read = events.members_at(room_id, upto, &missing).await?;
        if let Ok(mut m) = self.members.lock() {
            if m.len() + missing.len() > LAZY_MEMBERS {
                m.clear();
            }
            for user in &missing {
                let event = read.iter().find(|e| e.state_key.as_deref() == Some(*user)).cloned();
                m.insert((room_id.to_owned(), (*user).to_owned()), CachedMember { as_of: upto, event });
            }
        }
        found.extend(read);
        Ok(found)
    }
}

impl Window {
    /// Entries after `after` up to `upto`.
    fn range(&self, after: i64, upto: i64) -> impl Iterator<Item = &Entry> {
        let start = self.events.partition_point(|e| e.event.stream_ordering <= after);
        self.events.range(start..).take_while(move |e| e.event.stream_ordering <= upto)
    }
}

/// The stored event a row describes, its `prev_events`, and what it redacts.
fn decode(row: &StreamRow) -> Option<(PersistedEvent, Vec<String>, Option<String>)> {
    let r = EventRow::decode_bytes(&row.payload).ok()?;
    let pdu: PduFields = serde_json::from_str(&r.event_json).ok()?;
    let prev_events = pdu
        .prev_events
        .iter()
        .filter_map(|p| p.as_str().or_else(|| p.get(0).and_then(serde_json::Value::as_str)).map(str::to_owned))
        .collect();
    let redacts = (r.event_type == "m.room.redaction").then(|| pdu.redacts.or(pdu.content.redacts)).flatten();
    let event = PersistedEvent {
        stream_ordering: r.position as i64,
        event_id: r.event_id.try_into().ok()?,
        room_id: r.room_id.try_into().ok()?,
        sender: r.sender.try_into().ok()?,
        event_type: r.event_type,
        state_key: r.state_key,
        membership: r.membership,
        depth: pdu.depth,
        origin_server_ts: pdu.origin_server_ts,
        json: r.event_json,
        request_id: r.request_id,
    };
    Some((event, prev_events, redacts))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(position: i64, room: &str, id: &str, prev: &[&str], extra: serde_json::Value) -> PersistedEvent {
        let mut pdu = json!({
            "event_id": id, "room_id": room, "sender": "@a:x", "type": "m.room.message",
            "depth": position, "origin_server_ts": 1000 + position, "prev_events": prev, "content": {},
        });
        if let (Some(p), Some(e)) = (pdu.as_object_mut(), extra.as_object()) {
            p.extend(e.clone());
        }
        PersistedEvent {
            stream_ordering: position,
            event_id: id.try_into().unwrap(),
            room_id: room.try_into().unwrap(),
            sender: "@a:x".try_into().unwrap(),
            event_type: pdu["type"].as_str().unwrap().to_owned(),
            state_key: pdu["state_key"].as_str().map(str::to_owned),
            membership: pdu["content"]["membership"].as_str().map(str::to_owned),
            depth: position,
            origin_server_ts: 1000 + position,
            json: pdu.to_string(),
            request_id: String::new(),
        }
    }

    fn rooms(ids: &[&str]) -> Vec<OwnedRoomId> {
        ids.iter().map(|r| (*r).try_into().unwrap()).collect()
    }

    #[test]
    fn the_window_answers_only_ranges_it_holds_whole() {
        let recent = Recent::new();
        recent.start_at(10);
        let a = event(11, "!a:x", "$1", &["$0"], json!({}));
        let b = event(12, "!b:x", "$2", &["$9"], json!({}));
        let a2 = event(13, "!a:x", "$3", &["$1"], json!({}));
        for e in [&a, &b, &a2] {
            recent.push(&ganglion_storage::event_row(e));
        }
        // The row round trip keeps the event as stored.
        assert_eq!(recent.events_in_rooms_between(&rooms(&["!a:x"]), 10, 13, 100), Some(vec![a.clone(), a2.clone()]));
        assert_eq!(recent.events_in_rooms_between(&rooms(&["!a:x", "!b:x"]), 11, 12, 100), Some(vec![b.clone()]));
        assert_eq!(recent.events_in_rooms_between(&rooms(&["!a:x", "!b:x"]), 10, 13, 1), Some(vec![a.clone()]));
        // Before the start, or past what arrived: the database must answer.
        assert_eq!(recent.events_in_rooms_between(&rooms(&["!a:x"]), 9, 13, 100), None);
        assert_eq!(recent.events_in_rooms_between(&rooms(&["!a:x"]), 10, 14, 100), None);
    }

    #[test]
    fn a_redaction_gives_up_its_target_and_everything_older() {
        let recent = Recent::new();
        recent.start_at(0);
        recent.push(&ganglion_storage::event_row(&event(1, "!a:x", "$1", &["$0"], json!({}))));
        recent.push(&ganglion_storage::event_row(&event(2, "!a:x", "$2", &["$1"], json!({}))));
        let redaction = event(3, "!a:x", "$3", &["$2"], json!({ "type": "m.room.redaction", "redacts": "$2" }));
        recent.push(&ganglion_storage::event_row(&redaction));
        assert_eq!(recent.events_in_rooms_between(&rooms(&["!a:x"]), 1, 3, 100), None);
        assert_eq!(recent.events_in_rooms_between(&rooms(&["!a:x"]), 2, 3, 100), Some(vec![redaction]));
        // Room version 11 puts the target in the content.
        let v11 =
            event(4, "!a:x", "$4", &["$3"], json!({ "type": "m.room.redaction", "content": { "redacts": "$3" } }));
        recent.push(&ganglion_storage::event_row(&v11));
        assert_eq!(recent.events_in_rooms_between(&rooms(&["!a:x"]), 2, 4, 100), None);
        assert_eq!(recent.events_in_rooms_between(&rooms(&["!a:x"]), 3, 4, 100), Some(vec![v11]));
    }

    #[test]
    fn linear_events_leave_room_caches_valid_and_others_do_not() {
        let recent = Recent::new();
        recent.start_at(0);
        fn member(user: &str) -> impl Fn(&Entry) -> bool + '_ {
            move |e: &Entry| e.event.state_key.as_deref() == Some(user) || e.resolves
        }
        // The first event seen in a room may follow anything: it counts as resolving.
        recent.push(&ganglion_storage::event_row(&event(1, "!a:x", "$1", &["$0"], json!({}))));
        assert!(!recent.unchanged(0, 1, member("@b:x")));
        recent.push(&ganglion_storage::event_row(&event(2, "!a:x", "$2", &["$1"], json!({}))));
        assert!(recent.unchanged(1, 2, member("@b:x")));
        let join = json!({ "type": "m.room.member", "state_key": "@b:x", "content": { "membership": "join" } });
        recent.push(&ganglion_storage::event_row(&event(3, "!a:x", "$3", &["$2"], join)));
        assert!(!recent.unchanged(2, 3, member("@b:x")));
        assert!(recent.unchanged(2, 3, member("@c:x")));
        // A merge of two forks, and an event built on an older part of the room.
        recent.push(&ganglion_storage::event_row(&event(4, "!a:x", "$4", &["$3", "$x"], json!({}))));
        assert!(!recent.unchanged(3, 4, member("@c:x")));
        recent.push(&ganglion_storage::event_row(&event(5, "!a:x", "$5", &["$2"], json!({}))));
        assert!(!recent.unchanged(4, 5, member("@c:x")));
        // Outside the window nothing is known.
        assert!(!recent.unchanged(5, 6, member("@c:x")));
    }

    #[test]
    fn the_window_is_bounded_and_a_reset_starts_it_over() {
        let recent = Recent::new();
        recent.start_at(0);
        let total = WINDOW_EVENTS as i64 + 5;
        for p in 1..=total {
            let prev = format!("${}", p - 1);
            recent.push(&ganglion_storage::event_row(&event(p, "!a:x", &format!("${p}"), &[&prev], json!({}))));
        }
        assert_eq!(recent.events_in_rooms_between(&rooms(&["!a:x"]), 4, total, usize::MAX), None);
        assert_eq!(
            recent.events_in_rooms_between(&rooms(&["!a:x"]), 5, total, usize::MAX).map(|e| e.len()),
            Some(WINDOW_EVENTS)
        );
        // The stream starting over below what arrived.
        recent.push(&ganglion_storage::event_row(&event(3, "!a:x", "$n", &["$2"], json!({}))));
        assert_eq!(recent.events_in_rooms_between(&rooms(&["!a:x"]), 2, 3, usize::MAX).map(|e| e.len()), Some(1));
        assert_eq!(recent.events_in_rooms_between(&rooms(&["!a:x"]), 1, 3, usize::MAX), None);
    }
}
