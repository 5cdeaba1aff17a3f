//! The black-box test harness: starts real `ganglion` processes (and nginx in front of them) on
//! loopback ports, waits for them to be ready, and kills them when dropped.
//!
//! The binary is found beside the test executable (`target/<profile>/ganglion`), or at
//! `TEST_GANGLION_BIN`. Build it first: `cargo build -p ganglion`.

pub mod appservice;
pub mod conformance;
pub mod push_gateway;
pub mod sdk;
pub mod smtp;
mod stub_http;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// The `ganglion` binary under test.
pub fn ganglion_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TEST_GANGLION_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/ganglion
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("ganglion");
    assert!(bin.exists(), "{} is missing: run `cargo build -p ganglion` before the end-to-end tests", bin.display());
    bin
}

/// A free loopback port. The port is released before use; tests retry start-up if it is taken.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A running child process, killed on drop.
pub struct Proc {
    /// Name for messages.
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Wraps a child started elsewhere, whose output goes to `log`.
    pub fn from_child(name: &str, child: Child, log: PathBuf) -> Self {
        Self { name: name.to_owned(), child: Some(child), log }
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
            let _ = c.wait().await;
        }
    }

    /// The OS process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The process's output so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Proc> {
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;
    cmd.stdout(Stdio::from(out)).stderr(Stdio::from(err)).stdin(Stdio::null()).kill_on_drop(true);
    // Each process gets its config from its file: nothing from the test's own environment.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("GANGLION_") {
            cmd.env_remove(key);
        }
    }
    let child = cmd.spawn().with_context(|| format!("spawning {name}"))?;
    Ok(Proc { name: name.to_owned(), child: Some(child), log })
}

/// Waits until `url` answers 200, up to `limit`.
pub async fn wait_ready(url: &str, limit: Duration, proc: &Proc) -> Result<()> {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Ok(r) = http.get(url).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{} not ready at {url} after {limit:?}; log:\n{}", proc.name, proc.log());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Config shared by every test process: cheap password hashing, quiet logs.
fn base_config(server_name: &str) -> Value {
    json!({
        "server_name": server_name,
        "password_hashing": { "memory_kib": 64, "iterations": 1, "parallelism": 1 },
        "telemetry": { "log_level": "info,ganglion=debug,ruma_state_res=warn" },
        "registration": { "enabled": true },
    })
}

fn write_config(dir: &Path, name: &str, cfg: &Value) -> Result<PathBuf> {
    let path = dir.join(format!("{name}.yaml"));
    // JSON is YAML.
    std::fs::write(&path, serde_json::to_string_pretty(cfg)?)?;
    Ok(path)
}

fn listener(port: u16) -> Value {
    json!([{ "bind": "127.0.0.1", "port": port, "resources": ["client", "federation", "media", "health", "metrics"] }])
}

/// `ganglion serve` on SQLite: the embedded default.
pub struct OneProcess {
    /// Base URL of the client API.
    pub url: String,
    /// The process.
    pub proc: Proc,
    /// The server name (`localhost`, or `127.0.0.1:port` when federating).
    pub server_name: String,
    _dir: tempfile::TempDir,
}

/// `(status, errcode)` of a Matrix error response.
pub async fn errcode(resp: reqwest::Response) -> (u16, String) {
    let status = resp.status().as_u16();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    (status, v["errcode"].as_str().unwrap_or_default().to_owned())
}

/// The test certificate authority of this test process, made once with `openssl`: a
/// directory holding `ca.pem` and `ca.key`. Servers trust it through
/// `federation.extra_ca_paths`, as a private federation would trust its own CA.
///
/// # Errors
/// When `openssl` is missing or fails.
pub async fn test_ca() -> Result<&'static Path> {
    static CA: tokio::sync::OnceCell<tempfile::TempDir> = tokio::sync::OnceCell::const_new();
    let dir = CA
        .get_or_try_init(|| async {
            let dir = tempfile::tempdir()?;
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=Ganglion test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                &dir.path().join("ca.key").to_string_lossy(),
                "-out",
                &dir.path().join("ca.pem").to_string_lossy(),
            ])
            .await?;
            anyhow::Ok(dir)
        })
        .await?;
    Ok(dir.path())
}

async fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl").args(args).output().await.context("running openssl")?;
    if !out.status.success() {
        bail!("openssl {}: {}", args.first().unwrap_or(&""), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A TLS certificate for `127.0.0.1` (and `localhost`) signed by [`test_ca`], written into
/// `dir`: `(certificate, key)`.
///
/// # Errors
/// When `openssl` is missing or fails.
pub async fn ca_signed_cert(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let ca = test_ca().await?;
    let (cert, key, csr, ext) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("cert.csr"), dir.join("ext.cnf"));
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )?;
    let p = |p: &Path| p.to_string_lossy().into_owned();
    openssl(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &p(&key),
        "-out",
        &p(&csr),
    ])
    .await?;
    let serial = format!("{}", rand::random::<u32>());
    openssl(&[
        "x509",
        "-req",
        "-in",
        &p(&csr),
        "-CA",
        &p(&ca.join("ca.pem")),
        "-CAkey",
        &p(&ca.join("ca.key")),
        "-set_serial",
        &serial,
        "-days",
        "1",
        "-extfile",
        &p(&ext),
        "-out",
        &p(&cert),
    ])
    .await?;
    Ok((cert, key))
}

impl OneProcess {
    /// Starts `ganglion serve` with a fresh data directory.
    ///
    /// # Errors
    /// When it does not become ready.
    pub async fn start() -> Result<Self> {
        Self::start_with(json!({})).await
    }

    /// Starts `ganglion serve` with `extra` top-level config sections added (e.g. `{"media": {…}}`).
    ///
    /// # Errors
    /// When it does not become ready.
    pub async fn start_with(extra: Value) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let mut cfg = base_config("localhost");
        if let Value::Object(sections) = extra {
            for (k, v) in sections {
                cfg[k] = v;
            }
        }
        cfg["listeners"] = listener(port);
        Self::launch(dir, cfg, port, "localhost".into()).await
    }

    /// Runs `ganglion serve` on `cfg` in `dir`, waiting for the client listener on `port`.
    async fn launch(dir: tempfile::TempDir, mut cfg: Value, port: u16, server_name: String) -> Result<Self> {
        cfg["data_dir"] = json!(dir.path().join("data"));
        let path = write_config(dir.path(), "serve", &cfg)?;
        let mut cmd = Command::new(ganglion_bin());
        cmd.arg("--config").arg(&path).arg("serve").current_dir(dir.path());
        let proc = spawn("serve", cmd, dir.path())?;
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{url}/health/ready"), Duration::from_secs(30), &proc).await?;
        Ok(Self { url, proc, server_name, _dir: dir })
    }

    /// Starts `ganglion serve` able to federate on loopback: its server name is
    /// `127.0.0.1:<port>` of a TLS listener serving the `federation` resource, with a
    /// certificate from [`test_ca`], which it trusts for other servers (`extra_ca_paths`), and
    /// loopback allowed for outbound requests; clients use [`OneProcess::url`], plain HTTP.
    ///
    /// # Errors
    /// When `openssl` is missing or the server does not become ready.
    pub async fn start_federating() -> Result<Self> {
        Self::start_federating_as("127.0.0.1").await
    }

    /// [`OneProcess::start_federating`] with the server name `<host>:<port>`: `localhost`
    /// gives a server other servers on loopback can tell apart by host (as server ACLs do).
    ///
    /// # Errors
    /// As [`OneProcess::start_federating`].
    pub async fn start_federating_as(host: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (cert, key) = ca_signed_cert(dir.path()).await?;
        let ca = test_ca().await?.join("ca.pem");
        let (port, fed_port) = (free_port(), free_port());
        let server_name = format!("{host}:{fed_port}");
        let mut cfg = base_config(&server_name);
        cfg["federation"] = json!({
            "request_timeout_ms": 10_000,
            "extra_ca_paths": [ca],
            "ip_range_allowlist": ["127.0.0.0/8"],
        });
        cfg["listeners"] = json!([
            { "bind": "127.0.0.1", "port": port, "resources": ["client", "media", "health", "metrics"] },
            { "bind": "127.0.0.1", "port": fed_port, "resources": ["federation"],
              "tls": { "certificate_path": cert, "key_path": key } },
        ]);
        Self::launch(dir, cfg, port, server_name).await
    }
}

/// The split deployment: `main`, N `sync` workers and nginx routing between them, on a fresh
/// PostgreSQL database and a private Redis key prefix.
pub struct Split {
    /// nginx's URL: what clients use.
    pub url: String,
    /// `main`.
    pub main: Proc,
    /// The sync workers.
    pub syncs: Vec<Proc>,
    /// The media workers (none unless started with [`Split::start_with_media`]).
    pub medias: Vec<Proc>,
    /// Each media worker's own URL, bypassing nginx.
    pub media_urls: Vec<String>,
    /// nginx.
    pub nginx: Proc,
    /// `main`'s gRPC write API, `http://127.0.0.1:port`.
    pub rpc_url: String,
    /// Every process's configuration but the listeners, for [`Split::spawn_worker`].
    base: Value,
    db: Option<ScratchPostgres>,
    dir: tempfile::TempDir,
}

/// A throwaway PostgreSQL database, created and dropped with `psql`. The harness talks to
/// PostgreSQL only through the client binary, so it links no database driver (matrix-sdk's
/// SQLite and sqlx's cannot share one dependency graph; see tests/sdk-e2ee).
pub struct ScratchPostgres {
    /// The database's URL.
    pub url: String,
    admin_url: String,
    name: String,
}

impl ScratchPostgres {
    /// A new empty database on the server at `TEST_POSTGRES_URL` (default
    /// `postgres://postgres@127.0.0.1:5432/postgres`, trust auth).
    ///
    /// # Errors
    /// When `psql` is missing or the server refuses.
    pub async fn create() -> Result<Self> {
        let admin_url =
            std::env::var("TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("ganglion_test_{:016x}", rand::random::<u64>());
        psql(&admin_url, &format!("CREATE DATABASE {name}")).await?;
        let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(b, _)| b);
        Ok(Self { url: format!("{base}/{name}"), name, admin_url })
    }

    /// Drops the database, disconnecting whoever is still on it.
    pub async fn drop_database(self) {
        if let Err(e) = psql(&self.admin_url, &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)).await {
            eprintln!("dropping {}: {e:#}", self.name);
        }
    }
}

async fn psql(url: &str, sql: &str) -> Result<()> {
    let out = Command::new("psql")
        .arg(url)
        .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
        .output()
        .await
        .context("running psql (the PostgreSQL client)")?;
    if !out.status.success() {
        bail!("psql {sql:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// nginx's path, if installed.
pub fn nginx_bin() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"].iter().map(PathBuf::from).find(|p| p.exists())
}

impl Split {
    /// Starts PostgreSQL database, main, `n_sync` sync workers and nginx.
    ///
    /// # Errors
    /// When anything fails to start.
    pub async fn start(n_sync: usize) -> Result<Self> {
        Self::start_with_media(n_sync, 0, json!({})).await
    }

    /// Like [`Split::start`], plus `n_media` media workers sharing one media store, and `media`
    /// as the `media` config section of every process.
    ///
    /// # Errors
    /// When anything fails to start.
    pub async fn start_with_media(n_sync: usize, n_media: usize, media: Value) -> Result<Self> {
        Self::start_with_config(n_sync, n_media, json!({ "media": media })).await
    }

    /// Like [`Split::start`], plus `n_media` media workers, with `extra`'s top-level keys set in
    /// the configuration of every process (e.g. `{"app_service_config_files": […]}`).
    ///
    /// # Errors
    /// When anything fails to start.
    pub async fn start_with_config(n_sync: usize, n_media: usize, extra: Value) -> Result<Self> {
        let nginx = nginx_bin().context("nginx is not installed (apt-get install nginx-light); .ci/run installs it")?;
        let dir = tempfile::tempdir()?;
        let db = ScratchPostgres::create().await?;
        let redis_url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let prefix = format!("ganglion-test-{:016x}", rand::random::<u64>());
        let rpc_port = free_port();
        let shared = |port: u16| {
            let mut cfg = base_config("localhost");
            cfg["data_dir"] = json!(dir.path().join("data"));
            cfg["database"] = json!({ "url": db.url, "max_connections": 5 });
            cfg["redis"] = json!({ "url": redis_url, "key_prefix": prefix });
            cfg["rpc"] = json!({ "listen": format!("127.0.0.1:{rpc_port}"), "main_url": format!("http://127.0.0.1:{rpc_port}") });
            cfg["listeners"] = listener(port);
            if let Value::Object(extra) = &extra {
                for (k, v) in extra {
                    cfg[k] = v.clone();
                }
            }
            cfg
        };
        let bin = ganglion_bin();
        let main_port = free_port();
        let main_cfg = write_config(dir.path(), "main", &shared(main_port))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--config").arg(&main_cfg).args(["worker", "main"]);
        let main = spawn("main", cmd, dir.path())?;
        wait_ready(&format!("http://127.0.0.1:{main_port}/health/ready"), Duration::from_secs(30), &main).await?;

        let mut syncs = Vec::new();
        let mut sync_addrs = Vec::new();
        for i in 0..n_sync {
            let port = free_port();
            let cfg = write_config(dir.path(), &format!("sync{i}"), &shared(port))?;
            let mut cmd = Command::new(&bin);
            cmd.arg("--config").arg(&cfg).args(["worker", "sync"]);
            let p = spawn(&format!("sync{i}"), cmd, dir.path())?;
            wait_ready(&format!("http://127.0.0.1:{port}/health/ready"), Duration::from_secs(30), &p).await?;
            syncs.push(p);
            sync_addrs.push(format!("127.0.0.1:{port}"));
        }

        let mut medias = Vec::new();
        let mut media_addrs = Vec::new();
        for i in 0..n_media {
            let port = free_port();
            let cfg = write_config(dir.path(), &format!("media{i}"), &shared(port))?;
            let mut cmd = Command::new(&bin);
            cmd.arg("--config").arg(&cfg).args(["worker", "media"]);
            let p = spawn(&format!("media{i}"), cmd, dir.path())?;
            wait_ready(&format!("http://127.0.0.1:{port}/health/ready"), Duration::from_secs(30), &p).await?;
            medias.push(p);
            media_addrs.push(format!("127.0.0.1:{port}"));
        }

        // The proxy config comes from the routing table, through the CLI operators use.
        let proxy_port = free_port();
        let ngx_dir = dir.path().join("nginx");
        std::fs::create_dir_all(&ngx_dir)?;
        let out = Command::new(&bin)
            .arg("--config")
            .arg(&main_cfg)
            .args(["routes", "--format", "nginx", "--listen", &proxy_port.to_string()])
            .arg("--prefix")
            .arg(&ngx_dir)
            .arg("--upstream")
            .arg(format!("main=127.0.0.1:{main_port}"))
            .arg("--upstream")
            .arg(format!("sync={}", sync_addrs.join(",")))
            .args(if media_addrs.is_empty() {
                vec![]
            } else {
                vec!["--upstream".to_owned(), format!("media={}", media_addrs.join(","))]
            })
            .output()
            .await?;
        if !out.status.success() {
            bail!("ganglion routes failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let conf = ngx_dir.join("nginx.conf");
        std::fs::write(&conf, &out.stdout)?;
        let mut cmd = Command::new(nginx);
        cmd.arg("-p").arg(&ngx_dir).arg("-c").arg(&conf).args(["-g", "daemon off; master_process off;"]);
        let nginx = spawn("nginx", cmd, dir.path())?;
        let url = format!("http://127.0.0.1:{proxy_port}");
        wait_ready(&format!("{url}/_matrix/client/versions"), Duration::from_secs(15), &nginx).await?;
        let media_urls = media_addrs.iter().map(|a| format!("http://{a}")).collect();
        let base = shared(0);
        Ok(Self {
            url,
            main,
            syncs,
            medias,
            media_urls,
            nginx,
            rpc_url: format!("http://127.0.0.1:{rpc_port}"),
            base,
            db: Some(db),
            dir,
        })
    }

    /// Starts one more worker of `role` (a role the proxy does not route to, such as `pusher`,
    /// or one reached directly), named `name`, with `extra` merged over the shared configuration's
    /// top-level keys. Waits until it is ready; the caller owns (and kills) it.
    ///
    /// # Errors
    /// When it does not start.
    pub async fn spawn_worker(&self, role: &str, name: &str, extra: Value) -> Result<Proc> {
        let port = free_port();
        let mut cfg = self.base.clone();
        cfg["listeners"] = listener(port);
        if let (Some(cfg), Some(extra)) = (cfg.as_object_mut(), extra.as_object()) {
            for (k, v) in extra {
                cfg.insert(k.clone(), v.clone());
            }
        }
        let path = write_config(self.dir.path(), name, &cfg)?;
        let mut cmd = Command::new(ganglion_bin());
        cmd.arg("--config").arg(&path).args(["worker", role]);
        let p = spawn(name, cmd, self.dir.path())?;
        wait_ready(&format!("http://127.0.0.1:{port}/health/ready"), Duration::from_secs(30), &p).await?;
        Ok(p)
    }

    /// Every process's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut s = format!("--- main\n{}", self.main.log());
        for p in self.syncs.iter().chain(&self.medias) {
            s.push_str(&format!("\n--- {}\n{}", p.name, p.log()));
        }
        s.push_str(&format!(
            "\n--- nginx error.log\n{}",
            std::fs::read_to_string(self.dir.path().join("nginx/error.log")).unwrap_or_default()
        ));
        s
    }

    /// Stops everything and drops the database.
    pub async fn stop(mut self) {
        self.nginx.kill().await;
        for p in self.syncs.iter_mut().chain(self.medias.iter_mut()) {
            p.kill().await;
        }
        self.main.kill().await;
        if let Some(db) = self.db.take() {
            db.drop_database().await;
        }
    }
}

/// A real Synapse (PyPI `matrix-synapse`) on SQLite, for differential tests: same requests, same
/// answers expected. Found through `TEST_SYNAPSE_PYTHON`, a Python with Synapse installed
/// (`tests/run.sh` makes a venv); killed on drop.
pub struct Synapse {
    /// Base URL of its client API.
    pub url: String,
    proc: Proc,
    _dir: tempfile::TempDir,
    _certs: Option<tempfile::TempDir>,
}

impl Synapse {
    /// Starts Synapse as `localhost` on a free port, registration open, rate limits off. `None`
    /// when `TEST_SYNAPSE_PYTHON` is not set.
    ///
    /// # Errors
    /// When it cannot be configured or does not become ready.
    pub async fn start() -> Result<Option<Self>> {
        let port = free_port();
        let listeners = json!([{ "port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": false,
                                 "x_forwarded": false, "resources": [{ "names": ["client"], "compress": false }] }]);
        Self::launch("localhost", port, json!({ "listeners": listeners })).await
    }

    /// Starts Synapse able to federate on loopback, the way [`OneProcess::start_federating`]
    /// does: server name `127.0.0.1:<port>` of a TLS listener with a certificate from
    /// [`test_ca`], which it trusts for other servers; loopback reachable; no notaries; short
    /// retry intervals. `None` when `TEST_SYNAPSE_PYTHON` is not set.
    ///
    /// # Errors
    /// When it cannot be configured or does not become ready.
    pub async fn start_federating() -> Result<Option<(Self, String)>> {
        let (port, fed_port) = (free_port(), free_port());
        let server_name = format!("127.0.0.1:{fed_port}");
        let ca = test_ca().await?.join("ca.pem");
        let certs = tempfile::tempdir()?;
        let (cert, key) = ca_signed_cert(certs.path()).await?;
        let overrides = json!({
            "listeners": [
                { "port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": false,
                  "x_forwarded": false, "resources": [{ "names": ["client"], "compress": false }] },
                { "port": fed_port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": true,
                  "resources": [{ "names": ["federation"], "compress": false }] },
            ],
            "tls_certificate_path": cert,
            "tls_private_key_path": key,
            "federation_custom_ca_list": [ca],
            "federation_ip_range_blacklist": [],
            "ip_range_whitelist": ["127.0.0.0/8", "::1/128"],
            "federation": { "destination_min_retry_interval": "1s", "destination_max_retry_interval": "10s",
                            "max_short_retry_delay": "1s", "max_long_retry_delay": "2s" },
            "rc_federation": { "window_size": 1000, "sleep_limit": 10, "sleep_delay": 500,
                               "reject_limit": 99999, "concurrent": 3 },
        });
        let s = Self::launch(&server_name, port, overrides).await?;
        // The certificates live as long as the process that reads them.
        Ok(s.map(|s| (Self { _certs: Some(certs), ..s }, server_name)))
    }

    async fn launch(server_name: &str, port: u16, extra: Value) -> Result<Option<Self>> {
        let Ok(python) = std::env::var("TEST_SYNAPSE_PYTHON") else { return Ok(None) };
        let dir = tempfile::tempdir()?;
        let config = dir.path().join("homeserver.yaml");
        let out = Command::new(&python)
            .args(["-m", "synapse.app.homeserver", "--server-name", server_name, "--report-stats=no"])
            .arg("--generate-config")
            .arg("--config-path")
            .arg(&config)
            .arg("--data-directory")
            .arg(dir.path())
            // The generated log config names `homeserver.log` relative to where this runs.
            .current_dir(dir.path())
            .output()
            .await
            .context("running Synapse's --generate-config")?;
        if !out.status.success() {
            bail!("synapse --generate-config: {}", String::from_utf8_lossy(&out.stderr));
        }
        let unlimited = json!({ "per_second": 10000, "burst_count": 10000 });
        // JSON is YAML; later config files override earlier ones key by key.
        let mut overrides = json!({
            "enable_registration": true,
            "enable_registration_without_verification": true,
            "allow_guest_access": true,
            "trusted_key_servers": [],
            "suppress_key_server_warning": true,
            "rc_message": unlimited, "rc_registration": unlimited, "rc_login":
                { "address": unlimited, "account": unlimited, "failed_attempts": unlimited },
            "rc_joins": { "local": unlimited, "remote": unlimited },
            "rc_invites": { "per_room": unlimited, "per_user": unlimited, "per_issuer": unlimited },
        });
        if let (Value::Object(o), Value::Object(extra)) = (&mut overrides, extra) {
            o.extend(extra);
        }
        let override_path = write_config(dir.path(), "overrides", &overrides)?;
        let mut cmd = Command::new(&python);
        cmd.args(["-m", "synapse.app.homeserver", "-c"]).arg(&config).arg("-c").arg(&override_path);
        let proc = spawn("synapse", cmd, dir.path())?;
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{url}/_matrix/client/versions"), Duration::from_secs(60), &proc).await?;
        Ok(Some(Self { url, proc, _dir: dir, _certs: None }))
    }

    /// Synapse's log, for failure messages.
    pub fn log(&self) -> String {
        self.proc.log()
    }
}

/// A `moto_server` (PyPI `moto[server]`): a local S3 for the media store, killed on drop.
pub struct Moto {
    /// Its URL, `http://127.0.0.1:port`.
    pub url: String,
    _proc: Proc,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts `moto_server` on a free port; `None`, with a note on stderr, when it is not installed.
    ///
    /// # Errors
    /// When it is installed but does not become ready.
    pub async fn start() -> Result<Option<Self>> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let mut cmd = Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let proc = match spawn("moto", cmd, dir.path()) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("NOTE: skipping the S3 variant: moto_server cannot run ({e:#}); pip install 'moto[server]'");
                return Ok(None);
            }
        };
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&url, Duration::from_secs(30), &proc).await?;
        Ok(Some(Self { url, _proc: proc, _dir: dir }))
    }

    /// Creates a fresh bucket and returns the `media.s3` config section for it.
    ///
    /// # Errors
    /// When moto refuses.
    pub async fn bucket(&self) -> Result<Value> {
        let bucket = format!("media-{:08x}", rand::random::<u32>());
        let resp = reqwest::Client::new().put(format!("{}/{bucket}", self.url)).send().await?;
        if !resp.status().is_success() {
            bail!("creating bucket {bucket}: {}", resp.status());
        }
        Ok(json!({
            "endpoint": self.url, "bucket": bucket, "access_key_id": "test", "secret_access_key": "test",
            "key_prefix": "media/",
        }))
    }
}

/// A minimal raw-HTTP Matrix client for tests.
#[derive(Clone)]
pub struct RawClient {
    /// Base URL.
    pub url: String,
    /// Access token, once logged in.
    pub token: String,
    /// The user ID.
    pub user_id: String,
    http: reqwest::Client,
}

/// A response's status and JSON body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body (Null when not JSON).
    pub body: Value,
}

impl RawClient {
    /// An anonymous client.
    pub fn new(url: &str) -> Self {
        Self { url: url.to_owned(), token: String::new(), user_id: String::new(), http: reqwest::Client::new() }
    }

    /// Sends a request; `body` is sent as JSON when given.
    ///
    /// # Errors
    /// On transport failure.
    pub async fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Reply> {
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        let mut req = self.http.request(method, format!("{}{}", self.url, path)).timeout(Duration::from_secs(90));
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok(Reply { status, body: serde_json::from_str(&text).unwrap_or(Value::Null) })
    }

    /// Registers `username` through User-Interactive Auth and keeps its token.
    ///
    /// # Errors
    /// When registration fails.
    pub async fn register(url: &str, username: &str) -> Result<Self> {
        let mut c = Self::new(url);
        // Registration is rate-limited per address: wait as told, as a real client does.
        async fn post(c: &RawClient, body: Value) -> Result<Reply> {
            let mut tries = 0;
            loop {
                let r = c.call("POST", "/_matrix/client/v3/register", Some(&body)).await?;
                tries += 1;
                if r.status != 429 || tries >= 20 {
                    return Ok(r);
                }
                let wait = r.body["retry_after_ms"].as_u64().unwrap_or(1000);
                tokio::time::sleep(Duration::from_millis(wait + 50)).await;
            }
        }
        let first = post(&c, json!({ "username": username, "password": "secret" })).await?;
        if first.status != 401 {
            bail!("expected a UIA challenge, got {first:?}");
        }
        let session = first.body["session"].as_str().context("session")?.to_owned();
        let done = post(
            &c,
            json!({ "username": username, "password": "secret", "auth": { "type": "m.login.dummy", "session": session } }),
        )
        .await?;
        if done.status != 200 {
            bail!("registration failed: {done:?}");
        }
        c.token = done.body["access_token"].as_str().context("token")?.to_owned();
        c.user_id = done.body["user_id"].as_str().context("user_id")?.to_owned();
        Ok(c)
    }

    /// `/sync` with `since` and a long-poll timeout, retrying 502/503 answers (a worker going
    /// away behind the proxy) and transport errors.
    ///
    /// # Errors
    /// When it keeps failing for 60 seconds.
    pub async fn sync(&self, since: Option<&str>, timeout_ms: u64) -> Result<Value> {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(s) = since {
            path.push_str(&format!("&since={s}"));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match self.call("GET", &path, None).await {
                Ok(r) if r.status == 200 => return Ok(r.body),
                Ok(r)
                    if tokio::time::Instant::now() < deadline
                        && (r.status == 502 || r.status == 503 || r.status == 504) => {}
                Err(_) if tokio::time::Instant::now() < deadline => {}
                Ok(r) => bail!("sync failed: {r:?}"),
                Err(e) => return Err(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl RawClient {
    /// Syncs from `since` until a response satisfies `done` (other news, such as presence, may
    /// wake a long-poll first), for up to 20 seconds. Returns that response.
    ///
    /// # Errors
    /// When no response satisfies `done` in time.
    pub async fn sync_until(&self, since: &str, done: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut since = since.to_owned();
        loop {
            let resp = self.sync(Some(&since), 5_000).await?;
            if done(&resp) {
                return Ok(resp);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("no sync response matched in time; last: {resp}");
            }
            since = resp["next_batch"].as_str().context("next_batch")?.to_owned();
        }
    }
}

/// Percent-encodes a path segment (an alias or ID: `#`, `!`, `:`).
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The bodies of `m.room.message` events in a sync response's room timeline, in order.
pub fn message_bodies(sync: &Value, room_id: &str) -> Vec<String> {
    sync["rooms"]["join"][room_id]["timeline"]["events"]
        .as_array()
        .map(|evs| {
            evs.iter()
                .filter(|e| e["type"] == "m.room.message")
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
