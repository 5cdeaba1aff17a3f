//! `/presence/{userId}/status`: set your own; read that of users you share a room with.

use axum::Json;
use axum::extract::{Path, State};
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use ruma::OwnedUserId;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::presence_writer::presence_content;
use crate::{Rooms, UserData};

const STATES: &[&str] = &["online", "unavailable", "offline"];

#[derive(Debug, Deserialize)]
pub(crate) struct StatusBody {
    presence: String,
    status_msg: Option<String>,
}

/// `PUT /_matrix/client/v3/presence/{userId}/status`.
pub(crate) async fn set_status(
    State(data): State<UserData>,
    user: AuthUser,
    Path(user_id): Path<String>,
    MatrixJson(body): MatrixJson<StatusBody>,
) -> Result<Json<Value>, MatrixError> {
    if user.user_id.as_str() != user_id {
        return Err(MatrixError::forbidden("Cannot set another user's presence"));
    }
    if !STATES.contains(&body.presence.as_str()) {
        return Err(MatrixError::invalid_param(format!("Unknown presence {}", body.presence)));
    }
    if body.status_msg.as_deref().is_some_and(|m| m.len() > 1024) {
        return Err(MatrixError::invalid_param("status_msg is too long"));
    }
    data.presence.set_status(&user.user_id, &body.presence, body.status_msg).await?;
    Ok(Json(json!({})))
}

/// `GET /_matrix/client/v3/presence/{userId}/status`: only for yourself and users who share a
/// room with you.
pub(crate) async fn get_status(
    State(data): State<UserData>,
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(user_id): Path<String>,
) -> Result<Json<Value>, MatrixError> {
    let target = OwnedUserId::try_from(user_id.as_str())
        .map_err(|e| MatrixError::invalid_param(format!("Invalid user ID: {e}")))?;
    if target != user.user_id
        && !rooms.events.users_sharing_rooms(&user.user_id).await?.iter().any(|u| u == target.as_str())
    {
        return Err(MatrixError::forbidden("You are not allowed to see their presence"));
    }
    if target.server_name() != data.server_name || !data.users.user_exists(&target).await? {
        return Err(MatrixError::not_found("Unknown user"));
    }
    match data.presence.get(&target).await? {
        Some(p) => Ok(Json(presence_content(&p))),
        None => Ok(Json(json!({ "presence": "offline" }))),
    }
}
