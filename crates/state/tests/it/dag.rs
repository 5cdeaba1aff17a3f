//! A room DAG built by hand for tests (and the timing example): real signed events from
//! `ganglion_core::build_event`, with explicit `prev_events` and the state of the branch each one
//! extends, so every branch is valid on its own.

use std::collections::HashMap;

use ganglion_core::{BuildError, EventTemplate, Pdu, RoomContext, ServerSigningKey, StateMap, build_event};
use ganglion_state::StateIds;
use ruma::room_version_rules::RoomVersionRules;
use ruma::{OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomVersionId, UserId};
use serde_json::{Value, json};

/// A fork's view of the room: its state, its forward extremities and their greatest depth.
#[derive(Debug, Clone)]
pub(crate) struct Branch {
    pub(crate) state: StateMap,
    pub(crate) tips: Vec<OwnedEventId>,
    pub(crate) depth: u64,
}

impl Branch {
    /// The state by event ID, as state resolution takes it.
    pub(crate) fn ids(&self) -> StateIds {
        self.state.iter().map(|(k, p)| (k.clone(), p.event_id.clone())).collect()
    }
}

/// Every event built so far, and what is needed to build more.
pub(crate) struct Dag {
    pub(crate) version: RoomVersionId,
    pub(crate) rules: RoomVersionRules,
    pub(crate) room_id: Option<OwnedRoomId>,
    pub(crate) events: HashMap<OwnedEventId, Pdu>,
    creators: Vec<OwnedUserId>,
    server: OwnedServerName,
    key: ServerSigningKey,
    now: u64,
    forged: u64,
}

/// `@name:example.org`.
pub(crate) fn user(name: &str) -> OwnedUserId {
    OwnedUserId::try_from(format!("@{name}:example.org")).expect("valid user ID")
}

impl Dag {
    pub(crate) fn new(version: RoomVersionId) -> Self {
        let rules = version.rules().expect("known room version");
        Self {
            version,
            rules,
            room_id: None,
            events: HashMap::new(),
            creators: Vec::new(),
            server: "example.org".try_into().expect("valid server name"),
            key: ServerSigningKey::generate(),
            now: 1_700_000_000_000,
            forged: 0,
        }
    }

    /// Whether creators have unlimited power and stay out of `users` (room v12 on).
    pub(crate) fn privileged_creators(&self) -> bool {
        self.rules.authorization.explicitly_privilege_room_creators
    }

    /// Power-levels content with these users, plus the creator at 100 before room v12.
    pub(crate) fn pl(&self, users: &[(&UserId, i64)], extra: Value) -> Value {
        let mut map = serde_json::Map::new();
        if !self.privileged_creators() {
            for c in &self.creators {
                map.insert(c.to_string(), json!(100));
            }
        }
        for (u, level) in users {
            map.insert(u.to_string(), json!(level));
        }
        let mut content = json!({ "users": map });
        if let (Some(obj), Value::Object(extra)) = (content.as_object_mut(), extra) {
            obj.extend(extra);
        }
        content
    }

    /// Creates a public room: create, the creator's join, power levels, join rules.
    pub(crate) fn create_room(
        &mut self,
        creator: &UserId,
        additional_creators: &[&UserId],
        users: &[(&UserId, i64)],
        pl_extra: Value,
    ) -> Branch {
        self.creators =
            std::iter::once(creator).chain(additional_creators.iter().copied()).map(ToOwned::to_owned).collect();
        let mut content = json!({ "room_version": self.version.as_str() });
        if !self.rules.authorization.use_room_create_sender {
            content["creator"] = json!(creator);
        }
        if !additional_creators.is_empty() {
            content["additional_creators"] = json!(additional_creators);
        }
        if !self.rules.authorization.room_create_event_id_as_room_id {
            self.room_id = Some(OwnedRoomId::try_from(format!("!r{}:example.org", self.now)).expect("room ID"));
        }
        let mut branch = Branch { state: StateMap::new(), tips: Vec::new(), depth: 0 };
        self.state(&mut branch, creator, "m.room.create", "", content);
        self.join(&mut branch, creator);
        let pl = self.pl(users, pl_extra);
        self.state(&mut branch, creator, "m.room.power_levels", "", pl);
        self.state(&mut branch, creator, "m.room.join_rules", "", json!({ "join_rule": "public" }));
        branch
    }

    /// Builds an event on `branch`, following its tips and checked against its state, and advances
    /// the branch past it.
    pub(crate) fn try_send(
        &mut self,
        branch: &mut Branch,
        sender: &UserId,
        event_type: &str,
        state_key: Option<&str>,
        content: Value,
    ) -> Result<Pdu, BuildError> {
        self.now += 1000;
        let template =
            EventTemplate { event_type: event_type.to_owned(), state_key: state_key.map(str::to_owned), content };
        let ctx = RoomContext {
            room_id: self.room_id.as_deref(),
            version: &self.version,
            state: &branch.state,
            prev_events: branch.tips.clone(),
            max_prev_depth: branch.depth,
        };
        let (pdu, room_id) = build_event(&template, sender, &ctx, &self.server, &self.key, self.now)?;
        self.room_id.get_or_insert(room_id);
        if let Some(key) = &pdu.state_key {
            branch.state.insert((event_type.to_owned(), key.clone()), pdu.clone());
        }
        branch.tips = vec![pdu.event_id.clone()];
        branch.depth += 1;
        self.events.insert(pdu.event_id.clone(), pdu.clone());
        Ok(pdu)
    }

    /// A state event that must be allowed.
    pub(crate) fn state(&mut self, branch: &mut Branch, sender: &UserId, ty: &str, key: &str, content: Value) -> Pdu {
        self.try_send(branch, sender, ty, Some(key), content).unwrap_or_else(|e| panic!("{ty} by {sender}: {e}"))
    }

    /// `user` joins.
    pub(crate) fn join(&mut self, branch: &mut Branch, user: &UserId) -> Pdu {
        self.state(branch, user, "m.room.member", user.as_str(), json!({ "membership": "join" }))
    }

    /// A branch following the tips of all `branches`, with the given state (the resolved one, or
    /// any other to build an event valid against that state).
    pub(crate) fn merge(&self, branches: &[&Branch], state: &StateIds) -> Branch {
        let state = state.iter().map(|(k, id)| (k.clone(), self.events[id].clone())).collect();
        Branch {
            state,
            tips: branches.iter().flat_map(|b| b.tips.iter().cloned()).collect(),
            depth: branches.iter().map(|b| b.depth).max().unwrap_or(0),
        }
    }

    /// An event built by hand, unsigned and not auth-checked, citing exactly `auth_events`; for
    /// checking what the auth rules say of events a well-behaved server would never build.
    pub(crate) fn forge(
        &mut self,
        sender: &UserId,
        event_type: &str,
        state_key: Option<&str>,
        content: Value,
        auth_events: &[&OwnedEventId],
        prev: &Branch,
    ) -> Pdu {
        self.now += 1000;
        self.forged += 1;
        let mut json = json!({
            "auth_events": auth_events,
            "prev_events": prev.tips,
            "content": content,
            "depth": prev.depth + 1,
            "origin_server_ts": self.now,
            "sender": sender,
            "type": event_type,
            "room_id": self.room_id,
        });
        if let Some(key) = state_key {
            json["state_key"] = json!(key);
        }
        let id = OwnedEventId::try_from(format!("$forged{}", self.forged)).expect("event ID");
        Pdu::from_json(id, &json.to_string()).expect("forged PDU parses")
    }
}
