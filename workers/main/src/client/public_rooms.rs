//! The public room directory: publishing a room (`/directory/list/room/{roomId}`) and listing
//! published rooms (`/publicRooms`, GET and POST with a search filter), paginated with `o{offset}`
//! tokens.

use axum::Json;
use axum::extract::{Path, Query, State};
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use serde::Deserialize;
use serde_json::{Value, json};

use super::parse_room_id;
use crate::Rooms;

/// `GET /_matrix/client/v3/directory/list/room/{roomId}`.
pub(crate) async fn get_visibility(
    State(rooms): State<Rooms>,
    Path(room_id): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    if rooms.events.room_version(&room_id).await?.is_none() {
        return Err(MatrixError::not_found("Room not found"));
    }
    let public = rooms.events.is_room_published(&room_id).await?;
    Ok(Json(json!({ "visibility": if public { "public" } else { "private" } })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct VisibilityBody {
    visibility: Option<String>,
}

/// `PUT /_matrix/client/v3/directory/list/room/{roomId}`: room moderators (power to send
/// `m.room.canonical_alias`) and server admins may publish or withdraw a room.
pub(crate) async fn set_visibility(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(room_id): Path<String>,
    MatrixJson(body): MatrixJson<VisibilityBody>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    let version = rooms.events.room_version(&room_id).await?.ok_or_else(|| MatrixError::not_found("Room not found"))?;
    let publish = publishes(&body)?;
    if !user.is_admin {
        if rooms.events.membership(&room_id, &user.user_id).await?.as_deref() != Some("join") {
            return Err(MatrixError::forbidden("You are not in this room"));
        }
        let state = rooms.writer.room_state(&room_id).await?;
        let rules = ruma::RoomVersionId::try_from(version.as_str()).ok().and_then(|v| v.rules());
        let allowed = rules.is_some_and(|r| {
            ganglion_core::user_power_level(&state, &user.user_id, &r)
                >= ganglion_core::state_event_level(&state, "m.room.canonical_alias")
        });
        if !allowed {
            return Err(MatrixError::forbidden("You may not change this room's directory visibility"));
        }
    }
    rooms.events.set_room_published(&room_id, publish).await?;
    Ok(Json(json!({})))
}

/// `visibility`: `public` publishes, `private` (or none) withdraws.
fn publishes(body: &VisibilityBody) -> Result<bool, MatrixError> {
    match body.visibility.as_deref() {
        Some("public") => Ok(true),
        Some("private") | None => Ok(false),
        Some(other) => Err(MatrixError::invalid_param(format!("Unknown visibility {other}"))),
    }
}

/// `PUT /_matrix/client/v3/directory/list/appservice/{networkId}/{roomId}`: an application
/// service publishes (or withdraws) a bridged room in the room directory. Only the service may;
/// the network ID is accepted but rooms are not yet listed per network.
pub(crate) async fn set_appservice_visibility(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path((_network_id, room_id)): Path<(String, String)>,
    MatrixJson(body): MatrixJson<VisibilityBody>,
) -> Result<Json<Value>, MatrixError> {
    if user.appservice.is_none() {
        return Err(MatrixError::forbidden("Only an application service may use this endpoint"));
    }
    let room_id = parse_room_id(&room_id)?;
    if rooms.events.room_version(&room_id).await?.is_none() {
        return Err(MatrixError::not_found("Room not found"));
    }
    let publish = publishes(&body)?;
    rooms.events.set_room_published(&room_id, publish).await?;
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct ListQuery {
    limit: Option<String>,
    since: Option<String>,
    server: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct SearchFilter {
    generic_search_term: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
pub(crate) struct ListBody {
    limit: Option<u64>,
    since: Option<String>,
    server: Option<String>,
    filter: Option<SearchFilter>,
}

async fn list(
    rooms: &Rooms,
    limit: Option<u64>,
    since: Option<String>,
    server: Option<String>,
    term: Option<String>,
) -> Result<Json<Value>, MatrixError> {
    if server.as_deref().is_some_and(|s| s != rooms.writer.server_name().as_str()) {
        return Err(MatrixError::not_found("Remote room directories need federation"));
    }
    let offset: usize = match since.as_deref() {
        None | Some("") => 0,
        Some(t) => t
            .strip_prefix('o')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| MatrixError::invalid_param("Invalid since token"))?,
    };
    let limit = limit.map_or(usize::MAX, |l| l as usize).max(1);
    let term = term.map(|t| t.to_lowercase()).filter(|t| !t.is_empty());
    let mut chunk = Vec::new();
    for (room_id, members) in rooms.events.published_rooms().await? {
        let state = rooms.events.current_state_events(&room_id).await?;
        let content = |ty: &str| -> Value {
            state
                .iter()
                .find(|e| e.event_type == ty && e.state_key.as_deref() == Some(""))
                .and_then(|e| serde_json::from_str::<Value>(&e.json).ok())
                .map(|v| v["content"].clone())
                .unwrap_or(Value::Null)
        };
        let mut entry = serde_json::Map::new();
        entry.insert("room_id".into(), json!(room_id));
        entry.insert("num_joined_members".into(), json!(members));
        entry.insert(
            "world_readable".into(),
            json!(content("m.room.history_visibility")["history_visibility"] == "world_readable"),
        );
        entry.insert("guest_can_join".into(), json!(content("m.room.guest_access")["guest_access"] == "can_join"));
        entry.insert("join_rule".into(), content("m.room.join_rules")["join_rule"].clone());
        for (key, ty, field) in [
            ("name", "m.room.name", "name"),
            ("topic", "m.room.topic", "topic"),
            ("canonical_alias", "m.room.canonical_alias", "alias"),
            ("avatar_url", "m.room.avatar", "url"),
            ("room_type", "m.room.create", "type"),
        ] {
            if let Some(v) = content(ty).get(field).filter(|v| v.is_string()) {
                entry.insert(key.into(), v.clone());
            }
        }
        if let Some(t) = &term {
            let haystack = ["name", "topic", "canonical_alias"]
                .iter()
                .filter_map(|k| entry.get(*k).and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase();
            // Name, topic and alias, as other servers search; never the random room ID.
            if !haystack.contains(t.as_str()) {
                continue;
            }
        }
        chunk.push(Value::Object(entry));
    }
    let total = chunk.len();
    let page: Vec<Value> = chunk.into_iter().skip(offset).take(limit).collect();
    let mut body = json!({ "chunk": page, "total_room_count_estimate": total });
    if offset.saturating_add(limit) < total {
        body["next_batch"] = json!(format!("o{}", offset + limit));
    }
    if offset > 0 {
        body["prev_batch"] = json!(format!("o{}", offset.saturating_sub(limit)));
    }
    Ok(Json(body))
}

/// `GET /_matrix/client/v3/publicRooms`: no auth needed.
pub(crate) async fn get_public_rooms(
    State(rooms): State<Rooms>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, MatrixError> {
    let limit = q
        .limit
        .as_deref()
        .map(|l| l.parse::<u64>().map_err(|_| MatrixError::invalid_param("Invalid limit")))
        .transpose()?;
    list(&rooms, limit, q.since, q.server, None).await
}

/// `POST /_matrix/client/v3/publicRooms`: with a search filter.
pub(crate) async fn search_public_rooms(
    State(rooms): State<Rooms>,
    _user: AuthUser,
    Query(q): Query<ListQuery>,
    MatrixJson(body): MatrixJson<ListBody>,
) -> Result<Json<Value>, MatrixError> {
    let term = body.filter.and_then(|f| f.generic_search_term);
    list(&rooms, body.limit, body.since, body.server.or(q.server), term).await
}
