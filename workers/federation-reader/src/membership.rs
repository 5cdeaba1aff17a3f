//! The membership endpoints other servers call: joining (`make_join`, `send_join` v2), leaving
//! (`make_leave`, `send_leave` v2; the v1 forms are gone from current servers), knocking
//! (`make_knock`, `send_knock`) and inviting a user of this server (`invite` v2). Every one needs an `X-Matrix` signature.
//!
//! Joins and leaves are checked here (format, signatures, that the sending server speaks for
//! the user) and persisted by `main` through `ReceivePdus`, which runs the auth rules. An
//! invite is countersigned and handed to `main` out of band: this server may not know the
//! room, so it cannot run the auth rules on it; the invitee decides by joining or rejecting.

use std::collections::HashMap;

use axum::extract::State;
use ganglion_core::{EventTemplate, Pdu, RoomContext, StateMap};
use ganglion_http::{MatrixError, RumaResponse};
use ganglion_rpc::v1::{PduOutcome, ReceivePdusRequest, ReceivedPdu};
use ruma::api::federation::membership::{
    RawStrippedState, create_invite, create_join_event, create_knock_event, create_leave_event, prepare_join_event,
    prepare_knock_event, prepare_leave_event,
};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomId, RoomVersionId, ServerName, UserId};
use serde_json::value::RawValue;

use crate::rooms::{now, raw, require_acl_allows, room_version, state_before, storage};
use crate::{ReaderState, Signed};

/// The room's current state as the auth rules read it.
async fn current_state(s: &ReaderState, room_id: &RoomId) -> Result<StateMap, MatrixError> {
    let events = s.events.current_state_events(room_id).await.map_err(storage)?;
    let mut state = HashMap::with_capacity(events.len());
    for e in events {
        let pdu = Pdu::from_json(e.event_id.clone(), &e.json).map_err(MatrixError::internal)?;
        state.insert((e.event_type.clone(), e.state_key.clone().unwrap_or_default()), pdu);
    }
    Ok(state)
}

fn incompatible(version: &RoomVersionId, why: &str) -> MatrixError {
    MatrixError::new(
        http::StatusCode::BAD_REQUEST,
        "M_INCOMPATIBLE_ROOM_VERSION",
        format!("The room is version {version}, {why}"),
    )
    .with("room_version", serde_json::Value::String(version.to_string()))
}

/// A `membership` event for `user` to sign, built on the room's current state, if the auth
/// rules would allow it; with the room's version.
async fn make_membership(
    s: &ReaderState,
    origin: &ServerName,
    room_id: &RoomId,
    user: &UserId,
    membership: &str,
) -> Result<(Box<RawValue>, RoomVersionId), MatrixError> {
    if user.server_name() != origin {
        return Err(MatrixError::forbidden("The user is not of the server asking"));
    }
    let version = room_version(s, room_id).await?;
    require_acl_allows(s, room_id, origin).await?;
    let rules = version.rules().ok_or_else(|| MatrixError::internal("room version rules"))?;
    let state = current_state(s, room_id).await?;
    let extremities = s.events.forward_extremities(room_id).await.map_err(storage)?;
    let max_prev_depth = extremities.iter().map(|(_, d)| *d).max().unwrap_or(0).max(0) as u64;
    let prev_events: Vec<OwnedEventId> = extremities.into_iter().take(10).map(|(id, _)| id).collect();
    let template = EventTemplate {
        event_type: "m.room.member".into(),
        state_key: Some(user.to_string()),
        content: serde_json::json!({ "membership": membership }),
    };
    let ctx = RoomContext { room_id: Some(room_id), version: &version, state: &state, prev_events, max_prev_depth };
    let now_ms = u64::from(now().get());
    let proto = ganglion_core::proto_event(&template, user, &ctx, user.server_name(), now_ms)
        .map_err(|e| MatrixError::bad_request(e.to_string()))?;
    // Would the auth rules allow it? Checked on the unsigned event under a stand-in ID.
    let json = serde_json::to_string(&proto).map_err(MatrixError::internal)?;
    let stand_in = OwnedEventId::try_from("$make_membership:stand.in").map_err(MatrixError::internal)?;
    let pdu = Pdu::from_json(stand_in, &json).map_err(MatrixError::internal)?;
    ganglion_state::check_against_state(&rules.authorization, &pdu, &state)
        .map_err(|why| MatrixError::forbidden(format!("You may not {membership} this room: {why}")))?;
    Ok((RawValue::from_string(json).map_err(MatrixError::internal)?, version))
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}?ver=`.
pub(crate) async fn make_join(
    State(s): State<ReaderState>,
    signed: Signed<prepare_join_event::v1::Request>,
) -> Result<RumaResponse<prepare_join_event::v1::Response>, MatrixError> {
    let req = signed.request;
    let version = room_version(&s, &req.room_id).await?;
    if !req.ver.contains(&version) {
        return Err(incompatible(&version, "which your server does not support"));
    }
    let (event, version) = make_membership(&s, &signed.origin, &req.room_id, &req.user_id, "join").await?;
    let mut resp = prepare_join_event::v1::Response::new(event);
    resp.room_version = Some(version);
    Ok(RumaResponse(resp))
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`: how a user of another server
/// leaves, or rejects an invite to, a room this server is in.
pub(crate) async fn make_leave(
    State(s): State<ReaderState>,
    signed: Signed<prepare_leave_event::v1::Request>,
) -> Result<RumaResponse<prepare_leave_event::v1::Response>, MatrixError> {
    let req = signed.request;
    let (event, version) = make_membership(&s, &signed.origin, &req.room_id, &req.user_id, "leave").await?;
    Ok(RumaResponse(prepare_leave_event::v1::Response::new(Some(version), event)))
}

/// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}?ver=`: a knock for the user to sign,
/// if the room's join rules let them knock.
pub(crate) async fn make_knock(
    State(s): State<ReaderState>,
    signed: Signed<prepare_knock_event::v1::Request>,
) -> Result<RumaResponse<prepare_knock_event::v1::Response>, MatrixError> {
    let req = signed.request;
    let version = room_version(&s, &req.room_id).await?;
    if !req.ver.contains(&version) {
        return Err(incompatible(&version, "which your server does not support"));
    }
    let (event, version) = make_membership(&s, &signed.origin, &req.room_id, &req.user_id, "knock").await?;
    Ok(RumaResponse(prepare_knock_event::v1::Response::new(version, event)))
}

/// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`: the signed knock, persisted; the
/// answer is the room's stripped state, as full events, for the knocker to show.
pub(crate) async fn send_knock(
    State(s): State<ReaderState>,
    signed: Signed<create_knock_event::v1::Request>,
) -> Result<RumaResponse<create_knock_event::v1::Response>, MatrixError> {
    let req = signed.request;
    let json = checked_membership(&s, &signed.origin, &req.room_id, &req.event_id, &req.pdu, "knock").await?;
    let pdu = ReceivedPdu { event_id: req.event_id.to_string(), json, ..Default::default() };
    persist_one(&s, &signed.origin, pdu, "knock").await?;
    let state = s.events.current_state_events(&req.room_id).await.map_err(storage)?;
    let stripped: Vec<RawStrippedState> = state
        .iter()
        .filter(|e| ganglion_core::STRIPPED_STATE_TYPES.contains(&e.event_type.as_str()))
        .filter_map(raw)
        .map(RawStrippedState::Pdu)
        .collect();
    tracing::info!(origin = %signed.origin, room_id = %req.room_id, event_id = %req.event_id, "accepted a knock over federation");
    Ok(RumaResponse(create_knock_event::v1::Response::new(stripped)))
}

/// A membership event sent back after `make_*`: checked (format, signatures, that it is the
/// path's event and a `membership` of its sender, who is of `origin`), and signed by this
/// server too. Returns its JSON.
async fn checked_membership(
    s: &ReaderState,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &OwnedEventId,
    raw_pdu: &RawValue,
    membership: &str,
) -> Result<String, MatrixError> {
    let version = room_version(s, room_id).await?;
    require_acl_allows(s, room_id, origin).await?;
    let checked = ganglion_federation::check_pdu(&s.fetcher, &version, raw_pdu.get())
        .await
        .map_err(|e| MatrixError::bad_json(e.to_string()))?;
    if checked.event_id != *event_id || checked.room_id != room_id {
        return Err(MatrixError::bad_json("The event's ID or room is not the one in the path"));
    }
    let pdu = Pdu::from_canonical(checked.event_id.clone(), &checked.object).map_err(MatrixError::internal)?;
    let is_it = pdu.event_type == ruma::events::TimelineEventType::RoomMember
        && pdu.membership().as_deref() == Some(membership)
        && pdu.state_key.as_deref() == Some(pdu.sender.as_str());
    if !is_it {
        return Err(MatrixError::bad_json(format!("Not a {membership} event of its sender")));
    }
    if pdu.sender.server_name() != origin {
        return Err(MatrixError::forbidden("The user is not of the server sending the event"));
    }
    // The resident server's signature: needed for restricted joins, harmless elsewhere.
    let object = countersign(s, checked.object, &version)?;
    serde_json::to_string(&object).map_err(MatrixError::internal)
}

/// `object` signed by this server too.
fn countersign(
    s: &ReaderState,
    mut object: CanonicalJsonObject,
    version: &RoomVersionId,
) -> Result<CanonicalJsonObject, MatrixError> {
    let rules = version.rules().ok_or_else(|| MatrixError::internal("room version rules"))?;
    ruma::signatures::hash_and_sign_event(
        s.keys.server_name.as_str(),
        s.keys.key.pair(),
        &mut object,
        &rules.redaction,
    )
    .map_err(MatrixError::internal)?;
    Ok(object)
}

/// Persists one received event through `main`; refused unless it was accepted.
async fn persist_one(s: &ReaderState, origin: &ServerName, pdu: ReceivedPdu, what: &str) -> Result<(), MatrixError> {
    let request = ReceivePdusRequest { origin: origin.to_string(), pdus: vec![pdu] };
    let resp = s.main.receive_pdus(request, "").await.map_err(|e| {
        tracing::warn!(error = %e, what, "main did not take the event");
        MatrixError::new(http::StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", format!("Could not persist the {what}"))
    })?;
    let result = resp.results.into_iter().next().ok_or_else(|| MatrixError::internal("no result"))?;
    if result.outcome() != PduOutcome::Accepted {
        return Err(MatrixError::forbidden(format!("The {what} was not accepted: {}", result.reason)));
    }
    Ok(())
}

/// A checked join, persisted; the state before it and the auth chain for the answer.
async fn accept_join(
    s: &ReaderState,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &OwnedEventId,
    raw_pdu: &RawValue,
) -> Result<create_join_event::v2::RoomState, MatrixError> {
    let json = checked_membership(s, origin, room_id, event_id, raw_pdu, "join").await?;
    let pdu = ReceivedPdu { event_id: event_id.to_string(), json: json.clone(), ..Default::default() };
    persist_one(s, origin, pdu, "join").await?;
    let (ids, state_events) =
        state_before(s, event_id).await?.ok_or_else(|| MatrixError::internal("no state at the join"))?;
    let mut chain_of = ids.clone();
    chain_of.push(event_id.to_string());
    let chain = s.federation.auth_chain(&chain_of).await.map_err(storage)?;
    let mut room_state = create_join_event::v2::RoomState::new();
    room_state.state = state_events.iter().filter_map(raw).collect();
    room_state.auth_chain = chain.iter().filter(|e| e.event_id != *event_id).filter_map(raw).collect();
    room_state.event = RawValue::from_string(json).ok();
    let servers = s.federation.joined_servers(room_id.as_str()).await.map_err(storage)?;
    room_state.servers_in_room = Some(servers.into_iter().collect());
    tracing::info!(%origin, %room_id, %event_id, "accepted a join over federation");
    Ok(room_state)
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`. `omit_members` is accepted and
/// ignored: the full state is sent (the spec lets a server do so; `members_omitted` says it).
pub(crate) async fn send_join_v2(
    State(s): State<ReaderState>,
    signed: Signed<create_join_event::v2::Request>,
) -> Result<RumaResponse<create_join_event::v2::Response>, MatrixError> {
    let req = signed.request;
    let state = accept_join(&s, &signed.origin, &req.room_id, &req.event_id, &req.pdu).await?;
    Ok(RumaResponse(create_join_event::v2::Response::new(state)))
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`.
pub(crate) async fn send_leave_v2(
    State(s): State<ReaderState>,
    signed: Signed<create_leave_event::v2::Request>,
) -> Result<RumaResponse<create_leave_event::v2::Response>, MatrixError> {
    let req = signed.request;
    let json = checked_membership(&s, &signed.origin, &req.room_id, &req.event_id, &req.pdu, "leave").await?;
    let pdu = ReceivedPdu { event_id: req.event_id.to_string(), json, ..Default::default() };
    persist_one(&s, &signed.origin, pdu, "leave").await?;
    tracing::info!(origin = %signed.origin, room_id = %req.room_id, event_id = %req.event_id, "accepted a leave over federation");
    Ok(RumaResponse(create_leave_event::v2::Response::new()))
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`: another server invites a user of
/// this one. The invite is checked, countersigned and stored with the room's stripped state
/// the inviter sent, so the invitee's sync shows it.
pub(crate) async fn invite_v2(
    State(s): State<ReaderState>,
    signed: Signed<create_invite::v2::Request>,
) -> Result<RumaResponse<create_invite::v2::Response>, MatrixError> {
    let req = signed.request;
    let origin = &signed.origin;
    if req.room_version.rules().is_none() {
        return Err(incompatible(&req.room_version, "which this server does not support"));
    }
    require_acl_allows(&s, &req.room_id, origin).await?;
    let checked = ganglion_federation::check_pdu(&s.fetcher, &req.room_version, req.event.get())
        .await
        .map_err(|e| MatrixError::bad_json(e.to_string()))?;
    if checked.event_id != req.event_id || checked.room_id != req.room_id {
        return Err(MatrixError::bad_json("The event's ID or room is not the one in the path"));
    }
    if checked.redacted {
        return Err(MatrixError::bad_json("The invite's content does not match its hash"));
    }
    let pdu = Pdu::from_canonical(checked.event_id.clone(), &checked.object).map_err(MatrixError::internal)?;
    if pdu.event_type != ruma::events::TimelineEventType::RoomMember || pdu.membership().as_deref() != Some("invite") {
        return Err(MatrixError::bad_json("Not an invite"));
    }
    if pdu.sender.server_name() != origin {
        return Err(MatrixError::forbidden("The inviter is not of the server sending the invite"));
    }
    let invitee = pdu
        .state_key
        .as_deref()
        .and_then(|k| ruma::OwnedUserId::try_from(k).ok())
        .ok_or_else(|| MatrixError::bad_json("The invite's state_key is not a user ID"))?;
    if invitee.server_name() != s.keys.server_name {
        return Err(MatrixError::bad_json("The invitee is not a user of this server"));
    }
    if !s.users.user_exists(&invitee).await.map_err(storage)? {
        return Err(MatrixError::not_found(format!("No such user {invitee}")));
    }
    if matches!(s.events.membership(&req.room_id, &invitee).await.map_err(storage)?.as_deref(), Some("ban")) {
        return Err(MatrixError::forbidden("The invitee is banned from the room"));
    }
    let object = countersign(&s, checked.object, &req.room_version)?;
    let countersigned = serde_json::to_string(&object).map_err(MatrixError::internal)?;
    // Stored with what the inviter says of the room, for the invitee's stripped state.
    let room_state: Vec<serde_json::Value> =
        req.invite_room_state.iter().filter_map(ganglion_federation::room_state_json).collect();
    let mut stored = object;
    stored.insert(
        "unsigned".into(),
        serde_json::from_value::<CanonicalJsonValue>(serde_json::json!({ "invite_room_state": room_state }))
            .unwrap_or(CanonicalJsonValue::Object(CanonicalJsonObject::new())),
    );
    let pdu = ReceivedPdu {
        event_id: req.event_id.to_string(),
        json: serde_json::to_string(&stored).map_err(MatrixError::internal)?,
        out_of_band: true,
        room_version: req.room_version.to_string(),
        ..Default::default()
    };
    persist_one(&s, origin, pdu, "invite").await?;
    tracing::info!(%origin, room_id = %req.room_id, %invitee, "received an invite over federation");
    let event = RawValue::from_string(countersigned).map_err(MatrixError::internal)?;
    Ok(RumaResponse(create_invite::v2::Response::new(event)))
}
