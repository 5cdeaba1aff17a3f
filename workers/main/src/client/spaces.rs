//! Spaces: `/hierarchy` (breadth-first over `m.space.child` state, paginated) and the room
//! summary (MSC3266) that shows a room before joining it.

use std::collections::{HashSet, VecDeque};

use axum::Json;
use axum::extract::{Path, Query, State};
use ganglion_http::{AuthUser, MatrixError};
use ruma::{OwnedRoomId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::parse_room_id;
use crate::Rooms;

/// The most rooms one `/hierarchy` walk visits, so a huge or cyclic space stays bounded.
const MAX_ROOMS: usize = 1000;

/// What anyone may learn about a room: its public summary fields.
async fn summary(rooms: &Rooms, room_id: &RoomId) -> Result<Map<String, Value>, MatrixError> {
    let state = rooms.events.current_state_events(room_id).await?;
    let content = |ty: &str| -> Value {
        state
            .iter()
            .find(|e| e.event_type == ty && e.state_key.as_deref() == Some(""))
            .and_then(|e| serde_json::from_str::<Value>(&e.json).ok())
            .map(|v| v["content"].clone())
            .unwrap_or(Value::Null)
    };
    let joined =
        state.iter().filter(|e| e.event_type == "m.room.member" && e.membership.as_deref() == Some("join")).count();
    let mut out = Map::new();
    out.insert("room_id".into(), json!(room_id));
    out.insert("num_joined_members".into(), json!(joined));
    out.insert("join_rule".into(), content("m.room.join_rules")["join_rule"].clone());
    out.insert(
        "world_readable".into(),
        json!(content("m.room.history_visibility")["history_visibility"] == "world_readable"),
    );
    out.insert("guest_can_join".into(), json!(content("m.room.guest_access")["guest_access"] == "can_join"));
    for (key, ty, field) in [
        ("name", "m.room.name", "name"),
        ("topic", "m.room.topic", "topic"),
        ("avatar_url", "m.room.avatar", "url"),
        ("canonical_alias", "m.room.canonical_alias", "alias"),
        ("room_type", "m.room.create", "type"),
        ("room_version", "m.room.create", "room_version"),
    ] {
        if let Some(v) = content(ty).get(field).filter(|v| v.is_string()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(enc) = content("m.room.encryption").get("algorithm").filter(|v| v.is_string()) {
        out.insert("encryption".into(), enc.clone());
    }
    Ok(out)
}

/// Whether `user` may see a room's summary: members, invitees, and anyone for public,
/// knockable or world-readable rooms.
async fn may_peek(rooms: &Rooms, user: &UserId, room_id: &RoomId, s: &Map<String, Value>) -> Result<bool, MatrixError> {
    if matches!(rooms.events.membership(room_id, user).await?.as_deref(), Some("join" | "invite" | "knock")) {
        return Ok(true);
    }
    Ok(s.get("world_readable") == Some(&json!(true))
        || matches!(s.get("join_rule").and_then(Value::as_str), Some("public" | "knock" | "knock_restricted")))
}

#[derive(Debug, Deserialize)]
pub(crate) struct HierarchyQuery {
    from: Option<String>,
    limit: Option<String>,
    max_depth: Option<String>,
    suggested_only: Option<String>,
}

fn number(v: Option<&str>, name: &str) -> Result<Option<usize>, MatrixError> {
    v.map(|s| s.parse::<usize>().map_err(|_| MatrixError::invalid_param(format!("Invalid {name}")))).transpose()
}

/// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy`.
pub(crate) async fn hierarchy(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(room_id): Path<String>,
    Query(q): Query<HierarchyQuery>,
) -> Result<Json<Value>, MatrixError> {
    let root = parse_room_id(&room_id)?;
    let limit = number(q.limit.as_deref(), "limit")?.unwrap_or(50).clamp(1, 100);
    let max_depth = number(q.max_depth.as_deref(), "max_depth")?.unwrap_or(usize::MAX);
    let suggested_only = match q.suggested_only.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(MatrixError::invalid_param("suggested_only must be true or false")),
    };
    let skip = match q.from.as_deref() {
        None => 0,
        Some(t) => t
            .strip_prefix('h')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| MatrixError::invalid_param("Invalid from token"))?,
    };
    if rooms.events.room_version(&root).await?.is_none() {
        return Err(MatrixError::not_found("Room not found"));
    }
    let root_summary = summary(&rooms, &root).await?;
    if !may_peek(&rooms, &user.user_id, &root, &root_summary).await? {
        return Err(MatrixError::forbidden("You cannot view this space"));
    }
    let mut queue: VecDeque<(OwnedRoomId, usize)> = VecDeque::from([(root, 0)]);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    while let Some((room_id, depth)) = queue.pop_front() {
        if !seen.insert(room_id.clone()) || seen.len() > MAX_ROOMS {
            continue;
        }
        if rooms.events.room_version(&room_id).await?.is_none() {
            // A child on another server: federation will fetch it; until then it is skipped.
            continue;
        }
        let mut s = summary(&rooms, &room_id).await?;
        if !may_peek(&rooms, &user.user_id, &room_id, &s).await? {
            continue;
        }
        let children: Vec<Value> = rooms
            .events
            .current_state_events(&room_id)
            .await?
            .iter()
            .filter(|e| e.event_type == "m.space.child")
            .filter_map(|e| {
                let v: Value = serde_json::from_str(&e.json).ok()?;
                // An empty or missing `via` removes the child.
                let via_ok = v["content"]["via"].as_array().is_some_and(|a| !a.is_empty());
                let suggested = v["content"]["suggested"].as_bool().unwrap_or(false);
                (via_ok && (!suggested_only || suggested)).then(|| {
                    json!({
                        "type": "m.space.child",
                        "state_key": e.state_key,
                        "content": v["content"],
                        "sender": e.sender,
                        "origin_server_ts": e.origin_server_ts,
                    })
                })
            })
            .collect();
        if depth < max_depth {
            for c in &children {
                if let Some(child) = c["state_key"].as_str().and_then(|k| OwnedRoomId::try_from(k).ok()) {
                    queue.push_back((child, depth + 1));
                }
            }
        }
        s.insert("children_state".into(), Value::Array(children));
        out.push(Value::Object(s));
    }
    let page: Vec<Value> = out.iter().skip(skip).take(limit).cloned().collect();
    let mut body = json!({ "rooms": page });
    if skip + limit < out.len() {
        body["next_batch"] = json!(format!("h{}", skip + limit));
    }
    Ok(Json(body))
}

/// `GET /_matrix/client/v1/room_summary/{roomIdOrAlias}` (and MSC3266's unstable path): a room's
/// summary, with the caller's membership, for rooms they may see.
pub(crate) async fn room_summary(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(target): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = super::resolve_room_id_or_alias(&rooms, &target).await?;
    if rooms.events.room_version(&room_id).await?.is_none() {
        return Err(MatrixError::not_found("Room not found"));
    }
    let mut s = summary(&rooms, &room_id).await?;
    if !may_peek(&rooms, &user.user_id, &room_id, &s).await? {
        return Err(MatrixError::forbidden("You cannot view this room"));
    }
    if let Some(m) = rooms.events.membership(&room_id, &user.user_id).await? {
        s.insert("membership".into(), json!(m));
    }
    Ok(Json(Value::Object(s)))
}
