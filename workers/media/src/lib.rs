//! The `media` role: the content repository (`/_matrix/media/*`, `/_matrix/client/v1/media/*`).
//!
//! Map:
//! - `lib.rs`: [`Media`] (the running role: state, stream follower, expiry task), [`MediaState`]
//!   and the routers ([`client_router`], [`media_router`], [`admin_router`], [`router`]).
//! - `repo.rs`: [`MediaRepo`], the domain rules: limits, quotas, `create` reservations, waiting for
//!   pending uploads, the unauthenticated freeze, thumbnail choice.
//! - `backend.rs`: [`MediaBackend`] (streaming put, ranged get, delete) and [`FsBackend`], the
//!   content-addressed local store under `media.path`; `backend/s3.rs`: [`S3Backend`] (chosen
//!   when `media.s3` is set) with `backend/sigv4.rs`, its request signing.
//! - `thumbnail.rs`: decoding, scaling/cropping, encoding on the blocking pool ([`Thumbnailer`]).
//! - `response.rs`: safety headers, `Content-Disposition`, HTTP ranges.
//! - `preview.rs`: [`Previewer`], URL previews that refuse non-global addresses unless allow-listed,
//!   cap redirects, bytes and time, and parse OpenGraph.
//! - `remote.rs`: [`RemoteMedia`], how other servers' media is fetched ([`NoRemoteMedia`] for tests).
//! - `federation.rs`: `/_matrix/federation/v1/media/*` (signed requests, `multipart/mixed`) and
//!   [`FederatedRemoteMedia`], which fetches other servers' media that way and caches it.
//! - `error.rs`: [`MediaError`] and its one mapping to Matrix errors.
//! - `client.rs`, `client/authenticated_media.rs`, `client/media.rs`: the handlers.
//! - `admin.rs`: quarantine by media ID, user and room, delete by media ID and user, at Synapse's
//!   admin API paths.
//!
//! Depends on the shared crates (`ganglion-config`, `-http`, `-storage`, `-replication`); never on
//! another worker crate. Only the binary depends on it. It writes its own `media` tables directly
//! (they are not part of the event stream); everything else it only reads.

#![warn(missing_docs)]

mod admin;
mod backend;
mod client;
mod error;
mod federation;
mod preview;
mod remote;
mod repo;
mod response;
mod thumbnail;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRef;
use axum::routing::{get, post, put};
use ganglion_config::Config;
use ganglion_federation::{FederationClient, InboundAuth, KeyFetcher};
use ganglion_http::Authenticator;
use ganglion_replication::{Bus, Follower, StreamPosition};
use ganglion_storage::{Db, EventStore, KeyStore, MediaStore, RemoteKeyStore, UserStore, follow_events};
use ruma::OwnedServerName;
use tokio::sync::watch;

pub use backend::{
    BackendError, ByteRange, ByteStream, FsBackend, MediaBackend, S3Backend, Stored, content_key, thumbnail_key,
};
pub use error::MediaError;
pub use federation::FederatedRemoteMedia;
pub use preview::{PreviewError, Previewer, opengraph};
pub use remote::{NoRemoteMedia, RemoteError, RemoteMedia};
pub use repo::{Access, MediaRepo, Served, UploadMeta};
pub use response::{CONTENT_SECURITY_POLICY, add_safety_headers, content_disposition, is_inline_type};
pub use thumbnail::{Thumbnail, ThumbnailError, ThumbnailPermit, ThumbnailSpec, Thumbnailer};

/// How often lapsed `create` reservations are removed.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(600);

/// Why the role could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad configuration (an invalid server name).
    #[error("config: {0}")]
    Config(String),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] ganglion_storage::Error),
    /// The media directory could not be created.
    #[error("media store: {0}")]
    Store(std::io::Error),
    /// The object store could not be reached.
    #[error("media store: {0}")]
    Backend(BackendError),
}

/// The handlers' state: the token resolver and the repository.
#[derive(Debug, Clone)]
pub struct MediaState {
    auth: Authenticator,
    repo: MediaRepo,
    events: EventStore,
    preview: Option<Previewer>,
    federation: Option<ganglion_federation::InboundAuth>,
}

impl MediaState {
    /// State from its parts, without URL previews. `events` is read (never written) to find the
    /// media a room refers to.
    pub fn new(auth: Authenticator, repo: MediaRepo, events: EventStore) -> Self {
        Self { auth, repo, events, preview: None, federation: None }
    }

    /// Serves `/_matrix/federation/v1/media/*` to servers that `auth` authenticates.
    #[must_use]
    pub fn with_federation(mut self, auth: ganglion_federation::InboundAuth) -> Self {
        self.federation = Some(auth);
        self
    }

    /// Serves `preview_url` with `previewer`.
    #[must_use]
    pub fn with_previews(mut self, previewer: Previewer) -> Self {
        self.preview = Some(previewer);
        self
    }
}

impl FromRef<MediaState> for EventStore {
    fn from_ref(s: &MediaState) -> Self {
        s.events.clone()
    }
}

impl FromRef<MediaState> for Option<Previewer> {
    fn from_ref(s: &MediaState) -> Self {
        s.preview.clone()
    }
}

impl FromRef<MediaState> for Authenticator {
    fn from_ref(s: &MediaState) -> Self {
        s.auth.clone()
    }
}

impl FromRef<MediaState> for MediaRepo {
    fn from_ref(s: &MediaState) -> Self {
        s.repo.clone()
    }
}

/// Aborts a background task when dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A running `media` role.
#[derive(Debug)]
pub struct Media {
    _follower: Follower,
    _expiry: AbortOnDrop,
    position: watch::Receiver<StreamPosition>,
    state: MediaState,
}

impl Media {
    /// Opens the media store under `media.path`, follows the `events` stream, and starts removing
    /// lapsed reservations every ten minutes.
    ///
    /// # Errors
    /// When the server name is invalid, the database cannot be read or the store cannot be created.
    pub async fn start(cfg: &Config, db: Db, bus: Arc<dyn Bus>) -> Result<Self, StartError> {
        let server_name = OwnedServerName::try_from(cfg.server_name.as_str())
            .map_err(|e| StartError::Config(format!("server_name: {e}")))?;
        let appservices = ganglion_appservice::load(&cfg.app_service_config_files, server_name.as_str())
            .map_err(|e| StartError::Config(e.to_string()))?;
        let backend: Arc<dyn MediaBackend> = match &cfg.media.s3 {
            Some(s3) => {
                let b = S3Backend::open(s3, cfg.media_path().join("tmp")).await.map_err(StartError::Backend)?;
                b.check_bucket().await.map_err(StartError::Backend)?;
                Arc::new(b)
            }
            None => Arc::new(FsBackend::open(cfg.media_path()).await.map_err(StartError::Store)?),
        };
        let key =
            ganglion_federation::load_signing_key(&KeyStore::new(db.clone())).await.map_err(StartError::Config)?;
        let federation = FederationClient::new(&cfg.federation, server_name.clone(), Arc::new(key))
            .map_err(|e| StartError::Config(format!("federation client: {e}")))?;
        let remote = FederatedRemoteMedia::new(
            federation.clone(),
            MediaStore::new(db.clone()),
            backend.clone(),
            cfg.media.max_upload_bytes,
        );
        let fetcher =
            KeyFetcher::new(federation, RemoteKeyStore::new(db.clone()), cfg.federation.trusted_key_servers.clone());
        let inbound = InboundAuth::new(server_name.clone(), fetcher);
        let repo =
            MediaRepo::new(server_name, MediaStore::new(db.clone()), backend, Arc::new(remote), cfg.media.clone());
        let (follower, position) = follow_events(&EventStore::new(db.clone()), bus).await?;
        let expiring = repo.clone();
        let expiry = tokio::spawn(async move {
            let mut tick = tokio::time::interval(EXPIRY_INTERVAL);
            loop {
                tick.tick().await;
                match expiring.expire_pending().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(removed = n, "lapsed media reservations removed"),
                    Err(e) => tracing::warn!(error = %e, "could not remove lapsed media reservations"),
                }
            }
        });
        let mut state =
            MediaState::new(Authenticator::new(UserStore::new(db.clone()), appservices), repo, EventStore::new(db))
                .with_federation(inbound);
        if cfg.media.url_preview.enabled {
            state = state.with_previews(Previewer::new(&cfg.media.url_preview).map_err(StartError::Config)?);
        }
        Ok(Self { _follower: follower, _expiry: AbortOnDrop(expiry), position, state })
    }

    /// The position reached on the `events` stream.
    pub fn position(&self) -> watch::Receiver<StreamPosition> {
        self.position.clone()
    }

    /// The `/_matrix/client/v1/media/*` routes: see [`client_router`].
    pub fn client_router(&self) -> Router {
        client_router(self.state.clone())
    }

    /// The `/_matrix/federation/v1/media/*` routes: see [`federation_router`].
    pub fn federation_router(&self) -> Router {
        federation_router(self.state.clone())
    }

    /// The `/_matrix/media/*` routes and the media admin routes: see [`media_router`] and
    /// [`admin_router`].
    pub fn media_router(&self) -> Router {
        media_router(self.state.clone()).merge(admin_router(self.state.clone()))
    }
}

/// The authenticated `/_matrix/client/v1/media/*` routes. A listener must serve them when it serves
/// either the `client` or the `media` resource, and only once. No fallback: the binary adds it.
pub fn client_router(state: MediaState) -> Router {
    use client::authenticated_media as am;
    let downloads = Router::new()
        .route("/_matrix/client/v1/media/download/{server_name}/{media_id}", get(am::get_content))
        .route(
            "/_matrix/client/v1/media/download/{server_name}/{media_id}/{file_name}",
            get(am::get_content_as_filename),
        )
        .route("/_matrix/client/v1/media/thumbnail/{server_name}/{media_id}", get(am::get_content_thumbnail))
        .layer(axum::middleware::map_response(response::safety_headers));
    let mut r = Router::new().route("/_matrix/client/v1/media/config", get(am::get_media_config));
    if state.preview.is_some() {
        r = r.route("/_matrix/client/v1/media/preview_url", get(am::get_media_preview));
    }
    r.merge(downloads).with_state(state)
}

/// The legacy `/_matrix/media/*` routes (`r0` and `v3`, and `v1/create`). No fallback.
pub fn media_router(state: MediaState) -> Router {
    use client::media as m;
    let mut downloads = Router::new();
    let mut rest = Router::new().route("/_matrix/media/v1/create", post(m::create_mxc_uri));
    for v in ["r0", "v3"] {
        downloads = downloads
            .route(&format!("/_matrix/media/{v}/download/{{server_name}}/{{media_id}}"), get(m::get_content))
            .route(
                &format!("/_matrix/media/{v}/download/{{server_name}}/{{media_id}}/{{file_name}}"),
                get(m::get_content_as_filename),
            )
            .route(
                &format!("/_matrix/media/{v}/thumbnail/{{server_name}}/{{media_id}}"),
                get(m::get_content_thumbnail),
            );
        rest = rest
            .route(&format!("/_matrix/media/{v}/upload"), post(m::create_content))
            .route(&format!("/_matrix/media/{v}/upload/{{server_name}}/{{media_id}}"), put(m::create_content_async))
            .route(&format!("/_matrix/media/{v}/config"), get(m::get_media_config));
        if state.preview.is_some() {
            rest = rest.route(&format!("/_matrix/media/{v}/preview_url"), get(m::get_media_preview));
        }
    }
    let downloads = downloads.layer(axum::middleware::map_response(response::safety_headers));
    rest.merge(downloads).with_state(state)
}

/// `/_matrix/federation/v1/media/{download,thumbnail}/{mediaId}`, for listeners serving the
/// `federation` resource. Empty without [`MediaState::with_federation`]. No fallback.
pub fn federation_router(state: MediaState) -> Router {
    let Some(auth) = state.federation.clone() else { return Router::new() };
    let fed = federation::FederationMedia { auth, repo: state.repo.clone() };
    Router::new()
        .route("/_matrix/federation/v1/media/download/{media_id}", get(federation::download))
        .route("/_matrix/federation/v1/media/thumbnail/{media_id}", get(federation::thumbnail))
        .with_state(fed)
}

/// Media administration at Synapse's admin paths (`/_synapse/admin/v1/…`), server admins only.
/// No fallback.
pub fn admin_router(state: MediaState) -> Router {
    Router::new()
        .route("/_synapse/admin/v1/media/quarantine/{server_name}/{media_id}", post(admin::quarantine_media))
        .route("/_synapse/admin/v1/media/unquarantine/{server_name}/{media_id}", post(admin::unquarantine_media))
        .route("/_synapse/admin/v1/user/{user_id}/media/quarantine", post(admin::quarantine_user_media))
        .route("/_synapse/admin/v1/room/{room_id}/media/quarantine", post(admin::quarantine_room_media))
        .route("/_synapse/admin/v1/media/{server_name}/{media_id}", axum::routing::delete(admin::delete_media))
        .route("/_synapse/admin/v1/users/{user_id}/media", axum::routing::delete(admin::delete_user_media))
        .with_state(state)
}

/// Every route of the role (for tests and single-router use).
pub fn router(state: MediaState) -> Router {
    client_router(state.clone())
        .merge(media_router(state.clone()))
        .merge(federation_router(state.clone()))
        .merge(admin_router(state))
}

#[cfg(test)]
mod tests;
