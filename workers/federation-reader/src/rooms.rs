//! The room endpoints other servers call: reading events and state (`/event`, `/state`,
//! `/state_ids`, `/event_auth`, `/backfill`, `/get_missing_events`). Every one needs an
//! `X-Matrix` signature; they are answered only to servers with a joined member in the room.

use axum::extract::State;
use ganglion_http::{MatrixError, RumaResponse};
use ganglion_storage::PersistedEvent;
use ruma::api::federation::authorization::get_event_authorization;
use ruma::api::federation::backfill::get_backfill;
use ruma::api::federation::event::{get_event, get_missing_events, get_room_state, get_room_state_ids};
use ruma::{MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId, RoomVersionId, ServerName};
use serde_json::value::RawValue;

use crate::{ReaderState, Signed};

/// Most events one `/backfill` or `/get_missing_events` answers with.
const MAX_WALK: usize = 100;

pub(crate) fn storage(e: ganglion_storage::Error) -> MatrixError {
    MatrixError::internal(e)
}

pub(crate) fn raw(e: &PersistedEvent) -> Option<Box<RawValue>> {
    ganglion_federation::outgoing_pdu(&e.json)
}

pub(crate) async fn room_version(s: &ReaderState, room_id: &RoomId) -> Result<RoomVersionId, MatrixError> {
    let v =
        s.events.room_version(room_id).await.map_err(storage)?.ok_or_else(|| MatrixError::not_found("Unknown room"))?;
    RoomVersionId::try_from(v.as_str()).map_err(MatrixError::internal)
}

/// Refuses `origin` when the room's server ACL denies it: checked on every room-scoped
/// request and on the PDUs of every transaction.
pub(crate) async fn require_acl_allows(
    s: &ReaderState,
    room_id: &RoomId,
    origin: &ServerName,
) -> Result<(), MatrixError> {
    if let Some(acl) = s.events.state_event(room_id, "m.room.server_acl", "").await.map_err(storage)? {
        let event: serde_json::Value = serde_json::from_str(&acl.json).unwrap_or_default();
        if !ganglion_core::server_acl_allows(&event["content"], origin) {
            return Err(MatrixError::forbidden(format!("Server {origin} is banned from this room by its server ACL")));
        }
    }
    Ok(())
}

/// Refuses a server with no joined member in the room, or one its server ACL denies.
async fn require_in_room(s: &ReaderState, room_id: &RoomId, origin: &ServerName) -> Result<(), MatrixError> {
    room_version(s, room_id).await?;
    require_acl_allows(s, room_id, origin).await?;
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

pub(crate) fn now() -> MilliSecondsSinceUnixEpoch {
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

/// The IDs and events of the state before `event_id`; `None` when it is not known here.
pub(crate) async fn state_before(
    s: &ReaderState,
    event_id: &OwnedEventId,
) -> Result<Option<(Vec<String>, Vec<PersistedEvent>)>, MatrixError> {
    let Some(state) = s.federation.state_ids_before(event_id.as_str()).await.map_err(storage)? else {
        return Ok(None);
    };
    let ids: Vec<String> = state.into_values().collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let pdus = s.events.pdus(&refs).await.map_err(storage)?.into_iter().map(|(e, _)| e).collect();
    Ok(Some((ids, pdus)))
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
    let (ids, pdus) = state_before(s, event_id)
        .await?
        .ok_or_else(|| MatrixError::not_found("The state at that event is not known here"))?;
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
