//! Bundled aggregations (`unsigned.m.relations`): what every endpoint that returns room events
//! (main's and the sync worker's) attaches from the relations index.

use std::collections::HashMap;

use ganglion_core::client_event;
use ruma::UserId;
use serde_json::{Value, json};

use crate::{EventStore, PersistedEvent, RelationRow, Result};

/// The relation types bundled into `unsigned.m.relations`.
const BUNDLED: &[&str] = &["m.thread", "m.replace", "m.reference"];

/// `events` in client format, each with `unsigned.m.relations` as the spec's bundled aggregations
/// describe: the thread summary (`m.thread`), the latest edit by the original sender
/// (`m.replace`, the whole edit event since spec v1.7) and references (`m.reference`). Only
/// relations at or below `upto` (what `user` may see) and in the events' room (they are all of
/// one room) count.
///
/// # Errors
/// On database failure.
pub async fn client_events_with_relations(
    store: &EventStore,
    user: &UserId,
    upto: i64,
    events: &[PersistedEvent],
) -> Result<Vec<Value>> {
    let Some(room_id) = events.first().map(|e| e.room_id.clone()) else { return Ok(Vec::new()) };
    let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    let rows = store.relation_rows(&room_id, &ids, BUNDLED, upto).await?;
    let mut by_parent: HashMap<&str, Vec<&RelationRow>> = HashMap::new();
    for r in &rows {
        by_parent.entry(r.relates_to.as_str()).or_default().push(r);
    }
    // The latest thread event and the latest valid edit of each parent, fetched in one query.
    let mut latest_thread: HashMap<&str, &RelationRow> = HashMap::new();
    let mut latest_edit: HashMap<&str, &RelationRow> = HashMap::new();
    for e in events {
        let Some(children) = by_parent.get(e.event_id.as_str()) else { continue };
        // Rows come oldest first, so the last match is the latest.
        if let Some(t) = children.iter().rev().find(|r| r.rel_type == "m.thread") {
            latest_thread.insert(e.event_id.as_str(), t);
        }
        let edit = children
            .iter()
            .rev()
            .find(|r| r.rel_type == "m.replace" && r.sender == e.sender && r.event_type == e.event_type);
        if let Some(edit) = edit.filter(|_| e.state_key.is_none()) {
            latest_edit.insert(e.event_id.as_str(), edit);
        }
    }
    let wanted: Vec<&str> = latest_thread.values().chain(latest_edit.values()).map(|r| r.event_id.as_str()).collect();
    let fetched: HashMap<String, PersistedEvent> =
        store.events(&wanted).await?.into_iter().map(|e| (e.event_id.to_string(), e)).collect();
    let plain = |e: &PersistedEvent| client_event(&e.json, e.event_id.as_str(), e.room_id.as_str(), None);

    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let id = e.event_id.as_str();
        let mut relations = serde_json::Map::new();
        if let Some(children) = by_parent.get(id) {
            let thread: Vec<&&RelationRow> = children.iter().filter(|r| r.rel_type == "m.thread").collect();
            if let Some(latest) = latest_thread.get(id).and_then(|r| fetched.get(r.event_id.as_str())) {
                relations.insert(
                    "m.thread".into(),
                    json!({
                        "latest_event": plain(latest),
                        "count": thread.len(),
                        "current_user_participated": e.sender == user || thread.iter().any(|r| r.sender == user),
                    }),
                );
            }
            if let Some(edit) = latest_edit.get(id).and_then(|r| fetched.get(r.event_id.as_str())) {
                relations.insert("m.replace".into(), plain(edit));
            }
            let refs: Vec<Value> = children
                .iter()
                .filter(|r| r.rel_type == "m.reference")
                .map(|r| json!({ "event_id": r.event_id }))
                .collect();
            if !refs.is_empty() {
                relations.insert("m.reference".into(), json!({ "chunk": refs }));
            }
        }
        let unsigned = (!relations.is_empty()).then(|| json!({ "m.relations": relations }));
        out.push(client_event(&e.json, id, e.room_id.as_str(), unsigned));
    }
    Ok(out)
}
