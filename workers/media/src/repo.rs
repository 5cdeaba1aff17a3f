//! [`MediaRepo`]: the content repository's rules (limits, quotas, reservations, waiting for pending
//! uploads, the unauthenticated freeze, thumbnail choice) over a [`MediaStore`] and a
//! [`MediaBackend`]. Handlers only translate HTTP to calls on it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ganglion_config::{MediaConfig, ThumbnailMethod, UnauthenticatedMedia};
use ganglion_storage::EventStore;
use ganglion_storage::{CompleteUpload, MediaRecord, MediaStore, ThumbnailKey, ThumbnailRecord, UploadedContent};
use rand::Rng as _;
use rand::distributions::Alphanumeric;
use ruma::{OwnedMxcUri, OwnedServerName, RoomId, ServerName, UserId};
use tracing::instrument;

use crate::backend::{ByteRange, ByteStream, MediaBackend, content_key, read_all, thumbnail_key};
use crate::error::MediaError;
use crate::remote::RemoteMedia;
use crate::thumbnail::{ThumbnailPermit, ThumbnailSpec, Thumbnailer, is_thumbnailable};

/// Largest side of a thumbnail generated on demand.
const MAX_DYNAMIC_SIDE: u32 = 1600;
/// Length of generated media IDs (alphanumeric: 143 bits).
const MEDIA_ID_LEN: usize = 24;

/// Which family of endpoints asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `/_matrix/client/v1/media/*`: authenticated, serves everything.
    Authenticated,
    /// `/_matrix/media/v3/download|thumbnail`: unauthenticated; frozen media is not served.
    Unauthenticated,
}

/// What a client said about an upload.
#[derive(Debug, Clone, Default)]
pub struct UploadMeta {
    /// `Content-Type` of the request.
    pub content_type: Option<String>,
    /// The `filename` query parameter.
    pub filename: Option<String>,
    /// `Content-Length`, when sent: checked against limits before a byte is read.
    pub content_length: Option<u64>,
}

/// A body ready to serve.
pub struct Served {
    /// The bytes, streamed (`None` for an empty range answer).
    pub body: Option<ByteStream>,
    /// `Content-Type`.
    pub content_type: String,
    /// Full size in bytes.
    pub size_bytes: u64,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Served")
            .field("content_type", &self.content_type)
            .field("size_bytes", &self.size_bytes)
            .finish()
    }
}

/// The media repository. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MediaRepo {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    server_name: OwnedServerName,
    store: MediaStore,
    backend: Arc<dyn MediaBackend>,
    remote: Arc<dyn RemoteMedia>,
    cfg: MediaConfig,
    thumbnailer: Thumbnailer,
}

/// A media ID we could have issued: never anything a path or key could be confused by.
fn valid_media_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 255 && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Every `(server, media ID)` of the `mxc://` URIs in a text (an event's JSON).
fn mxc_uris(text: &str) -> Vec<(String, String)> {
    text.match_indices("mxc://")
        .filter_map(|(i, _)| {
            let rest = &text[i + 6..];
            let end = rest.find(|c: char| c == '"' || c == '\\' || c.is_whitespace()).unwrap_or(rest.len());
            let (server, id) = rest[..end].split_once('/')?;
            valid_media_id(id).then(|| (server.to_owned(), id.to_owned()))
        })
        .collect()
}

fn new_media_id() -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(MEDIA_ID_LEN).map(char::from).collect()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn method_name(m: ThumbnailMethod) -> &'static str {
    match m {
        ThumbnailMethod::Scale => "scale",
        ThumbnailMethod::Crop => "crop",
    }
}

impl MediaRepo {
    /// A repository for `server_name`'s media.
    pub fn new(
        server_name: OwnedServerName,
        store: MediaStore,
        backend: Arc<dyn MediaBackend>,
        remote: Arc<dyn RemoteMedia>,
        cfg: MediaConfig,
    ) -> Self {
        let thumbnailer = Thumbnailer::new(cfg.thumbnail_concurrency, cfg.max_image_pixels);
        Self { inner: Arc::new(Inner { server_name, store, backend, remote, cfg, thumbnailer }) }
    }

    /// The largest upload accepted (`m.upload.size`).
    pub fn max_upload_bytes(&self) -> u64 {
        self.inner.cfg.max_upload_bytes
    }

    /// The longest a download may wait for a pending upload.
    pub fn max_wait(&self) -> Duration {
        Duration::from_millis(self.inner.cfg.max_download_wait_ms)
    }

    /// The metadata store.
    pub fn store(&self) -> &MediaStore {
        &self.inner.store
    }

    fn mxc(&self, media_id: &str) -> OwnedMxcUri {
        OwnedMxcUri::from(format!("mxc://{}/{media_id}", self.inner.server_name))
    }

    fn authenticated_only(&self) -> bool {
        self.inner.cfg.unauthenticated == UnauthenticatedMedia::Frozen
    }

    /// Refuses an upload that would take `user` over the quota, or one larger than allowed.
    async fn check_limits(&self, user: &UserId, incoming: u64) -> Result<(), MediaError> {
        if incoming > self.inner.cfg.max_upload_bytes {
            return Err(MediaError::TooLarge(self.inner.cfg.max_upload_bytes));
        }
        if let Some(quota) = self.inner.cfg.user_quota_bytes {
            let usage = self.inner.store.usage(user).await?;
            if usage.bytes.saturating_add(incoming) > quota {
                return Err(MediaError::QuotaExceeded);
            }
        }
        Ok(())
    }

    /// Streams a body into the backend within the limits; on a quota overrun after the fact (no
    /// `Content-Length`) the bytes are discarded again.
    async fn store_body(
        &self,
        user: &UserId,
        meta: &UploadMeta,
        body: ByteStream,
    ) -> Result<UploadedContent, MediaError> {
        self.check_limits(user, meta.content_length.unwrap_or(0)).await?;
        let stored = self.inner.backend.put(body, self.inner.cfg.max_upload_bytes).await?;
        if meta.content_length.is_none()
            && let Err(e) = self.check_limits(user, stored.size_bytes).await
        {
            self.discard(&stored.sha256).await;
            return Err(e);
        }
        Ok(UploadedContent {
            content_type: meta.content_type.clone().filter(|t| !t.is_empty()),
            upload_name: meta.filename.clone().filter(|n| !n.is_empty()),
            size_bytes: stored.size_bytes,
            sha256: stored.sha256,
        })
    }

    /// Deletes bytes no record uses (an upload that lost a race or broke a limit).
    async fn discard(&self, sha256: &str) {
        match self.inner.store.sha256_in_use(sha256).await {
            Ok(false) => {
                if let Err(e) = self.inner.backend.delete(&content_key(sha256)).await {
                    tracing::warn!(error = %e, "could not delete unused media bytes");
                }
            }
            Ok(true) => {}
            Err(e) => tracing::warn!(error = %e, "could not check media bytes before deleting"),
        }
    }

    /// `POST /upload`: stores the bytes under a new media ID.
    ///
    /// # Errors
    /// [`MediaError::TooLarge`], [`MediaError::QuotaExceeded`], body, storage and backend failures.
    #[instrument(skip_all, fields(user_id = %user))]
    pub async fn upload(&self, user: &UserId, meta: UploadMeta, body: ByteStream) -> Result<OwnedMxcUri, MediaError> {
        let content = self.store_body(user, &meta, body).await?;
        let media_id = new_media_id();
        let origin = &self.inner.server_name;
        if let Err(e) =
            self.inner.store.insert_uploaded(origin, &media_id, user, &content, self.authenticated_only()).await
        {
            self.discard(&content.sha256).await;
            return Err(e.into());
        }
        tracing::debug!(media_id, size = content.size_bytes, "media uploaded");
        self.spawn_configured_thumbnails(media_id.clone());
        Ok(self.mxc(&media_id))
    }

    /// `POST /create`: reserves a media ID for a later `PUT`. Returns it and when it lapses.
    ///
    /// # Errors
    /// [`MediaError::TooManyPending`] and storage failures.
    #[instrument(skip_all, fields(user_id = %user))]
    pub async fn create(&self, user: &UserId) -> Result<(OwnedMxcUri, i64), MediaError> {
        if self.inner.store.pending_count(user).await? >= self.inner.cfg.max_pending_uploads {
            return Err(MediaError::TooManyPending);
        }
        let media_id = new_media_id();
        let expires =
            now_ms().saturating_add(i64::try_from(self.inner.cfg.pending_upload_expiry_ms).unwrap_or(i64::MAX));
        self.inner
            .store
            .create_pending(&self.inner.server_name, &media_id, user, expires, self.authenticated_only())
            .await?;
        Ok((self.mxc(&media_id), expires))
    }

    /// `PUT /upload/{serverName}/{mediaId}`: fills a reservation.
    ///
    /// # Errors
    /// [`MediaError::NotFound`] (unknown, lapsed or remote), [`MediaError::NotOwner`],
    /// [`MediaError::CannotOverwrite`], the limits of [`Self::upload`].
    #[instrument(skip_all, fields(user_id = %user, media_id))]
    pub async fn upload_pending(
        &self,
        user: &UserId,
        server: &ServerName,
        media_id: &str,
        meta: UploadMeta,
        body: ByteStream,
    ) -> Result<(), MediaError> {
        if server != self.inner.server_name || !valid_media_id(media_id) {
            return Err(MediaError::NotFound);
        }
        // Cheap checks first, so a refused upload is not read at all.
        let record = self.inner.store.get(server, media_id).await?.ok_or(MediaError::NotFound)?;
        if record.uploader.as_deref() != Some(user) {
            return Err(MediaError::NotOwner);
        }
        if record.is_uploaded() {
            return Err(MediaError::CannotOverwrite);
        }
        if record.unused_expires_ts.is_some_and(|t| t <= now_ms()) {
            return Err(MediaError::NotFound);
        }
        let content = self.store_body(user, &meta, body).await?;
        let outcome = self.inner.store.complete_upload(server, media_id, user, &content).await;
        let err = match outcome {
            Ok(CompleteUpload::Done) => {
                self.spawn_configured_thumbnails(media_id.to_owned());
                return Ok(());
            }
            Ok(CompleteUpload::AlreadyUploaded) => MediaError::CannotOverwrite,
            Ok(CompleteUpload::NotOwner) => MediaError::NotOwner,
            Ok(CompleteUpload::NotFound | CompleteUpload::Expired) => MediaError::NotFound,
            Err(e) => e.into(),
        };
        self.discard(&content.sha256).await;
        Err(err)
    }

    /// The record of a piece of media that can be served to `access`, waiting up to `wait` for a
    /// pending upload. Remote media goes through [`RemoteMedia`].
    ///
    /// Waiting polls the database (every 100 ms, backing off to 1 s), so the upload may land on any
    /// media worker.
    ///
    /// # Errors
    /// [`MediaError::NotFound`] (unknown, quarantined, lapsed, frozen for `access`),
    /// [`MediaError::NotYetUploaded`] after `wait`, storage and remote failures.
    #[instrument(skip_all, fields(origin = %server, media_id))]
    pub async fn find(
        &self,
        server: &ServerName,
        media_id: &str,
        wait: Duration,
        access: Access,
    ) -> Result<MediaRecord, MediaError> {
        if !valid_media_id(media_id) {
            return Err(MediaError::NotFound);
        }
        let wait = wait.min(self.max_wait());
        if server != self.inner.server_name {
            let record = self.inner.remote.fetch(server, media_id, wait).await?.ok_or(MediaError::NotFound)?;
            return if record.quarantined { Err(MediaError::NotFound) } else { Ok(record) };
        }
        let deadline = tokio::time::Instant::now() + wait;
        let mut pause = Duration::from_millis(100);
        loop {
            let record = self.inner.store.get(server, media_id).await?.ok_or(MediaError::NotFound)?;
            if record.quarantined || (access == Access::Unauthenticated && record.authenticated_only) {
                return Err(MediaError::NotFound);
            }
            if record.is_uploaded() {
                return Ok(record);
            }
            if record.unused_expires_ts.is_some_and(|t| t <= now_ms()) {
                return Err(MediaError::NotFound);
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(MediaError::NotYetUploaded);
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Opens an uploaded piece of media's bytes (or a range of them).
    ///
    /// # Errors
    /// [`MediaError::NotFound`] when the bytes are missing from the store; backend failures.
    pub async fn open(&self, record: &MediaRecord, range: Option<ByteRange>) -> Result<Served, MediaError> {
        let (Some(sha), Some(size)) = (record.sha256.as_deref(), record.size_bytes) else {
            return Err(MediaError::NotFound);
        };
        let body = self.inner.backend.get(&content_key(sha), range).await?;
        if body.is_none() {
            tracing::warn!(origin = %record.origin, media_id = record.media_id, "media bytes missing from the store");
            return Err(MediaError::NotFound);
        }
        Ok(Served {
            body,
            content_type: record.content_type.clone().unwrap_or_else(|| "application/octet-stream".to_owned()),
            size_bytes: size,
        })
    }

    /// The size a thumbnail request is answered with: exactly the requested box when dynamic
    /// thumbnails are on (each side capped at 1600), else the smallest configured size of the
    /// method that covers it (or the largest one).
    fn choose(&self, width: u32, height: u32, method: ThumbnailMethod, animated: bool) -> ThumbnailSpec {
        let cfg = &self.inner.cfg;
        if cfg.dynamic_thumbnails || cfg.thumbnail_sizes.is_empty() {
            return ThumbnailSpec {
                width: width.clamp(1, MAX_DYNAMIC_SIDE),
                height: height.clamp(1, MAX_DYNAMIC_SIDE),
                method,
                animated,
            };
        }
        let same: Vec<_> = cfg.thumbnail_sizes.iter().copied().filter(|s| s.method == method).collect();
        let pool = if same.is_empty() { cfg.thumbnail_sizes.clone() } else { same };
        let area = |s: &ganglion_config::ThumbnailSizeConfig| u64::from(s.width) * u64::from(s.height);
        let covering = pool.iter().filter(|s| s.width >= width && s.height >= height).min_by_key(|s| area(s));
        let pick = covering
            .or_else(|| pool.iter().max_by_key(|s| area(s)))
            .copied()
            .unwrap_or(ganglion_config::ThumbnailSizeConfig { width, height, method });
        ThumbnailSpec { width: pick.width, height: pick.height, method: pick.method, animated }
    }

    /// A thumbnail of uploaded media: a stored one when present, else generated (and stored).
    /// Thumbnails are small and served whole (no ranges).
    ///
    /// # Errors
    /// [`MediaError::CannotThumbnail`], [`MediaError::ImageTooLarge`], storage and backend failures.
    #[instrument(skip_all, fields(origin = %record.origin, media_id = record.media_id))]
    pub async fn thumbnail(
        &self,
        record: &MediaRecord,
        width: u32,
        height: u32,
        method: ThumbnailMethod,
        animated: bool,
    ) -> Result<Served, MediaError> {
        if !is_thumbnailable(record.content_type.as_deref()) {
            return Err(MediaError::CannotThumbnail);
        }
        let sha = record.sha256.as_deref().ok_or(MediaError::NotFound)?;
        // Only GIFs can come out animated; other types share the still thumbnail.
        let is_gif = record.content_type.as_deref().is_some_and(|t| t.to_ascii_lowercase().starts_with("image/gif"));
        let spec = self.choose(width, height, method, animated && is_gif);
        let key = thumbnail_key(sha, spec.width, spec.height, method_name(spec.method), spec.animated);
        let stored = self.inner.store.thumbnails(&record.origin, &record.media_id).await?;
        let wanted = ThumbnailKey {
            width: spec.width,
            height: spec.height,
            method: method_name(spec.method).to_owned(),
            animated: spec.animated,
        };
        if let Some(t) = stored.iter().find(|t| t.key == wanted)
            && let Some(body) = self.inner.backend.get(&key, None).await?
        {
            return Ok(Served { body: Some(body), content_type: t.content_type.clone(), size_bytes: t.size_bytes });
        }
        let thumb = self.generate(record, sha, spec, &key).await?;
        let bytes = thumb.bytes;
        let body: ByteStream = Box::pin(futures::stream::once(async move { Ok(bytes) }));
        Ok(Served { body: Some(body), content_type: thumb.content_type.to_owned(), size_bytes: thumb.size_bytes })
    }

    async fn generate(
        &self,
        record: &MediaRecord,
        sha: &str,
        spec: ThumbnailSpec,
        key: &str,
    ) -> Result<GeneratedThumbnail, MediaError> {
        let permit = self.inner.thumbnailer.permit().await?;
        let original = read_all(self.inner.backend.as_ref(), &content_key(sha)).await?.ok_or(MediaError::NotFound)?;
        self.generate_from(&permit, record, Arc::new(original), spec, key).await
    }

    async fn generate_from(
        &self,
        permit: &ThumbnailPermit,
        record: &MediaRecord,
        original: Arc<Vec<u8>>,
        spec: ThumbnailSpec,
        key: &str,
    ) -> Result<GeneratedThumbnail, MediaError> {
        let thumb = self.inner.thumbnailer.make(permit, original, spec).await?;
        let bytes = Bytes::from(thumb.bytes);
        self.inner.backend.put_named(key, bytes.clone()).await?;
        let size_bytes = bytes.len() as u64;
        let rec = ThumbnailRecord {
            key: ThumbnailKey {
                width: spec.width,
                height: spec.height,
                method: method_name(spec.method).to_owned(),
                animated: spec.animated,
            },
            content_type: thumb.content_type.to_owned(),
            size_bytes,
        };
        self.inner.store.put_thumbnail(&record.origin, &record.media_id, &rec).await?;
        Ok(GeneratedThumbnail { bytes, content_type: thumb.content_type, size_bytes })
    }

    /// Generates the configured thumbnail sizes of a fresh upload in the background. A thumbnail
    /// request that comes first generates its own size; both store the same bytes.
    fn spawn_configured_thumbnails(&self, media_id: String) {
        if self.inner.cfg.thumbnail_sizes.is_empty() {
            return;
        }
        let repo = self.clone();
        tokio::spawn(async move {
            if let Err(e) = repo.configured_thumbnails(&media_id).await {
                tracing::debug!(media_id, error = %e, "no thumbnails generated on upload");
            }
        });
    }

    async fn configured_thumbnails(&self, media_id: &str) -> Result<(), MediaError> {
        let Some(record) = self.inner.store.get(&self.inner.server_name, media_id).await? else { return Ok(()) };
        if !is_thumbnailable(record.content_type.as_deref()) {
            return Ok(());
        }
        let sha = record.sha256.clone().ok_or(MediaError::NotFound)?;
        let permit = self.inner.thumbnailer.permit().await?;
        let original = read_all(self.inner.backend.as_ref(), &content_key(&sha)).await?.ok_or(MediaError::NotFound)?;
        let original = Arc::new(original);
        for size in self.inner.cfg.thumbnail_sizes.clone() {
            let spec = ThumbnailSpec { width: size.width, height: size.height, method: size.method, animated: false };
            let key = thumbnail_key(&sha, spec.width, spec.height, method_name(spec.method), false);
            self.generate_from(&permit, &record, original.clone(), spec, &key).await?;
        }
        Ok(())
    }

    /// Quarantines (or releases) one piece of media: quarantined media is never served.
    ///
    /// # Errors
    /// [`MediaError::NotFound`] when there is no such media; storage failures.
    #[instrument(skip_all, fields(origin = %server, media_id))]
    pub async fn set_quarantined(
        &self,
        server: &ServerName,
        media_id: &str,
        quarantined: bool,
    ) -> Result<(), MediaError> {
        if self.inner.store.set_quarantined(server, media_id, quarantined).await? {
            tracing::info!(quarantined, "media quarantine changed");
            Ok(())
        } else {
            Err(MediaError::NotFound)
        }
    }

    /// Quarantines (or releases) everything `user` uploaded. Returns how many changed.
    ///
    /// # Errors
    /// Storage failures.
    #[instrument(skip_all, fields(user_id = %user))]
    pub async fn set_user_quarantined(&self, user: &UserId, quarantined: bool) -> Result<u64, MediaError> {
        let n = self.inner.store.set_quarantined_by_uploader(user, quarantined).await?;
        tracing::info!(quarantined, count = n, "user's media quarantine changed");
        Ok(n)
    }

    /// Quarantines every piece of media an event of `room` refers to (any `mxc://` URI in its
    /// JSON: `url`, `info.thumbnail_url`, `avatar_url`, encrypted `file.url`, …). Returns how many
    /// changed.
    ///
    /// # Errors
    /// Storage failures.
    #[instrument(skip_all, fields(room_id = %room))]
    pub async fn quarantine_room(&self, events: &EventStore, room: &RoomId) -> Result<u64, MediaError> {
        let mut upto = i64::MAX;
        let mut uris = std::collections::BTreeSet::new();
        loop {
            let page = events.latest_room_events(room, upto, 500).await?;
            let Some(first) = page.first() else { break };
            upto = first.stream_ordering - 1;
            for ev in &page {
                uris.extend(mxc_uris(&ev.json));
            }
        }
        let mut n = 0;
        for (server, media_id) in uris {
            if let Ok(server) = OwnedServerName::try_from(server.as_str())
                && self.inner.store.set_quarantined(&server, &media_id, true).await?
            {
                n += 1;
            }
        }
        tracing::info!(count = n, "room's media quarantined");
        Ok(n)
    }

    /// Deletes a piece of local media: its records, and its bytes and thumbnails once no other
    /// media shares them.
    ///
    /// # Errors
    /// [`MediaError::NotFound`], [`MediaError::InvalidParam`] for remote media; storage and backend
    /// failures.
    #[instrument(skip_all, fields(origin = %server, media_id))]
    pub async fn delete(&self, server: &ServerName, media_id: &str) -> Result<(), MediaError> {
        if server != self.inner.server_name {
            return Err(MediaError::InvalidParam("Only local media can be deleted".into()));
        }
        let record = self.inner.store.get(server, media_id).await?.ok_or(MediaError::NotFound)?;
        let thumbs = self.inner.store.delete(server, media_id).await?.unwrap_or_default();
        if let Some(sha) = record.sha256.as_deref()
            && !self.inner.store.sha256_in_use(sha).await?
        {
            for t in thumbs {
                let key = thumbnail_key(sha, t.key.width, t.key.height, &t.key.method, t.key.animated);
                self.inner.backend.delete(&key).await?;
            }
            self.inner.backend.delete(&content_key(sha)).await?;
        }
        tracing::info!("media deleted");
        Ok(())
    }

    /// Deletes everything `user` uploaded or reserved. Returns the media IDs deleted.
    ///
    /// # Errors
    /// Storage and backend failures (what was deleted before stays deleted).
    #[instrument(skip_all, fields(user_id = %user))]
    pub async fn delete_user_media(&self, user: &UserId) -> Result<Vec<String>, MediaError> {
        let mut deleted = Vec::new();
        for record in self.inner.store.by_uploader(user).await? {
            match self.delete(&record.origin, &record.media_id).await {
                Ok(()) | Err(MediaError::NotFound) => deleted.push(record.media_id),
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// Deletes reservations that lapsed without an upload.
    ///
    /// # Errors
    /// On storage failure.
    pub async fn expire_pending(&self) -> Result<u64, MediaError> {
        Ok(self.inner.store.delete_expired_pending(now_ms()).await?)
    }
}

struct GeneratedThumbnail {
    bytes: Bytes,
    content_type: &'static str,
    size_bytes: u64,
}

#[cfg(test)]
mod tests {
    #[test]
    fn mxc_uris_are_found_anywhere_in_event_json() {
        let json = r#"{"content":{"url":"mxc://example.org/abc","info":{"thumbnail_url":"mxc://other.org/t_1"},
            "file":{"url":"mxc://example.org/enc-2"},"body":"see mxc://example.org/bad/id and mxc://nothing"}}"#;
        let found = super::mxc_uris(json);
        assert_eq!(
            found,
            vec![
                ("example.org".to_owned(), "abc".to_owned()),
                ("other.org".to_owned(), "t_1".to_owned()),
                ("example.org".to_owned(), "enc-2".to_owned()),
            ]
        );
    }
}
