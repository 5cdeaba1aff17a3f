//! Relations between events: `/relations` (all three path forms), `/threads`, bundled aggregations
//! (`unsigned.m.relations`) for every endpoint of `main` that returns room events, and
//! `/timestamp_to_event`.
//!
//! Everything reads the relations index (`event_relations`), filled by the writer from each
//! event's `content.m.relates_to` when it is persisted.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::{Path, Query, State};
use ganglion_http::{AuthUser, MatrixError};
use ganglion_storage::{PersistedEvent, RelationFilter};
use ruma::UserId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{parse_room_id, visible_upto};
use crate::Rooms;

/// How deep `recurse=true` follows relations of relations (Synapse's limit).
const MAX_RECURSION_DEPTH: i64 = 3;

fn token(e: &PersistedEvent) -> String {
    format!("t{}_{}", e.depth, e.stream_ordering)
}

/// The stream position of a `/relations` token: ours and `/messages`' (`t{depth}_{stream}`) or a
/// sync token.
fn token_position(t: &str) -> Result<i64, MatrixError> {
    ganglion_core::PageToken::parse(t)
        .map(ganglion_core::PageToken::stream)
        .ok_or_else(|| MatrixError::invalid_param(format!("Invalid pagination token {t}")))
}

fn parse_limit(limit: Option<&str>, default: i64, max: i64) -> Result<i64, MatrixError> {
    Ok(match limit {
        None => default,
        Some(l) => {
            l.parse::<i64>().ok().filter(|l| *l >= 0).ok_or_else(|| MatrixError::invalid_param("Invalid limit"))?
        }
    }
    .min(max))
}

/// `events` in client format with their bundled aggregations: see
/// [`ganglion_storage::client_events_with_relations`].
///
/// # Errors
/// On storage failure.
pub(crate) async fn client_events(
    rooms: &Rooms,
    user: &UserId,
    upto: i64,
    events: &[PersistedEvent],
) -> Result<Vec<Value>, MatrixError> {
    Ok(ganglion_storage::client_events_with_relations(&rooms.events, user, upto, events).await?)
}

#[derive(Debug, Deserialize)]
pub(crate) struct RelationsQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
    dir: Option<String>,
    #[serde(alias = "org.matrix.msc3981.recurse")]
    recurse: Option<String>,
}

/// `GET /_matrix/client/v1/rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`: the
/// events relating to a visible event, newest first unless `dir=f`; with `recurse=true`, also the
/// events relating to those, down to [`MAX_RECURSION_DEPTH`] levels.
pub(crate) async fn get_relations(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(params): Path<HashMap<String, String>>,
    Query(q): Query<RelationsQuery>,
) -> Result<Json<Value>, MatrixError> {
    let param = |k: &str| params.get(k).map(String::as_str);
    let room_id = parse_room_id(param("room_id").unwrap_or_default())?;
    let parent = param("event_id").unwrap_or_default();
    let backwards = match q.dir.as_deref() {
        None | Some("b") => true,
        Some("f") => false,
        Some(other) => return Err(MatrixError::invalid_param(format!("dir must be b or f, not {other}"))),
    };
    let recurse = match q.recurse.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(MatrixError::invalid_param(format!("recurse must be true or false, not {other}"))),
    };
    let limit = parse_limit(q.limit.as_deref(), 5, 1000)?;
    let from = q.from.as_deref().map(token_position).transpose()?;
    let to = q.to.as_deref().map(token_position).transpose()?;
    let upto = visible_upto(&rooms, &user.user_id, &room_id).await?;
    match rooms.events.event(parent).await? {
        Some(e) if e.room_id == room_id && e.stream_ordering <= upto => {}
        _ => return Err(MatrixError::not_found("Unknown parent event.")),
    }
    let filter = RelationFilter {
        rel_type: param("rel_type"),
        event_type: param("event_type"),
        max_depth: if recurse { MAX_RECURSION_DEPTH } else { 1 },
        backwards,
        from,
        to,
        upto,
        limit,
    };
    let chunk = rooms.events.relations(&room_id, parent, &filter).await?;
    let mut body = BTreeMap::new();
    if chunk.len() as i64 == limit
        && limit > 0
        && let Some(last) = chunk.last()
    {
        body.insert("next_batch", json!(token(last)));
    }
    if let Some(from) = &q.from {
        body.insert("prev_batch", json!(from));
    }
    if recurse {
        body.insert("recursion_depth", json!(MAX_RECURSION_DEPTH));
    }
    body.insert("chunk", json!(client_events(&rooms, &user.user_id, upto, &chunk).await?));
    Ok(Json(json!(body)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct ThreadsQuery {
    include: Option<String>,
    from: Option<String>,
    limit: Option<String>,
}

/// `GET /_matrix/client/v1/rooms/{roomId}/threads`: thread roots, latest thread activity first,
/// each with its bundled thread summary. `include=participated` keeps the threads the user
/// started or replied in.
pub(crate) async fn get_threads(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(room_id): Path<String>,
    Query(q): Query<ThreadsQuery>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    let participant = match q.include.as_deref() {
        None | Some("all") => None,
        Some("participated") => Some(user.user_id.as_ref()),
        Some(other) => {
            return Err(MatrixError::invalid_param(format!("include must be all or participated, not {other}")));
        }
    };
    let limit = parse_limit(q.limit.as_deref(), 5, 1000)?;
    // Our tokens are the stream position of the last thread's latest activity.
    let before = match q.from.as_deref() {
        None => i64::MAX,
        Some(t) => t.parse::<i64>().map_err(|_| MatrixError::invalid_param(format!("Invalid from token {t}")))?,
    };
    let upto = visible_upto(&rooms, &user.user_id, &room_id).await?;
    let roots = rooms.events.threads(&room_id, participant, upto, before, limit).await?;
    let ids: Vec<&str> = roots.iter().map(|(id, _)| id.as_str()).collect();
    let mut fetched: HashMap<String, PersistedEvent> =
        rooms.events.events(&ids).await?.into_iter().map(|e| (e.event_id.to_string(), e)).collect();
    let events: Vec<PersistedEvent> = ids.iter().filter_map(|id| fetched.remove(*id)).collect();
    let mut body = BTreeMap::new();
    if roots.len() as i64 == limit
        && limit > 0
        && let Some((_, latest)) = roots.last()
    {
        body.insert("next_batch", json!(latest.to_string()));
    }
    body.insert("chunk", json!(client_events(&rooms, &user.user_id, upto, &events).await?));
    Ok(Json(json!(body)))
}

#[derive(Debug, Deserialize)]
pub(crate) struct TimestampQuery {
    ts: Option<String>,
    dir: Option<String>,
}

/// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`: the event closest to `ts` in
/// direction `dir`, among those the user may see (as `/messages`).
pub(crate) async fn timestamp_to_event(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Path(room_id): Path<String>,
    Query(q): Query<TimestampQuery>,
) -> Result<Json<Value>, MatrixError> {
    let room_id = parse_room_id(&room_id)?;
    let ts = q.ts.as_deref().ok_or_else(|| MatrixError::missing_param("Missing ts parameter"))?;
    let ts: i64 = ts.parse().map_err(|_| MatrixError::invalid_param(format!("ts must be an integer, not {ts}")))?;
    let forwards = match q.dir.as_deref() {
        Some("f") => true,
        Some("b") => false,
        None => return Err(MatrixError::missing_param("Missing dir parameter")),
        Some(other) => return Err(MatrixError::invalid_param(format!("dir must be b or f, not {other}"))),
    };
    let upto = visible_upto(&rooms, &user.user_id, &room_id).await?;
    let event = rooms.events.event_near_ts(&room_id, ts, forwards, upto).await?.ok_or_else(|| {
        MatrixError::not_found(format!(
            "Unable to find event from {ts} in direction {}",
            if forwards { "f" } else { "b" }
        ))
    })?;
    Ok(Json(json!({ "event_id": event.event_id, "origin_server_ts": event.origin_server_ts })))
}
