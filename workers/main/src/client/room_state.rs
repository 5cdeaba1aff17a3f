//! Room state and single events: `/state`, `/event`, `/members`, `/joined_members`, `/context`
//! and `/redact`.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::{Extension, Json};
use ganglion_core::{EventTemplate, client_event};
use ganglion_http::{AuthUser, MatrixError, MatrixJson, RequestId};
use ganglion_storage::PersistedEvent;
use serde::Deserialize;
use serde_json::{Value, json};

use super::pagination;
use super::relations::client_events;
use super::{parse_room_id, visible_upto};
use crate::Rooms;
use crate::writer::WriteOrigin;

pub(crate) fn to_client(e: &PersistedEvent) -> Value {
    client_event(&e.json, e.event_id.as_str(), e.room_id.as_str(), None)
}

/// The state a user may see: the current state for members, the state when they left otherwise.
async fn visible_state(
    rooms: &Rooms,
    user: &ruma::UserId,
    room_id: &ruma::RoomId,
) -> Result<Vec<PersistedEvent>, MatrixError> {
    let upto = visible_upto(rooms, user, room_id).await?;
    Ok(if upto == i64::MAX {
        rooms.events.current_state_events(room_id).await?
    } else {
        rooms.events.state_at(room_id, upto).await?
    })
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state`.
pub(crate) async fn get_state(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(room_id): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    let state = visible_state(&rooms, &user.user_id, &room_id).await?;
    Ok(Json(Value::Array(state.iter().map(to_client).collect())))
}

#[derive(Debug, Deserialize)]
pub(crate) struct StateEventQuery {
    format: Option<String>,
}

async fn state_event(
    rooms: &Rooms,
    user: &AuthUser,
    room_id: &str,
    event_type: &str,
    state_key: &str,
    format: Option<&str>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(room_id)?;
    let state = visible_state(rooms, &user.user_id, &room_id).await?;
    let event = state
        .iter()
        .find(|e| e.event_type == event_type && e.state_key.as_deref() == Some(state_key))
        .ok_or_else(|| MatrixError::not_found("Event not found."))?;
    let client = to_client(event);
    Ok(Json(match format {
        Some("event") => client,
        None | Some("content") => client.get("content").cloned().unwrap_or(json!({})),
        Some(other) => return Err(MatrixError::invalid_param(format!("format must be content or event, not {other}"))),
    }))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`.
pub(crate) async fn get_state_event(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path((room_id, event_type, state_key)): Path<(String, String, String)>,
    Query(q): Query<StateEventQuery>,
) -> Result<Json<Value>, MatrixError> {
    state_event(&rooms, &user, &room_id, &event_type, &state_key, q.format.as_deref()).await
}

/// `GET /_matrix/client/v3/rooms/{roomId}/state/{eventType}` (empty state key).
pub(crate) async fn get_state_event_empty_key(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path((room_id, event_type)): Path<(String, String)>,
    Query(q): Query<StateEventQuery>,
) -> Result<Json<Value>, MatrixError> {
    state_event(&rooms, &user, &room_id, &event_type, "", q.format.as_deref()).await
}

async fn put_state(
    rooms: &Rooms,
    user: &AuthUser,
    req: &Option<Extension<RequestId>>,
    room_id: &str,
    event_type: String,
    state_key: String,
    content: serde_json::Map<String, Value>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(room_id)?;
    if user.rate_limited() {
        rooms.limits.messages.check(user.user_id.as_str())?;
    }
    if event_type.is_empty() || event_type.len() > 255 {
        return Err(MatrixError::invalid_param("Invalid event type"));
    }
    if event_type == "m.room.create" {
        return Err(MatrixError::forbidden("The create event cannot be replaced"));
    }
    if rooms.events.room_version(&room_id).await?.is_none() {
        return Err(MatrixError::forbidden(format!("User {} not in room {room_id}", user.user_id)));
    }
    let content = Value::Object(content);
    // Re-sending the current content changes nothing: answer with the current event.
    if let Some(current) = rooms.events.state_event(&room_id, &event_type, &state_key).await? {
        let old: Value = serde_json::from_str(&current.json).unwrap_or_default();
        if old.get("content") == Some(&content) && current.sender == user.user_id {
            return Ok(Json(json!({ "event_id": current.event_id })));
        }
    }
    if event_type == "m.room.server_acl"
        && state_key.is_empty()
        && !ganglion_core::server_acl_allows(&content, rooms.writer.server_name())
    {
        // The room would be cut off from this server, its own users with it.
        return Err(MatrixError::bad_request("A server ACL may not deny the server that sends it"));
    }
    if event_type == "m.room.canonical_alias" {
        for alias in content.get("alias").into_iter().chain(content["alt_aliases"].as_array().into_iter().flatten()) {
            let Some(a) = alias.as_str() else { return Err(MatrixError::bad_json("Aliases must be strings")) };
            match rooms.events.alias_room(a).await? {
                Some(r) if r == room_id => {}
                _ => {
                    return Err(MatrixError::new(
                        axum::http::StatusCode::BAD_REQUEST,
                        "M_BAD_ALIAS",
                        format!("Alias {a} does not point to this room"),
                    ));
                }
            }
        }
    }
    let origin =
        WriteOrigin { txn: None, request_id: req.as_ref().map(|r| r.0.0.clone()).unwrap_or_default(), ts: user.ts };
    let closes_to_guests = event_type == "m.room.guest_access" && content["guest_access"] != "can_join";
    let template = EventTemplate { event_type, state_key: Some(state_key), content };
    let written = rooms.writer.send(&room_id, &user.user_id, template, &origin).await?;
    if closes_to_guests {
        remove_guests(rooms, &room_id, &origin).await?;
    }
    Ok(Json(json!({ "event_id": written.event_id })))
}

/// The spec's Guest Access module: once `m.room.guest_access` no longer says `can_join`, the
/// server sets its guests' membership to `leave` (each guest leaves, which the auth rules allow).
async fn remove_guests(rooms: &Rooms, room_id: &ruma::RoomId, origin: &WriteOrigin) -> Result<(), MatrixError> {
    for member in rooms.events.members_with(room_id, "join").await? {
        let Ok(member) = ruma::OwnedUserId::try_from(member) else { continue };
        if !rooms.users.is_guest(&member).await? {
            continue;
        }
        let template = EventTemplate {
            event_type: "m.room.member".into(),
            state_key: Some(member.to_string()),
            content: json!({ "membership": "leave" }),
        };
        rooms.writer.send(room_id, &member, template, origin).await?;
    }
    Ok(())
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}/{stateKey}`.
pub(crate) async fn put_state_event(
    State(rooms): State<Rooms>,
    user: AuthUser,
    req: Option<Extension<RequestId>>,
    Path((room_id, event_type, state_key)): Path<(String, String, String)>,
    MatrixJson(content): MatrixJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, MatrixError> {
    put_state(&rooms, &user, &req, &room_id, event_type, state_key, content).await
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/state/{eventType}` (empty state key).
pub(crate) async fn put_state_event_empty_key(
    State(rooms): State<Rooms>,
    user: AuthUser,
    req: Option<Extension<RequestId>>,
    Path((room_id, event_type)): Path<(String, String)>,
    MatrixJson(content): MatrixJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, MatrixError> {
    put_state(&rooms, &user, &req, &room_id, event_type, String::new(), content).await
}

/// `GET /_matrix/client/v3/rooms/{roomId}/event/{eventId}`: 404 when the event does not exist or
/// the user may not see it.
pub(crate) async fn get_event(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path((room_id, event_id)): Path<(String, String)>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    let upto =
        visible_upto(&rooms, &user.user_id, &room_id).await.map_err(|_| MatrixError::not_found("Event not found."))?;
    match rooms.events.event(&event_id).await? {
        Some(e) if e.room_id == room_id && e.stream_ordering <= upto => {
            let mut bundled = client_events(&rooms, &user.user_id, upto, std::slice::from_ref(&e)).await?;
            Ok(Json(bundled.pop().unwrap_or_default()))
        }
        _ => Err(MatrixError::not_found("Event not found.")),
    }
}

/// `GET /_matrix/client/v3/events/{eventId}` (deprecated): an event by ID alone, on the same
/// terms as `/rooms/{roomId}/event/{eventId}`.
pub(crate) async fn get_event_legacy(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(event_id): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    let Some(e) = rooms.events.event(&event_id).await? else {
        return Err(MatrixError::not_found("Event not found."));
    };
    // An event that exists but is not the user's to see is 403 here, as Synapse answers.
    get_event(State(rooms), user, Path((e.room_id.to_string(), event_id))).await.map_err(|err| {
        if err.status == axum::http::StatusCode::NOT_FOUND {
            MatrixError::forbidden("You don't have permission to access that event.")
        } else {
            err
        }
    })
}

#[derive(Debug, Deserialize)]
pub(crate) struct MembersQuery {
    at: Option<String>,
    membership: Option<String>,
    not_membership: Option<String>,
}

const MEMBERSHIPS: &[&str] = &["join", "invite", "knock", "leave", "ban"];

/// `GET /_matrix/client/v3/rooms/{roomId}/members`.
pub(crate) async fn members(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(room_id): Path<String>,
    Query(q): Query<MembersQuery>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    for m in [&q.membership, &q.not_membership].into_iter().flatten() {
        if !MEMBERSHIPS.contains(&m.as_str()) {
            return Err(MatrixError::invalid_param(format!("Unknown membership {m}")));
        }
    }
    let mut upto = visible_upto(&rooms, &user.user_id, &room_id).await?;
    if let Some(at) = &q.at {
        // The members as of the token: at a timeline's `prev_batch`, the state before its events.
        upto = upto.min(pagination::parse_token(at, "at")?.stream());
    }
    let state = if upto == i64::MAX {
        rooms.events.current_state_events(&room_id).await?
    } else {
        rooms.events.state_at(&room_id, upto).await?
    };
    let chunk: Vec<Value> = state
        .iter()
        .filter(|e| e.event_type == "m.room.member")
        .filter(|e| q.membership.as_deref().is_none_or(|m| e.membership.as_deref() == Some(m)))
        .filter(|e| q.not_membership.as_deref().is_none_or(|m| e.membership.as_deref() != Some(m)))
        .map(to_client)
        .collect();
    Ok(Json(json!({ "chunk": chunk })))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/joined_members`: members only.
pub(crate) async fn joined_members(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(room_id): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    if rooms.events.membership(&room_id, &user.user_id).await?.as_deref() != Some("join") {
        return Err(MatrixError::forbidden(format!("User {} not in room {room_id}", user.user_id)));
    }
    let mut joined = BTreeMap::new();
    for e in rooms.events.current_state_events(&room_id).await? {
        if e.event_type == "m.room.member" && e.membership.as_deref() == Some("join") {
            let v: Value = serde_json::from_str(&e.json).unwrap_or_default();
            let c = &v["content"];
            joined.insert(
                e.state_key.clone().unwrap_or_default(),
                json!({ "display_name": c.get("displayname").cloned().unwrap_or(Value::Null), "avatar_url": c.get("avatar_url").cloned().unwrap_or(Value::Null) }),
            );
        }
    }
    Ok(Json(json!({ "joined": joined })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ContextQuery {
    limit: Option<String>,
    filter: Option<String>,
}

/// `GET /_matrix/client/v3/rooms/{roomId}/context/{eventId}`: the event with up to `limit`
/// events around it (half before, half after) and the state at it.
pub(crate) async fn context(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path((room_id, event_id)): Path<(String, String)>,
    Query(q): Query<ContextQuery>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    let filter = pagination::parse_filter(q.filter.as_deref())?;
    let limit = pagination::parse_limit(q.limit.as_deref(), &filter, 10, 100)?;
    let upto =
        visible_upto(&rooms, &user.user_id, &room_id).await.map_err(|_| MatrixError::not_found("Event not found."))?;
    let event = match rooms.events.event(&event_id).await? {
        Some(e) if e.room_id == room_id && e.stream_ordering <= upto => e,
        _ => return Err(MatrixError::not_found("Event not found.")),
    };
    let before_n = limit / 2;
    let around = pagination::around(&rooms, &event, (before_n, limit - before_n), upto, &filter).await?;
    let state = rooms.events.state_at(&room_id, event.stream_ordering).await?;
    let mut bundled = client_events(&rooms, &user.user_id, upto, std::slice::from_ref(&event)).await?;
    Ok(Json(json!({
        "event": bundled.pop().unwrap_or_default(),
        "events_before": client_events(&rooms, &user.user_id, upto, &around.before).await?,
        "events_after": client_events(&rooms, &user.user_id, upto, &around.after).await?,
        "start": around.start.to_string(),
        "end": around.end.to_string(),
        "state": state.iter().map(to_client).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct RedactBody {
    reason: Option<String>,
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/redact/{eventId}/{txnId}`.
pub(crate) async fn redact(
    State(rooms): State<Rooms>,
    user: AuthUser,
    req: Option<Extension<RequestId>>,
    Path((room_id, event_id, txn_id)): Path<(String, String, String)>,
    MatrixJson(body): MatrixJson<RedactBody>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    let target = ruma::OwnedEventId::try_from(event_id.as_str())
        .map_err(|e| MatrixError::invalid_param(format!("Invalid event ID: {e}")))?;
    if user.rate_limited() {
        rooms.limits.messages.check(user.user_id.as_str())?;
    }
    if rooms.events.membership(&room_id, &user.user_id).await?.as_deref() != Some("join") {
        return Err(MatrixError::forbidden(format!("User {} not in room {room_id}", user.user_id)));
    }
    let mut content = json!({ "redacts": target });
    if let Some(r) = body.reason {
        content["reason"] = json!(r);
    }
    let origin = WriteOrigin {
        txn: Some((user.device_str().to_owned(), format!("redact:{room_id}/{event_id}/{txn_id}"))),
        request_id: req.as_ref().map(|r| r.0.0.clone()).unwrap_or_default(),
        ts: None,
    };
    let template = EventTemplate { event_type: "m.room.redaction".into(), state_key: None, content };
    let written = rooms.writer.send(&room_id, &user.user_id, template, &origin).await?;
    Ok(Json(json!({ "event_id": written.event_id })))
}
