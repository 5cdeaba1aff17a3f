//! `POST /search`: full-text search of room events in the rooms the user is in (PostgreSQL
//! full-text search or SQLite FTS5), ordered by rank or recency, with optional context, groupings
//! by room or sender, and the state of the rooms found (`include_state`).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Query, State};
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use ruma::api::client::filter::RoomEventFilter;
use serde::Deserialize;
use serde_json::{Value, json};

use super::pagination;
use super::relations::client_events;
use crate::Rooms;

const ALL_KEYS: [&str; 3] = ["content.body", "content.name", "content.topic"];

#[derive(Debug, Deserialize)]
pub(crate) struct SearchQuery {
    next_batch: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RoomEventsCriteria {
    search_term: String,
    keys: Option<Vec<String>>,
    #[serde(default)]
    filter: Value,
    order_by: Option<String>,
    event_context: Option<Value>,
    #[serde(default)]
    include_state: bool,
    groupings: Option<Groupings>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Groupings {
    #[serde(default)]
    group_by: Vec<Group>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Group {
    key: String,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Categories {
    room_events: Option<RoomEventsCriteria>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SearchBody {
    search_categories: Categories,
}

/// `POST /_matrix/client/v3/search`.
pub(crate) async fn search(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Query(q): Query<SearchQuery>,
    MatrixJson(body): MatrixJson<SearchBody>,
) -> Result<Json<Value>, MatrixError> {
    let Some(c) = body.search_categories.room_events else {
        return Ok(Json(json!({ "search_categories": {} })));
    };
    let keys: Vec<&str> = match &c.keys {
        None => ALL_KEYS.to_vec(),
        Some(k) => {
            if let Some(bad) = k.iter().find(|k| !ALL_KEYS.contains(&k.as_str())) {
                return Err(MatrixError::invalid_param(format!("Unknown search key {bad}")));
            }
            k.iter().map(String::as_str).collect()
        }
    };
    let group_keys: Vec<&str> =
        c.groupings.as_ref().map(|g| g.group_by.iter().map(|g| g.key.as_str()).collect()).unwrap_or_default();
    if let Some(bad) = group_keys.iter().find(|k| !matches!(**k, "room_id" | "sender")) {
        return Err(MatrixError::invalid_param(format!("Unknown group_by key {bad}")));
    }
    let by_rank = match c.order_by.as_deref() {
        None | Some("rank") => true,
        Some("recent") => false,
        Some(other) => return Err(MatrixError::invalid_param(format!("Unknown order_by {other}"))),
    };
    let offset: i64 = match q.next_batch.as_deref() {
        None => 0,
        Some(t) => t
            .strip_prefix('s')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| MatrixError::invalid_param("Invalid next_batch"))?,
    };
    let limit = c.filter.get("limit").and_then(Value::as_i64).unwrap_or(10).clamp(1, 100);
    let only: Option<Vec<String>> = c
        .filter
        .get("rooms")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect());
    let not: Vec<String> = c
        .filter
        .get("not_rooms")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    // Only rooms the user is in now: their history is theirs to search.
    let joined: Vec<String> = rooms
        .events
        .rooms_for_user(&user.user_id)
        .await?
        .into_iter()
        .filter(|m| m.membership == "join")
        .map(|m| m.room_id.to_string())
        .filter(|r| only.as_ref().is_none_or(|o| o.contains(r)) && !not.contains(r))
        .collect();
    let (hits, total) = rooms.events.search(&c.search_term, &joined, &keys, by_rank, offset, limit).await?;
    let ids: Vec<&str> = hits.iter().map(|h| h.event_id.as_str()).collect();
    let found = rooms.events.events(&ids).await?;
    let mut results = Vec::new();
    // group key → group id → (order of first appearance, event IDs), for `groupings`.
    let mut groups: BTreeMap<&str, BTreeMap<String, (usize, Vec<String>)>> = BTreeMap::new();
    let mut result_rooms: Vec<ruma::OwnedRoomId> = Vec::new();
    for hit in &hits {
        let Some(e) = found.iter().find(|e| e.event_id.as_str() == hit.event_id) else { continue };
        for key in &group_keys {
            let id = if *key == "room_id" { e.room_id.to_string() } else { e.sender.to_string() };
            let by_id = groups.entry(key).or_default();
            let next = by_id.len() + 1;
            by_id.entry(id).or_insert((next, Vec::new())).1.push(e.event_id.to_string());
        }
        if !result_rooms.contains(&e.room_id) {
            result_rooms.push(e.room_id.clone());
        }
        let mut events = client_events(&rooms, &user.user_id, i64::MAX, std::slice::from_ref(e)).await?;
        let mut result = json!({ "rank": hit.rank, "result": events.pop().unwrap_or(Value::Null) });
        if let Some(ctx) = &c.event_context {
            let before = ctx.get("before_limit").and_then(Value::as_i64).unwrap_or(5).clamp(0, 20);
            let after = ctx.get("after_limit").and_then(Value::as_i64).unwrap_or(5).clamp(0, 20);
            let around = pagination::around(&rooms, e, (before, after), i64::MAX, &RoomEventFilter::default()).await?;
            result["context"] = json!({
                "events_before": client_events(&rooms, &user.user_id, i64::MAX, &around.before).await?,
                "events_after": client_events(&rooms, &user.user_id, i64::MAX, &around.after).await?,
                "start": around.start.to_string(),
                "end": around.end.to_string(),
            });
        }
        results.push(result);
    }
    let highlights: Vec<String> = c.search_term.split_whitespace().map(str::to_lowercase).collect();
    let mut room_events = json!({ "count": total, "results": results, "highlights": highlights });
    if offset + (hits.len() as i64) < total {
        room_events["next_batch"] = json!(format!("s{}", offset + limit));
    }
    if !groups.is_empty() {
        // Groups cover the results of this page; the page's `next_batch` continues every group.
        let next = room_events.get("next_batch").cloned();
        let groups: serde_json::Map<String, Value> = groups
            .into_iter()
            .map(|(key, by_id)| {
                let by_id: serde_json::Map<String, Value> = by_id
                    .into_iter()
                    .map(|(id, (order, results))| {
                        let mut g = json!({ "order": order, "results": results });
                        if let Some(n) = &next {
                            g["next_batch"] = n.clone();
                        }
                        (id, g)
                    })
                    .collect();
                (key.to_owned(), Value::Object(by_id))
            })
            .collect();
        room_events["groups"] = Value::Object(groups);
    }
    if c.include_state {
        // The current state of each room with a result (the user is joined to all of them).
        let mut state = serde_json::Map::new();
        for room_id in &result_rooms {
            let events = rooms.events.current_state_events(room_id).await?;
            state.insert(room_id.to_string(), json!(client_events(&rooms, &user.user_id, i64::MAX, &events).await?));
        }
        room_events["state"] = Value::Object(state);
    }
    Ok(Json(json!({ "search_categories": { "room_events": room_events } })))
}
