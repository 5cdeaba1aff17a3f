//! Media administration, at Synapse's admin API paths so existing tools work: quarantine by media
//! ID, by user and by room, delete by media ID and by user. Server admins only (403 `M_FORBIDDEN` otherwise).
//!
//! The routing table sends `/_synapse/admin/` to `main`; until it routes these paths to the media
//! role, they are reachable in one-process mode and on a media worker's own listener.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse as _, Response};
use ganglion_http::{AuthUser, MatrixError};
use ganglion_storage::EventStore;
use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::json;

use crate::client::{path, server_name};
use crate::repo::MediaRepo;

fn require_admin(user: &AuthUser) -> Result<(), MatrixError> {
    if user.is_admin { Ok(()) } else { Err(MatrixError::forbidden("You are not a server admin")) }
}

fn user_id(s: &str) -> Result<OwnedUserId, MatrixError> {
    OwnedUserId::try_from(s).map_err(|_| MatrixError::invalid_param("Invalid user ID"))
}

async fn set_quarantine(
    repo: &MediaRepo,
    user: &AuthUser,
    p: Result<Path<(String, String)>, PathRejection>,
    quarantined: bool,
) -> Result<Response, MatrixError> {
    require_admin(user)?;
    let (server, media_id) = path(p)?;
    repo.set_quarantined(&server_name(&server)?, &media_id, quarantined).await?;
    Ok(Json(json!({})).into_response())
}

/// `POST /_synapse/admin/v1/media/quarantine/{serverName}/{mediaId}`: stop serving one piece of media.
pub(crate) async fn quarantine_media(
    State(repo): State<MediaRepo>,
    user: AuthUser,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, MatrixError> {
    set_quarantine(&repo, &user, p, true).await
}

/// `POST /_synapse/admin/v1/media/unquarantine/{serverName}/{mediaId}`: serve it again.
pub(crate) async fn unquarantine_media(
    State(repo): State<MediaRepo>,
    user: AuthUser,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, MatrixError> {
    set_quarantine(&repo, &user, p, false).await
}

/// `POST /_synapse/admin/v1/user/{userId}/media/quarantine`: quarantine everything a user uploaded.
pub(crate) async fn quarantine_user_media(
    State(repo): State<MediaRepo>,
    user: AuthUser,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, MatrixError> {
    require_admin(&user)?;
    let target = user_id(&path(p)?)?;
    let n = repo.set_user_quarantined(&target, true).await?;
    Ok(Json(json!({ "num_quarantined": n })).into_response())
}

/// `POST /_synapse/admin/v1/room/{roomId}/media/quarantine`: quarantine the media a room's events
/// refer to.
pub(crate) async fn quarantine_room_media(
    State(repo): State<MediaRepo>,
    State(events): State<EventStore>,
    user: AuthUser,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, MatrixError> {
    require_admin(&user)?;
    let room = OwnedRoomId::try_from(path(p)?.as_str()).map_err(|_| MatrixError::invalid_param("Invalid room ID"))?;
    let n = repo.quarantine_room(&events, &room).await?;
    Ok(Json(json!({ "num_quarantined": n })).into_response())
}

/// `DELETE /_synapse/admin/v1/media/{serverName}/{mediaId}`: delete one piece of local media.
pub(crate) async fn delete_media(
    State(repo): State<MediaRepo>,
    user: AuthUser,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, MatrixError> {
    require_admin(&user)?;
    let (server, media_id) = path(p)?;
    repo.delete(&server_name(&server)?, &media_id).await?;
    Ok(Json(json!({ "deleted_media": [media_id], "total": 1 })).into_response())
}

/// `DELETE /_synapse/admin/v1/users/{userId}/media`: delete everything a user uploaded.
pub(crate) async fn delete_user_media(
    State(repo): State<MediaRepo>,
    user: AuthUser,
    p: Result<Path<String>, PathRejection>,
) -> Result<Response, MatrixError> {
    require_admin(&user)?;
    let target = user_id(&path(p)?)?;
    let deleted = repo.delete_user_media(&target).await?;
    let total = deleted.len();
    Ok(Json(json!({ "deleted_media": deleted, "total": total })).into_response())
}
