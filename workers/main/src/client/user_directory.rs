//! `POST /user_directory/search`: users who share a room with the searcher or are joined to a
//! public room (or, with `user_directory.search_all_users`, every active local user), matched on
//! user ID or display name.

use axum::Json;
use axum::extract::State;
use ganglion_http::{AuthUser, MatrixError, MatrixJson};
use ganglion_storage::DirectoryScope;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::UserData;

#[derive(Debug, Deserialize)]
pub(crate) struct SearchBody {
    search_term: String,
    limit: Option<u64>,
}

/// `POST /_matrix/client/v3/user_directory/search`.
pub(crate) async fn search(
    State(data): State<UserData>,
    user: AuthUser,
    MatrixJson(body): MatrixJson<SearchBody>,
) -> Result<Json<Value>, MatrixError> {
    let limit = body.limit.unwrap_or(10).clamp(1, 100) as usize;
    let scope = if data.search_all_users { DirectoryScope::AllUsers } else { DirectoryScope::VisibleTo(&user.user_id) };
    // One more than the limit tells whether the answer is `limited`.
    let mut found = data.users.search_user_directory(body.search_term.trim(), limit as i64 + 1, scope).await?;
    let limited = found.len() > limit;
    found.truncate(limit);
    let results: Vec<Value> = found
        .into_iter()
        .map(|(id, name, avatar)| json!({ "user_id": id, "display_name": name, "avatar_url": avatar }))
        .collect();
    Ok(Json(json!({ "results": results, "limited": limited })))
}
