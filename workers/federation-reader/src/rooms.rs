//! The room endpoints other servers call: reading events and state (`/event`, `/state`,
//! `/state_ids`, `/event_auth`, `/backfill`, `/get_missing_events`) and joining (`make_join`,
//! `send_join` v2; v1 is gone from current servers). Every one needs an `X-Matrix` signature; reads are answered only to
//! servers with a joined member in the room.
//!
//! Joins are checked here (format, signature, that the joining server speaks for the user) and
//! persisted by `main` through `ReceivePdus`, which runs the auth rules.

use std::collections::HashMap;

use axum::extract::State;
use ganglion_core::{EventTemplate, Pdu, RoomContext, StateMap};
use ganglion_http::{MatrixError, RumaResponse};
use ganglion_rpc::v1::{PduOutcome, ReceivePdusRequest, ReceivedPdu};
use ganglion_storage::PersistedEvent;
use ruma::api::federation::authorization::get_event_authorization;
use ruma::api::federation::backfill::get_backfill;
use ruma::api::federation::event::{get_event, get_missing_events, get_room_state, get_room_state_ids};
use ruma::api::federation::membership::{create_join_event, prepare_join_event};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, RoomVersionId, ServerName};
use serde_json::value::RawValue;

use crate::{ReaderState, Signed};

/// Most events one `/backfill` or `/get_missing_events` answers with.
const MAX_WALK: usize = 100;

fn storage(e: ganglion_storage::Error) -> MatrixError {
    MatrixError::internal(e)
}

fn raw(e: &PersistedEvent) -> Option<Box<RawValue>> {
    ganglion_federation::outgoing_pdu(&e.json)
}

pub(crate) async fn room_version(s: &ReaderState, room_id: &RoomId) -> Result<RoomVersionId, MatrixError> {
    let v =
        s.events.room_version(room_id).await.map_err(storage)?.ok_or_else(|| MatrixError::not_found("Unknown room"))?;
    RoomVersionId::try_from(v.as_str()).map_err(MatrixError::internal)
}

/// Refuses a server with no joined member in the room.
async fn require_in_room(s: &ReaderState, room_id: &RoomId, origin: &ServerName) -> Result<(), MatrixError> {
    room_version(s, room_id).await?;
    if s.federation.server_in_room(room_id.as_str(), origin.as_str()).await.map_err(storage)? {
        Ok(())
    } else {
        Err(MatrixError::forbidden(format!("{origin} is not in room {room_id}")))
    }
}

/// An event of `room_id` as stored (outliers and soft-failed too; not rejected ones).
async fn stored_event(s: &ReaderState, room_id: Option<&RoomId>, id: &str) -> Result<PersistedEvent, MatrixError> {
    let found = s.events.pdus(&[id]).await.map_err(storage)?;
    match found.into_iter().next() {
        Some((e, status))
            if !matches!(status, ganglion_storage::EventStatus::Rejected(_))
                && room_id.is_none_or(|r| e.room_id == r) =>
        {
            Ok(e)
        }
        _ => Err(MatrixError::not_found("Unknown event")),
    }
}

fn now() -> MilliSecondsSinceUnixEpoch {
    MilliSecondsSinceUnixEpoch::now()
}

/// `GET /_matrix/federation/v1/event/{eventId}`.
pub(crate) async fn event(
    State(s): State<ReaderState>,
    signed: Signed<get_event::v1::Request>,
) -> Result<RumaResponse<get_event::v1::Response>, MatrixError> {
    let e = stored_event(&s, None, signed.request.event_id.as_str()).await?;
    require_in_room(&s, &e.room_id, &signed.origin).await?;
    let pdu = raw(&e).ok_or_else(|| MatrixError::internal("stored event"))?;
    Ok(RumaResponse(get_event::v1::Response::new(s.keys.server_name.clone(), now(), pdu)))
}

/// The state before `event_id` and its auth chain, for `/state` and `/state_ids`.
async fn state_at(
    s: &ReaderState,
    room_id: &RoomId,
    event_id: &OwnedEventId,
    origin: &ServerName,
) -> Result<(Vec<PersistedEvent>, Vec<PersistedEvent>), MatrixError> {
    require_in_room(s, room_id, origin).await?;
    stored_event(s, Some(room_id), event_id.as_str()).await?;
    let state = s
        .federation
        .state_ids_before(event_id.as_str())
        .await
        .map_err(storage)?
        .ok_or_else(|| MatrixError::not_found("The state at that event is not known here"))?;
    let ids: Vec<String> = state.into_values().collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let pdus: Vec<PersistedEvent> = s.events.pdus(&refs).await.map_err(storage)?.into_iter().map(|(e, _)| e).collect();
    let chain = s.federation.auth_chain(&ids).await.map_err(storage)?;
    Ok((pdus, chain))
}

/// `GET /_matrix/federation/v1/state_ids/{roomId}?event_id=`.
pub(crate) async fn state_ids(
    State(s): State<ReaderState>,
    signed: Signed<get_room_state_ids::v1::Request>,
) -> Result<RumaResponse<get_room_state_ids::v1::Response>, MatrixError> {
    let req = signed.request;
    let (pdus, chain) = state_at(&s, &req.room_id, &req.event_id, &signed.origin).await?;
    Ok(RumaResponse(get_room_state_ids::v1::Response::new(
        chain.into_iter().map(|e| e.event_id).collect(),
        pdus.into_iter().map(|e| e.event_id).collect(),
    )))
}

/// `GET /_matrix/federation/v1/state/{roomId}?event_id=`.
pub(crate) async fn state(
    State(s): State<ReaderState>,
    signed: Signed<get_room_state::v1::Request>,
) -> Result<RumaResponse<get_room_state::v1::Response>, MatrixError> {
    let req = signed.request;
    let (pdus, chain) = state_at(&s, &req.room_id, &req.event_id, &signed.origin).await?;
    Ok(RumaResponse(get_room_state::v1::Response::new(
        chain.iter().filter_map(raw).collect(),
        pdus.iter().filter_map(raw).collect(),
    )))
}

/// `GET /_matrix/federation/v1/event_auth/{roomId}/{eventId}`.
pub(crate) async fn event_auth(
    State(s): State<ReaderState>,
    signed: Signed<get_event_authorization::v1::Request>,
) -> Result<RumaResponse<get_event_authorization::v1::Response>, MatrixError> {
    let req = signed.request;
    require_in_room(&s, &req.room_id, &signed.origin).await?;
    stored_event(&s, Some(&req.room_id), req.event_id.as_str()).await?;
    let chain = s.federation.auth_chain(&[req.event_id.to_string()]).await.map_err(storage)?;
    Ok(RumaResponse(get_event_authorization::v1::Response::new(chain.iter().filter_map(raw).collect())))
}

/// `GET /_matrix/federation/v1/backfill/{roomId}?v=&limit=`.
pub(crate) async fn backfill(
    State(s): State<ReaderState>,
    signed: Signed<get_backfill::v1::Request>,
) -> Result<RumaResponse<get_backfill::v1::Response>, MatrixError> {
    let req = signed.request;
    require_in_room(&s, &req.room_id, &signed.origin).await?;
    let limit = usize::try_from(u64::from(req.limit)).unwrap_or(MAX_WALK).min(MAX_WALK);
    let from: Vec<String> = req.v.iter().map(ToString::to_string).collect();
    let events = s.federation.backfill(req.room_id.as_str(), &from, limit).await.map_err(storage)?;
    Ok(RumaResponse(get_backfill::v1::Response::new(
        s.keys.server_name.clone(),
        now(),
        events.iter().filter_map(raw).collect(),
    )))
}

/// `POST /_matrix/federation/v1/get_missing_events/{roomId}`.
pub(crate) async fn missing_events(
    State(s): State<ReaderState>,
    signed: Signed<get_missing_events::v1::Request>,
) -> Result<RumaResponse<get_missing_events::v1::Response>, MatrixError> {
    let req = signed.request;
    require_in_room(&s, &req.room_id, &signed.origin).await?;
    let limit = usize::try_from(u64::from(req.limit)).unwrap_or(MAX_WALK).min(MAX_WALK);
    let min_depth = i64::try_from(u64::from(req.min_depth)).unwrap_or(i64::MAX);
    let earliest: Vec<String> = req.earliest_events.iter().map(ToString::to_string).collect();
    let latest: Vec<String> = req.latest_events.iter().map(ToString::to_string).collect();
    let events = s
        .federation
        .missing_events(req.room_id.as_str(), &earliest, &latest, limit, min_depth)
        .await
        .map_err(storage)?;
    Ok(RumaResponse(get_missing_events::v1::Response::new(events.iter().filter_map(raw).collect())))
}

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

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}?ver=`: a join event for the user
/// to sign, built on the room's current state, if the auth rules would let them in.
pub(crate) async fn make_join(
    State(s): State<ReaderState>,
    signed: Signed<prepare_join_event::v1::Request>,
) -> Result<RumaResponse<prepare_join_event::v1::Response>, MatrixError> {
    let req = signed.request;
    if req.user_id.server_name() != signed.origin {
        return Err(MatrixError::forbidden("The user is not of the server asking"));
    }
    let version = room_version(&s, &req.room_id).await?;
    if !req.ver.contains(&version) {
        return Err(MatrixError::new(
            http::StatusCode::BAD_REQUEST,
            "M_INCOMPATIBLE_ROOM_VERSION",
            format!("The room is version {version}, which your server does not support"),
        )
        .with("room_version", serde_json::Value::String(version.to_string())));
    }
    let rules = version.rules().ok_or_else(|| MatrixError::internal("room version rules"))?;
    let state = current_state(&s, &req.room_id).await?;
    let extremities = s.events.forward_extremities(&req.room_id).await.map_err(storage)?;
    let max_prev_depth = extremities.iter().map(|(_, d)| *d).max().unwrap_or(0).max(0) as u64;
    let prev_events: Vec<OwnedEventId> = extremities.into_iter().take(10).map(|(id, _)| id).collect();
    let template = EventTemplate {
        event_type: "m.room.member".into(),
        state_key: Some(req.user_id.to_string()),
        content: serde_json::json!({ "membership": "join" }),
    };
    let ctx =
        RoomContext { room_id: Some(&req.room_id), version: &version, state: &state, prev_events, max_prev_depth };
    let now_ms = u64::from(now().get());
    let proto = ganglion_core::proto_event(&template, &req.user_id, &ctx, req.user_id.server_name(), now_ms)
        .map_err(|e| MatrixError::bad_request(e.to_string()))?;
    // Would the auth rules let them in? Checked on the unsigned event under a stand-in ID.
    let json = serde_json::to_string(&proto).map_err(MatrixError::internal)?;
    let stand_in = OwnedEventId::try_from("$make_join:stand.in").map_err(MatrixError::internal)?;
    let pdu = Pdu::from_json(stand_in, &json).map_err(MatrixError::internal)?;
    ganglion_state::check_against_state(&rules.authorization, &pdu, &state)
        .map_err(|why| MatrixError::forbidden(format!("You are not allowed to join this room: {why}")))?;
    let event = RawValue::from_string(json).map_err(MatrixError::internal)?;
    let mut resp = prepare_join_event::v1::Response::new(event);
    resp.room_version = Some(version);
    Ok(RumaResponse(resp))
}

/// A checked join for `room_id`, signed by us too, persisted through `main`; the state before it
/// and the auth chain for the answer.
async fn accept_join(
    s: &ReaderState,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &OwnedEventId,
    raw_pdu: &RawValue,
) -> Result<create_join_event::v2::RoomState, MatrixError> {
    let version = room_version(s, room_id).await?;
    let checked = ganglion_federation::check_pdu(&s.fetcher, &version, raw_pdu.get())
        .await
        .map_err(|e| MatrixError::bad_json(e.to_string()))?;
    if checked.event_id != *event_id || checked.room_id != room_id {
        return Err(MatrixError::bad_json("The event's ID or room is not the one in the path"));
    }
    let pdu = Pdu::from_canonical(checked.event_id.clone(), &checked.object).map_err(MatrixError::internal)?;
    let is_join = pdu.event_type == ruma::events::TimelineEventType::RoomMember
        && pdu.membership().as_deref() == Some("join")
        && pdu.state_key.as_deref() == Some(pdu.sender.as_str());
    if !is_join {
        return Err(MatrixError::bad_json("Not a join event of its sender"));
    }
    if pdu.sender.server_name() != origin {
        return Err(MatrixError::forbidden("The joining user is not of the server sending the join"));
    }
    let rules = version.rules().ok_or_else(|| MatrixError::internal("room version rules"))?;
    // The resident server's signature: needed for restricted joins, harmless elsewhere.
    let mut object = checked.object;
    ruma::signatures::hash_and_sign_event(
        s.keys.server_name.as_str(),
        s.keys.key.pair(),
        &mut object,
        &rules.redaction,
    )
    .map_err(MatrixError::internal)?;
    let json = serde_json::to_string(&object).map_err(MatrixError::internal)?;
    let request = ReceivePdusRequest {
        origin: origin.to_string(),
        pdus: vec![ReceivedPdu { event_id: event_id.to_string(), json: json.clone(), outlier: false }],
    };
    let resp = s.main.receive_pdus(request, "").await.map_err(|e| {
        tracing::warn!(error = %e, "main did not take the join");
        MatrixError::new(http::StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", "Could not persist the join")
    })?;
    let result = resp.results.into_iter().next().ok_or_else(|| MatrixError::internal("no result"))?;
    if result.outcome() != PduOutcome::Accepted {
        return Err(MatrixError::forbidden(format!("The join was not accepted: {}", result.reason)));
    }
    let state = s
        .federation
        .state_ids_before(event_id.as_str())
        .await
        .map_err(storage)?
        .ok_or_else(|| MatrixError::internal("no state at the join"))?;
    let ids: Vec<String> = state.into_values().collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let state_events: Vec<PersistedEvent> =
        s.events.pdus(&refs).await.map_err(storage)?.into_iter().map(|(e, _)| e).collect();
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
