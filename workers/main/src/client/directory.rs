//! Room aliases: `/directory/room/{roomAlias}` and `/rooms/{roomId}/aliases`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use ruma::OwnedRoomAliasId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::parse_room_id;
use crate::Rooms;

fn parse_alias(s: &str) -> Result<OwnedRoomAliasId, MatrixError> {
    OwnedRoomAliasId::try_from(s).map_err(|e| MatrixError::invalid_param(format!("Invalid room alias {s}: {e}")))
}

/// `GET /_matrix/client/v3/directory/room/{roomAlias}`: no auth needed.
pub(crate) async fn get_alias(
    State(rooms): State<Rooms>,
    Path(alias): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    let alias = parse_alias(&alias)?;
    if alias.server_name() != rooms.writer.server_name() {
        // Remote aliases are resolved over federation once it exists.
        return Err(MatrixError::not_found(format!("Room alias {alias} not found")));
    }
    let room_id = super::lookup_alias(&rooms, &alias)
        .await?
        .ok_or_else(|| MatrixError::not_found(format!("Room alias {alias} not found")))?;
    Ok(Json(json!({ "room_id": room_id, "servers": [rooms.writer.server_name()] })))
}

#[derive(Debug, Deserialize)]
pub(crate) struct CreateAliasBody {
    room_id: String,
}

/// `PUT /_matrix/client/v3/directory/room/{roomAlias}`: the alias must be on this server and
/// free, the room known and the user in it.
pub(crate) async fn create_alias(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(alias): Path<String>,
    MatrixJson(body): MatrixJson<CreateAliasBody>,
) -> Result<Json<Value>, MatrixError> {
    let alias = parse_alias(&alias)?;
    let room_id = parse_room_id(&body.room_id)?;
    if alias.server_name() != rooms.writer.server_name() {
        return Err(MatrixError::invalid_param("Room alias must be on this server"));
    }
    if let Some(owner) = rooms.appservices.exclusive_alias_owner(alias.as_str())
        && user.appservice.as_ref().is_none_or(|a| a.id != owner.id)
    {
        return Err(MatrixError::exclusive("This alias is reserved by an application service"));
    }
    if rooms.events.room_version(&room_id).await?.is_none() {
        return Err(MatrixError::not_found(format!("Unknown room {room_id}")));
    }
    if rooms.events.membership(&room_id, &user.user_id).await?.as_deref() != Some("join") && !user.is_admin {
        return Err(MatrixError::forbidden("You must be in the room to give it an alias"));
    }
    match rooms.events.create_alias(alias.as_str(), &room_id, &user.user_id).await {
        Ok(()) => Ok(Json(json!({}))),
        Err(ganglion_storage::Error::Conflict(_)) => {
            Err(MatrixError::new(StatusCode::CONFLICT, "M_UNKNOWN", format!("Room alias {alias} already exists")))
        }
        Err(e) => Err(e.into()),
    }
}

/// `DELETE /_matrix/client/v3/directory/room/{roomAlias}`: its creator, a server admin, or a
/// room member with the power to change the canonical alias.
pub(crate) async fn delete_alias(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(alias): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    let alias = parse_alias(&alias)?;
    let room_id = rooms
        .events
        .alias_room(alias.as_str())
        .await?
        .ok_or_else(|| MatrixError::not_found(format!("Room alias {alias} not found")))?;
    let creator = rooms.events.alias_creator(alias.as_str()).await?;
    let mut allowed = user.is_admin || creator.as_deref() == Some(user.user_id.as_str());
    if !allowed && rooms.events.membership(&room_id, &user.user_id).await?.as_deref() == Some("join") {
        let state = rooms.writer.room_state(&room_id).await?;
        let version = rooms.events.room_version(&room_id).await?.unwrap_or_default();
        if let Some(rules) = ruma::RoomVersionId::try_from(version.as_str()).ok().and_then(|v| v.rules()) {
            allowed = ganglion_core::user_power_level(&state, &user.user_id, &rules)
                >= ganglion_core::state_event_level(&state, "m.room.canonical_alias");
        }
    }
    if !allowed {
        return Err(MatrixError::forbidden("You may not delete this alias"));
    }
    rooms.events.delete_alias(alias.as_str()).await?;
    drop_from_canonical_alias(&rooms, &room_id, &user, alias.as_str()).await?;
    Ok(Json(json!({})))
}

/// A deleted alias also leaves the room's `m.room.canonical_alias` (`alias` and `alt_aliases`),
/// as Synapse does, so the room stops being advertised (and found in the directory) by it. Sent
/// as the user who deleted it when they may; otherwise the event stays as it was.
async fn drop_from_canonical_alias(
    rooms: &Rooms,
    room_id: &ruma::RoomId,
    user: &AuthUser,
    alias: &str,
) -> Result<(), MatrixError> {
    let Some(ev) = rooms.events.state_event(room_id, "m.room.canonical_alias", "").await? else { return Ok(()) };
    let ev: Value = serde_json::from_str(&ev.json).map_err(MatrixError::internal)?;
    let mut content = ev["content"].clone();
    let mut changed = false;
    if content["alias"] == alias {
        content.as_object_mut().map(|c| c.remove("alias"));
        changed = true;
    }
    if let Some(alt) = content["alt_aliases"].as_array_mut() {
        let before = alt.len();
        alt.retain(|a| a != alias);
        changed |= alt.len() != before;
    }
    if !changed {
        return Ok(());
    }
    let template = ganglion_core::EventTemplate {
        event_type: "m.room.canonical_alias".into(),
        state_key: Some(String::new()),
        content,
    };
    match rooms.writer.send(room_id, &user.user_id, template, &crate::writer::WriteOrigin::default()).await {
        Ok(_) => Ok(()),
        Err(crate::writer::WriteError::Forbidden(reason)) => {
            tracing::info!(%room_id, reason, "alias deleted; the canonical alias event is left to the room's moderators");
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /_matrix/client/v3/rooms/{roomId}/aliases`: the room's local aliases, for members.
pub(crate) async fn room_aliases(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(room_id): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    if rooms.events.membership(&room_id, &user.user_id).await?.as_deref() != Some("join") {
        return Err(MatrixError::forbidden(format!("User {} not in room {room_id}", user.user_id)));
    }
    Ok(Json(json!({ "aliases": rooms.events.room_aliases(&room_id).await? })))
}
