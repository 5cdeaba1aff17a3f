//! Ganglion's storage: sqlx repositories over one pool, on PostgreSQL or SQLite.
//!
//! Role: the only crate that speaks SQL. Repositories (`UserStore`, `EventStore`, …) are built on a
//! [`Db`] and expose async methods taking ruma types; absence is `Option`, failures are [`Error`].
//! Both backends run the same SQL through sqlx's `Any` driver (`$n` placeholders work on both);
//! each has its own migrations under `migrations/`.
//!
//! Depends on: `ganglion-replication` (to serve catch-up reads of stream rows). Must never depend on
//! a worker crate or on `ganglion-http`.

mod account_data;
mod appservices;
mod bundled;
mod catch_up;
mod device_lists;
mod e2ee;
mod ephemeral;
mod events;
mod federation;
mod key_backup;
mod keys;
mod media;
mod migrate;
mod presence;
mod pushers;
mod relations;
mod remote_keys;
mod reports;
mod sessions;
mod state_groups;
mod threepids;
mod users;

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions};

pub use account_data::{AccountDataEntry, AccountDataStore};
pub use appservices::{AppservicePositions, AppserviceState, AppserviceStore};
pub use bundled::client_events_with_relations;
pub use catch_up::{
    DbCatchUp, account_data_row, event_row, follow_events, follow_stream, follow_stream_with, user_row,
};
pub use device_lists::{DeviceListWindow, device_list_changes};
pub use e2ee::{DeviceKeyCounts, E2eeStore, ToDeviceMessage};
pub use ephemeral::{EphemeralStore, Receipt};
pub use events::{
    EventStatus, EventStore, NewEvent, NotificationEntry, PersistedEvent, ReadReceipts, RoomMembership, SearchHit,
    StateBefore, StateEntry, UnreadCounts,
};
pub use federation::{DestinationState, FederationStore};
pub use key_backup::{BackedUpKey, BackupVersion, KeyBackupStore};
pub use keys::{KeyStore, StoredSigningKey};
pub use media::{CompleteUpload, MediaRecord, MediaStore, MediaUsage, ThumbnailKey, ThumbnailRecord, UploadedContent};
pub use migrate::{SCHEMA_VERSION, SchemaStatus};
pub use presence::{Presence, PresenceStore};
pub use pushers::{PendingPush, PushAction, Pusher, PusherStore};
pub use relations::{RelationFilter, RelationRow};
pub use remote_keys::{RemoteKey, RemoteKeyStore};
pub use reports::{Report, ReportStore};
pub use sessions::NewRefresh;
pub use state_groups::{MIN_CHAIN, StateIds};
pub use threepids::{Threepid, ThreepidSession, ThreepidStore};
pub use users::{DeviceInfo, DirectoryScope, UserStore, Whoami};

/// A storage failure. Absence of a row is never an error: look-ups return `Option`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database failed or could not be reached.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored value could not be decoded (a bad ID, bad JSON).
    #[error("decode: {0}")]
    Decode(String),
    /// A uniqueness rule was broken (the user exists, the txn id is taken …).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The schema is not the one this build understands.
    #[error("schema: {0}")]
    Schema(String),
}

/// Shorthand for storage results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which database engine a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL: the scaled setup, shared by every process.
    Postgres,
    /// SQLite: the embedded default, one process.
    Sqlite,
}

/// A connection pool and the backend it talks to. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
}

impl Db {
    /// Connects to `url` (`sqlite://…` or `postgres://…`). A SQLite file and its directory are created
    /// when missing; SQLite runs in WAL mode with a busy timeout so readers never block the writer.
    ///
    /// # Errors
    /// When the URL is malformed or the database cannot be reached.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(Error::Schema(format!("unsupported database url scheme: {url}")));
        };
        let url = match backend {
            Backend::Sqlite => sqlite_url(url)?,
            Backend::Postgres => url.to_owned(),
        };
        let options = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the one writer; the busy timeout makes a
                        // second writer wait instead of failing with SQLITE_BUSY.
                        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA busy_timeout = 10000").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA foreign_keys = ON").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Self { pool, backend })
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The underlying pool, for repositories in this crate.
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Begins a transaction that writes. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`): a deferred transaction that read first and writes after another
    /// connection committed fails with `SQLITE_BUSY_SNAPSHOT` whatever the busy timeout, where an
    /// immediate one waits its turn.
    pub(crate) async fn begin_write(&self) -> std::result::Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// Checks the database answers (readiness).
    ///
    /// # Errors
    /// When it does not.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Normalises a SQLite URL: creates the parent directory and asks sqlx to create the file.
fn sqlite_url(url: &str) -> Result<String> {
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path != ":memory:"
        && !path.is_empty()
        && let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::Schema(format!("cannot create database directory {}: {e}", parent.display())))?;
    }
    let mut query = query.to_owned();
    if !query.contains("mode=") {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str("mode=rwc");
    }
    Ok(format!("sqlite://{path}?{query}"))
}

/// Milliseconds since the Unix epoch, as stored in `*_ts` columns.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests;

#[cfg(feature = "test-util")]
pub mod test_util;
