//! The `main` role: every client endpoint not routed to another role, the only writer of events and
//! stream rows, and the gRPC write API workers call.
//!
//! Depends on the shared crates (`ganglion-{config,core,storage,replication,rpc,http,telemetry}`);
//! never on another worker crate, and no worker crate depends on it.

mod account_data_writer;
mod client;
mod e2ee_writer;
mod ephemeral_writer;
mod grpc;
mod password;
mod presence_writer;
mod push;
mod pusher_writer;
mod receive;
mod writer;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRef;
use ganglion_config::Config;
use ganglion_core::ServerSigningKey;
use ganglion_http::Authenticator;
use ganglion_replication::Bus;
use ganglion_storage::{Db, EventStore, KeyStore, UserStore};
use ruma::OwnedServerName;

pub use grpc::write_api_service;

use crate::password::PasswordHasherConfig;
use crate::writer::EventWriter;

/// The rate limits `main` applies.
#[derive(Debug)]
pub(crate) struct Limits {
    messages: ganglion_http::RateLimiter,
    rooms: ganglion_http::RateLimiter,
    login: ganglion_http::RateLimiter,
    registration: ganglion_http::RateLimiter,
}

impl Limits {
    fn new(c: &ganglion_config::RateLimitsConfig) -> Self {
        let l = |r: &ganglion_config::RateLimit| ganglion_http::RateLimiter::new(r.per_minute, r.burst, c.enabled);
        Self { messages: l(&c.messages), rooms: l(&c.rooms), login: l(&c.login), registration: l(&c.registration) }
    }
}

/// What account endpoints need.
#[derive(Debug, Clone)]
pub(crate) struct Accounts {
    users: UserStore,
    limits: Arc<Limits>,
    server_name: OwnedServerName,
    hasher: PasswordHasherConfig,
    registration_open: bool,
    require_token: bool,
    guest_access: bool,
    /// Lifetime of access tokens issued with a refresh token.
    access_token_lifetime_ms: i64,
    /// Lifetime of login tokens from `/login/get_token`.
    login_token_lifetime_ms: i64,
    /// Logging out removes the device's pushers.
    pushers: Arc<pusher_writer::PusherWriter>,
    /// Registration and login of application services' users.
    appservices: ganglion_appservice::Appservices,
}

/// What discovery endpoints need.
#[derive(Debug, Clone)]
pub(crate) struct Discovery {
    server_name: OwnedServerName,
    public_baseurl: String,
    well_known_server: Option<String>,
    default_room_version: String,
}

/// What room endpoints need.
#[derive(Debug, Clone)]
pub(crate) struct Rooms {
    events: EventStore,
    /// For guest checks (`m.room.guest_access`).
    users: UserStore,
    limits: Arc<Limits>,
    writer: Arc<EventWriter>,
    default_version: ruma::RoomVersionId,
    /// Alias queries to application services, and their exclusive alias namespaces.
    appservices: ganglion_appservice::Appservices,
    appservice_client: ganglion_appservice::AppserviceClient,
    /// Joins of rooms other servers host: the requests, and the keys that check their answers.
    federation: ganglion_federation::FederationClient,
    remote_keys: ganglion_federation::KeyFetcher,
    signing_key: Arc<ganglion_core::ServerSigningKey>,
}

/// What account-data, filter, push-rule and profile endpoints need.
#[derive(Debug, Clone)]
pub(crate) struct UserData {
    users: UserStore,
    store: ganglion_storage::AccountDataStore,
    writer: Arc<account_data_writer::AccountDataWriter>,
    presence: Arc<presence_writer::PresenceWriter>,
    pushers: Arc<pusher_writer::PusherWriter>,
    /// Serialises profile propagation into member events (see `client::profile`).
    propagation: Arc<tokio::sync::Mutex<()>>,
    server_name: OwnedServerName,
    /// `user_directory.search_all_users`.
    search_all_users: bool,
    /// User queries to application services for users of their namespaces not created yet.
    appservices: ganglion_appservice::Appservices,
    appservice_client: ganglion_appservice::AppserviceClient,
    /// Asks other servers for their users' profiles.
    federation: ganglion_federation::FederationClient,
    /// Remote profiles asked recently, with when.
    remote_profiles: Arc<std::sync::Mutex<RemoteProfiles>>,
}

/// Remote users' profiles, with when they were asked.
type RemoteProfiles =
    std::collections::HashMap<ruma::OwnedUserId, (std::time::Instant, serde_json::Map<String, serde_json::Value>)>;

/// What device, key and to-device endpoints need.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    users: UserStore,
    e2ee: ganglion_storage::E2eeStore,
    backups: ganglion_storage::KeyBackupStore,
    events: EventStore,
    writer: Arc<e2ee_writer::E2eeWriter>,
    /// Pushers go with the device that set them.
    pushers: Arc<pusher_writer::PusherWriter>,
    hasher: PasswordHasherConfig,
    server_name: OwnedServerName,
}

impl FromRef<MainState> for Keys {
    fn from_ref(s: &MainState) -> Self {
        s.keys.clone()
    }
}

/// What receipt and typing endpoints need.
#[derive(Debug, Clone)]
pub(crate) struct Ephemeral {
    events: EventStore,
    writer: Arc<ephemeral_writer::EphemeralWriter>,
}

impl FromRef<MainState> for Ephemeral {
    fn from_ref(s: &MainState) -> Self {
        s.ephemeral.clone()
    }
}

/// What the third-party ID (email address) endpoints and email pushers need.
#[derive(Debug, Clone)]
pub(crate) struct Threepids {
    store: ganglion_storage::ThreepidStore,
    /// `None` without an `email` section: addresses cannot be added.
    mailer: Option<ganglion_mail::Mailer>,
    public_baseurl: String,
    token_lifetime_ms: i64,
}

impl FromRef<MainState> for Threepids {
    fn from_ref(s: &MainState) -> Self {
        s.threepids.clone()
    }
}

/// The state of the `main` role's router: small substates, one per area.
#[derive(Debug, Clone)]
pub struct MainState {
    auth: Authenticator,
    accounts: Accounts,
    discovery: Discovery,
    rooms: Rooms,
    user_data: UserData,
    keys: Keys,
    ephemeral: Ephemeral,
    threepids: Threepids,
}

impl FromRef<MainState> for UserData {
    fn from_ref(s: &MainState) -> Self {
        s.user_data.clone()
    }
}

impl FromRef<MainState> for Authenticator {
    fn from_ref(s: &MainState) -> Self {
        s.auth.clone()
    }
}
impl FromRef<MainState> for Accounts {
    fn from_ref(s: &MainState) -> Self {
        s.accounts.clone()
    }
}
impl FromRef<MainState> for Discovery {
    fn from_ref(s: &MainState) -> Self {
        s.discovery.clone()
    }
}
impl FromRef<MainState> for Rooms {
    fn from_ref(s: &MainState) -> Self {
        s.rooms.clone()
    }
}

/// A failure to start `main`.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Configuration that only shows its problem at start.
    #[error("config: {0}")]
    Config(String),
    /// Storage failure.
    #[error(transparent)]
    Storage(#[from] ganglion_storage::Error),
}

/// Loads the signing key, creating and storing one at first start. When two processes race, the
/// first insert wins and both use it.
async fn signing_key(keys: &KeyStore) -> Result<ServerSigningKey, StartError> {
    if let Some(k) = keys.active_key().await? {
        return ServerSigningKey::from_stored(&k.version, &k.pkcs8_base64)
            .map_err(|e| StartError::Config(e.to_string()));
    }
    let key = ServerSigningKey::generate();
    let stored =
        ganglion_storage::StoredSigningKey { version: key.version().to_owned(), pkcs8_base64: key.pkcs8_base64() };
    if keys.insert_key(&stored).await? {
        tracing::info!(version = key.version(), "generated the server signing key");
    }
    let k = keys.active_key().await?.ok_or_else(|| StartError::Config("signing key vanished".into()))?;
    ServerSigningKey::from_stored(&k.version, &k.pkcs8_base64).map_err(|e| StartError::Config(e.to_string()))
}

impl MainState {
    /// Builds `main`'s state on a migrated database and a bus.
    ///
    /// # Errors
    /// When the config is unusable or the database fails.
    pub async fn new(config: &Config, db: Db, bus: Arc<dyn Bus>) -> Result<Self, StartError> {
        let server_name = OwnedServerName::try_from(config.server_name.as_str())
            .map_err(|e| StartError::Config(format!("server_name: {e}")))?;
        let users = UserStore::new(db.clone());
        let appservices = ganglion_appservice::load(&config.app_service_config_files, server_name.as_str())
            .map_err(|e| StartError::Config(e.to_string()))?;
        for reg in appservices.all() {
            // The service acts as its sender from the first request; it never registers it.
            if !users.user_exists(&reg.sender).await? {
                users.create_user(&reg.sender, None, false).await?;
                tracing::info!(appservice = %reg.id, sender = %reg.sender, "created the application service's user");
            }
        }
        let appservice_client = ganglion_appservice::AppserviceClient::new(std::time::Duration::from_secs(30))
            .map_err(|e| StartError::Config(e.to_string()))?;
        let events = EventStore::new(db.clone());
        let mended = events.backfill_redacted_because().await?;
        if mended > 0 {
            tracing::info!(mended, "kept the redaction of events redacted before upgrade in unsigned.redacted_because");
        }
        let key = Arc::new(signing_key(&KeyStore::new(db.clone())).await?);
        let federation =
            ganglion_federation::FederationClient::new(&config.federation, server_name.clone(), key.clone())
                .map_err(|e| StartError::Config(format!("federation: {e}")))?;
        let remote_keys = ganglion_federation::KeyFetcher::new(
            federation.clone(),
            ganglion_storage::RemoteKeyStore::new(db.clone()),
            config.federation.trusted_key_servers.clone(),
        );
        let writer = Arc::new(EventWriter::new(events.clone(), bus.clone(), key.clone(), server_name.clone()).await?);
        let hasher = PasswordHasherConfig::new(&config.password_hashing).map_err(StartError::Config)?;
        let limits = Arc::new(Limits::new(&config.rate_limits));
        let account_data = ganglion_storage::AccountDataStore::new(db.clone());
        let pushers = pusher_writer::PusherWriter::new(
            ganglion_storage::PusherStore::new(db.clone()),
            events.clone(),
            bus.clone(),
        )
        .await?;
        let user_data = UserData {
            users: users.clone(),
            store: account_data.clone(),
            writer: Arc::new(account_data_writer::AccountDataWriter::new(account_data, bus.clone()).await?),
            presence: presence_writer::PresenceWriter::start(
                ganglion_storage::PresenceStore::new(db.clone()),
                bus.clone(),
            )
            .await?,
            pushers: pushers.clone(),
            propagation: Arc::new(tokio::sync::Mutex::new(())),
            server_name: server_name.clone(),
            search_all_users: config.user_directory.search_all_users,
            appservices: appservices.clone(),
            appservice_client: appservice_client.clone(),
            federation: federation.clone(),
            remote_profiles: Arc::default(),
        };
        let e2ee = ganglion_storage::E2eeStore::new(db.clone());
        let keys = Keys {
            users: users.clone(),
            e2ee: e2ee.clone(),
            backups: ganglion_storage::KeyBackupStore::new(db.clone()),
            events: events.clone(),
            writer: Arc::new(e2ee_writer::E2eeWriter::new(e2ee, bus.clone()).await?),
            pushers: pushers.clone(),
            hasher: hasher.clone(),
            server_name: server_name.clone(),
        };
        let default_version = ruma::RoomVersionId::try_from(config.rooms.default_version.as_str())
            .map_err(|e| StartError::Config(format!("rooms.default_version: {e}")))?;
        let public_baseurl = config.public_baseurl.clone().unwrap_or_else(|| {
            let l = config
                .listeners
                .iter()
                .find(|l| l.resources.contains(&ganglion_config::Resource::Client))
                .cloned()
                .unwrap_or_default();
            let scheme = if l.tls.is_some() { "https" } else { "http" };
            let host = if l.bind.is_unspecified() { "localhost".to_owned() } else { l.bind.to_string() };
            let host = if host.contains(':') { format!("[{host}]") } else { host };
            format!("{scheme}://{host}:{}/", l.port)
        });
        let mailer = match &config.email {
            Some(e) => Some(ganglion_mail::Mailer::new(e).map_err(|e| StartError::Config(e.to_string()))?),
            None => None,
        };
        let threepids = Threepids {
            store: ganglion_storage::ThreepidStore::new(db.clone()),
            mailer,
            public_baseurl: public_baseurl.clone(),
            token_lifetime_ms: config
                .email
                .as_ref()
                .map_or(3_600_000, |e| i64::try_from(e.validation_token_lifetime_ms).unwrap_or(i64::MAX)),
        };
        Ok(Self {
            threepids,
            auth: Authenticator::new(users.clone(), appservices.clone()),
            accounts: Accounts {
                users: users.clone(),
                limits: limits.clone(),
                server_name: server_name.clone(),
                hasher,
                registration_open: config.registration_open(),
                require_token: config.registration.require_token,
                guest_access: config.registration.guest_access,
                access_token_lifetime_ms: secs_to_ms(config.sessions.refreshable_access_token_lifetime_secs),
                login_token_lifetime_ms: secs_to_ms(config.sessions.login_token_lifetime_secs),
                pushers,
                appservices: appservices.clone(),
            },
            discovery: Discovery {
                server_name,
                public_baseurl,
                well_known_server: config.well_known.server.clone(),
                default_room_version: config.rooms.default_version.clone(),
            },
            rooms: Rooms {
                events: events.clone(),
                users: users.clone(),
                limits,
                writer,
                default_version,
                appservices: appservices.clone(),
                appservice_client: appservice_client.clone(),
                federation,
                remote_keys,
                signing_key: key,
            },
            user_data,
            keys,
            ephemeral: Ephemeral {
                events: events.clone(),
                writer: ephemeral_writer::EphemeralWriter::new(ganglion_storage::EphemeralStore::new(db.clone()), bus)
                    .await?,
            },
        })
    }

    /// The writer's last position (for `ServerInfo`).
    pub(crate) fn events_position(&self) -> i64 {
        self.rooms.writer.position()
    }
}

fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// `main`'s client-API router (without the common layers, which the binary adds once per listener).
pub fn router(state: MainState) -> Router {
    client::routes().with_state(state)
}

/// Creates a user from the command line (`ganglion register-user`), bypassing registration policy.
///
/// # Errors
/// When the localpart is invalid, the user exists, or storage fails.
pub async fn register_user(
    config: &Config,
    db: Db,
    localpart: &str,
    password: &str,
    admin: bool,
) -> Result<ruma::OwnedUserId, String> {
    let user_id = ruma::OwnedUserId::try_from(format!("@{}:{}", localpart.to_lowercase(), config.server_name))
        .map_err(|e| format!("invalid username: {e}"))?;
    let hasher = PasswordHasherConfig::new(&config.password_hashing)?;
    let hash = hasher.hash(password.to_owned()).await?;
    let users = UserStore::new(db);
    users.create_user(&user_id, Some(&hash), admin).await.map_err(|e| match e {
        ganglion_storage::Error::Conflict(_) => format!("{user_id} already exists"),
        other => other.to_string(),
    })?;
    users.set_profile_field(&user_id, "displayname", Some(user_id.localpart())).await.map_err(|e| e.to_string())?;
    Ok(user_id)
}

#[cfg(test)]
mod tests;
