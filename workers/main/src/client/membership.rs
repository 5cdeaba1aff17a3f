//! Membership changes other than join: invite, leave, kick, ban, unban, knock, and forget. Every
//! change is an `m.room.member` event checked by the room version's auth rules, whose reason
//! becomes the `M_FORBIDDEN` message.

use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use ganglion_core::EventTemplate;
use ganglion_http::{AuthUser, MatrixError, MatrixJson, RequestId};
use ruma::{OwnedUserId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::parse_room_id;
use crate::Rooms;
use crate::writer::WriteOrigin;

#[derive(Debug, Deserialize)]
pub(crate) struct TargetBody {
    user_id: String,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ReasonBody {
    reason: Option<String>,
}

fn origin(req: &Option<Extension<RequestId>>) -> WriteOrigin {
    WriteOrigin { txn: None, request_id: req.as_ref().map(|r| r.0.0.clone()).unwrap_or_default(), ts: None }
}

fn target_user(s: &str) -> Result<OwnedUserId, MatrixError> {
    OwnedUserId::try_from(s).map_err(|e| MatrixError::invalid_param(format!("Invalid user ID {s}: {e}")))
}

/// Sends `sender`'s membership event for `target`. Unknown rooms answer 404 `M_NOT_FOUND`.
async fn set_membership(
    rooms: &Rooms,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    membership: &str,
    reason: Option<String>,
    origin: &WriteOrigin,
) -> Result<(), MatrixError> {
    if rooms.events.room_version(room_id).await?.is_none() {
        return Err(MatrixError::not_found(format!("Unknown room {room_id}")));
    }
    let mut content = json!({ "membership": membership });
    if let Some(r) = reason.filter(|r| !r.is_empty()) {
        content["reason"] = json!(r);
    }
    // Keep the profile the target already shows in the room, as other servers do.
    if let Some(current) = rooms.events.state_event(room_id, "m.room.member", target.as_str()).await? {
        let old: Value = serde_json::from_str(&current.json).unwrap_or_default();
        for key in ["displayname", "avatar_url"] {
            if let Some(v) = old["content"].get(key).filter(|_| membership != "ban" && membership != "leave") {
                content[key] = v.clone();
            }
        }
    }
    if membership == "invite" && content.get("displayname").is_none() {
        content = super::rooms::with_profile(rooms, target, content).await?;
    }
    if membership == "invite" && target.server_name() != rooms.writer.server_name() {
        // The invitee's server countersigns first.
        super::remote_membership::invite_remote(rooms, room_id, sender, target, content).await?;
        return Ok(());
    }
    let template = EventTemplate { event_type: "m.room.member".into(), state_key: Some(target.to_string()), content };
    rooms.writer.send(room_id, sender, template, origin).await?;
    if matches!(membership, "invite" | "join" | "knock") {
        rooms.events.unforget_room(target, room_id).await?;
    }
    Ok(())
}

/// `POST /_matrix/client/v3/rooms/{roomId}/invite`.
pub(crate) async fn invite(
    State(rooms): State<Rooms>,
    user: AuthUser,
    req: Option<Extension<RequestId>>,
    Path(room_id): Path<String>,
    MatrixJson(body): MatrixJson<TargetBody>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    let target = target_user(&body.user_id)?;
    if rooms.events.membership(&room_id, &target).await?.as_deref() == Some("invite") {
        // Inviting someone already invited changes nothing.
        return Ok(Json(json!({})));
    }
    if user.rate_limited() {
        rooms.limits.rooms.check(user.user_id.as_str())?;
    }
    // Inviting a bridged user not created yet: the service may make the puppet first.
    if target.server_name() == rooms.writer.server_name() && !rooms.users.user_exists(&target).await? {
        for reg in rooms.appservices.interested_in_user(target.as_str()) {
            if let Err(e) = rooms.appservice_client.query_user(reg, target.as_str()).await {
                tracing::warn!(appservice = %reg.id, user_id = %target, error = %e, "user query to the application service failed");
            }
            if rooms.users.user_exists(&target).await? {
                break;
            }
        }
    }
    set_membership(&rooms, &room_id, &user.user_id, &target, "invite", body.reason, &origin(&req)).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/leave`: leave, or reject an invite, or withdraw a knock.
pub(crate) async fn leave(
    State(rooms): State<Rooms>,
    user: AuthUser,
    req: Option<Extension<RequestId>>,
    Path(room_id): Path<String>,
    MatrixJson(body): MatrixJson<ReasonBody>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    match rooms.events.membership(&room_id, &user.user_id).await?.as_deref() {
        Some("join" | "invite" | "knock") => {}
        // Already gone: nothing to do.
        Some("leave") => return Ok(Json(json!({}))),
        Some("ban") => return Err(MatrixError::forbidden("You are banned from this room")),
        _ => return Err(MatrixError::not_found(format!("You are not a member of {room_id}"))),
    }
    let ours = rooms.writer.server_name();
    let member = rooms.events.state_event(&room_id, "m.room.member", user.user_id.as_str()).await?;
    let from_elsewhere = member.as_ref().is_some_and(|m| match m.membership.as_deref() {
        // An invite from another server, or a knock on a room another server hosts.
        Some("invite") => m.sender.server_name() != ours,
        Some("knock") => true,
        _ => false,
    });
    if let Some(member) = member.filter(|_| from_elsewhere)
        && !rooms.writer.resident(&room_id).await.map_err(|e| MatrixError::internal(e.to_string()))?
    {
        // Only an invite or a knock brought the room here: leave through a server in it.
        super::remote_membership::leave_remote(&rooms, &room_id, &user.user_id, &member, body.reason).await?;
        return Ok(Json(json!({})));
    }
    set_membership(&rooms, &room_id, &user.user_id, &user.user_id, "leave", body.reason, &origin(&req)).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/kick`.
pub(crate) async fn kick(
    State(rooms): State<Rooms>,
    user: AuthUser,
    req: Option<Extension<RequestId>>,
    Path(room_id): Path<String>,
    MatrixJson(body): MatrixJson<TargetBody>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    let target = target_user(&body.user_id)?;
    match rooms.events.membership(&room_id, &target).await?.as_deref() {
        Some("join" | "invite" | "knock") => {}
        _ => return Err(MatrixError::forbidden(format!("{target} is not in the room"))),
    }
    set_membership(&rooms, &room_id, &user.user_id, &target, "leave", body.reason, &origin(&req)).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/ban`.
pub(crate) async fn ban(
    State(rooms): State<Rooms>,
    user: AuthUser,
    req: Option<Extension<RequestId>>,
    Path(room_id): Path<String>,
    MatrixJson(body): MatrixJson<TargetBody>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    let target = target_user(&body.user_id)?;
    set_membership(&rooms, &room_id, &user.user_id, &target, "ban", body.reason, &origin(&req)).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/unban`.
pub(crate) async fn unban(
    State(rooms): State<Rooms>,
    user: AuthUser,
    req: Option<Extension<RequestId>>,
    Path(room_id): Path<String>,
    MatrixJson(body): MatrixJson<TargetBody>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    let target = target_user(&body.user_id)?;
    if rooms.events.membership(&room_id, &target).await?.as_deref() != Some("ban") {
        return Err(MatrixError::forbidden(format!("{target} is not banned")));
    }
    set_membership(&rooms, &room_id, &user.user_id, &target, "leave", body.reason, &origin(&req)).await?;
    Ok(Json(json!({})))
}

/// `POST /_matrix/client/v3/knock/{roomIdOrAlias}`.
pub(crate) async fn knock(
    State(rooms): State<Rooms>,
    user: AuthUser,
    req: Option<Extension<RequestId>>,
    Path(target): Path<String>,
    RawQuery(query): RawQuery,
    MatrixJson(body): MatrixJson<ReasonBody>,
) -> Result<Json<Value>, MatrixError> {
    let (room_id, via) = super::rooms::room_and_servers(&rooms, &target, query.as_deref()).await?;
    if user.rate_limited() {
        rooms.limits.rooms.check(user.user_id.as_str())?;
    }
    let known = rooms.events.room_version(&room_id).await?.is_some();
    let ours = rooms.writer.server_name();
    let elsewhere = !via.is_empty() || room_id.server_name().is_some_and(|s| s != ours);
    let resident = known && rooms.writer.resident(&room_id).await.map_err(|e| MatrixError::internal(e.to_string()))?;
    if !known || (!resident && elsewhere) {
        // Another server hosts the room: knock through one that is in it.
        let mut content = json!({ "membership": "knock" });
        if let Some(r) = body.reason.filter(|r| !r.is_empty()) {
            content["reason"] = json!(r);
        }
        let content = super::rooms::with_profile(&rooms, &user.user_id, content).await?;
        super::remote_membership::knock_remote(&rooms, &room_id, &user.user_id, &via, content).await?;
        rooms.events.unforget_room(&user.user_id, &room_id).await?;
        return Ok(Json(json!({ "room_id": room_id })));
    }
    set_membership(&rooms, &room_id, &user.user_id, &user.user_id, "knock", body.reason, &origin(&req)).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

/// `POST /_matrix/client/v3/rooms/{roomId}/forget`: hides a left room from the user's sync and
/// history. Still a member → 400.
pub(crate) async fn forget(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(room_id): Path<String>,
    MatrixJson(_body): MatrixJson<Value>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    match rooms.events.membership(&room_id, &user.user_id).await?.as_deref() {
        Some("join" | "invite" | "knock") => {
            Err(MatrixError::bad_request("The user is still in the room; leave it first"))
        }
        Some(_) => {
            rooms.events.forget_room(&user.user_id, &room_id).await?;
            Ok(Json(json!({})))
        }
        None => Err(MatrixError::not_found(format!("You have never been in {room_id}"))),
    }
}
