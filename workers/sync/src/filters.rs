//! Sync filters applied to a built response: `room.rooms`/`not_rooms`, the event filters of the
//! timeline, state, ephemeral and account-data sections (`types`, `not_types`, `senders`,
//! `not_senders`, `*` wildcards), the top-level `account_data` and `presence` filters, and
//! `event_fields`. Timeline limits and lazy loading are applied where the response is built.

use ganglion_core::glob_matches as glob;
use serde_json::Value;

fn strings(filter: &Value, key: &str) -> Option<Vec<String>> {
    filter.get(key)?.as_array().map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
}

/// Whether an event passes an event filter (`types`, `not_types`, `senders`, `not_senders`).
fn keep_event(filter: &Value, event: &Value) -> bool {
    let ty = event["type"].as_str().unwrap_or_default();
    let sender = event["sender"].as_str().unwrap_or_default();
    if strings(filter, "not_types").is_some_and(|n| n.iter().any(|p| glob(p, ty))) {
        return false;
    }
    if strings(filter, "types").is_some_and(|t| !t.iter().any(|p| glob(p, ty))) {
        return false;
    }
    if strings(filter, "not_senders").is_some_and(|n| n.iter().any(|s| s == sender)) {
        return false;
    }
    if strings(filter, "senders").is_some_and(|s| !s.iter().any(|x| x == sender)) {
        return false;
    }
    true
}

fn filter_list(list: &mut Value, filter: Option<&Value>) {
    let (Some(filter), Some(events)) = (filter, list.as_array_mut()) else { return };
    events.retain(|e| keep_event(filter, e));
}

/// Keeps only the dotted `event_fields` paths of an event.
fn project(event: &Value, fields: &[String]) -> Value {
    let mut out = Value::Object(serde_json::Map::new());
    for field in fields {
        let parts: Vec<&str> = field.split('.').collect();
        let mut src = event;
        let mut ok = true;
        for p in &parts {
            match src.get(*p) {
                Some(v) => src = v,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        let mut dst = &mut out;
        for (i, p) in parts.iter().enumerate() {
            if i + 1 == parts.len() {
                dst[*p] = src.clone();
            } else {
                if !dst.get(*p).is_some_and(Value::is_object) {
                    dst[*p] = Value::Object(serde_json::Map::new());
                }
                dst = &mut dst[*p];
            }
        }
    }
    out
}

fn each_event_list(section: &mut Value, mut f: impl FnMut(&mut Value)) {
    if let Some(rooms) = section.as_object_mut() {
        for room in rooms.values_mut() {
            for key in ["timeline", "state", "ephemeral", "account_data"] {
                f(&mut room[key]["events"]);
            }
            f(&mut room["invite_state"]["events"]);
            f(&mut room["knock_state"]["events"]);
        }
    }
}

/// Applies `filter` to a sync response in place.
pub(crate) fn apply(filter: &Value, response: &mut Value) {
    let room_filter = filter.get("room");
    for section in ["join", "invite", "leave", "knock"] {
        let rooms = &mut response["rooms"][section];
        let Some(map) = rooms.as_object_mut() else { continue };
        if let Some(rf) = room_filter {
            if let Some(only) = strings(rf, "rooms") {
                map.retain(|id, _| only.contains(id));
            }
            if let Some(not) = strings(rf, "not_rooms") {
                map.retain(|id, _| !not.contains(id));
            }
            for room in map.values_mut() {
                filter_list(&mut room["timeline"]["events"], rf.get("timeline"));
                filter_list(&mut room["state"]["events"], rf.get("state"));
                filter_list(&mut room["ephemeral"]["events"], rf.get("ephemeral"));
                filter_list(&mut room["account_data"]["events"], rf.get("account_data"));
            }
        }
    }
    filter_list(&mut response["account_data"]["events"], filter.get("account_data"));
    filter_list(&mut response["presence"]["events"], filter.get("presence"));
    if let Some(fields) = strings(filter, "event_fields") {
        for section in ["join", "invite", "leave", "knock"] {
            each_event_list(&mut response["rooms"][section], |list| {
                if let Some(events) = list.as_array_mut() {
                    for e in events.iter_mut() {
                        *e = project(e, &fields);
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn filters_rooms_events_and_fields() {
        let mut resp = json!({
            "rooms": { "join": {
                "!a:x": { "timeline": { "events": [
                    { "type": "m.room.message", "sender": "@b:x", "content": { "body": "hi" }, "event_id": "$1" },
                    { "type": "m.room.topic", "sender": "@c:x", "content": {}, "event_id": "$2" }
                ] }, "state": { "events": [] } },
                "!b:x": { "timeline": { "events": [] } }
            } },
            "account_data": { "events": [ { "type": "m.push_rules" }, { "type": "org.example" } ] },
            "presence": { "events": [] }
        });
        let filter = json!({
            "room": { "not_rooms": ["!b:x"], "timeline": { "types": ["m.room.*"], "not_senders": ["@c:x"] } },
            "account_data": { "not_types": ["org.*"] },
            "event_fields": ["type", "content.body"]
        });
        apply(&filter, &mut resp);
        assert!(resp["rooms"]["join"].get("!b:x").is_none());
        let tl = resp["rooms"]["join"]["!a:x"]["timeline"]["events"].as_array().unwrap();
        assert_eq!(tl.len(), 1);
        assert_eq!(tl[0], json!({ "type": "m.room.message", "content": { "body": "hi" } }));
        assert_eq!(resp["account_data"]["events"], json!([{ "type": "m.push_rules" }]));
    }
}
