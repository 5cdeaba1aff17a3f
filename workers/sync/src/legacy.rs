//! The deprecated polling API older clients, bots and tools still use: `GET /events` (a flat
//! stream of what `/sync` reports per room), `GET /initialSync` and
//! `GET /rooms/{roomId}/initialSync`. They are answered from the same stream positions, caches and
//! long-poll wake-ups as `/sync` (through [`sync_v3::compute`] in its legacy mode, which leaves
//! to-device messages alone), and their tokens are sync tokens, so `/messages` and `/sync`
//! accept them too.
//!
//! Peeking: `/events?room_id=` and `/rooms/{roomId}/initialSync` of a room the user is not in work
//! when its history is `world_readable`, as the spec's guest access and peeking rules allow.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use ganglion_core::{PageToken, client_event};
use ganglion_http::{AuthUser, MatrixError};
use ganglion_storage::PersistedEvent;
use ruma::{OwnedRoomId, RoomId};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::sync_v3::{self, SyncParams};
use crate::{SyncContext, SyncToken};

/// `/events` waits this long when the client does not say (as Synapse).
const DEFAULT_TIMEOUT_MS: u64 = 30_000;
/// Events of one room one `/events` answer carries at most.
const EVENTS_PER_ROOM: u64 = 100;

#[derive(Debug, Deserialize)]
pub(crate) struct EventsQuery {
    from: Option<String>,
    timeout: Option<String>,
    room_id: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct InitialSyncQuery {
    limit: Option<String>,
    archived: Option<String>,
}

fn client(e: &PersistedEvent) -> Value {
    client_event(&e.json, e.event_id.as_str(), e.room_id.as_str(), None)
}

/// A token as legacy endpoints hand it out: without the to-device position, so a client that
/// later syncs with it does not acknowledge to-device messages it never received.
fn legacy_token(mut t: SyncToken) -> String {
    t.to_device = 0;
    t.to_string()
}

fn parse_limit(raw: Option<&str>, default: u64) -> Result<u64, MatrixError> {
    match raw {
        None => Ok(default),
        Some(l) => l
            .parse::<u64>()
            .map(|l| l.clamp(1, 1000))
            .map_err(|_| MatrixError::invalid_param("limit must be a positive integer")),
    }
}

async fn membership(ctx: &SyncContext, room: &RoomId, user: &str) -> Result<Option<String>, MatrixError> {
    Ok(ctx.events.state_event(room, "m.room.member", user).await?.and_then(|e| e.membership))
}

async fn world_readable(ctx: &SyncContext, room: &RoomId) -> Result<bool, MatrixError> {
    let Some(ev) = ctx.events.state_event(room, "m.room.history_visibility", "").await? else { return Ok(false) };
    let v: Value = serde_json::from_str(&ev.json).unwrap_or_default();
    Ok(v["content"]["history_visibility"] == "world_readable")
}

fn room_id(raw: &str) -> Result<OwnedRoomId, MatrixError> {
    OwnedRoomId::try_from(raw).map_err(|_| MatrixError::invalid_param("Invalid room_id"))
}

/// Tags each event of a sync section with its room, the way the flat legacy stream carries it.
fn with_room(events: &Value, room_id: &str) -> Vec<Value> {
    events
        .as_array()
        .map(|list| {
            list.iter()
                .cloned()
                .map(|mut e| {
                    e["room_id"] = json!(room_id);
                    e
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Legacy presence events also name the user inside `content`.
fn legacy_presence(events: &Value) -> Vec<Value> {
    events
        .as_array()
        .map(|list| {
            list.iter()
                .cloned()
                .map(|mut e| {
                    let sender = e["sender"].clone();
                    e["content"]["user_id"] = sender;
                    e
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `GET /_matrix/client/v3/events`: what happened after `from` (default: now), waiting up to
/// `timeout` for something; `room_id` narrows it to one room, or peeks into a world-readable one.
pub(crate) async fn events(
    State(ctx): State<SyncContext>,
    user: AuthUser,
    Query(q): Query<EventsQuery>,
) -> Result<Json<Value>, MatrixError> {
    let timeout = Duration::from_millis(match q.timeout.as_deref() {
        None => DEFAULT_TIMEOUT_MS,
        Some(t) => t.parse().map_err(|_| MatrixError::invalid_param("timeout must be a number of milliseconds"))?,
    });
    let mut positions = ctx.positions.clone();
    let from = match q.from.as_deref() {
        None | Some("END") => positions.current(),
        Some(t) => t.parse::<SyncToken>().map_err(|_| MatrixError::invalid_param("Invalid from token"))?,
    };
    let room = q.room_id.as_deref().map(room_id).transpose()?;
    if let Some(room) = &room
        && membership(&ctx, room, user.user_id.as_str()).await?.as_deref() != Some("join")
    {
        if !world_readable(&ctx, room).await? {
            return Err(MatrixError::forbidden("You are not in this room and it cannot be peeked into"));
        }
        return peek(&ctx, &user, room, from, timeout).await.map(Json);
    }
    let mut filter = json!({ "room": { "timeline": { "limit": EVENTS_PER_ROOM }, "include_leave": true } });
    if let Some(room) = &room {
        filter["room"]["rooms"] = json!([room]);
    }
    let params = SyncParams { since: Some(from), timeout, full_state: false, filter, state_after: false, legacy: true };
    let body = sync_v3::compute(&ctx, &user, params).await?;
    let mut chunk = Vec::new();
    for (room_id, r) in body["rooms"]["join"].as_object().into_iter().flatten() {
        chunk.extend(with_room(&r["timeline"]["events"], room_id));
        chunk.extend(with_room(&r["ephemeral"]["events"], room_id));
    }
    for (room_id, r) in body["rooms"]["leave"].as_object().into_iter().flatten() {
        chunk.extend(with_room(&r["timeline"]["events"], room_id));
    }
    // An invite is a room event of the room the user is invited to: the real member event, which
    // bots waiting for invites look for.
    for room_id in body["rooms"]["invite"].as_object().into_iter().flatten().map(|(k, _)| k) {
        if let Ok(room) = <&RoomId>::try_from(room_id.as_str())
            && let Some(ev) = ctx.events.state_event(room, "m.room.member", user.user_id.as_str()).await?
        {
            chunk.push(client(&ev));
        }
    }
    if room.is_none() {
        chunk.extend(legacy_presence(&body["presence"]["events"]));
    }
    let end = body["next_batch"].as_str().and_then(|t| t.parse::<SyncToken>().ok()).unwrap_or(from);
    Ok(Json(json!({ "chunk": chunk, "start": legacy_token(from), "end": legacy_token(end) })))
}

/// `/events?room_id=` for a world-readable room the user is not in: the room's events after
/// `from`, waiting for some up to `timeout`.
async fn peek(
    ctx: &SyncContext,
    user: &AuthUser,
    room: &RoomId,
    from: SyncToken,
    timeout: Duration,
) -> Result<Value, MatrixError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut positions = ctx.positions.clone();
    loop {
        let now = positions.current();
        let upto = now.events.max(from.events);
        let events = ctx
            .events
            .room_messages(room, PageToken::Stream(from.events as i64), false, upto as i64, EVENTS_PER_ROOM as i64)
            .await?;
        if !events.is_empty() || tokio::time::Instant::now() >= deadline {
            let end = events.last().map_or(upto, |e| e.stream_ordering as u64);
            let end = SyncToken { events: end, ..from.max(now) };
            let chunk: Vec<Value> = events.iter().map(client).collect();
            return Ok(json!({ "chunk": chunk, "start": legacy_token(from), "end": legacy_token(end) }));
        }
        if !positions.wait_for_news(&ctx.waiters, &user.user_id, [room.to_string()], upto, deadline).await {
            let chunk: Vec<Value> = Vec::new();
            return Ok(json!({ "chunk": chunk, "start": legacy_token(from), "end": legacy_token(from.max(now)) }));
        }
    }
}

/// The whole current state of a room, in client format.
async fn current_state(ctx: &SyncContext, room: &RoomId) -> Result<Vec<Value>, MatrixError> {
    Ok(ctx.events.current_state_events(room).await?.iter().map(client).collect())
}

async fn visibility(ctx: &SyncContext, room: &RoomId) -> Result<&'static str, MatrixError> {
    Ok(if ctx.events.is_room_published(room).await? { "public" } else { "private" })
}

/// `GET /_matrix/client/v3/initialSync`: every room of the user with its latest `limit` events
/// and its state, global account data and presence; `end` continues with `/events`.
pub(crate) async fn initial_sync(
    State(ctx): State<SyncContext>,
    user: AuthUser,
    Query(q): Query<InitialSyncQuery>,
) -> Result<Json<Value>, MatrixError> {
    let limit = parse_limit(q.limit.as_deref(), 10)?;
    let archived = q.archived.as_deref() == Some("true");
    let filter = json!({ "room": { "timeline": { "limit": limit }, "include_leave": archived } });
    let params = SyncParams {
        since: None,
        timeout: Duration::ZERO,
        full_state: false,
        filter,
        state_after: false,
        legacy: true,
    };
    let body = sync_v3::compute(&ctx, &user, params).await?;
    let end = body["next_batch"].as_str().and_then(|t| t.parse::<SyncToken>().ok()).unwrap_or_default();
    let end = legacy_token(end);
    let mut rooms = Vec::new();
    for (section, membership) in [("join", "join"), ("leave", "leave")] {
        for (room_id, r) in body["rooms"][section].as_object().into_iter().flatten() {
            let Ok(room) = <&RoomId>::try_from(room_id.as_str()) else { continue };
            let chunk = with_room(&r["timeline"]["events"], room_id);
            let start = r["timeline"]["prev_batch"].as_str().map_or_else(|| end.clone(), str::to_owned);
            let state = if membership == "join" {
                current_state(&ctx, room).await?
            } else {
                with_room(&r["state"]["events"], room_id)
            };
            rooms.push(json!({
                "room_id": room_id,
                "membership": membership,
                "messages": { "chunk": chunk, "start": start, "end": end },
                "state": state,
                "visibility": visibility(&ctx, room).await?,
                "account_data": r["account_data"]["events"].as_array().cloned().unwrap_or_default(),
            }));
        }
    }
    for (room_id, r) in body["rooms"]["invite"].as_object().into_iter().flatten() {
        let Ok(room) = <&RoomId>::try_from(room_id.as_str()) else { continue };
        let invite = ctx.events.state_event(room, "m.room.member", user.user_id.as_str()).await?;
        let mut entry = json!({
            "room_id": room_id,
            "membership": "invite",
            "invite": invite.as_ref().map(client),
            "state": r["invite_state"]["events"].as_array().cloned().unwrap_or_default(),
            "visibility": visibility(&ctx, room).await?,
        });
        if let Some(i) = &invite {
            entry["inviter"] = json!(i.sender);
        }
        rooms.push(entry);
    }
    Ok(Json(json!({
        "end": end,
        "rooms": rooms,
        "presence": legacy_presence(&body["presence"]["events"]),
        "account_data": body["account_data"]["events"].as_array().cloned().unwrap_or_default(),
        "receipts": [],
    })))
}

/// `GET /_matrix/client/v3/rooms/{roomId}/initialSync`: one room's latest `limit` events, state
/// and members' presence, for a member or a peeker of a world-readable room.
pub(crate) async fn room_initial_sync(
    State(ctx): State<SyncContext>,
    user: AuthUser,
    Path(room_id_raw): Path<String>,
    Query(q): Query<InitialSyncQuery>,
) -> Result<Json<Value>, MatrixError> {
    let room = room_id(&room_id_raw)?;
    let limit = parse_limit(q.limit.as_deref(), 10)?;
    let membership = membership(&ctx, &room, user.user_id.as_str()).await?;
    let member = membership.as_deref() == Some("join");
    if !member && !world_readable(&ctx, &room).await? {
        return Err(MatrixError::forbidden("You are not in this room and it cannot be peeked into"));
    }
    let mut positions = ctx.positions.clone();
    positions.catch_up_with_database(&ctx.events).await?;
    let now = positions.current();
    let mut events = ctx.events.room_messages(&room, PageToken::END, true, now.events as i64, limit as i64).await?;
    events.reverse();
    let start =
        events.first().map_or_else(|| legacy_token(now), |e| PageToken::before(e.depth, e.stream_ordering).to_string());
    let chunk: Vec<Value> = events.iter().map(client).collect();
    let state = current_state(&ctx, &room).await?;
    let members: Vec<String> = state
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "join")
        .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
        .collect();
    let presence: Vec<Value> = ctx
        .presence
        .changed_among(&members, 0, now.presence as i64)
        .await?
        .iter()
        .map(|p| {
            json!({ "type": "m.presence", "sender": p.user_id,
                    "content": { "presence": p.state, "user_id": p.user_id, "status_msg": p.status_msg } })
        })
        .collect();
    let mut body = json!({
        "room_id": room,
        "messages": { "chunk": chunk, "start": start, "end": legacy_token(now) },
        "state": state,
        "presence": presence,
        "receipts": [],
        "account_data": [],
        "visibility": visibility(&ctx, &room).await?,
    });
    if let Some(m) = membership {
        body["membership"] = json!(m);
    }
    Ok(Json(body))
}
