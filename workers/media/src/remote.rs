//! The seam for media of other servers. The federation work implements [`RemoteMedia`] (fetch over
//! `/_matrix/federation/v1/media/download`, store the bytes in the backend and the record in
//! `MediaStore` under the remote origin); until then [`NoRemoteMedia`] answers that nothing exists,
//! so remote media is 404 `M_NOT_FOUND`.

use std::fmt::Debug;
use std::time::Duration;

use ganglion_storage::MediaRecord;
use ruma::ServerName;

/// Why fetching remote media failed (the remote was unreachable or answered badly).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RemoteError(pub String);

/// Fetches and caches media of other servers.
#[async_trait::async_trait]
pub trait RemoteMedia: Send + Sync + Debug {
    /// Makes `origin`'s `media_id` available locally and returns its record: from the cache when
    /// already fetched, else by downloading it (waiting at most `timeout`) into the media backend
    /// and recording it. `None` when the remote says it does not exist.
    ///
    /// # Errors
    /// When the remote cannot be reached or answers badly.
    async fn fetch(
        &self,
        origin: &ServerName,
        media_id: &str,
        timeout: Duration,
    ) -> Result<Option<MediaRecord>, RemoteError>;
}

/// No federation yet: no remote media exists.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRemoteMedia;

#[async_trait::async_trait]
impl RemoteMedia for NoRemoteMedia {
    async fn fetch(&self, _: &ServerName, _: &str, _: Duration) -> Result<Option<MediaRecord>, RemoteError> {
        Ok(None)
    }
}
