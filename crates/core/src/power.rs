//! Power levels read from a room's state, for the checks the auth rules leave to the server
//! (redaction of others' events, alias deletion).

use ruma::UserId;
use ruma::room_version_rules::RoomVersionRules;
use serde_json::Value;

use crate::StateMap;

/// The power of a room creator from room v12 on: above every number.
pub const CREATOR_POWER: i64 = i64::MAX;

fn content(state: &StateMap, event_type: &str) -> Option<Value> {
    state.get(&(event_type.to_owned(), String::new())).map(|p| p.content_value())
}

/// A user's power level in a room.
pub fn user_power_level(state: &StateMap, user: &UserId, rules: &RoomVersionRules) -> i64 {
    let create = state.get(&("m.room.create".to_owned(), String::new()));
    if rules.authorization.explicitly_privilege_room_creators
        && let Some(create) = create
    {
        let additional = create.content_value();
        let extra = additional.get("additional_creators").and_then(Value::as_array);
        if create.sender == user || extra.is_some_and(|a| a.iter().any(|u| u.as_str() == Some(user.as_str()))) {
            return CREATOR_POWER;
        }
    }
    match content(state, "m.room.power_levels") {
        Some(pl) => pl
            .get("users")
            .and_then(|u| u.get(user.as_str()))
            .and_then(as_level)
            .or_else(|| pl.get("users_default").and_then(as_level))
            .unwrap_or(0),
        // Without power levels the creator has 100, everyone else 0.
        None => match create {
            Some(c) if c.sender == user => 100,
            _ => 0,
        },
    }
}

/// The level a power-levels key requires (`redact`, `kick`, …), with the spec's default.
pub fn required_level(state: &StateMap, key: &str, default: i64) -> i64 {
    content(state, "m.room.power_levels").and_then(|pl| pl.get(key).and_then(as_level)).unwrap_or(default)
}

/// The level needed to send a state event of `event_type`.
pub fn state_event_level(state: &StateMap, event_type: &str) -> i64 {
    match content(state, "m.room.power_levels") {
        Some(pl) => pl
            .get("events")
            .and_then(|e| e.get(event_type))
            .and_then(as_level)
            .or_else(|| pl.get("state_default").and_then(as_level))
            .unwrap_or(50),
        None => 0,
    }
}

/// Levels are integers; room versions before 10 also allowed numeric strings.
fn as_level(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}
