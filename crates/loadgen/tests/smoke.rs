//! Runs tiny versions of every scenario against a real `ganglion serve` (SQLite, rate limits
//! off) and checks that nothing is lost or duplicated.
//!
//! The binary is `TEST_GANGLION_BIN`, or `ganglion` beside this test's target directory
//! (`cargo build -p ganglion` first, as `tests/run.sh` does).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use ganglion_loadgen::{client, delivery, sync_cost};
use serde_json::json;
use tokio::process::{Child, Command};

fn ganglion_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TEST_GANGLION_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/ganglion
    let bin = exe.parent().and_then(Path::parent).expect("target dir").join("ganglion");
    assert!(bin.exists(), "{} is missing: run `cargo build -p ganglion` or set TEST_GANGLION_BIN", bin.display());
    bin
}

/// `ganglion serve` in a temporary directory, killed on drop.
struct Server {
    url: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let cfg = json!({
            "server_name": "localhost",
            "data_dir": dir.path().join("data"),
            "password_hashing": { "memory_kib": 64, "iterations": 1, "parallelism": 1 },
            "registration": { "enabled": true },
            "rate_limits": { "enabled": false },
            "telemetry": { "log_level": "warn" },
            "listeners": [{ "bind": "127.0.0.1", "port": port, "resources": ["client", "federation", "health"] }],
        });
        let config = dir.path().join("serve.yaml");
        // JSON is YAML.
        std::fs::write(&config, cfg.to_string()).expect("writing the config");
        let log = std::fs::File::create(dir.path().join("serve.log")).expect("log file");
        let mut cmd = Command::new(ganglion_bin());
        cmd.arg("--config").arg(&config).arg("serve").current_dir(dir.path()).kill_on_drop(true);
        cmd.stdout(Stdio::from(log.try_clone().expect("log"))).stderr(Stdio::from(log)).stdin(Stdio::null());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GANGLION_") {
                cmd.env_remove(key);
            }
        }
        let child = cmd.spawn().expect("spawning ganglion serve");
        let server = Self { url: format!("http://127.0.0.1:{port}"), child, dir };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{}/health/ready", self.url)).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "ganglion not ready; log:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("serve.log")).unwrap_or_default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_run_against_ganglion_loses_and_duplicates_nothing() {
    let mut server = Server::start().await;
    let pid = server.child.id().expect("server pid");
    let http = client::http_client().expect("http client");

    let params = delivery::Params {
        clients: 3,
        messages: 20,
        senders: 2,
        rate_per_sec: 100.0,
        grace: Duration::from_secs(5),
        sync_timeout_ms: 5_000,
        timeline_limit: 50,
    };
    let report = delivery::run(&http, &server.url, &params, &[pid], &[]).await.expect("delivery run");
    let t = &report.tally;
    assert_eq!(report.sent_ok, 20, "{report}\n{}", server.log());
    assert_eq!((t.lost, t.duplicates, t.unexpected), (0, 0, 0), "{report}");
    assert_eq!(t.delivered, 60);
    assert_eq!(report.latency.as_ref().map(|s| s.count), Some(60));
    assert!(report.cpu.is_some_and(|c| c.server_secs >= 0.0));
    assert!(report.to_json()["lost"] == 0);

    let inc = sync_cost::incremental(&http, &server.url, 3).await.expect("incremental");
    assert_eq!(inc.empty.as_ref().map(|s| s.count), Some(3), "{inc}");
    assert_eq!(inc.one_event.as_ref().map(|s| s.count), Some(3), "{inc}");

    let init = sync_cost::initial(&http, &server.url, 5, 2, 2).await.expect("initial");
    assert_eq!(init.syncs.len(), 2);
    assert!(init.syncs.iter().all(|s| s.rooms == 5 && s.bytes > 0), "{init}");

    let _ = server.child.kill().await;
}
