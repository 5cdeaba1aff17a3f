//! `/_matrix/client/v1/media/*` (spec v1.11 authenticated media): ruma's
//! `client::authenticated_media::{get_content, get_content_as_filename, get_content_thumbnail,
//! get_media_config, get_media_preview}`. Every endpoint requires an access token.

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use ganglion_http::{AuthUser, MatrixError};
use http::HeaderMap;

use super::{DownloadQuery, PreviewQuery, ThumbnailQuery, path, query};
use crate::repo::{Access, MediaRepo};

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`: the content, streamed.
pub(crate) async fn get_content(
    State(repo): State<MediaRepo>,
    _user: AuthUser,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<DownloadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, MatrixError> {
    super::download(&repo, Access::Authenticated, path(p)?, None, query(q)?, &headers).await
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`: the content, named.
pub(crate) async fn get_content_as_filename(
    State(repo): State<MediaRepo>,
    _user: AuthUser,
    p: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<DownloadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, MatrixError> {
    let (server, media_id, name) = path(p)?;
    super::download(&repo, Access::Authenticated, (server, media_id), Some(name), query(q)?, &headers).await
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`: a thumbnail.
pub(crate) async fn get_content_thumbnail(
    State(repo): State<MediaRepo>,
    _user: AuthUser,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<ThumbnailQuery>, QueryRejection>,
) -> Result<Response, MatrixError> {
    super::thumbnail(&repo, Access::Authenticated, path(p)?, query(q)?).await
}

/// `GET /_matrix/client/v1/media/preview_url`: OpenGraph data of a URL.
pub(crate) async fn get_media_preview(
    State(previewer): State<Option<crate::Previewer>>,
    State(repo): State<MediaRepo>,
    user: AuthUser,
    q: Result<Query<PreviewQuery>, QueryRejection>,
) -> Result<Response, MatrixError> {
    super::preview(previewer, &repo, &user.user_id, query(q)?).await
}

/// `GET /_matrix/client/v1/media/config`: `m.upload.size`.
pub(crate) async fn get_media_config(State(repo): State<MediaRepo>, _user: AuthUser) -> Response {
    super::config(&repo)
}
