//! matrix-js-sdk (the library inside Element Web), run in Node against `ganglion serve` and the
//! split deployment: the everyday session of issue 6 (`tests/js/everyday.mjs`). Skipped, with a message, when `node` or
//! `npm` is not installed; `tests/run.sh` installs them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use ganglion_e2e::{OneProcess, Split};
use tokio::process::Command;

/// The script bounds itself at 60 s; this is the backstop if Node itself hangs.
const SCRIPT_LIMIT: Duration = Duration::from_secs(90);
const NPM_CI_LIMIT: Duration = Duration::from_secs(300);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

fn installed(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn node_modules_current(dir: &Path) -> bool {
    let lock = modified(&dir.join("package-lock.json")).expect("tests/js/package-lock.json is committed");
    modified(&dir.join("node_modules/.package-lock.json")).is_some_and(|installed| installed >= lock)
}

/// Removes the install lock when the install ends, however it ends.
struct InstallLock(PathBuf);

impl Drop for InstallLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// `npm ci`, unless `node_modules` was installed from the current lockfile (npm writes its own copy,
/// `node_modules/.package-lock.json`, after an install). The tests run in parallel processes, so
/// one installs while the others wait on a lock directory (creating a directory is atomic).
async fn npm_ci(dir: &Path) {
    let lock_path = dir.join(".npm-ci.lock");
    let deadline = tokio::time::Instant::now() + NPM_CI_LIMIT;
    let _lock = loop {
        if node_modules_current(dir) {
            return;
        }
        match std::fs::create_dir(&lock_path) {
            Ok(()) => break InstallLock(lock_path.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{} is still there after {NPM_CI_LIMIT:?}: remove it if no install is running",
                    lock_path.display()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot create {}: {e}", lock_path.display()),
        }
    };
    if node_modules_current(dir) {
        return;
    }
    let out = tokio::time::timeout(
        NPM_CI_LIMIT,
        Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(dir).kill_on_drop(true).output(),
    )
    .await
    .expect("npm ci finishes within 5 minutes")
    .expect("npm runs");
    assert!(
        out.status.success(),
        "npm ci failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `everyday.mjs` against `url`; `logs` gives the servers' logs for a failure message.
async fn run_script(dir: &Path, url: &str, logs: impl Fn() -> String) {
    // kill_on_drop: a timeout drops the child, which kills Node; the servers are killed when dropped.
    let run = Command::new("node")
        .arg("everyday.mjs")
        .arg(url)
        .current_dir(dir)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .output();
    let out = match tokio::time::timeout(SCRIPT_LIMIT, run).await {
        Ok(out) => out.expect("node runs"),
        Err(_) => panic!("the matrix-js-sdk script ran over {SCRIPT_LIMIT:?}; server log:\n{}", logs()),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "matrix-js-sdk session failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log\n{}",
        out.status,
        logs()
    );
    assert!(stdout.lines().any(|l| l == "ok"), "the script reports success: {stdout}");
}

/// Prepares the Node project, or says why the test is skipped.
async fn prepared() -> Option<PathBuf> {
    if !installed("node") || !installed("npm") {
        eprintln!("skipped: node and npm are needed for the matrix-js-sdk test (tests/run.sh installs them)");
        return None;
    }
    let dir = js_dir();
    npm_ci(&dir).await;
    Some(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_js_sdk_completes_an_everyday_session() {
    let Some(dir) = prepared().await else { return };
    let server = OneProcess::start().await.expect("server starts");
    run_script(&dir, &server.url, || server.proc.log()).await;
}

/// The same session through nginx in front of main and two sync workers on PostgreSQL and Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_js_sdk_completes_an_everyday_session_split() {
    let Some(dir) = prepared().await else { return };
    let split = Split::start(2).await.expect("split deployment starts");
    run_script(&dir, &split.url, || split.logs()).await;
    split.stop().await;
}
