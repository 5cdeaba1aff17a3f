//! Read receipts, read markers and typing notifications.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use ganglion_storage::Receipt;
use ruma::{OwnedUserId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::parse_room_id;
use crate::{Ephemeral, UserData};

async fn require_joined(eph: &Ephemeral, room: &RoomId, user: &UserId) -> Result<(), MatrixError> {
    if eph.events.membership(room, user).await?.as_deref() != Some("join") {
        return Err(MatrixError::forbidden(format!("User {user} not in room {room}")));
    }
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Records one receipt of `receipt_type` (`m.read`, `m.read.private` or `m.fully_read`).
async fn record(
    eph: &Ephemeral,
    data: &UserData,
    room: &RoomId,
    user: &UserId,
    receipt_type: &str,
    event_id: &str,
    thread_id: Option<&str>,
) -> Result<(), MatrixError> {
    let event = eph
        .events
        .event(event_id)
        .await?
        .filter(|e| e.room_id == room)
        .ok_or_else(|| MatrixError::not_found("Event not found"))?;
    match receipt_type {
        "m.fully_read" => {
            if thread_id.is_some() {
                return Err(MatrixError::invalid_param("m.fully_read cannot be threaded"));
            }
            data.writer.put(user, room.as_str(), "m.fully_read", &json!({ "event_id": event_id })).await?;
            Ok(())
        }
        "m.read" | "m.read.private" => {
            if let Some(t) = thread_id
                && (t.is_empty() || (t != "main" && eph.events.event(t).await?.is_none_or(|e| e.room_id != room)))
            {
                return Err(MatrixError::invalid_param("thread_id must be main or an event in the room"));
            }
            eph.writer
                .put_receipt(Receipt {
                    position: 0,
                    room_id: room.to_string(),
                    user_id: user.to_string(),
                    receipt_type: receipt_type.to_owned(),
                    thread_id: thread_id.unwrap_or_default().to_owned(),
                    event_id: event.event_id.to_string(),
                    ts: now_ms(),
                })
                .await?;
            Ok(())
        }
        other => Err(MatrixError::invalid_param(format!("Unknown receipt type {other}"))),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReceiptBody {
    thread_id: Option<String>,
}

/// `POST /_matrix/client/v3/rooms/{roomId}/receipt/{receiptType}/{eventId}`.
pub(crate) async fn receipt(
    State(eph): State<Ephemeral>,
    State(data): State<UserData>,
    user: AuthUser,
    Path((room_id, receipt_type, event_id)): Path<(String, String, String)>,
    MatrixJson(body): MatrixJson<ReceiptBody>,
) -> Result<Json<Value>, MatrixError> {
    let room = parse_room_id(&room_id)?;
    if !matches!(receipt_type.as_str(), "m.read" | "m.read.private" | "m.fully_read") {
        return Err(MatrixError::invalid_param(format!("Unknown receipt type {receipt_type}")));
    }
    require_joined(&eph, &room, &user.user_id).await?;
    record(&eph, &data, &room, &user.user_id, &receipt_type, &event_id, body.thread_id.as_deref()).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/read_markers`.
pub(crate) async fn read_markers(
    State(eph): State<Ephemeral>,
    State(data): State<UserData>,
    user: AuthUser,
    Path(room_id): Path<String>,
    MatrixJson(body): MatrixJson<serde_json::Map<String, Value>>,
) -> Result<Json<Value>, MatrixError> {
    let room = parse_room_id(&room_id)?;
    require_joined(&eph, &room, &user.user_id).await?;
    for kind in ["m.fully_read", "m.read", "m.read.private"] {
        match body.get(kind) {
            None | Some(Value::Null) => {}
            Some(Value::String(event_id)) => record(&eph, &data, &room, &user.user_id, kind, event_id, None).await?,
            Some(_) => return Err(MatrixError::bad_json(format!("{kind} must be an event ID"))),
        }
    }
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
pub(crate) struct TypingBody {
    typing: bool,
    timeout: Option<u64>,
}

/// `PUT /_matrix/client/v3/rooms/{roomId}/typing/{userId}`.
pub(crate) async fn typing(
    State(eph): State<Ephemeral>,
    user: AuthUser,
    Path((room_id, user_id)): Path<(String, String)>,
    MatrixJson(body): MatrixJson<TypingBody>,
) -> Result<Json<Value>, MatrixError> {
    let room = parse_room_id(&room_id)?;
    let target = OwnedUserId::try_from(user_id.as_str())
        .map_err(|e| MatrixError::invalid_param(format!("Invalid user ID: {e}")))?;
    if target != user.user_id {
        return Err(MatrixError::forbidden("Cannot set another user's typing state"));
    }
    require_joined(&eph, &room, &user.user_id).await?;
    let timeout = Duration::from_millis(body.timeout.unwrap_or(30_000));
    eph.writer.set_typing(&room, &user.user_id, body.typing, timeout).await?;
    Ok(Json(json!({})))
}
