//! [`MediaError`]: what can go wrong serving media, each mapped to its errcode on purpose.

use ganglion_http::MatrixError;
use http::StatusCode;

use crate::backend::BackendError;
use crate::preview::PreviewError;
use crate::remote::RemoteError;
use crate::thumbnail::ThumbnailError;

/// A media request's failure.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// No such media (or quarantined, or not served on this endpoint): 404 `M_NOT_FOUND`.
    #[error("media not found")]
    NotFound,
    /// Created but not uploaded before the download's timeout: 504 `M_NOT_YET_UPLOADED`.
    #[error("media not yet uploaded")]
    NotYetUploaded,
    /// The media ID already holds bytes: 409 `M_CANNOT_OVERWRITE_MEDIA`.
    #[error("media already uploaded")]
    CannotOverwrite,
    /// The media ID was created by another user: 403 `M_FORBIDDEN`.
    #[error("media ID belongs to another user")]
    NotOwner,
    /// Over `media.max_upload_bytes`: 413 `M_TOO_LARGE`.
    #[error("upload larger than {0} bytes")]
    TooLarge(u64),
    /// Over the user's quota: 403 `M_RESOURCE_LIMIT_EXCEEDED`.
    #[error("media quota exceeded")]
    QuotaExceeded,
    /// Too many unused `create` reservations: 429 `M_LIMIT_EXCEEDED`.
    #[error("too many pending uploads")]
    TooManyPending,
    /// A bad parameter: 400 `M_INVALID_PARAM`.
    #[error("{0}")]
    InvalidParam(String),
    /// Not an image we can thumbnail: 400 `M_UNKNOWN`, as the spec says.
    #[error("cannot thumbnail this content")]
    CannotThumbnail,
    /// An image too large to thumbnail: 413 `M_TOO_LARGE`, as the spec says.
    #[error("image too large to thumbnail")]
    ImageTooLarge,
    /// The client's body failed mid-upload: 400 `M_UNKNOWN`.
    #[error("upload body failed: {0}")]
    BodyFailed(String),
    /// A remote server failed to serve its media: 502 `M_UNKNOWN`.
    #[error("remote media: {0}")]
    Remote(String),
    /// A URL preview failed: 400 `M_INVALID_PARAM` (bad URL), 403 `M_FORBIDDEN` (refused address) or
    /// 502 `M_UNKNOWN` (fetch failed).
    #[error(transparent)]
    Preview(#[from] PreviewError),
    /// Storage failed: 500.
    #[error(transparent)]
    Storage(#[from] ganglion_storage::Error),
    /// The media store failed: 500.
    #[error(transparent)]
    Backend(BackendError),
    /// Thumbnailing failed unexpectedly: 500.
    #[error("thumbnailing: {0}")]
    Internal(String),
}

impl From<BackendError> for MediaError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::TooLarge(max) => Self::TooLarge(max),
            BackendError::Body(e) => Self::BodyFailed(e.to_string()),
            e @ BackendError::Store(_) => Self::Backend(e),
        }
    }
}

impl From<ThumbnailError> for MediaError {
    fn from(e: ThumbnailError) -> Self {
        match e {
            ThumbnailError::Unsupported | ThumbnailError::Decode(_) => Self::CannotThumbnail,
            ThumbnailError::TooLarge => Self::ImageTooLarge,
            ThumbnailError::Task(m) => Self::Internal(m),
        }
    }
}

impl From<RemoteError> for MediaError {
    fn from(e: RemoteError) -> Self {
        Self::Remote(e.to_string())
    }
}

impl From<MediaError> for MatrixError {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::NotFound => MatrixError::not_found("Media not found"),
            MediaError::NotYetUploaded => MatrixError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "M_NOT_YET_UPLOADED",
                "The media has not been uploaded yet",
            ),
            MediaError::CannotOverwrite => {
                MatrixError::new(StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA", "Media ID already has content")
            }
            MediaError::NotOwner => MatrixError::forbidden("This media ID was created by another user"),
            MediaError::TooLarge(max) => {
                MatrixError::too_large(format!("Upload exceeds the maximum size of {max} bytes"))
            }
            MediaError::QuotaExceeded => {
                MatrixError::new(StatusCode::FORBIDDEN, "M_RESOURCE_LIMIT_EXCEEDED", "Media storage quota exceeded")
            }
            MediaError::TooManyPending => MatrixError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "M_LIMIT_EXCEEDED",
                "Too many pending media uploads; upload or wait for them to expire",
            ),
            MediaError::InvalidParam(m) => MatrixError::invalid_param(m),
            MediaError::CannotThumbnail => MatrixError::bad_request("Cannot generate a thumbnail of this content"),
            MediaError::ImageTooLarge => MatrixError::too_large("Image too large to thumbnail"),
            MediaError::BodyFailed(m) => MatrixError::bad_request(format!("Upload failed: {m}")),
            MediaError::Remote(m) => {
                tracing::warn!(error = %m, "remote media failed");
                MatrixError::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", "Remote server failed to serve the media")
            }
            MediaError::Preview(PreviewError::InvalidUrl(m)) => MatrixError::invalid_param(m),
            MediaError::Preview(PreviewError::Blocked(m)) => {
                tracing::debug!(reason = %m, "URL preview refused");
                MatrixError::forbidden("This URL cannot be previewed")
            }
            MediaError::Preview(PreviewError::Fetch(m)) => {
                tracing::debug!(error = %m, "URL preview failed");
                MatrixError::new(StatusCode::BAD_GATEWAY, "M_UNKNOWN", format!("Cannot preview this URL: {m}"))
            }
            MediaError::Storage(e) => MatrixError::internal(e),
            MediaError::Backend(e) => MatrixError::internal(e),
            MediaError::Internal(m) => MatrixError::internal(m),
        }
    }
}
