//! The legacy `/_matrix/media/*` endpoints: ruma's `client::media::{create_content,
//! create_mxc_uri, create_content_async, get_content, get_content_as_filename,
//! get_content_thumbnail, get_media_config, get_media_preview}`. Uploads and the config need an access token; the
//! downloads and thumbnails do not, and serve only media uploaded while `media.unauthenticated` was
//! `serve`.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse as _, Response};
use ganglion_http::{AuthUser, MatrixError};
use http::HeaderMap;
use serde_json::json;

use super::{
    DownloadQuery, PreviewQuery, ThumbnailQuery, UploadQuery, body_stream, path, query, server_name, upload_meta,
};
use crate::repo::{Access, MediaRepo};

/// An upload refused before its body was read whole: the client may still be sending it, so the
/// connection cannot be reused for another request.
pub(crate) struct UnreadBody(MatrixError);

impl axum::response::IntoResponse for UnreadBody {
    fn into_response(self) -> Response {
        let mut resp = self.0.into_response();
        resp.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
        resp
    }
}

impl From<MatrixError> for UnreadBody {
    fn from(e: MatrixError) -> Self {
        Self(e)
    }
}

fn unread_body(e: crate::MediaError) -> UnreadBody {
    UnreadBody(e.into())
}

/// `POST /_matrix/media/v3/upload`: stores the body under a new media ID.
pub(crate) async fn create_content(
    State(repo): State<MediaRepo>,
    user: AuthUser,
    q: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, UnreadBody> {
    let meta = upload_meta(&headers, query(q)?.filename);
    let uri = repo.upload(&user.user_id, meta, body_stream(body)).await.map_err(unread_body)?;
    Ok(Json(json!({ "content_uri": uri })).into_response())
}

/// `POST /_matrix/media/v1/create`: reserves a media ID for a later upload.
pub(crate) async fn create_mxc_uri(State(repo): State<MediaRepo>, user: AuthUser) -> Result<Response, MatrixError> {
    let (uri, expires) = repo.create(&user.user_id).await?;
    Ok(Json(json!({ "content_uri": uri, "unused_expires_at": expires })).into_response())
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`: uploads to a reserved media ID.
pub(crate) async fn create_content_async(
    State(repo): State<MediaRepo>,
    user: AuthUser,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<UploadQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, UnreadBody> {
    let (server, media_id) = path(p)?;
    let server = server_name(&server)?;
    let meta = upload_meta(&headers, query(q)?.filename);
    repo.upload_pending(&user.user_id, &server, &media_id, meta, body_stream(body)).await.map_err(unread_body)?;
    Ok(Json(json!({})).into_response())
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}`: unauthenticated download.
pub(crate) async fn get_content(
    State(repo): State<MediaRepo>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<DownloadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, MatrixError> {
    super::download(&repo, Access::Unauthenticated, path(p)?, None, query(q)?, &headers).await
}

/// `GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}`: unauthenticated, named.
pub(crate) async fn get_content_as_filename(
    State(repo): State<MediaRepo>,
    p: Result<Path<(String, String, String)>, PathRejection>,
    q: Result<Query<DownloadQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, MatrixError> {
    let (server, media_id, name) = path(p)?;
    super::download(&repo, Access::Unauthenticated, (server, media_id), Some(name), query(q)?, &headers).await
}

/// `GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}`: unauthenticated thumbnail.
pub(crate) async fn get_content_thumbnail(
    State(repo): State<MediaRepo>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<ThumbnailQuery>, QueryRejection>,
) -> Result<Response, MatrixError> {
    super::thumbnail(&repo, Access::Unauthenticated, path(p)?, query(q)?).await
}

/// `GET /_matrix/media/v3/preview_url`: OpenGraph data of a URL (authenticated, as the spec says).
pub(crate) async fn get_media_preview(
    State(previewer): State<Option<crate::Previewer>>,
    State(repo): State<MediaRepo>,
    user: AuthUser,
    q: Result<Query<PreviewQuery>, QueryRejection>,
) -> Result<Response, MatrixError> {
    super::preview(previewer, &repo, &user.user_id, query(q)?).await
}

/// `GET /_matrix/media/v3/config`: `m.upload.size` (authenticated, as the spec says).
pub(crate) async fn get_media_config(State(repo): State<MediaRepo>, _user: AuthUser) -> Response {
    super::config(&repo)
}
