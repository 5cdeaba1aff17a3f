//! Push-rule evaluation at persist time: for each local member of the room, the member's rules
//! (their `m.push_rules` account data, or the spec's defaults) decide whether a new event notifies
//! them and whether it highlights. The results are stored with the event; unread counts follow.

use std::collections::BTreeMap;

use ganglion_core::{Pdu, StateMap};
use ganglion_storage::{AccountDataStore, PushAction};
use ruma::power_levels::NotificationPowerLevels;
use ruma::push::{Action, PushConditionPowerLevelsCtx, PushConditionRoomCtx};
use ruma::room_version_rules::{RoomPowerLevelsRules, RoomVersionRules};
use ruma::serde::Raw;
use ruma::{Int, OwnedRoomId, OwnedUserId, ServerName, UInt};
use serde_json::Value;

/// What the rules of every local member the event notifies say.
pub(crate) async fn push_actions(
    account_data: &AccountDataStore,
    server_name: &ServerName,
    state: &StateMap,
    pdu: &Pdu,
    room_id: &OwnedRoomId,
    rules: &RoomVersionRules,
) -> Vec<PushAction> {
    let members: Vec<(&Pdu, OwnedUserId)> = state
        .iter()
        .filter(|((ty, _), p)| ty == "m.room.member" && p.membership().as_deref() == Some("join"))
        .filter_map(|((_, key), p)| OwnedUserId::try_from(key.as_str()).ok().map(|u| (p, u)))
        .collect();
    let mut local: Vec<&(&Pdu, OwnedUserId)> =
        members.iter().filter(|(_, u)| u.server_name() == server_name && *u != pdu.sender).collect();
    // An invite notifies the invitee, who is not a member yet (the `.m.rule.invite_for_me` rule).
    let invitee: Option<(&Pdu, OwnedUserId)> = (pdu.event_type.to_string() == "m.room.member"
        && pdu.membership().as_deref() == Some("invite"))
    .then(|| pdu.state_key.as_deref().and_then(|k| OwnedUserId::try_from(k).ok()))
    .flatten()
    .filter(|u| u.server_name() == server_name && *u != pdu.sender && !local.iter().any(|(_, m)| m == u))
    .map(|u| (pdu, u));
    if let Some(i) = &invitee {
        local.push(i);
    }
    if local.is_empty() {
        return Vec::new();
    }
    let mut event: serde_json::Map<String, Value> = serde_json::from_str(&pdu.json).unwrap_or_default();
    event.insert("event_id".into(), Value::String(pdu.event_id.to_string()));
    event.insert("room_id".into(), Value::String(room_id.to_string()));
    let Ok(raw) = serde_json::value::to_raw_value(&event).map(Raw::<Value>::from_json) else { return Vec::new() };
    let thread_id = pdu
        .content_value()
        .pointer("/m.relates_to/rel_type")
        .filter(|r| r.as_str() == Some("m.thread"))
        .and_then(|_| pdu.content_value().pointer("/m.relates_to/event_id").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    let power_levels = power_levels_ctx(state, rules);
    let member_count = UInt::try_from(members.len() as u64).unwrap_or_default();
    // The members' own rules, in one query (a big room has thousands of local members).
    let user_ids: Vec<&str> = local.iter().map(|(_, u)| u.as_str()).collect();
    let own_rules: std::collections::HashMap<String, String> =
        match account_data.global_for_users(&user_ids, "m.push_rules").await {
            Ok(rows) => rows.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, "loading push rules failed; the default rules apply to this event");
                std::collections::HashMap::new()
            }
        };
    let mut out = Vec::new();
    for (member_event, user) in local {
        let saved = own_rules.get(user.as_str()).and_then(|c| serde_json::from_str::<Value>(c).ok());
        let ruleset = ganglion_core::push_rules::effective(saved.as_ref().map(|v| &v["global"]), user);
        let display_name = member_event
            .content_value()
            .get("displayname")
            .and_then(Value::as_str)
            .map_or_else(|| user.localpart().to_owned(), str::to_owned);
        let mut ctx = PushConditionRoomCtx::new(room_id.clone(), member_count, user.clone(), display_name);
        ctx.power_levels = power_levels.clone();
        let actions = ruleset.get_actions(&raw, &ctx).await;
        if actions.iter().any(|a| matches!(a, Action::Notify)) {
            out.push(PushAction {
                user_id: user.clone(),
                highlight: actions.iter().any(Action::is_highlight),
                thread_id: thread_id.clone(),
                actions: serde_json::to_string(&actions).unwrap_or_else(|_| r#"["notify"]"#.to_owned()),
            });
        }
    }
    out
}

fn power_levels_ctx(state: &StateMap, rules: &RoomVersionRules) -> Option<PushConditionPowerLevelsCtx> {
    let pl = state.get(&("m.room.power_levels".to_owned(), String::new()))?.content_value();
    let level = |v: &Value| v.as_i64().and_then(|n| Int::try_from(n).ok());
    let users: BTreeMap<OwnedUserId, Int> = pl
        .get("users")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(u, l)| Some((OwnedUserId::try_from(u.as_str()).ok()?, level(l)?))).collect())
        .unwrap_or_default();
    let users_default = pl.get("users_default").and_then(level).unwrap_or_default();
    let mut notifications = NotificationPowerLevels::new();
    if let Some(room) = pl.pointer("/notifications/room").and_then(level) {
        notifications.room = room;
    }
    let creators: Vec<OwnedUserId> = state
        .get(&("m.room.create".to_owned(), String::new()))
        .map(|c| {
            let mut v = vec![c.sender.clone()];
            if let Some(extra) = c.content_value().get("additional_creators").and_then(Value::as_array) {
                v.extend(extra.iter().filter_map(|u| u.as_str().and_then(|s| OwnedUserId::try_from(s).ok())));
            }
            v
        })
        .unwrap_or_default();
    Some(PushConditionPowerLevelsCtx::new(
        users,
        users_default,
        notifications,
        RoomPowerLevelsRules::new(&rules.authorization, creators),
    ))
}
