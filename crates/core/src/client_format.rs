//! Turning stored PDUs into the client formats of the spec.

use serde_json::{Map, Value};

/// Keys of a PDU that clients never see.
const FEDERATION_ONLY: &[&str] =
    &["auth_events", "prev_events", "hashes", "signatures", "depth", "origin", "prev_state", "membership"];

/// The client format of an event (as `/messages` and `/event` return it): the PDU without its
/// federation-only keys, with `event_id` and `room_id`, and `unsigned` given by the caller plus
/// the stored `unsigned.redacted_because` of a redacted event (the writer keeps the redaction
/// there when it redacts; nothing else of a stored `unsigned` reaches clients).
pub fn client_event(pdu_json: &str, event_id: &str, room_id: &str, unsigned: Option<Value>) -> Value {
    let mut obj: Map<String, Value> = serde_json::from_str(pdu_json).unwrap_or_default();
    for k in FEDERATION_ONLY {
        obj.remove(*k);
    }
    obj.insert("event_id".into(), Value::String(event_id.to_owned()));
    obj.insert("room_id".into(), Value::String(room_id.to_owned()));
    let because = match obj.remove("unsigned") {
        Some(Value::Object(mut stored)) => stored.remove("redacted_because"),
        _ => None,
    };
    let mut unsigned = match unsigned {
        Some(Value::Object(u)) => u,
        _ => Map::new(),
    };
    if let Some(because) = because {
        unsigned.insert("redacted_because".into(), because);
    }
    if !unsigned.is_empty() {
        obj.insert("unsigned".into(), Value::Object(unsigned));
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_the_redaction_survives_from_a_stored_unsigned() {
        let stored = json!({
            "type": "m.room.message", "sender": "@a:x", "content": {}, "depth": 4, "hashes": {},
            "unsigned": { "redacted_because": { "type": "m.room.redaction", "event_id": "$r" }, "age_ts": 5 },
        });
        let e = client_event(&stored.to_string(), "$e", "!r:x", Some(json!({ "m.relations": {} })));
        assert_eq!(
            e["unsigned"],
            json!({ "m.relations": {}, "redacted_because": { "type": "m.room.redaction", "event_id": "$r" } })
        );
        assert!(e.get("depth").is_none() && e.get("hashes").is_none());
        let plain = json!({ "type": "m.room.message", "content": {}, "unsigned": { "age_ts": 5 } });
        assert!(client_event(&plain.to_string(), "$e", "!r:x", None).get("unsigned").is_none());
    }
}
