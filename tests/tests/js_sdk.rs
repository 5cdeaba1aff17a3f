//! matrix-js-sdk (the library inside Element Web), run in Node against `ganglion serve`: the
//! everyday session of issue 6 (`tests/js/everyday.mjs`). Skipped, with a message, when `node` or
//! `npm` is not installed; `tests/run.sh` installs them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use ganglion_e2e::OneProcess;
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

/// `npm ci`, unless `node_modules` was installed from the current lockfile (npm writes its own copy,
/// `node_modules/.package-lock.json`, after an install).
async fn npm_ci(dir: &Path) {
    let lock = modified(&dir.join("package-lock.json")).expect("tests/js/package-lock.json is committed");
    if modified(&dir.join("node_modules/.package-lock.json")).is_some_and(|installed| installed >= lock) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_js_sdk_completes_an_everyday_session() {
    if !installed("node") || !installed("npm") {
        eprintln!("skipped: node and npm are needed for the matrix-js-sdk test (tests/run.sh installs them)");
        return;
    }
    let dir = js_dir();
    npm_ci(&dir).await;
    let server = OneProcess::start().await.expect("server starts");
    // kill_on_drop: a timeout drops the child, which kills Node; the server is killed when dropped.
    let run = Command::new("node")
        .arg("everyday.mjs")
        .arg(&server.url)
        .current_dir(&dir)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .output();
    let out = match tokio::time::timeout(SCRIPT_LIMIT, run).await {
        Ok(out) => out.expect("node runs"),
        Err(_) => panic!("the matrix-js-sdk script ran over {SCRIPT_LIMIT:?}; server log:\n{}", server.proc.log()),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "matrix-js-sdk session failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log\n{}",
        out.status,
        server.proc.log()
    );
    assert!(stdout.lines().any(|l| l == "ok"), "the script reports success: {stdout}");
}
