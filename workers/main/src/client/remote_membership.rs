//! Memberships that cross servers outside a room this server hosts (server-server API,
//! "Inviting to a room" and "Leaving Rooms (Rejecting Invites)"):
//!
//! - inviting a user of another server: the invite is built here, countersigned by the
//!   invitee's server (`/invite` v2), then stored as this server's event in the room;
//! - knocking on a room this server is not in: `make_knock`, signed, `send_knock`, and the knock
//!   stored with the room's stripped state the resident answered with;
//! - leaving a room this server is not in, which is how an invite from another server is
//!   rejected: a resident server hands out a leave template (`make_leave`), which is signed
//!   and sent back (`send_leave` v2). When no resident server answers, the invite is rejected
//!   here alone, as other servers do, so the user is not stuck with it.

use ganglion_core::{EventTemplate, Pdu, RoomContext, STRIPPED_STATE_TYPES, StateMap};
use ganglion_federation::{check_pdu_signed_by, outgoing_pdu};
use ganglion_http::MatrixError;
use ruma::api::federation::membership::{
    RawStrippedState, create_invite, create_knock_event, create_leave_event, prepare_knock_event, prepare_leave_event,
};
use ruma::{OwnedServerName, RoomId, RoomVersionId, UserId};
use serde_json::{Value, json};

use super::remote_join::{client_error, complete_template, now_ms, supported_versions, through_first};
use crate::Rooms;
use crate::receive::ReceiveError;

fn bad_gateway(why: impl Into<String>) -> MatrixError {
    MatrixError::new(axum::http::StatusCode::BAD_GATEWAY, "M_UNKNOWN", why)
}

fn receive_error(e: ReceiveError) -> MatrixError {
    match e {
        ReceiveError::Write(w) => MatrixError::from(w),
        ReceiveError::Missing(ids) => MatrixError::internal(format!("events missing: {ids:?}")),
    }
}

/// Invites `target`, a user of another server, on behalf of `sender`: the invitee's server
/// must countersign the invite before it is stored and sent to the room's other servers.
///
/// # Errors
/// The auth rules' refusal (403), the invitee server's refusal, or 502 when it cannot be
/// reached or answers with something else.
pub(crate) async fn invite_remote(
    rooms: &Rooms,
    room_id: &RoomId,
    sender: &UserId,
    target: &UserId,
    content: Value,
) -> Result<(), MatrixError> {
    let template = EventTemplate { event_type: "m.room.member".into(), state_key: Some(target.to_string()), content };
    let (pdu, version) = rooms.writer.build(room_id, sender, &template).await?;
    // The room as an invitee sees it before joining, as full events (Matrix 1.16).
    let state = rooms.events.current_state_events(room_id).await?;
    let invite_room_state: Vec<RawStrippedState> = state
        .iter()
        .filter(|e| {
            STRIPPED_STATE_TYPES.contains(&e.event_type.as_str())
                || (e.event_type == "m.room.member" && e.state_key.as_deref() == Some(sender.as_str()))
        })
        .filter_map(|e| outgoing_pdu(&e.json))
        .map(RawStrippedState::Pdu)
        .collect();
    let event = outgoing_pdu(&pdu.json).ok_or_else(|| MatrixError::internal("the invite does not serialise"))?;
    let request = create_invite::v2::Request::new(
        room_id.to_owned(),
        pdu.event_id.clone(),
        version.clone(),
        event,
        invite_room_state,
    );
    let server = target.server_name();
    let answer = rooms.federation.send(server, request).await.map_err(|e| {
        tracing::info!(%room_id, %target, error = %e, "the invitee's server did not take the invite");
        client_error(&e)
    })?;
    let checked = check_pdu_signed_by(&rooms.remote_keys, &version, answer.event.get(), Some(server))
        .await
        .map_err(|e| bad_gateway(format!("{server} answered the invite with a bad event: {e}")))?;
    if checked.event_id != pdu.event_id || checked.redacted {
        return Err(bad_gateway(format!("{server} answered the invite with another event")));
    }
    let signed = Pdu::from_canonical(checked.event_id.clone(), &checked.object).map_err(MatrixError::internal)?;
    let received = rooms.writer.receive_pdu(signed).await.map_err(receive_error)?;
    match received.verdict {
        ganglion_state::Verdict::Accepted => Ok(()),
        ganglion_state::Verdict::Rejected(why) | ganglion_state::Verdict::SoftFailed(why) => {
            Err(MatrixError::forbidden(why))
        }
    }
}

/// Leaves a room this server is not in (no local member joined): rejects an invite, or
/// withdraws a knock (`member`, the user's membership event), through a server that is, or
/// here alone when none answers.
///
/// # Errors
/// Storage failures; the room's version being unknown.
pub(crate) async fn leave_remote(
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
    member: &ganglion_storage::PersistedEvent,
    reason: Option<String>,
) -> Result<(), MatrixError> {
    let mut servers: Vec<OwnedServerName> = vec![member.sender.server_name().to_owned()];
    // The senders of the room state that came with an invite or knock are in the room.
    let full: Value = serde_json::from_str(&member.json).unwrap_or_default();
    for e in full["unsigned"]["invite_room_state"].as_array().into_iter().flatten() {
        if let Some(server) = e["sender"].as_str().and_then(|u| ruma::OwnedUserId::try_from(u).ok()) {
            servers.push(server.server_name().to_owned());
        }
    }
    servers.extend(room_id.server_name().map(ToOwned::to_owned));
    let mut content = json!({ "membership": "leave" });
    if let Some(r) = reason.filter(|r| !r.is_empty()) {
        content["reason"] = json!(r);
    }
    let left =
        through_first(rooms, room_id, &servers, "leaving", |server| leave_via(rooms, room_id, user, server, &content))
            .await;
    if left.is_ok() {
        return Ok(());
    }
    local_rejection(rooms, room_id, user, member, content).await
}

async fn leave_via(
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
    server: &OwnedServerName,
    content: &Value,
) -> Result<(), MatrixError> {
    let ask = prepare_leave_event::v1::Request::new(room_id.to_owned(), user.to_owned());
    let template = rooms.federation.send(server, ask).await.map_err(|e| client_error(&e))?;
    let version = template.room_version.unwrap_or(RoomVersionId::V1);
    let (event_id, json) = complete_template(rooms, template.event.get(), &version, room_id, user, "leave", content)?;
    let raw = serde_json::value::RawValue::from_string(json.clone()).map_err(MatrixError::internal)?;
    let send = create_leave_event::v2::Request::new(room_id.to_owned(), event_id.clone(), raw);
    rooms.federation.send(server, send).await.map_err(|e| client_error(&e))?;
    let pdu = Pdu::from_json(event_id, &json).map_err(MatrixError::internal)?;
    rooms.writer.receive_out_of_band(pdu, &version).await.map_err(receive_error)?;
    tracing::info!(%room_id, %user, %server, "left a room over federation");
    Ok(())
}

/// A leave built on the user's invite (or knock) alone and stored here only: the room's other
/// servers never hear of it, but the user is rid of the invite.
async fn local_rejection(
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
    member: &ganglion_storage::PersistedEvent,
    content: Value,
) -> Result<(), MatrixError> {
    let version = rooms
        .events
        .room_version(room_id)
        .await?
        .and_then(|v| RoomVersionId::try_from(v.as_str()).ok())
        .ok_or_else(|| MatrixError::not_found(format!("Unknown room {room_id}")))?;
    let rules = version
        .rules()
        .ok_or_else(|| MatrixError::unsupported_room_version(format!("Room version {version} is not supported")))?;
    let invite = Pdu::from_json(member.event_id.clone(), &member.json).map_err(MatrixError::internal)?;
    let mut state = StateMap::new();
    state.insert(("m.room.member".into(), user.to_string()), invite);
    let ctx = RoomContext {
        room_id: Some(room_id),
        version: &version,
        state: &state,
        prev_events: vec![member.event_id.clone()],
        max_prev_depth: u64::try_from(member.depth).unwrap_or(0),
    };
    let template = EventTemplate { event_type: "m.room.member".into(), state_key: Some(user.to_string()), content };
    let ours = rooms.writer.server_name();
    let mut object = ganglion_core::proto_event(&template, user, &ctx, ours, now_ms())
        .map_err(|e| MatrixError::bad_request(e.to_string()))?;
    let (event_id, _) = ganglion_core::sign_event(&mut object, ours, &rooms.signing_key, &rules)
        .map_err(|e| MatrixError::bad_request(e.to_string()))?;
    let json = serde_json::to_string(&object).map_err(MatrixError::internal)?;
    let pdu = Pdu::from_json(event_id, &json).map_err(MatrixError::internal)?;
    rooms.writer.receive_out_of_band(pdu, &version).await.map_err(receive_error)?;
    tracing::info!(%room_id, %user, "no server in the room answered: the invite is rejected here only");
    Ok(())
}

/// Knocks on a room no local user is joined to, through the first of `servers` (then the room
/// ID's server) that takes the knock.
///
/// # Errors
/// The last server's refusal, or 404 when no server is known.
pub(crate) async fn knock_remote(
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
    servers: &[OwnedServerName],
    content: Value,
) -> Result<(), MatrixError> {
    let mut servers = servers.to_vec();
    servers.extend(room_id.server_name().map(ToOwned::to_owned));
    through_first(rooms, room_id, &servers, "knocking", |server| knock_via(rooms, room_id, user, server, &content))
        .await
}

async fn knock_via(
    rooms: &Rooms,
    room_id: &RoomId,
    user: &UserId,
    server: &OwnedServerName,
    content: &Value,
) -> Result<(), MatrixError> {
    let mut ask = prepare_knock_event::v1::Request::new(room_id.to_owned(), user.to_owned());
    ask.ver = supported_versions();
    let template = rooms.federation.send(server, ask).await.map_err(|e| client_error(&e))?;
    let version = template.room_version;
    let (event_id, json) = complete_template(rooms, template.event.get(), &version, room_id, user, "knock", content)?;
    let raw = serde_json::value::RawValue::from_string(json.clone()).map_err(MatrixError::internal)?;
    let send = create_knock_event::v1::Request::new(room_id.to_owned(), event_id.clone(), raw);
    let answer = rooms.federation.send(server, send).await.map_err(|e| client_error(&e))?;
    // Stored with the room as the resident shows it, for the knocker's `knock_state`.
    let room_state: Vec<Value> = answer
        .knock_room_state
        .iter()
        .filter_map(ganglion_federation::room_state_json)
        .map(|e| ganglion_core::stripped_state_event(&e))
        .collect();
    let mut object: serde_json::Map<String, Value> = serde_json::from_str(&json).map_err(MatrixError::internal)?;
    object.insert("unsigned".into(), json!({ "invite_room_state": room_state }));
    let stored = serde_json::to_string(&object).map_err(MatrixError::internal)?;
    let pdu = Pdu::from_json(event_id, &stored).map_err(MatrixError::internal)?;
    rooms.writer.receive_out_of_band(pdu, &version).await.map_err(receive_error)?;
    tracing::info!(%room_id, %user, %server, "knocked over federation");
    Ok(())
}
