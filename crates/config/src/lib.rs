//! Ganglion's configuration: one typed tree, layered defaults < file (YAML or TOML) < `GANGLION_*` env.
//!
//! Every other crate receives the section it needs from the binary; no other crate reads files or the
//! environment. Depends on nothing of Ganglion's; everything may depend on it.

//!
//! Map:
//! - `lib.rs`: the [`Config`] tree, its defaults and the derived answers ([`Config::database_url`],
//!   [`Config::registration_open`]).
//! - `keys.rs`: the one table of every key (path, type, meaning, example) that the example file, the
//!   Markdown reference and the environment parser all read.
//! - `load.rs`: [`load`]: the figment layers, the `GANGLION_*` environment layer, unknown-key detection
//!   and the mapping of figment errors to one-line [`ConfigError`]s.
//! - `validate.rs`: [`Config::validate`]: checks that serde cannot express (server name syntax, URL
//!   schemes, duplicate listeners, cost parameters).
//! - `generate.rs`: [`generate_yaml`] and [`render_markdown_reference`].
//! - `error.rs`: [`ConfigError`] and [`Problem`].

#![warn(missing_docs)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

mod error;
mod generate;
mod keys;
mod load;
mod validate;

#[cfg(test)]
mod tests;

pub use error::{ConfigError, Problem};
pub use generate::{generate_yaml, render_markdown_reference};
pub use load::{ENV_PREFIX, load, load_from_process_env};

/// The whole configuration of one Ganglion process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The server name: the part after the colon in user IDs. Default: `localhost`.
    pub server_name: String,
    /// The base URL clients reach the client API on, advertised in `/.well-known/matrix/client`.
    /// Default: derived from the first client listener (`http://<bind>:<port>/`).
    pub public_baseurl: Option<String>,
    /// Directory for the signing key and, by default, the SQLite database. Default: `./ganglion-data`.
    pub data_dir: PathBuf,
    /// HTTP listeners. Default: one on 127.0.0.1:8008 serving every resource.
    pub listeners: Vec<ListenerConfig>,
    /// The database.
    pub database: DatabaseConfig,
    /// Redis, which carries the replication stream between processes. Unset: the in-process bus
    /// (only valid for `ganglion serve`).
    pub redis: RedisConfig,
    /// The internal gRPC write API that `main` serves and workers call.
    pub rpc: RpcConfig,
    /// Who may register.
    pub registration: RegistrationConfig,
    /// Refresh tokens and login tokens.
    pub sessions: SessionsConfig,
    /// Argon2 password hashing cost.
    pub password_hashing: PasswordHashingConfig,
    /// Room defaults.
    pub rooms: RoomsConfig,
    /// Whom `/user_directory/search` finds.
    pub user_directory: UserDirectoryConfig,
    /// Logs, traces and metrics.
    pub telemetry: TelemetryConfig,
    /// Request limits.
    pub limits: LimitsConfig,
    /// Rate limits per user (messages, room actions) and per client address (login, registration).
    pub rate_limits: RateLimitsConfig,
    /// The `/.well-known/matrix/*` answers.
    pub well_known: WellKnownConfig,
    /// Outbound federation: how this server talks to others.
    pub federation: FederationConfig,
    /// The media repository (the `media` role).
    pub media: MediaConfig,
    /// Pushes to push gateways (the `pusher` role).
    pub push: PushConfig,
    /// Outgoing email over SMTP: validating addresses and email notifications. Default: unset
    /// (no email).
    pub email: Option<EmailConfig>,
    /// Application service registration files (Synapse's YAML format), one per bridge or bot.
    /// Every process must list the same files. Default: none.
    pub app_service_config_files: Vec<PathBuf>,
}

/// One HTTP listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListenerConfig {
    /// Address to bind. Default: `127.0.0.1`.
    pub bind: IpAddr,
    /// Port. Default: `8008`.
    pub port: u16,
    /// Terminate TLS here with rustls. Default: plain HTTP.
    pub tls: Option<TlsConfig>,
    /// What this listener serves. Default: every resource.
    pub resources: Vec<Resource>,
}

/// Certificate and key for a TLS listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub certificate_path: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

/// A group of endpoints a listener can serve.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    /// `/_matrix/client/*` and `/.well-known/matrix/client`.
    Client,
    /// `/_matrix/federation/*`, `/_matrix/key/*` and `/.well-known/matrix/server`.
    Federation,
    /// `/_matrix/media/*` and `/_matrix/client/v1/media/*`.
    Media,
    /// Prometheus `/metrics`.
    Metrics,
    /// `/health/live` and `/health/ready`.
    Health,
}

/// Database connection settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db` or `postgres://user@host:port/db`.
    /// Default: `sqlite://<data_dir>/ganglion.db`.
    pub url: Option<String>,
    /// Pool size. Default: 10.
    pub max_connections: u32,
    /// Apply migrations when `main` starts. Default: true.
    pub migrate_on_start: bool,
}

/// Redis settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db`. Default: unset (in-process bus).
    pub url: Option<String>,
    /// Prefix for every key Ganglion writes, so several deployments can share one Redis.
    /// Default: `ganglion`.
    pub key_prefix: String,
    /// Approximate number of rows each Redis stream keeps; older rows are read from the database.
    /// Default: 100000.
    pub stream_max_len: usize,
}

/// Internal gRPC API settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RpcConfig {
    /// Where `main` listens for the write API. Default: `127.0.0.1:9093`.
    pub listen: SocketAddr,
    /// Where workers reach `main`'s write API. Default: `http://127.0.0.1:9093`.
    pub main_url: String,
}

/// Registration policy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Open registration. Default: unset, meaning open only while every client listener is bound
    /// to a loopback address.
    pub enabled: Option<bool>,
    /// Require a registration token (`m.login.registration_token`), created by an admin through
    /// `/_synapse/admin/v1/registration_tokens/new`. Default: false.
    pub require_token: bool,
    /// Let `register?kind=guest` create guest accounts, limited to the endpoints the spec's Guest
    /// Access module lists. Default: false (`M_GUEST_ACCESS_FORBIDDEN`).
    pub guest_access: bool,
}

/// Login sessions: refresh tokens and login tokens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// Lifetime in seconds of an access token issued with a refresh token (a client asked with
    /// `refresh_token: true`); other access tokens never expire. Default: 300.
    pub refreshable_access_token_lifetime_secs: u64,
    /// Lifetime in seconds of a login token from `/login/get_token`. Default: 120.
    pub login_token_lifetime_secs: u64,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self { refreshable_access_token_lifetime_secs: 300, login_token_lifetime_secs: 120 }
    }
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PasswordHashingConfig {
    /// Memory per hash in KiB. Default: 19456 (OWASP's recommendation).
    pub memory_kib: u32,
    /// Passes. Default: 2.
    pub iterations: u32,
    /// Lanes. Default: 1.
    pub parallelism: u32,
}

/// Room defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RoomsConfig {
    /// Room version for new rooms. Default: `12`.
    pub default_version: String,
}

/// Whom `/user_directory/search` finds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UserDirectoryConfig {
    /// Every active local user, rather than only those who share a room with the searcher or
    /// are joined to a public room (Synapse's default, and ours). Default: `false`.
    pub search_all_users: bool,
}

/// Log format.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs, traces and metrics.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// A `tracing` filter directive. Default: `info,ruma_state_res=warn` (ruma logs every auth check at info).
    pub log_level: String,
    /// Default: `text`.
    pub log_format: LogFormat,
    /// OTLP/gRPC collector endpoint, e.g. `http://127.0.0.1:4317`. Default: unset (no export).
    pub otlp_endpoint: Option<String>,
}

/// Request limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body accepted on the client API. Default: 1048576 (1 MiB).
    pub max_request_body_bytes: usize,
    /// Longest `/sync` long-poll a client may ask for. Default: 300000 (5 minutes).
    pub max_sync_timeout_ms: u64,
}

/// Rate limits. Each is a token bucket: `burst` actions at once, refilled at `per_minute`.
/// Exceeding one answers 429 `M_LIMIT_EXCEEDED` with `retry_after_ms` and `Retry-After`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsConfig {
    /// Apply rate limits at all. Default: true.
    pub enabled: bool,
    /// Events sent by one user (messages, state, redactions). Default: 600 per minute, burst 100.
    pub messages: RateLimit,
    /// Room creations, joins, invites and knocks by one user. Default: 60 per minute, burst 20.
    pub rooms: RateLimit,
    /// Login attempts from one client address. Default: 60 per minute, burst 10.
    pub login: RateLimit,
    /// Registration attempts from one client address. Default: 30 per minute, burst 10.
    pub registration: RateLimit,
}

/// One token bucket.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained rate.
    pub per_minute: u32,
    /// Actions allowed at once.
    pub burst: u32,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            messages: RateLimit { per_minute: 600, burst: 100 },
            rooms: RateLimit { per_minute: 60, burst: 20 },
            login: RateLimit { per_minute: 60, burst: 10 },
            registration: RateLimit { per_minute: 30, burst: 10 },
        }
    }
}

/// `/.well-known/matrix/*` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct WellKnownConfig {
    /// `m.server` in `/.well-known/matrix/server` (`host:port`). Default: unset, which answers 404
    /// so other servers fall back to SRV and port 8448.
    pub server: Option<String>,
}

/// Outbound federation requests (signed with the server key, `X-Matrix`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    /// Check other servers' TLS certificates. Turn off only for test servers with self-signed
    /// certificates. Default: true.
    pub verify_tls: bool,
    /// Longest one outbound federation request may take, in milliseconds. Default: 30000.
    pub request_timeout_ms: u64,
    /// PEM files of certificate authorities trusted for other servers' TLS certificates, beside
    /// the system's roots (a private federation, or tests with their own CA). Default: none.
    pub extra_ca_paths: Vec<PathBuf>,
    /// CIDR ranges other servers may be reached at although private, loopback or reserved
    /// (`127.0.0.0/8` for servers on this machine). Outside them only public addresses are
    /// contacted. Default: none.
    pub ip_range_allowlist: Vec<String>,
    /// Server names of notaries asked for a server's keys when the server itself cannot be
    /// asked (Synapse's `trusted_key_servers`, by name only: each notary's own keys are fetched
    /// from it over TLS). Default: none.
    pub trusted_key_servers: Vec<String>,
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            verify_tls: true,
            request_timeout_ms: 30_000,
            extra_ca_paths: Vec::new(),
            ip_range_allowlist: Vec::new(),
            trusted_key_servers: Vec::new(),
        }
    }
}

/// Pushes to push gateways (the `pusher` role).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Send the event's content to the gateway (unless the pusher asked for `event_id_only`).
    /// Off, message text never leaves the server through a gateway. Default: true.
    pub include_content: bool,
    /// The app badge counts rooms with unread notifications (true) or the notifications
    /// (false). Default: true.
    pub group_unread_count_by_room: bool,
    /// Longest one request to a gateway may take, in milliseconds. Default: 10000.
    pub request_timeout_ms: u64,
    /// Longest wait between retries of a failing gateway, in milliseconds (retries start after
    /// 1 s and double). Default: 600000 (10 min).
    pub max_retry_interval_ms: u64,
    /// A notification a gateway has refused for this long is dropped, in milliseconds. Default:
    /// 86400000 (24 h).
    pub give_up_after_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            include_content: true,
            group_unread_count_by_room: true,
            request_timeout_ms: 10_000,
            max_retry_interval_ms: 600_000,
            give_up_after_ms: 86_400_000,
        }
    }
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmtpSecurity {
    /// TLS from the first byte (port 465).
    Tls,
    /// Plain, then `STARTTLS`, which must succeed (port 587).
    Starttls,
    /// No TLS: only for a relay on the same host or network.
    None,
}

/// Outgoing email over SMTP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server. Default: `localhost`.
    pub smtp_host: String,
    /// Its port. Default: 25.
    pub smtp_port: u16,
    /// Default: `starttls`.
    pub security: SmtpSecurity,
    /// SMTP user name, if the server wants one. Default: unset.
    pub smtp_user: Option<String>,
    /// SMTP password. Default: unset.
    pub smtp_pass: Option<String>,
    /// The `From` of every message, e.g. `Example Chat <noreply@example.org>`.
    pub notif_from: String,
    /// The name emails use for the service. Default: `Matrix`.
    pub app_name: String,
    /// Links in notification emails point here, followed by the room ID. Default:
    /// `https://matrix.to/#/`.
    pub client_base_url: String,
    /// How long after a message an email about it waits, so that reading it elsewhere first
    /// spares the email, in milliseconds. Default: 600000 (10 min).
    pub notif_delay_ms: u64,
    /// At most one email per room per this long, in milliseconds. Default: 600000 (10 min).
    pub throttle_ms: u64,
    /// How long a validation link stays valid, in milliseconds. Default: 3600000 (1 h).
    pub validation_token_lifetime_ms: u64,
    /// A directory with `notif_mail.txt` and `notif_mail.html` replacing the built-in
    /// notification templates (placeholders: `{app_name}`, `{user_id}`, `{summary}`,
    /// `{messages}`, `{link}`). Default: unset (built-in templates).
    pub templates_dir: Option<PathBuf>,
}

impl Default for EmailConfig {
    fn default() -> Self {
        Self {
            smtp_host: "localhost".to_owned(),
            smtp_port: 25,
            security: SmtpSecurity::Starttls,
            smtp_user: None,
            smtp_pass: None,
            notif_from: String::new(),
            app_name: "Matrix".to_owned(),
            client_base_url: "https://matrix.to/#/".to_owned(),
            notif_delay_ms: 600_000,
            throttle_ms: 600_000,
            validation_token_lifetime_ms: 3_600_000,
            templates_dir: None,
        }
    }
}

/// The media repository: storage, limits, thumbnails and the unauthenticated endpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Directory of the filesystem media store; every media worker must see the same one. With
    /// `s3` set, only uploads in progress are spooled here. Default: `<data_dir>/media`.
    pub path: Option<PathBuf>,
    /// Keep media in an S3-compatible object store instead of `path`. Default: unset (filesystem).
    pub s3: Option<S3Config>,
    /// Largest upload accepted, in bytes (`m.upload.size`). Default: 52428800 (50 MiB).
    pub max_upload_bytes: u64,
    /// Total bytes a user may have uploaded. Default: unset (no quota).
    pub user_quota_bytes: Option<u64>,
    /// Unused `create` reservations a user may hold at once. Default: 5.
    pub max_pending_uploads: u64,
    /// How long a `create` reservation waits for its upload, in milliseconds. Default: 86400000 (24 h).
    pub pending_upload_expiry_ms: u64,
    /// Longest a download may wait (`timeout_ms`) for a pending upload, in milliseconds. Default: 60000.
    pub max_download_wait_ms: u64,
    /// What the legacy unauthenticated `/_matrix/media/v3/download|thumbnail` endpoints serve.
    /// Default: `frozen`.
    pub unauthenticated: UnauthenticatedMedia,
    /// Generate thumbnails of sizes not in `thumbnail_sizes` on request. Default: true.
    pub dynamic_thumbnails: bool,
    /// Largest image (width × height) that is thumbnailed. Default: 32000000.
    pub max_image_pixels: u64,
    /// Thumbnails generated at once per process (each on the blocking pool). Default: 2.
    pub thumbnail_concurrency: u32,
    /// Thumbnail sizes generated on upload. Default: 32×32 crop, 96×96 crop, 320×240 scale,
    /// 640×480 scale, 800×600 scale.
    pub thumbnail_sizes: Vec<ThumbnailSizeConfig>,
    /// URL previews (`preview_url`).
    pub url_preview: UrlPreviewConfig,
}

/// URL previews: the server fetches pages for clients, so it must not be turned against the
/// network it runs in.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UrlPreviewConfig {
    /// Serve `preview_url`. Default: false.
    pub enabled: bool,
    /// CIDR ranges previews may reach although they are private, loopback or otherwise not
    /// global (e.g. `192.168.1.0/24`). Default: none.
    pub ip_range_allowlist: Vec<String>,
    /// Redirects followed per preview. Default: 3.
    pub max_redirects: u32,
    /// Bytes of a page read at most. Default: 1048576 (1 MiB).
    pub max_bytes: u64,
    /// Time allowed for the whole fetch, in milliseconds. Default: 10000.
    pub timeout_ms: u64,
}

impl Default for UrlPreviewConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            ip_range_allowlist: Vec::new(),
            max_redirects: 3,
            max_bytes: 1 << 20,
            timeout_ms: 10_000,
        }
    }
}

/// An S3-compatible bucket (AWS S3, MinIO, Ceph, …), addressed path-style (`endpoint/bucket/key`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Base URL of the service, e.g. `https://s3.eu-west-1.amazonaws.com`.
    pub endpoint: String,
    /// The bucket; it must exist.
    pub bucket: String,
    /// Region used in request signatures. Default: `us-east-1`.
    #[serde(default = "default_s3_region")]
    pub region: String,
    /// Access key ID.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Prefix of every object key, e.g. `ganglion/`. Default: empty.
    #[serde(default)]
    pub key_prefix: String,
}

fn default_s3_region() -> String {
    "us-east-1".to_owned()
}

/// What the legacy unauthenticated media endpoints serve.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnauthenticatedMedia {
    /// Every local media.
    Serve,
    /// Only media uploaded while this was `serve`; newer media answers 404 `M_NOT_FOUND` there
    /// (as Synapse's `enable_authenticated_media`).
    Frozen,
}

/// How a thumbnail fits its box.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ThumbnailMethod {
    /// Fit inside the box, keeping the aspect ratio.
    Scale,
    /// Fill the box, cropping the excess.
    Crop,
}

/// One thumbnail size generated on upload.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ThumbnailSizeConfig {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `scale` or `crop`.
    pub method: ThumbnailMethod,
}

impl Default for MediaConfig {
    fn default() -> Self {
        let size = |width, height, method| ThumbnailSizeConfig { width, height, method };
        Self {
            path: None,
            s3: None,
            max_upload_bytes: 50 << 20,
            user_quota_bytes: None,
            max_pending_uploads: 5,
            pending_upload_expiry_ms: 86_400_000,
            max_download_wait_ms: 60_000,
            unauthenticated: UnauthenticatedMedia::Frozen,
            dynamic_thumbnails: true,
            max_image_pixels: 32_000_000,
            thumbnail_concurrency: 2,
            thumbnail_sizes: vec![
                size(32, 32, ThumbnailMethod::Crop),
                size(96, 96, ThumbnailMethod::Crop),
                size(320, 240, ThumbnailMethod::Scale),
                size(640, 480, ThumbnailMethod::Scale),
                size(800, 600, ThumbnailMethod::Scale),
            ],
            url_preview: UrlPreviewConfig::default(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost".to_owned(),
            public_baseurl: None,
            data_dir: PathBuf::from("./ganglion-data"),
            listeners: vec![ListenerConfig::default()],
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            rpc: RpcConfig::default(),
            registration: RegistrationConfig::default(),
            sessions: SessionsConfig::default(),
            password_hashing: PasswordHashingConfig::default(),
            rooms: RoomsConfig::default(),
            user_directory: UserDirectoryConfig::default(),
            telemetry: TelemetryConfig::default(),
            limits: LimitsConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            well_known: WellKnownConfig::default(),
            federation: FederationConfig::default(),
            media: MediaConfig::default(),
            push: PushConfig::default(),
            email: None,
            app_service_config_files: Vec::new(),
        }
    }
}

impl Default for ListenerConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 8008,
            tls: None,
            resources: vec![
                Resource::Client,
                Resource::Federation,
                Resource::Media,
                Resource::Metrics,
                Resource::Health,
            ],
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { url: None, max_connections: 10, migrate_on_start: true }
    }
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self { url: None, key_prefix: "ganglion".to_owned(), stream_max_len: 100_000 }
    }
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self { listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 9093)), main_url: "http://127.0.0.1:9093".to_owned() }
    }
}

impl Default for PasswordHashingConfig {
    fn default() -> Self {
        Self { memory_kib: 19_456, iterations: 2, parallelism: 1 }
    }
}

impl Default for RoomsConfig {
    fn default() -> Self {
        Self { default_version: "12".to_owned() }
    }
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self { log_level: "info,ruma_state_res=warn".to_owned(), log_format: LogFormat::Text, otlp_endpoint: None }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_request_body_bytes: 1 << 20, max_sync_timeout_ms: 300_000 }
    }
}

impl Config {
    /// The database URL, defaulting to SQLite under `data_dir`.
    pub fn database_url(&self) -> String {
        self.database.url.clone().unwrap_or_else(|| format!("sqlite://{}/ganglion.db", self.data_dir.display()))
    }

    /// The filesystem media store's directory, defaulting to `<data_dir>/media`.
    pub fn media_path(&self) -> PathBuf {
        self.media.path.clone().unwrap_or_else(|| self.data_dir.join("media"))
    }

    /// Whether registration is open: the explicit setting, else open only while every listener that
    /// serves the client API is bound to loopback.
    pub fn registration_open(&self) -> bool {
        self.registration.enabled.unwrap_or_else(|| {
            self.listeners.iter().filter(|l| l.resources.contains(&Resource::Client)).all(|l| l.bind.is_loopback())
        })
    }
}
