//! Turning stored PDUs into the client formats of the spec.

use serde_json::{Map, Value};

/// Keys of a PDU that clients never see.
const FEDERATION_ONLY: &[&str] =
    &["auth_events", "prev_events", "hashes", "signatures", "depth", "origin", "prev_state", "membership"];

/// The client format of an event (as `/messages` and `/event` return it): the PDU without its
/// federation-only keys, with `event_id` and `room_id`, and `unsigned` given by the caller.
pub fn client_event(pdu_json: &str, event_id: &str, room_id: &str, unsigned: Option<Value>) -> Value {
    let mut obj: Map<String, Value> = serde_json::from_str(pdu_json).unwrap_or_default();
    for k in FEDERATION_ONLY {
        obj.remove(*k);
    }
    obj.insert("event_id".into(), Value::String(event_id.to_owned()));
    obj.insert("room_id".into(), Value::String(room_id.to_owned()));
    obj.remove("unsigned");
    if let Some(u) = unsigned.filter(|u| u.as_object().is_some_and(|o| !o.is_empty())) {
        obj.insert("unsigned".into(), u);
    }
    Value::Object(obj)
}

/// The sync format: the client format without `room_id` (the room is the key it sits under).
pub fn strip_to_sync_format(mut event: Value) -> Value {
    if let Some(o) = event.as_object_mut() {
        o.remove("room_id");
    }
    event
}
