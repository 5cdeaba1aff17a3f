//! `GET /notifications`: the events that notified the user, newest first.

use axum::Json;
use axum::extract::{Query, State};
use ganglion_http::{AuthUser, MatrixError};
use serde::Deserialize;
use serde_json::{Value, json};

use super::relations::client_events;
use crate::Rooms;

#[derive(Debug, Deserialize)]
pub(crate) struct NotificationsQuery {
    from: Option<String>,
    limit: Option<String>,
    only: Option<String>,
}

/// `GET /_matrix/client/v3/notifications`: `from` is the `next_token` of a previous page.
pub(crate) async fn notifications(
    State(rooms): State<Rooms>,
    user: AuthUser,
    Query(q): Query<NotificationsQuery>,
) -> Result<Json<Value>, MatrixError> {
    let before = match q.from.as_deref() {
        None => i64::MAX,
        Some(t) => t.parse::<i64>().map_err(|_| MatrixError::invalid_param("Invalid from token"))?,
    };
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(l) => {
            l.parse::<i64>().ok().filter(|l| *l > 0).ok_or_else(|| MatrixError::invalid_param("Invalid limit"))?
        }
    }
    .min(100);
    let only_highlight = q.only.as_deref() == Some("highlight");
    let entries = rooms.events.notifications(&user.user_id, before, limit, only_highlight).await?;
    let mut list = Vec::with_capacity(entries.len());
    for n in &entries {
        let event = client_events(&rooms, &user.user_id, i64::MAX, std::slice::from_ref(&n.event))
            .await?
            .pop()
            .unwrap_or(Value::Null);
        let mut actions: Value = serde_json::from_str(&n.actions).unwrap_or_else(|_| json!(["notify"]));
        // Rows stored before the actions were kept say only "notify".
        if n.highlight
            && let Some(list) = actions.as_array_mut()
            && !list.iter().any(|a| a["set_tweak"] == "highlight")
        {
            list.push(json!({ "set_tweak": "highlight" }));
        }
        list.push(json!({
            "actions": actions,
            "event": event,
            "read": n.read,
            "room_id": n.event.room_id,
            "ts": n.event.origin_server_ts,
        }));
    }
    let mut body = json!({ "notifications": list });
    if entries.len() as i64 == limit
        && let Some(last) = entries.last()
    {
        body["next_token"] = json!(last.event.stream_ordering.to_string());
    }
    Ok(Json(body))
}
