//! Stripped state: the few state events an invited or knocking user is shown of a room they are
//! not in, reduced to `type`, `state_key`, `content` and `sender`. The same set goes into a
//! federation invite's `invite_room_state`, so a user of another server sees what a local one
//! would.

use serde_json::{Value, json};

/// The state types shown (with the user's own member event): the spec's recommended set
/// (MSC3173 added the topic).
pub const STRIPPED_STATE_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.join_rules",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.canonical_alias",
    "m.room.encryption",
];

/// The stripped form of a state event given as JSON.
#[must_use]
pub fn stripped_state_event(event: &Value) -> Value {
    json!({
        "type": event.get("type").cloned().unwrap_or(Value::Null),
        "state_key": event.get("state_key").cloned().unwrap_or(json!("")),
        "content": event.get("content").cloned().unwrap_or(json!({})),
        "sender": event.get("sender").cloned().unwrap_or(Value::Null),
    })
}
