//! Reporting events, rooms and users to the server's admins; OpenID tokens; the TURN endpoint.

use axum::Json;
use axum::extract::{Path, State};
use ganglion_http::{AuthUser, MatrixError, MatrixJson, hash_token, new_access_token};
use ganglion_storage::{Report, ReportStore};
use ruma::OwnedUserId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{parse_room_id, visible_upto};
use crate::{Rooms, UserData};

#[derive(Debug, Deserialize)]
pub(crate) struct ReportBody {
    reason: Option<String>,
    score: Option<i64>,
}

fn reason(r: Option<String>) -> Result<Option<String>, MatrixError> {
    if r.as_deref().is_some_and(|r| r.len() > 1000) {
        return Err(MatrixError::invalid_param("reason is too long"));
    }
    Ok(r)
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report/{eventId}`: only events the reporter can see.
pub(crate) async fn report_event(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path((room_id, event_id)): Path<(String, String)>,
    MatrixJson(body): MatrixJson<ReportBody>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    if body.score.is_some_and(|s| !(-100..=0).contains(&s)) {
        return Err(MatrixError::invalid_param("score must be between -100 and 0"));
    }
    let not_found = || MatrixError::not_found("Event not found");
    let upto = visible_upto(&rooms, &user.user_id, &room_id).await.map_err(|_| not_found())?;
    match rooms.events.event(&event_id).await? {
        Some(e) if e.room_id == room_id && e.stream_ordering <= upto => {}
        _ => return Err(not_found()),
    }
    let report = Report {
        reporter: user.user_id.to_string(),
        room_id: Some(room_id.to_string()),
        event_id: Some(event_id),
        reason: reason(body.reason)?,
        score: body.score,
        ..Report::default()
    };
    ReportStore::new(rooms.events.db().clone()).add(&report).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/report`.
pub(crate) async fn report_room(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(room_id): Path<String>,
    MatrixJson(body): MatrixJson<ReportBody>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    if rooms.events.room_version(&room_id).await?.is_none() {
        return Err(MatrixError::not_found("Room not found"));
    }
    let report = Report {
        reporter: user.user_id.to_string(),
        room_id: Some(room_id.to_string()),
        reason: reason(body.reason)?,
        ..Report::default()
    };
    ReportStore::new(rooms.events.db().clone()).add(&report).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/users/{userId}/report`.
pub(crate) async fn report_user(
    State(rooms): State<Rooms>,
    State(data): State<UserData>,
    user: AuthUser,
    Path(target): Path<String>,
    MatrixJson(body): MatrixJson<ReportBody>,
) -> Result<Json<Value>, MatrixError> {
    let target = OwnedUserId::try_from(target.as_str())
        .map_err(|e| MatrixError::invalid_param(format!("Invalid user ID: {e}")))?;
    if target.server_name() == data.server_name && !data.users.user_exists(&target).await? {
        return Err(MatrixError::not_found("User not found"));
    }
    let report = Report {
        reporter: user.user_id.to_string(),
        target_user_id: Some(target.to_string()),
        reason: reason(body.reason)?,
        ..Report::default()
    };
    ReportStore::new(rooms.events.db().clone()).add(&report).await?;
    Ok(Json(json!({})))
}

/// How long an OpenID token proves the user's identity.
const OPENID_LIFETIME_SECS: i64 = 3600;

/// `POST /_matrix/client/v3/user/{userId}/openid/request_token`.
pub(crate) async fn openid_request_token(
    State(rooms): State<Rooms>,
    State(data): State<UserData>,
    user: AuthUser,
    Path(user_id): Path<String>,
    MatrixJson(_body): MatrixJson<Value>,
) -> Result<Json<Value>, MatrixError> {
    if user.user_id.as_str() != user_id {
        return Err(MatrixError::forbidden("Cannot request an OpenID token for another user"));
    }
    let token = new_access_token();
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0);
    ReportStore::new(rooms.events.db().clone())
        .add_openid_token(&hash_token(&token), &user.user_id, now + OPENID_LIFETIME_SECS * 1000)
        .await?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "matrix_server_name": data.server_name,
        "expires_in": OPENID_LIFETIME_SECS,
    })))
}

/// `GET /_matrix/client/v3/voip/turnServer`: no TURN server is configured, so there is nothing
/// to hand out (an empty object, as other servers answer in that case).
pub(crate) async fn turn_server(_user: AuthUser) -> Json<Value> {
    Json(json!({}))
}
