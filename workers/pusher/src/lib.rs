//! The `pusher` role: HTTP pushes to push gateways (Push Gateway API `/_matrix/push/v1/notify`).
//!
//! `main` decides at persist time whom an event notifies and with which actions (stored in
//! `event_push_actions`). This role follows the `events` stream to learn which users a batch
//! notified, the `receipts` stream to update app badges after reading, and the `pushers` stream to
//! know who has pushers. Each user is worked by one instance: the [`ShardRing`] over the live
//! pusher instances assigns users, and a lease per user makes a hand-over exact. Every pusher keeps
//! its durable position in the database, advanced only after the gateway accepted a push, so a
//! crash or a restart never loses a push and never repeats one the gateway acknowledged.
//!
//! Depends on the shared crates; never on another worker crate.

mod appservice;
mod deliver;
mod dispatch;
mod email;
mod metrics;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use ganglion_config::PushConfig;
use ganglion_replication::{Bus, Follower, ShardRing, StreamPosition};
use ganglion_rpc::MainClient;
use ganglion_storage::Db;
use tokio::sync::watch;

/// How the role pushes, from the `push` section of the configuration.
#[derive(Debug, Clone)]
pub struct PushSettings {
    /// Send event content (unless a pusher asked for `event_id_only`).
    pub include_content: bool,
    /// Badge counts rooms (true) or notifications (false).
    pub group_unread_count_by_room: bool,
    /// Longest one request to a gateway may take.
    pub request_timeout: Duration,
    /// Longest wait between retries.
    pub max_retry_interval: Duration,
    /// A notification refused for this long is dropped.
    pub give_up_after: Duration,
    /// Email notifications, when the `email` section is set.
    pub email: Option<EmailSettings>,
}

/// How email pushers mail, from the `email` section.
#[derive(Debug, Clone)]
pub struct EmailSettings {
    /// The SMTP client and templates.
    pub mailer: ganglion_mail::Mailer,
    /// How long an email about a message waits (reading it elsewhere first spares the email).
    pub notif_delay: Duration,
    /// At most one email per room per this long.
    pub throttle: Duration,
}

impl PushSettings {
    /// The settings of `push` and `email`.
    ///
    /// # Errors
    /// When the `email` section cannot make a mailer.
    pub fn new(push: &PushConfig, email: Option<&ganglion_config::EmailConfig>) -> Result<Self, StartError> {
        let email = match email {
            Some(e) => Some(EmailSettings {
                mailer: ganglion_mail::Mailer::new(e).map_err(|e| StartError::Mail(e.to_string()))?,
                notif_delay: Duration::from_millis(e.notif_delay_ms),
                throttle: Duration::from_millis(e.throttle_ms),
            }),
            None => None,
        };
        Ok(Self { email, ..Self::from(push) })
    }
}

impl From<&PushConfig> for PushSettings {
    fn from(c: &PushConfig) -> Self {
        Self {
            include_content: c.include_content,
            group_unread_count_by_room: c.group_unread_count_by_room,
            request_timeout: Duration::from_millis(c.request_timeout_ms),
            max_retry_interval: Duration::from_millis(c.max_retry_interval_ms),
            give_up_after: Duration::from_millis(c.give_up_after_ms),
            email: None,
        }
    }
}

/// A failure to start the role.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database could not be read.
    #[error(transparent)]
    Storage(#[from] ganglion_storage::Error),
    /// The HTTP client could not be built.
    #[error("http client: {0}")]
    Http(String),
    /// The `email` section cannot make a mailer.
    #[error("email: {0}")]
    Mail(String),
}

/// A running `pusher` role.
#[derive(Debug)]
pub struct Pusher {
    _followers: Vec<Follower>,
    _dispatch: dispatch::Dispatcher,
    _appservices: appservice::Delivery,
    position: watch::Receiver<StreamPosition>,
}

impl Pusher {
    /// Starts pushing for the users `ring` assigns to this instance, catching up every pusher from
    /// its stored position, and sending transactions to the application services it assigns.
    ///
    /// # Errors
    /// When the database cannot be read.
    pub async fn start(
        db: Db,
        bus: Arc<dyn Bus>,
        ring: ShardRing,
        main: MainClient,
        settings: PushSettings,
        appservices: ganglion_appservice::Appservices,
        metrics: &ganglion_telemetry::Metrics,
    ) -> Result<Self, StartError> {
        let metrics = metrics::PusherMetrics::register(metrics);
        let appservices = appservice::Delivery::start(
            db.clone(),
            bus.clone(),
            ring.clone(),
            appservices,
            settings.max_retry_interval,
        )
        .await?;
        let (dispatch, followers, position) =
            dispatch::Dispatcher::start(db, bus, ring, main, settings, metrics).await?;
        Ok(Self { _followers: followers, _dispatch: dispatch, _appservices: appservices, position })
    }

    /// The position reached on the `events` stream.
    pub fn position(&self) -> watch::Receiver<StreamPosition> {
        self.position.clone()
    }

    /// The role's HTTP routes: none (it only listens for health checks and metrics).
    pub fn router(&self) -> Router {
        Router::new()
    }
}
