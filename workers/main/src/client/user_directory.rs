//! `POST /user_directory/search`: users who share a room with the searcher or sit in a room of
//! the public directory, matched on user ID or display name.

use axum::Json;
use axum::extract::State;
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::{Rooms, UserData};

#[derive(Debug, Deserialize)]
pub(crate) struct SearchBody {
    search_term: String,
    limit: Option<u64>,
}

/// `POST /_matrix/client/v3/user_directory/search`.
pub(crate) async fn search(
    State(data): State<UserData>,
    State(rooms): State<Rooms>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<SearchBody>,
) -> Result<Json<Value>, MatrixError> {
    let limit = body.limit.unwrap_or(10).clamp(1, 100) as usize;
    let mut visible: std::collections::HashSet<String> =
        rooms.events.users_sharing_rooms(&user.user_id).await?.into_iter().collect();
    for (room_id, _) in rooms.events.published_rooms().await? {
        visible.extend(rooms.events.members_with(&room_id, "join").await?);
    }
    // Fetch more than the limit: some matches are filtered out as not visible.
    let candidates = data.users.search_users(body.search_term.trim(), 500).await?;
    let mut results = Vec::new();
    let mut limited = false;
    for (id, name, avatar) in candidates.into_iter().filter(|(id, _, _)| visible.contains(id)) {
        if results.len() == limit {
            limited = true;
            break;
        }
        results.push(json!({ "user_id": id, "display_name": name, "avatar_url": avatar }));
    }
    Ok(Json(json!({ "results": results, "limited": limited })))
}
