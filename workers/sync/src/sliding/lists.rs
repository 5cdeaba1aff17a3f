//! Lists: which of the user's rooms a list holds, in what order, and which slice of it the
//! client asked for; plus the per-room details (`required_state`, `timeline_limit`) and their
//! matching rules.

use std::collections::{BTreeMap, HashMap, HashSet};

use ganglion_storage::{PersistedEvent, RoomMembership};
use ruma::{OwnedRoomId, UserId};
use serde::Deserialize;

/// The event types that move a room up a list (plus the user's own membership, which
/// [`ganglion_storage::EventStore::latest_of_types`] always counts): the one definition of
/// `bump_stamp`.
pub(crate) fn bump_event_types() -> &'static [&'static str] {
    &["m.room.message", "m.room.encrypted", "m.sticker", "m.room.create"]
}

/// `required_state` and `timeline_limit`, of a list or of a room subscription.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct RoomDetails {
    /// `[type, state_key]` pairs; `*` matches anything, `$ME` is the user, `$LAZY` (for
    /// `m.room.member`) the senders of the timeline.
    #[serde(default)]
    pub(crate) required_state: Vec<(String, String)>,
    /// Newest events to send per room.
    #[serde(default)]
    pub(crate) timeline_limit: u64,
}

impl RoomDetails {
    /// Both sets of details at once: the longer timeline and every state pair.
    pub(crate) fn merge(&mut self, other: &RoomDetails) {
        self.timeline_limit = self.timeline_limit.max(other.timeline_limit);
        for pair in &other.required_state {
            if !self.required_state.contains(pair) {
                self.required_state.push(pair.clone());
            }
        }
    }

    /// Whether a state event is asked for. `lazy` holds the timeline's senders.
    pub(crate) fn wants(&self, user: &UserId, lazy: &HashSet<&str>, event_type: &str, state_key: &str) -> bool {
        self.required_state.iter().any(|(t, k)| {
            (t == "*" || t == event_type)
                && match k.as_str() {
                    "*" => true,
                    "$ME" => state_key == user.as_str(),
                    "$LAZY" => event_type == "m.room.member" && lazy.contains(state_key),
                    k => k == state_key,
                }
        })
    }

    /// The timeline limit, bounded.
    pub(crate) fn limit(&self) -> usize {
        self.timeline_limit.min(MAX_TIMELINE_LIMIT) as usize
    }
}

/// Cap on `timeline_limit`.
const MAX_TIMELINE_LIMIT: u64 = 1000;

/// List filters; all present ones must hold.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct Filters {
    /// Rooms in (or not in) the user's `m.direct`.
    pub(crate) is_dm: Option<bool>,
    /// Rooms with (or without) `m.room.encryption`.
    pub(crate) is_encrypted: Option<bool>,
    /// Invites only, or no invites.
    pub(crate) is_invite: Option<bool>,
    /// Only these room types (`null` is a room without type).
    #[serde(default)]
    pub(crate) room_types: Vec<Option<String>>,
    /// Not these room types.
    #[serde(default)]
    pub(crate) not_room_types: Vec<Option<String>>,
}

impl Filters {
    /// Whether the filter needs the room's create and encryption events.
    pub(crate) fn needs_state(&self) -> bool {
        self.is_encrypted.is_some() || !self.room_types.is_empty() || !self.not_room_types.is_empty()
    }
}

/// A list of the request.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ListRequest {
    /// Inclusive index ranges.
    #[serde(default)]
    pub(crate) ranges: Vec<(u64, u64)>,
    /// Per-room details.
    #[serde(flatten)]
    pub(crate) details: RoomDetails,
    /// Filters.
    #[serde(default)]
    pub(crate) filters: Option<Filters>,
}

/// What the list filters need to know about one room.
#[derive(Debug, Clone, Default)]
pub(crate) struct RoomFacts {
    /// `content.type` of the create event.
    pub(crate) room_type: Option<String>,
    /// Whether the room has `m.room.encryption`.
    pub(crate) encrypted: bool,
}

/// The user's rooms as of one position, ready to be sorted into lists.
#[derive(Debug, Default)]
pub(crate) struct Candidates {
    /// Joined and invited rooms with their membership.
    pub(crate) rooms: Vec<RoomMembership>,
    /// `bump_stamp` per room.
    pub(crate) bump: HashMap<OwnedRoomId, i64>,
}

impl Candidates {
    /// The rooms of one list, filtered and ordered newest bump first (room ID breaks ties).
    pub(crate) fn list(
        &self,
        filters: Option<&Filters>,
        dms: &HashSet<OwnedRoomId>,
        facts: &HashMap<OwnedRoomId, RoomFacts>,
    ) -> Vec<OwnedRoomId> {
        let mut rooms: Vec<&RoomMembership> = self
            .rooms
            .iter()
            .filter(|m| {
                let Some(f) = filters else { return true };
                let fact = facts.get(&m.room_id).cloned().unwrap_or_default();
                f.is_invite.is_none_or(|want| want == (m.membership == "invite"))
                    && f.is_dm.is_none_or(|want| want == dms.contains(&m.room_id))
                    && f.is_encrypted.is_none_or(|want| want == fact.encrypted)
                    && (f.room_types.is_empty() || f.room_types.contains(&fact.room_type))
                    && !f.not_room_types.contains(&fact.room_type)
            })
            .collect();
        rooms.sort_by(|a, b| {
            let (ba, bb) = (self.bump.get(&a.room_id).copied(), self.bump.get(&b.room_id).copied());
            bb.cmp(&ba).then_with(|| a.room_id.cmp(&b.room_id))
        });
        rooms.into_iter().map(|m| m.room_id.clone()).collect()
    }
}

/// The rooms of `ordered` inside the inclusive `ranges`, in list order, without duplicates.
pub(crate) fn in_ranges(ordered: &[OwnedRoomId], ranges: &[(u64, u64)]) -> Vec<OwnedRoomId> {
    let mut picked = BTreeMap::new();
    for &(start, end) in ranges {
        if start > end || start as usize >= ordered.len() {
            continue;
        }
        let end = (end as usize).min(ordered.len() - 1);
        for (i, room) in ordered.iter().enumerate().take(end + 1).skip(start as usize) {
            picked.insert(i, room.clone());
        }
    }
    picked.into_values().collect()
}

/// The senders of a timeline, for `$LAZY`.
pub(crate) fn senders(timeline: &[PersistedEvent]) -> HashSet<&str> {
    timeline.iter().map(|e| e.sender.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use ruma::{owned_room_id, user_id};

    use super::*;

    fn membership(room: &str, membership: &str) -> RoomMembership {
        RoomMembership {
            room_id: OwnedRoomId::try_from(room).unwrap(),
            membership: membership.to_owned(),
            stream_ordering: 1,
        }
    }

    #[test]
    fn lists_sort_by_bump_stamp_filter_and_slice() {
        let c = Candidates {
            rooms: vec![membership("!a:x", "join"), membership("!b:x", "invite"), membership("!c:x", "join")],
            bump: [(owned_room_id!("!a:x"), 5), (owned_room_id!("!b:x"), 9), (owned_room_id!("!c:x"), 7)].into(),
        };
        let none = HashSet::new();
        let all = c.list(None, &none, &HashMap::new());
        let ids = |v: &[OwnedRoomId]| v.iter().map(|r| r.as_str().to_owned()).collect::<Vec<_>>();
        assert_eq!(ids(&all), ["!b:x", "!c:x", "!a:x"]);
        assert_eq!(ids(&in_ranges(&all, &[(1, 5)])), ["!c:x", "!a:x"]);
        assert_eq!(ids(&in_ranges(&all, &[(2, 2), (0, 0), (0, 0)])), ["!b:x", "!a:x"], "list order, once");
        assert!(in_ranges(&all, &[(3, 9), (2, 1)]).is_empty());

        let invites = Filters { is_invite: Some(true), ..Filters::default() };
        assert_eq!(ids(&c.list(Some(&invites), &none, &HashMap::new())), ["!b:x"]);
        let dms: HashSet<OwnedRoomId> = [owned_room_id!("!a:x")].into();
        let not_dm = Filters { is_dm: Some(false), ..Filters::default() };
        assert_eq!(ids(&c.list(Some(&not_dm), &dms, &HashMap::new())), ["!b:x", "!c:x"]);
        let facts: HashMap<OwnedRoomId, RoomFacts> =
            [(owned_room_id!("!c:x"), RoomFacts { room_type: Some("m.space".into()), encrypted: true })].into();
        let no_spaces = Filters { not_room_types: vec![Some("m.space".into())], ..Filters::default() };
        assert_eq!(ids(&c.list(Some(&no_spaces), &none, &facts)), ["!b:x", "!a:x"]);
        let encrypted = Filters { is_encrypted: Some(true), ..Filters::default() };
        assert_eq!(ids(&c.list(Some(&encrypted), &none, &facts)), ["!c:x"]);
    }

    #[test]
    fn required_state_wildcards_me_and_lazy() {
        let me = user_id!("@me:x");
        let d = RoomDetails {
            required_state: vec![
                ("m.room.name".into(), "".into()),
                ("m.room.member".into(), "$ME".into()),
                ("m.room.member".into(), "$LAZY".into()),
                ("org.example".into(), "*".into()),
            ],
            timeline_limit: 5,
        };
        let lazy: HashSet<&str> = ["@bob:x"].into();
        assert!(d.wants(me, &lazy, "m.room.name", ""));
        assert!(!d.wants(me, &lazy, "m.room.topic", ""));
        assert!(d.wants(me, &lazy, "m.room.member", "@me:x"));
        assert!(d.wants(me, &lazy, "m.room.member", "@bob:x"));
        assert!(!d.wants(me, &lazy, "m.room.member", "@carol:x"));
        assert!(d.wants(me, &lazy, "org.example", "anything"));
        let all = RoomDetails { required_state: vec![("*".into(), "*".into())], timeline_limit: 0 };
        assert!(all.wants(me, &lazy, "m.room.topic", ""));
        let mut merged = d.clone();
        merged.merge(&all);
        assert_eq!((merged.required_state.len(), merged.limit()), (5, 5));
    }
}
