//! Event filters as the spec defines them (`RoomEventFilter`, and the event-type wildcards every
//! filter shares): which events pass.

use ruma::api::client::filter::{RoomEventFilter, UrlFilter};
use serde_json::Value;

/// Whether `value` matches a filter pattern, where `*` matches any run of characters.
pub fn glob_matches(pattern: &str, value: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == value,
        Some((prefix, rest)) => {
            let Some(tail) = value.strip_prefix(prefix) else { return false };
            (0..=tail.len()).filter(|i| tail.is_char_boundary(*i)).any(|i| glob_matches(rest, &tail[i..]))
        }
    }
}

/// The parts of a room event a filter looks at.
#[derive(Debug, Clone, Copy)]
pub struct FilteredEvent<'a> {
    /// The room.
    pub room_id: &'a str,
    /// `type`.
    pub event_type: &'a str,
    /// `sender`.
    pub sender: &'a str,
    /// `content`, for `contains_url`.
    pub content: &'a Value,
}

/// Whether `event` passes `filter`: not excluded by `not_types`, `not_senders` or `not_rooms`,
/// and in `types`, `senders` and `rooms` where those are given (exclusions win); with
/// `contains_url`, only events whose content has (or lacks) a string `url`.
pub fn room_event_matches(filter: &RoomEventFilter, event: FilteredEvent<'_>) -> bool {
    if filter.not_types.iter().any(|p| glob_matches(p, event.event_type))
        || filter.types.as_ref().is_some_and(|t| !t.iter().any(|p| glob_matches(p, event.event_type)))
    {
        return false;
    }
    if filter.not_senders.iter().any(|s| s.as_str() == event.sender)
        || filter.senders.as_ref().is_some_and(|s| !s.iter().any(|x| x.as_str() == event.sender))
    {
        return false;
    }
    if filter.not_rooms.iter().any(|r| r.as_str() == event.room_id)
        || filter.rooms.as_ref().is_some_and(|r| !r.iter().any(|x| x.as_str() == event.room_id))
    {
        return false;
    }
    let has_url = event.content.get("url").is_some_and(Value::is_string);
    match filter.url_filter {
        Some(UrlFilter::EventsWithUrl) => has_url,
        Some(UrlFilter::EventsWithoutUrl) => !has_url,
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn globs_match_prefixes_and_middles() {
        assert!(glob_matches("m.room.*", "m.room.message"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("m.*.message", "m.room.message"));
        assert!(!glob_matches("m.room.*", "m.call.invite"));
        assert!(glob_matches("m.room.message", "m.room.message"));
        assert!(!glob_matches("m.room.message", "m.room.messages"));
    }

    fn filter(v: Value) -> RoomEventFilter {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn every_field_of_a_room_event_filter_counts() {
        let content = json!({ "body": "a picture", "url": "mxc://x/y" });
        let ev = FilteredEvent { room_id: "!r:x", event_type: "m.room.message", sender: "@a:x", content: &content };
        let plain = json!({ "body": "text" });
        let text = FilteredEvent { content: &plain, ..ev };
        for (f, expected) in [
            (json!({}), true),
            (json!({ "types": ["m.room.message"] }), true),
            (json!({ "types": ["m.room.*"], "not_types": ["m.room.message"] }), false),
            (json!({ "types": [] }), false),
            (json!({ "senders": ["@b:x"] }), false),
            (json!({ "senders": ["@a:x"], "not_senders": ["@a:x"] }), false),
            (json!({ "rooms": ["!other:x"] }), false),
            (json!({ "not_rooms": ["!r:x"] }), false),
            (json!({ "contains_url": true }), true),
            (json!({ "contains_url": false }), false),
        ] {
            assert_eq!(room_event_matches(&filter(f.clone()), ev), expected, "{f}");
        }
        assert!(!room_event_matches(&filter(json!({ "contains_url": true })), text));
        assert!(room_event_matches(&filter(json!({ "contains_url": false })), text));
    }
}
