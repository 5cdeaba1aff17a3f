//! Starting roles: alone (`worker <role>`) or all together (`serve`). The roles only ever talk
//! through the bus, the gRPC write API and the database, in one process exactly as when split.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ganglion_config::Config;
use ganglion_replication::{Bus, InProcessBus, RedisBus, StreamPosition};
use ganglion_routing::Role;
use ganglion_rpc::MainClient;
use ganglion_storage::{Db, SchemaStatus};
use ganglion_telemetry::{Health, Metrics};
use tokio::sync::watch;

use crate::listeners::{RoleRouters, serve_listeners, shutdown_signal};

/// Why the process stops with an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Fatal {
    /// Bad configuration: exit code 2.
    #[error("config: {0}")]
    Config(String),
    /// Anything else at start or while running: exit code 1.
    #[error("{0}")]
    Runtime(String),
}

impl Fatal {
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => 2,
            Self::Runtime(_) => 1,
        }
    }
}

fn rt<E: std::fmt::Display>(context: &'static str) -> impl Fn(E) -> Fatal {
    move |e| Fatal::Runtime(format!("{context}: {e}"))
}

async fn connect_db(cfg: &Config) -> Result<Db, Fatal> {
    let url = cfg.database_url();
    Db::connect(&url, cfg.database.max_connections).await.map_err(rt("database"))
}

async fn redis_bus(cfg: &Config) -> Result<Arc<dyn Bus>, Fatal> {
    let url =
        cfg.redis.url.as_deref().ok_or_else(|| Fatal::Config("redis.url is required to run a single role".into()))?;
    let bus = RedisBus::connect(url, &cfg.redis.key_prefix, cfg.redis.stream_max_len).await.map_err(rt("redis"))?;
    Ok(Arc::new(bus))
}

/// This instance's place among the live instances of a scaled role: over Redis when the
/// deployment has it (instances come and go without configuration), else a ring of one.
async fn shard_ring(cfg: &Config, group: &str) -> Result<ganglion_replication::ShardRing, Fatal> {
    let me = instance_name(group);
    let Some(url) = cfg.redis.url.as_deref() else {
        return Ok(ganglion_replication::ShardRing::alone(&me));
    };
    let bus = RedisBus::connect(url, &cfg.redis.key_prefix, cfg.redis.stream_max_len).await.map_err(rt("redis"))?;
    ganglion_replication::ShardRing::join(&bus, group, &me, ganglion_replication::ShardTiming::default())
        .await
        .map_err(rt("redis"))
}

/// A name unique to this process: host, process ID and a random part (a restarted pod with the
/// same host name and PID is still a new member).
fn instance_name(group: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".to_owned());
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format!("{group}-{host}-{}-{:x}", std::process::id(), started.as_micros())
}

/// Workers share the database with `main`: refuse to run on a schema this build does not know.
async fn require_current_schema(db: &Db) -> Result<(), Fatal> {
    match db.schema_status().await.map_err(rt("database"))? {
        SchemaStatus::Current => Ok(()),
        SchemaStatus::Behind(v) => Err(Fatal::Runtime(format!(
            "database schema is version {v}, this build needs {}: run `ganglion migrate` (or start main) first",
            ganglion_storage::SCHEMA_VERSION
        ))),
        SchemaStatus::Ahead(v) => Err(Fatal::Runtime(format!(
            "database schema is version {v}, newer than this build's {}: upgrade this worker",
            ganglion_storage::SCHEMA_VERSION
        ))),
    }
}

/// Marks the `replication` readiness check once the role's follower is running.
fn watch_replication(health: &Health, mut position: watch::Receiver<StreamPosition>) {
    let health = health.clone();
    health.set_ready("replication", true);
    tokio::spawn(async move {
        while position.changed().await.is_ok() {}
        // The follower stopped: this process no longer sees new rows.
        health.set_ready("replication", false);
    });
}

/// Serves `main`'s gRPC write API on `addr` until shutdown. Returns the bound address.
async fn serve_rpc(state: ganglion_main::MainState, addr: SocketAddr) -> Result<SocketAddr, Fatal> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(rt("rpc listener"))?;
    let bound = listener.local_addr().map_err(rt("rpc listener"))?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .add_service(ganglion_main::write_api_service(state))
            .serve_with_incoming_shutdown(incoming, shutdown_signal())
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });
    tracing::info!(%bound, "write API listening");
    Ok(bound)
}

async fn start_main(
    cfg: &Config,
    db: Db,
    bus: Arc<dyn Bus>,
    rpc_addr: SocketAddr,
) -> Result<(ganglion_main::MainState, SocketAddr), Fatal> {
    let state = ganglion_main::MainState::new(cfg, db, bus).await.map_err(|e| match e {
        ganglion_main::StartError::Config(m) => Fatal::Config(m),
        other => Fatal::Runtime(other.to_string()),
    })?;
    let bound = serve_rpc(state.clone(), rpc_addr).await?;
    Ok((state, bound))
}

/// What a process reports through: its readiness checks and its metrics registry.
struct Telemetry<'a> {
    health: &'a Health,
    metrics: &'a Metrics,
}

async fn start_role(
    role: Role,
    cfg: &Config,
    db: Db,
    bus: Arc<dyn Bus>,
    main: &MainClient,
    telemetry: Telemetry<'_>,
    routers: &mut RoleRouters,
) -> Result<(), Fatal> {
    let Telemetry { health, metrics } = telemetry;
    let db_err = rt("database");
    match role {
        Role::Main => unreachable!("main is started by start_main"),
        Role::Sync => {
            let max = Duration::from_millis(cfg.limits.max_sync_timeout_ms);
            let apps = ganglion_appservice::load(&cfg.app_service_config_files, &cfg.server_name)
                .map_err(|e| Fatal::Config(e.to_string()))?;
            let state = ganglion_sync::SyncState::start(db, bus, main.clone(), max, apps).await.map_err(&db_err)?;
            watch_replication(health, state.position());
            routers.client.push(ganglion_sync::router(state));
        }
        Role::FederationReader => {
            let r =
                ganglion_federation_reader::FederationReader::start(cfg, db, bus, main.clone()).await.map_err(|e| {
                    match e {
                        ganglion_federation_reader::StartError::Config(m) => {
                            Fatal::Runtime(format!("federation-reader: {m}"))
                        }
                        other => Fatal::Runtime(format!("federation-reader: {other}")),
                    }
                })?;
            watch_replication(health, r.position());
            routers.federation.push(r.router());
            routers.keep(Box::new(r));
        }
        Role::FederationSender => {
            let ring = shard_ring(cfg, "federation-sender").await?;
            let r =
                ganglion_federation_sender::FederationSender::start(cfg, db, bus, ring).await.map_err(|e| match e {
                    ganglion_federation_sender::StartError::Config(m) => {
                        Fatal::Runtime(format!("federation-sender: {m}"))
                    }
                    other => Fatal::Runtime(format!("federation-sender: {other}")),
                })?;
            watch_replication(health, r.position());
            routers.keep(Box::new(r));
        }
        Role::Media => {
            let r = ganglion_media::Media::start(cfg, db, bus).await.map_err(|e| match e {
                ganglion_media::StartError::Config(m) => Fatal::Config(m),
                other => Fatal::Runtime(format!("media: {other}")),
            })?;
            watch_replication(health, r.position());
            routers.media.push(r.media_router());
            routers.federation.push(r.federation_router());
            // `/_matrix/client/v1/media/*` is reachable on listeners serving `client` or `media`.
            routers.client_media.push(r.client_router());
            routers.keep(Box::new(r));
        }
        Role::Pusher => {
            let ring = shard_ring(cfg, "pusher").await?;
            let settings = ganglion_pusher::PushSettings::new(&cfg.push, cfg.email.as_ref())
                .map_err(|e| Fatal::Config(e.to_string()))?;
            let apps = ganglion_appservice::load(&cfg.app_service_config_files, &cfg.server_name)
                .map_err(|e| Fatal::Config(e.to_string()))?;
            let r = ganglion_pusher::Pusher::start(db, bus, ring, main.clone(), settings, apps, metrics)
                .await
                .map_err(|e| Fatal::Runtime(format!("pusher: {e}")))?;
            watch_replication(health, r.position());
            routers.keep(Box::new(r));
        }
    }
    Ok(())
}

fn database_readiness(health: &Health, db: Db) {
    let health = health.clone();
    tokio::spawn(async move {
        loop {
            health.set_ready("database", db.ping().await.is_ok());
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    });
}

/// `ganglion serve`: every role in one process. Uses Redis when `redis.url` is set, else the
/// in-process bus; SQLite under `data_dir` unless `database.url` says otherwise.
pub(crate) async fn serve(cfg: Config) -> Result<(), Fatal> {
    let db = connect_db(&cfg).await?;
    db.migrate().await.map_err(rt("migrations"))?;
    let bus: Arc<dyn Bus> = match &cfg.redis.url {
        Some(_) => redis_bus(&cfg).await?,
        None => Arc::new(InProcessBus::new(4096)),
    };
    let health = Health::new();
    let metrics = Metrics::new();
    database_readiness(&health, db.clone());
    // main's write API on an ephemeral loopback port: the other roles call it exactly as they
    // would across processes.
    let (main_state, rpc_bound) =
        start_main(&cfg, db.clone(), bus.clone(), SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let client = MainClient::new(&format!("http://{rpc_bound}")).map_err(rt("rpc client"))?;
    client.server_info(Duration::from_secs(10)).await.map_err(rt("write API"))?;
    let mut routers = RoleRouters::default();
    routers.client.push(ganglion_main::router(main_state));
    for role in [Role::Sync, Role::FederationReader, Role::FederationSender, Role::Media, Role::Pusher] {
        let telemetry = Telemetry { health: &health, metrics: &metrics };
        start_role(role, &cfg, db.clone(), bus.clone(), &client, telemetry, &mut routers).await?;
    }
    announce_registration(&cfg);
    serve_listeners(&cfg, routers, "serve", health, metrics).await
}

fn announce_registration(cfg: &Config) {
    let open = cfg.registration_open();
    match cfg.registration.enabled {
        Some(true) => {
            tracing::warn!("registration is open to anyone who can reach this server (registration.enabled = true)")
        }
        Some(false) => tracing::info!(
            "registration is closed (registration.enabled = false); create users with `ganglion register-user`"
        ),
        None if open => tracing::info!(
            "registration is open because every client listener is bound to loopback; set registration.enabled to change this"
        ),
        None => tracing::info!(
            "registration is closed because a client listener is not on loopback; set registration.enabled = true to open it"
        ),
    }
}

/// `ganglion worker <role>`: one role, on PostgreSQL and Redis.
pub(crate) async fn worker(cfg: Config, role: Role) -> Result<(), Fatal> {
    if !cfg.database_url().starts_with("postgres") {
        return Err(Fatal::Config(
            "database.url must be a postgres:// URL to run a single role (workers share one database)".into(),
        ));
    }
    let db = connect_db(&cfg).await?;
    let bus = redis_bus(&cfg).await?;
    let health = Health::new();
    let metrics = Metrics::new();
    database_readiness(&health, db.clone());
    let mut routers = RoleRouters::default();
    if role == Role::Main {
        if cfg.database.migrate_on_start {
            db.migrate().await.map_err(rt("migrations"))?;
        }
        require_current_schema(&db).await?;
        let (state, _) = start_main(&cfg, db, bus, cfg.rpc.listen).await?;
        routers.client.push(ganglion_main::router(state));
        announce_registration(&cfg);
    } else {
        require_current_schema(&db).await?;
        // Refuse to run beside a main of another schema; wait for main while it starts.
        let client = MainClient::new(&cfg.rpc.main_url).map_err(|e| Fatal::Config(format!("rpc.main_url: {e}")))?;
        let info = client.server_info(Duration::from_secs(60)).await.map_err(rt("main's write API"))?;
        if info.schema_version != ganglion_storage::SCHEMA_VERSION {
            return Err(Fatal::Runtime(format!(
                "main runs schema {}, this worker {}: run the same version",
                info.schema_version,
                ganglion_storage::SCHEMA_VERSION
            )));
        }
        if info.server_name != cfg.server_name {
            return Err(Fatal::Config(format!(
                "server_name is {} but main's is {}",
                cfg.server_name, info.server_name
            )));
        }
        let telemetry = Telemetry { health: &health, metrics: &metrics };
        start_role(role, &cfg, db, bus, &client, telemetry, &mut routers).await?;
    }
    tracing::info!(role = role.as_str(), "role started");
    serve_listeners(&cfg, routers, role.as_str(), health, metrics).await
}

/// `ganglion migrate`.
pub(crate) async fn migrate(cfg: Config) -> Result<(), Fatal> {
    let db = connect_db(&cfg).await?;
    let applied = db.migrate().await.map_err(rt("migrations"))?;
    if applied.is_empty() {
        println!("database schema is current (version {})", ganglion_storage::SCHEMA_VERSION);
    } else {
        println!("applied migrations {applied:?}; schema is version {}", ganglion_storage::SCHEMA_VERSION);
    }
    Ok(())
}

/// `ganglion rotate-signing-key`.
pub(crate) async fn rotate_signing_key(cfg: Config) -> Result<(), Fatal> {
    let db = connect_db(&cfg).await?;
    db.migrate().await.map_err(rt("migrations"))?;
    let key = ganglion_core::ServerSigningKey::generate();
    let stored =
        ganglion_storage::StoredSigningKey { version: key.version().to_owned(), pkcs8_base64: key.pkcs8_base64() };
    ganglion_storage::KeyStore::new(db).rotate_to(&stored).await.map_err(rt("database"))?;
    println!("now signing with ed25519:{}; restart every role to use it", key.version());
    Ok(())
}

/// `ganglion register-user`.
pub(crate) async fn register_user(cfg: Config, username: &str, password: &str, admin: bool) -> Result<(), Fatal> {
    let db = connect_db(&cfg).await?;
    db.migrate().await.map_err(rt("migrations"))?;
    let user_id = ganglion_main::register_user(&cfg, db, username, password, admin)
        .await
        .map_err(|e| Fatal::Runtime(e.to_string()))?;
    println!("registered {user_id}");
    Ok(())
}
