//! `POST /rooms/{roomId}/upgrade`: replaces a room with a new one of another version, as the spec's
//! "Server behaviour" for room upgrades describes
//! (<https://spec.matrix.org/v1.16/client-server-api/#server-behaviour-16>).

use axum::extract::{Path, State};
use axum::{Extension, Json};
use ganglion_core::{CREATOR_POWER, EventTemplate, StateMap, state_event_level, user_power_level};
use ganglion_http::{AuthUser, MatrixError, MatrixJson, RequestId};
use ruma::{OwnedUserId, RoomId, RoomVersionId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::parse_room_id;
use crate::writer::{WriteError, WriteOrigin};
use crate::{Rooms, UserData};

/// The state the spec lists as carried over to the new room, besides power levels (handled apart
/// so the upgrader can send the rest) and the canonical alias (moved with the aliases).
const TRANSFERRED: &[&str] = &[
    "m.room.server_acl",
    "m.room.encryption",
    "m.room.name",
    "m.room.avatar",
    "m.room.topic",
    "m.room.guest_access",
    "m.room.history_visibility",
    "m.room.join_rules",
];

#[derive(Debug, Deserialize)]
pub(crate) struct UpgradeBody {
    new_version: String,
    /// Room v12 on: more creators of the new room.
    #[serde(default)]
    additional_creators: Vec<String>,
}

fn content(state: &StateMap, event_type: &str) -> Option<Value> {
    state.get(&(event_type.to_owned(), String::new())).map(|p| p.content_value())
}

fn state(event_type: &str, content: Value) -> EventTemplate {
    EventTemplate { event_type: event_type.to_owned(), state_key: Some(String::new()), content }
}

/// Sends a state event the spec asks for only "if possible": a refusal by the auth rules is
/// logged and skipped.
async fn send_if_allowed(
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
    template: EventTemplate,
    origin: &WriteOrigin,
) -> Result<(), MatrixError> {
    let event_type = template.event_type.clone();
    match rooms.writer.send(room_id, user, template, origin).await {
        Ok(_) => Ok(()),
        Err(WriteError::Forbidden(reason)) => {
            tracing::debug!(%room_id, event_type, reason, "upgrade: skipped an event the upgrader may not send");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// `POST /_matrix/client/v3/rooms/{roomId}/upgrade`: creates the replacement room (its create
/// event names the old room as `predecessor`), carries the spec's list of state over, tombstones
/// the old room, moves its local aliases and restricts who may speak or invite there.
pub(crate) async fn upgrade_room(
    State(rooms): State<Rooms>,
    State(data): State<UserData>,
    user: AuthUser,
    req: Option<Extension<RequestId>>,
    Path(room_id): Path<String>,
    MatrixJson(body): MatrixJson<UpgradeBody>,
) -> Result<Json<Value>, MatrixError> {
    let old = parse_room_id(&room_id)?;
    let user_id = &user.user_id;
    if user.rate_limited() {
        rooms.limits.rooms.check(user_id.as_str())?;
    }
    let version =
        RoomVersionId::try_from(body.new_version.as_str()).ok().filter(|v| v.rules().is_some()).ok_or_else(|| {
            MatrixError::unsupported_room_version(format!("Room version {} is not supported", body.new_version))
        })?;
    let new_rules = version.rules().ok_or_else(|| MatrixError::unsupported_room_version("unsupported"))?;
    let old_version = rooms.events.room_version(&old).await?.ok_or_else(|| MatrixError::not_found("Unknown room"))?;
    if rooms.events.membership(&old, user_id).await?.as_deref() != Some("join") {
        return Err(MatrixError::forbidden(format!("User {user_id} not in room {old}")));
    }
    let old_rules = RoomVersionId::try_from(old_version.as_str())
        .ok()
        .and_then(|v| v.rules())
        .ok_or_else(|| MatrixError::internal(format!("stored room version {old_version} is unknown")))?;
    let old_state = rooms.writer.room_state(&old).await?;
    let power = user_power_level(&old_state, user_id, &old_rules);
    if power < state_event_level(&old_state, "m.room.tombstone") {
        return Err(MatrixError::forbidden("You don't have permission to upgrade the room"));
    }
    let privileged = new_rules.authorization.explicitly_privilege_room_creators;
    let mut additional: Vec<OwnedUserId> = Vec::new();
    if privileged {
        for u in &body.additional_creators {
            let u = OwnedUserId::try_from(u.as_str())
                .map_err(|_| MatrixError::bad_json(format!("additional_creators holds an invalid user ID {u}")))?;
            if &u != user_id && !additional.contains(&u) {
                additional.push(u);
            }
        }
    }
    let origin =
        WriteOrigin { txn: None, request_id: req.as_ref().map(|r| r.0.0.clone()).unwrap_or_default(), ts: None };

    // The create event: the predecessor, and what the old one said about the room itself.
    let last = rooms.events.latest_room_events(&old, i64::MAX, 1).await?;
    let mut predecessor = json!({ "room_id": old });
    if let Some(last) = last.first() {
        // Deprecated but still sent for older clients: the last event known in the old room.
        predecessor["event_id"] = json!(last.event_id);
    }
    let mut create = Map::new();
    create.insert("room_version".into(), json!(version.as_str()));
    create.insert("predecessor".into(), predecessor);
    if let Some(old_create) = content(&old_state, "m.room.create") {
        for key in ["type", "m.federate"] {
            if let Some(v) = old_create.get(key) {
                create.insert(key.into(), v.clone());
            }
        }
    }
    if !new_rules.authorization.use_room_create_sender {
        create.insert("creator".into(), json!(user_id));
    }
    if !additional.is_empty() {
        create.insert("additional_creators".into(), json!(additional));
    }
    let new = rooms.writer.create_room(&version, user_id, Value::Object(create), &origin).await?.room_id;
    let join = EventTemplate {
        event_type: "m.room.member".into(),
        state_key: Some(user_id.to_string()),
        content: json!({ "membership": "join" }),
    };
    rooms.writer.send(&new, user_id, join, &origin).await?;
    copy_user_state(&rooms, &data, &new, user_id).await?;

    // Power levels: the old ones, with the creators left out from v12 on (their power is
    // implicit) and otherwise the upgrader raised, for as long as it takes to send the rest, to
    // the level that needs. An upgrader who was a v12 creator keeps 100.
    let mut final_pl = None;
    if let Some(mut pl) = content(&old_state, "m.room.power_levels").filter(Value::is_object) {
        if !pl["users"].is_object() {
            pl["users"] = json!({});
        }
        let users = pl["users"].as_object_mut().ok_or_else(|| MatrixError::internal("users is an object"))?;
        if privileged {
            users.remove(user_id.as_str());
            for u in &additional {
                users.remove(u.as_str());
            }
            rooms.writer.send(&new, user_id, state("m.room.power_levels", pl), &origin).await?;
        } else {
            if power == CREATOR_POWER {
                let own = users.get(user_id.as_str()).and_then(Value::as_i64).unwrap_or(0);
                users.insert(user_id.to_string(), json!(own.max(100)));
            }
            let own =
                pl["users"].get(user_id.as_str()).and_then(Value::as_i64).or_else(|| pl["users_default"].as_i64());
            let own = own.unwrap_or(0);
            // The level the rest needs, as the copied power levels set it. The first power-levels
            // event of a room is always allowed, so the raise goes there; lowering one's own
            // level afterwards is allowed too.
            let state_default = pl.get("state_default").and_then(Value::as_i64).unwrap_or(50);
            let needed = TRANSFERRED
                .iter()
                .chain(["m.room.power_levels", "m.room.canonical_alias"].iter())
                .map(|t| pl["events"].get(*t).and_then(Value::as_i64).unwrap_or(state_default))
                .max()
                .unwrap_or(0);
            let mut first = pl.clone();
            if own < needed {
                first["users"][user_id.as_str()] = json!(needed);
                final_pl = Some(pl);
            }
            rooms.writer.send(&new, user_id, state("m.room.power_levels", first), &origin).await?;
        }
    }
    for t in TRANSFERRED {
        if let Some(c) = content(&old_state, t).filter(|c| c.as_object().is_some_and(|o| !o.is_empty())) {
            rooms.writer.send(&new, user_id, state(t, c), &origin).await?;
        }
    }

    // Aliases move to the new room, and the canonical alias with them.
    for alias in rooms.events.room_aliases(&old).await? {
        let creator = rooms.events.alias_creator(&alias).await?;
        let creator = creator.and_then(|c| OwnedUserId::try_from(c).ok()).unwrap_or_else(|| user_id.clone());
        rooms.events.delete_alias(&alias).await?;
        rooms.events.create_alias(&alias, &new, &creator).await?;
    }
    if let Some(c) =
        content(&old_state, "m.room.canonical_alias").filter(|c| c.as_object().is_some_and(|o| !o.is_empty()))
    {
        rooms.writer.send(&new, user_id, state("m.room.canonical_alias", c), &origin).await?;
        send_if_allowed(&rooms, &old, user_id, state("m.room.canonical_alias", json!({})), &origin).await?;
    }
    // Bans carry over, as Synapse does: who was kept out stays out.
    for ((event_type, target), p) in old_state.iter() {
        if event_type == "m.room.member" && p.membership().as_deref() == Some("ban") {
            let mut c = json!({ "membership": "ban" });
            if let Some(reason) = p.content_value().get("reason").filter(|r| r.is_string()) {
                c["reason"] = reason.clone();
            }
            let ban = EventTemplate { event_type: "m.room.member".into(), state_key: Some(target.clone()), content: c };
            send_if_allowed(&rooms, &new, user_id, ban, &origin).await?;
        }
    }
    if let Some(pl) = final_pl {
        rooms.writer.send(&new, user_id, state("m.room.power_levels", pl), &origin).await?;
    }
    if rooms.events.is_room_published(&old).await? {
        rooms.events.set_room_published(&new, true).await?;
        rooms.events.set_room_published(&old, false).await?;
    }

    let tombstone = json!({ "body": "This room has been replaced", "replacement_room": new });
    rooms.writer.send(&old, user_id, state("m.room.tombstone", tombstone), &origin).await?;

    // Then, if the upgrader may, nobody without power speaks or invites in the old room.
    if let Some(mut pl) = content(&old_state, "m.room.power_levels").filter(Value::is_object) {
        let users_default = pl.get("users_default").and_then(Value::as_i64).unwrap_or(0);
        let restricted = (users_default + 1).max(50);
        let mut changed = false;
        for key in ["events_default", "invite"] {
            let current = pl.get(key).and_then(Value::as_i64).unwrap_or(0);
            if current < restricted {
                pl[key] = json!(restricted);
                changed = true;
            }
        }
        if changed {
            send_if_allowed(&rooms, &old, user_id, state("m.room.power_levels", pl), &origin).await?;
        }
    }
    tracing::info!(old_room = %old, new_room = %new, version = %version, "upgraded room");
    Ok(Json(json!({ "replacement_room": new })))
}

/// What Synapse carries over for a local user joining the replacement of a room they were in:
/// their tags of the old room, their push rules for it (room rules, and rules whose conditions
/// name the room), and the old room's place in their `m.direct`. Nothing the user already set on
/// the new room is overwritten.
pub(crate) async fn copy_user_state(
    rooms: &Rooms,
    data: &UserData,
    room: &RoomId,
    user: &UserId,
) -> Result<(), MatrixError> {
    let Some(create) = rooms.events.state_event(room, "m.room.create", "").await? else { return Ok(()) };
    let create: Value = serde_json::from_str(&create.json).map_err(MatrixError::internal)?;
    let Some(old) = create["content"]["predecessor"]["room_id"].as_str().and_then(|r| <&RoomId>::try_from(r).ok())
    else {
        return Ok(());
    };
    if rooms.events.membership(old, user).await?.as_deref() != Some("join") {
        return Ok(());
    }
    let (old_s, new_s) = (old.as_str(), room.as_str());
    if let Some(tags) = data.store.get(user, old_s, "m.tag").await?
        && data.store.get(user, new_s, "m.tag").await?.is_none()
    {
        let tags: Value = serde_json::from_str(&tags).map_err(MatrixError::internal)?;
        data.writer.put(user, new_s, "m.tag", &tags).await?;
    }
    let (rules, loose) = super::account_data::user_push_rules(data, user).await?;
    let mut global = serde_json::to_value(rules).map_err(MatrixError::internal)?;
    if copy_push_rules(&mut global, old_s, new_s) {
        // Back through ruma's type, so only a valid ruleset is stored; the loose rules stay.
        let rules: ruma::push::Ruleset = serde_json::from_value(global).map_err(MatrixError::internal)?;
        let mut global = serde_json::to_value(rules).map_err(MatrixError::internal)?;
        ganglion_core::push_rules::merge_loose(&mut global, &loose);
        data.writer.put(user, "", "m.push_rules", &json!({ "global": global })).await?;
    }
    if let Some(direct) = data.store.get(user, "", "m.direct").await? {
        let mut direct: Value = serde_json::from_str(&direct).map_err(MatrixError::internal)?;
        let mut changed = false;
        for list in direct.as_object_mut().into_iter().flat_map(|m| m.values_mut()) {
            if let Some(list) = list.as_array_mut()
                && list.iter().any(|r| r == old_s)
                && !list.iter().any(|r| r == new_s)
            {
                list.push(json!(new_s));
                changed = true;
            }
        }
        if changed {
            data.writer.put(user, "", "m.direct", &direct).await?;
        }
    }
    Ok(())
}

/// Adds to a ruleset (as JSON) a copy for `new` of every rule about `old`: room rules named after
/// it, and override/underride rules with an `event_match` on `room_id` for it (the copy's ID has
/// the old room ID replaced, or gains a suffix). Returns whether anything was added.
fn copy_push_rules(global: &mut Value, old: &str, new: &str) -> bool {
    let mut changed = false;
    if let Some(list) = global["room"].as_array_mut()
        && !list.iter().any(|r| r["rule_id"] == new)
        && let Some(rule) = list.iter().find(|r| r["rule_id"] == old).cloned()
    {
        let mut copy = rule;
        copy["rule_id"] = json!(new);
        list.push(copy);
        changed = true;
    }
    for kind in ["override", "underride"] {
        let Some(list) = global[kind].as_array_mut() else { continue };
        let mut copies = Vec::new();
        for rule in list.iter().filter(|r| r["default"] != true) {
            let about_old = rule["conditions"].as_array().is_some_and(|c| {
                c.iter().any(|c| c["kind"] == "event_match" && c["key"] == "room_id" && c["pattern"] == old)
            });
            if !about_old {
                continue;
            }
            let mut copy = rule.clone();
            let id = rule["rule_id"].as_str().unwrap_or_default();
            let new_id = if id.contains(old) { id.replace(old, new) } else { format!("{id}-{new}") };
            copy["rule_id"] = json!(new_id);
            for c in copy["conditions"].as_array_mut().into_iter().flatten() {
                if c["key"] == "room_id" && c["pattern"] == old {
                    c["pattern"] = json!(new);
                }
            }
            if !list.iter().chain(&copies).any(|r| r["rule_id"] == copy["rule_id"]) {
                copies.push(copy);
            }
        }
        changed |= !copies.is_empty();
        list.extend(copies);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_rules_about_the_old_room_are_copied_for_the_new_one() {
        let mut global = json!({
            "room": [{ "rule_id": "!old:x", "default": false, "enabled": true, "actions": [] }],
            "override": [
                { "rule_id": "mute-!old:x", "default": false, "enabled": false, "actions": [],
                  "conditions": [{ "kind": "event_match", "key": "room_id", "pattern": "!old:x" }] },
                { "rule_id": ".m.rule.master", "default": true, "enabled": false, "actions": [], "conditions": [] },
            ],
            "underride": [],
        });
        assert!(copy_push_rules(&mut global, "!old:x", "!new:x"));
        assert_eq!(global["room"][1]["rule_id"], "!new:x");
        assert_eq!(global["override"][2]["rule_id"], "mute-!new:x");
        assert_eq!(global["override"][2]["conditions"][0]["pattern"], "!new:x");
        assert_eq!(global["override"][2]["enabled"], false, "the rule's state is kept");
        assert!(!copy_push_rules(&mut global, "!old:x", "!new:x"), "copying twice adds nothing");
    }
}
