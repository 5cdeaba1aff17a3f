//! The HTTP handlers, in modules following ruma's paths: `authenticated_media` for
//! `/_matrix/client/v1/media/*`, `media` for the legacy `/_matrix/media/*`. Both translate HTTP to
//! calls on [`MediaRepo`](crate::MediaRepo); what they share lives here.

pub(crate) mod authenticated_media;
pub(crate) mod media;

use std::io;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::response::{IntoResponse as _, Response};
use futures::TryStreamExt as _;
use ganglion_config::ThumbnailMethod;
use ganglion_http::MatrixError;
use http::{HeaderMap, header};
use ruma::OwnedServerName;
use serde::Deserialize;

use crate::backend::ByteStream;
use crate::repo::{Access, MediaRepo, UploadMeta};
use crate::response::{RangeRequest, content_disposition, media_response, parse_range};

/// The spec's default wait for a pending upload.
const DEFAULT_TIMEOUT_MS: u64 = 20_000;

/// `?timeout_ms=&allow_redirect=&allow_remote=` of downloads.
#[derive(Debug, Deserialize)]
pub(crate) struct DownloadQuery {
    timeout_ms: Option<u64>,
}

impl DownloadQuery {
    /// How long to wait for a pending upload.
    pub(crate) fn wait(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS))
    }
}

/// `?width=&height=&method=&animated=&timeout_ms=` of thumbnails.
#[derive(Debug, Deserialize)]
pub(crate) struct ThumbnailQuery {
    pub(crate) width: u32,
    pub(crate) height: u32,
    method: Option<String>,
    animated: Option<bool>,
    timeout_ms: Option<u64>,
}

impl ThumbnailQuery {
    /// The method asked for, once the request is checked.
    pub(crate) fn method(&self) -> Result<ThumbnailMethod, MatrixError> {
        if self.width == 0 || self.height == 0 {
            return Err(MatrixError::invalid_param("width and height must be positive"));
        }
        match self.method.as_deref() {
            None | Some("scale") => Ok(ThumbnailMethod::Scale),
            Some("crop") => Ok(ThumbnailMethod::Crop),
            Some(other) => Err(MatrixError::invalid_param(format!("Unknown thumbnail method {other:?}"))),
        }
    }

    /// Whether an animated thumbnail is wanted.
    pub(crate) fn animated(&self) -> bool {
        self.animated.unwrap_or(false)
    }

    /// How long to wait for a pending upload.
    pub(crate) fn wait(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS))
    }
}

/// `?url=&ts=` of URL previews.
#[derive(Debug, Deserialize)]
pub(crate) struct PreviewQuery {
    url: String,
}

/// A URL preview, on either prefix.
pub(crate) async fn preview(
    previewer: Option<crate::Previewer>,
    repo: &MediaRepo,
    user: &ruma::UserId,
    q: PreviewQuery,
) -> Result<Response, MatrixError> {
    let previewer = previewer.ok_or_else(|| MatrixError::unrecognized("URL previews are disabled"))?;
    let og = previewer.preview(&q.url, Some((repo, user))).await.map_err(crate::MediaError::from)?;
    Ok(axum::Json(og).into_response())
}

/// `?filename=` of uploads.
#[derive(Debug, Deserialize)]
pub(crate) struct UploadQuery {
    filename: Option<String>,
}

pub(crate) fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, MatrixError> {
    q.map(|Query(t)| t).map_err(|e| MatrixError::invalid_param(e.body_text()))
}

pub(crate) fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, MatrixError> {
    p.map(|Path(t)| t).map_err(|e| MatrixError::invalid_param(e.body_text()))
}

/// A server name from a path; one that cannot be valid names no media we have.
pub(crate) fn server_name(s: &str) -> Result<OwnedServerName, MatrixError> {
    OwnedServerName::try_from(s).map_err(|_| MatrixError::not_found("Media not found"))
}

pub(crate) fn body_stream(body: Body) -> ByteStream {
    Box::pin(body.into_data_stream().map_err(io::Error::other))
}

pub(crate) fn upload_meta(headers: &HeaderMap, filename: Option<String>) -> UploadMeta {
    UploadMeta {
        content_type: headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned),
        filename,
        content_length: headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()),
    }
}

/// A download, authenticated or not: the record, the range, the headers, the streamed body.
pub(crate) async fn download(
    repo: &MediaRepo,
    access: Access,
    (server, media_id): (String, String),
    filename: Option<String>,
    q: DownloadQuery,
    headers: &HeaderMap,
) -> Result<Response, MatrixError> {
    let server = server_name(&server)?;
    let record = repo.find(&server, &media_id, q.wait(), access).await?;
    let size = record.size_bytes.unwrap_or(0);
    let range = parse_range(headers.get(header::RANGE), size);
    let content_type = record.content_type.clone().unwrap_or_else(|| "application/octet-stream".to_owned());
    let disposition = content_disposition(&content_type, filename.as_deref().or(record.upload_name.as_deref()));
    let body = match range {
        RangeRequest::Unsatisfiable => None,
        RangeRequest::Full => repo.open(&record, None).await?.body,
        RangeRequest::Partial(r) => repo.open(&record, Some(r)).await?.body,
    };
    Ok(media_response(body, &content_type, disposition, size, range))
}

/// A thumbnail, authenticated or not.
pub(crate) async fn thumbnail(
    repo: &MediaRepo,
    access: Access,
    (server, media_id): (String, String),
    q: ThumbnailQuery,
) -> Result<Response, MatrixError> {
    let method = q.method()?;
    let server = server_name(&server)?;
    let record = repo.find(&server, &media_id, q.wait(), access).await?;
    let served = repo.thumbnail(&record, q.width, q.height, method, q.animated()).await?;
    let ext = served.content_type.rsplit('/').next().unwrap_or("bin").to_owned();
    let disposition = content_disposition(&served.content_type, Some(&format!("thumbnail.{ext}")));
    let mut resp =
        media_response(served.body, &served.content_type, disposition, served.size_bytes, RangeRequest::Full);
    resp.headers_mut().insert(header::ACCEPT_RANGES, http::HeaderValue::from_static("none"));
    Ok(resp)
}

/// `{"m.upload.size": …}`.
pub(crate) fn config(repo: &MediaRepo) -> Response {
    axum::Json(serde_json::json!({ "m.upload.size": repo.max_upload_bytes() })).into_response()
}
