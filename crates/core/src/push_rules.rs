//! The server-default push rules every user starts with, and a user's effective ruleset.
//!
//! ruma's [`Ruleset::server_default`] is the current spec's list. Clients still look for the
//! three rules Matrix 1.7 deprecated in favour of `m.mentions` (Element's keyword and mention
//! settings read `.m.rule.contains_user_name`, `.m.rule.contains_display_name` and
//! `.m.rule.roomnotif`), and Synapse still serves them, so they are added at Synapse's places.
//! They never fire for an event that has `m.mentions`: ruma skips them then, as the spec says.

use ruma::UserId;
use ruma::push::{ConditionalPushRule, PatternedPushRule, Ruleset};
use serde_json::json;

/// A default rule from its JSON (ruma's rule types are non-exhaustive, and serde is how they are
/// built outside ruma). The JSON here is fixed, so failing to parse is a bug caught by the tests.
fn rule<T: serde::de::DeserializeOwned>(json: serde_json::Value) -> Option<T> {
    serde_json::from_value(json).ok()
}

/// The server-default rules for `user_id`: the spec's, plus the deprecated mention rules.
#[must_use]
pub fn server_default(user_id: &UserId) -> Ruleset {
    let mut rules = Ruleset::server_default(user_id);
    let highlight_sound = json!(["notify", { "set_tweak": "sound", "value": "default" }, { "set_tweak": "highlight" }]);
    let contains_display_name: Option<ConditionalPushRule> = rule(json!({
        "rule_id": ".m.rule.contains_display_name", "default": true, "enabled": true,
        "conditions": [{ "kind": "contains_display_name" }],
        "actions": highlight_sound,
    }));
    let roomnotif: Option<ConditionalPushRule> = rule(json!({
        "rule_id": ".m.rule.roomnotif", "default": true, "enabled": true,
        "conditions": [
            { "kind": "event_match", "key": "content.body", "pattern": "@room" },
            { "kind": "sender_notification_permission", "key": "room" },
        ],
        "actions": ["notify", { "set_tweak": "highlight" }],
    }));
    let contains_user_name: Option<PatternedPushRule> = rule(json!({
        "rule_id": ".m.rule.contains_user_name", "default": true, "enabled": true,
        "pattern": user_id.localpart(),
        "actions": highlight_sound,
    }));
    let insert_after = |rules: &mut Ruleset, after: &str, rule: Option<ConditionalPushRule>| {
        let Some(rule) = rule else { return };
        let at = rules.override_.get_index_of(after).map_or(rules.override_.len(), |i| i + 1);
        let (pos, _) = rules.override_.insert_full(rule);
        rules.override_.move_index(pos, at.min(rules.override_.len() - 1));
    };
    insert_after(&mut rules, ".m.rule.is_user_mention", contains_display_name);
    insert_after(&mut rules, ".m.rule.is_room_mention", roomnotif);
    if let Some(r) = contains_user_name {
        rules.content.insert(r);
    }
    rules
}

/// Kinds whose rule IDs ruma types as room or user IDs.
const LOOSE_KINDS: [&str; 2] = ["room", "sender"];

/// Splits off `room` and `sender` rules whose IDs are not room or user IDs: Synapse accepts such
/// rules (they can never match, the ID being what they match on) but ruma's types cannot hold
/// them, and one of them would make the whole saved ruleset unreadable. Returns the rest of the
/// `global` ruleset and the loose rules as `(kind, rule)`.
#[must_use]
pub fn split_loose(global: &serde_json::Value) -> (serde_json::Value, Vec<(String, serde_json::Value)>) {
    let mut typed = global.clone();
    let mut loose = Vec::new();
    for kind in LOOSE_KINDS {
        let Some(list) = typed.get_mut(kind).and_then(serde_json::Value::as_array_mut) else { continue };
        list.retain(|rule| {
            let id = rule["rule_id"].as_str().unwrap_or_default();
            let valid = match kind {
                "room" => <&ruma::RoomId>::try_from(id).is_ok(),
                _ => <&ruma::UserId>::try_from(id).is_ok(),
            };
            if !valid {
                loose.push((kind.to_owned(), rule.clone()));
            }
            valid
        });
    }
    (typed, loose)
}

/// Puts loose rules (see [`split_loose`]) back into a ruleset's JSON, after the typed ones.
pub fn merge_loose(global: &mut serde_json::Value, loose: &[(String, serde_json::Value)]) {
    for (kind, rule) in loose {
        if !global[kind.as_str()].is_array() {
            global[kind.as_str()] = json!([]);
        }
        if let Some(list) = global[kind.as_str()].as_array_mut() {
            list.push(rule.clone());
        }
    }
}

/// The ruleset in effect for a user: their saved `m.push_rules` (`global`) with the server
/// defaults brought up to date (new defaults appear; the user's `enabled` and `actions` for the
/// existing ones stay), or the defaults when nothing is saved or it cannot be read.
#[must_use]
pub fn effective(saved_global: Option<&serde_json::Value>, user_id: &UserId) -> Ruleset {
    match saved_global.and_then(|g| serde_json::from_value::<Ruleset>(split_loose(g).0).ok()) {
        Some(mut rules) => {
            rules.update_with_server_default(server_default(user_id));
            rules
        }
        None => server_default(user_id),
    }
}

#[cfg(test)]
mod tests {
    use ruma::user_id;

    use super::*;

    fn ids(rules: &Ruleset) -> Vec<String> {
        rules.override_.iter().map(|r| r.rule_id.clone()).collect()
    }

    #[test]
    fn defaults_include_the_legacy_mention_rules_at_synapses_places() {
        let rules = server_default(user_id!("@alice:example.org"));
        let o = ids(&rules);
        let pos = |id: &str| o.iter().position(|r| r == id).unwrap_or_else(|| panic!("{id} missing in {o:?}"));
        assert_eq!(pos(".m.rule.master"), 0);
        assert_eq!(pos(".m.rule.contains_display_name"), pos(".m.rule.is_user_mention") + 1);
        assert_eq!(pos(".m.rule.roomnotif"), pos(".m.rule.is_room_mention") + 1);
        assert!(pos(".m.rule.roomnotif") < pos(".m.rule.tombstone"));
        let content: Vec<_> = rules.content.iter().map(|r| (r.rule_id.as_str(), r.pattern.as_str())).collect();
        assert_eq!(content, [(".m.rule.contains_user_name", "alice")]);
        let under: Vec<_> = rules.underride.iter().map(|r| r.rule_id.as_str()).collect();
        for id in [".m.rule.call", ".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one", ".m.rule.message"] {
            assert!(under.contains(&id), "{id} missing in {under:?}");
        }
    }

    #[test]
    fn loose_room_rules_are_kept_apart_and_do_not_spoil_the_rest() {
        let alice = user_id!("@alice:example.org");
        let mut saved = serde_json::to_value(Ruleset::server_default(alice)).unwrap();
        saved["room"] = json!([
            { "rule_id": "!real:example.org", "default": false, "enabled": true, "actions": [] },
            { "rule_id": "not-a-room", "default": false, "enabled": true, "actions": [] },
        ]);
        saved["sender"] = json!([{ "rule_id": "bob", "default": false, "enabled": true, "actions": [] }]);
        let (typed, loose) = split_loose(&saved);
        assert_eq!(
            loose.iter().map(|(k, r)| (k.as_str(), r["rule_id"].as_str().unwrap())).collect::<Vec<_>>(),
            [("room", "not-a-room"), ("sender", "bob")]
        );
        let rules = effective(Some(&saved), alice);
        assert!(rules.room.get("!real:example.org").is_some(), "the valid rule stays in effect");
        let mut back = serde_json::to_value(&rules).unwrap();
        merge_loose(&mut back, &loose);
        assert_eq!(back["room"].as_array().unwrap().len(), 2);
        assert_eq!(typed["sender"], json!([]));
    }

    #[test]
    fn a_saved_ruleset_keeps_its_choices_and_gains_new_defaults() {
        let alice = user_id!("@alice:example.org");
        let mut old = Ruleset::server_default(alice);
        old.set_enabled(ruma::push::RuleKind::Override, ".m.rule.is_user_mention", false).unwrap();
        let saved = serde_json::to_value(&old).unwrap();
        let rules = effective(Some(&saved), alice);
        let mention = rules.override_.get(".m.rule.is_user_mention").unwrap();
        assert!(!mention.enabled, "the user's choice stays");
        assert!(rules.content.get(".m.rule.contains_user_name").is_some(), "the new default appears");
        let json = |r: Ruleset| serde_json::to_value(r).unwrap();
        assert_eq!(json(effective(Some(&serde_json::json!("junk")), alice)), json(server_default(alice)));
        assert_eq!(json(effective(None, alice)), json(server_default(alice)));
    }
}
