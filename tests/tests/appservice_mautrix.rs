//! A real bridge framework against the split deployment: mautrix-python's `AppService`
//! (tests/mautrix/bridge.py) registers puppets, joins and talks as them, receives the messages
//! and typing of ordinary users, creates a room when its alias is looked up, pings, and after
//! being killed and restarted receives what it missed, once. The Python comes from
//! `TEST_MAUTRIX_PYTHON` (tests/run.sh makes a venv with mautrix).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use ganglion_e2e::appservice::{AS_TOKEN, HS_TOKEN, write_registration};
use ganglion_e2e::{RawClient, Split, free_port};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

const WAIT: Duration = Duration::from_secs(30);

/// One run of bridge.py: its stdin for commands, and every JSON line it printed.
struct Bridge {
    child: Child,
    stdin: ChildStdin,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Bridge {
    async fn start(hs: &str, port: u16, state: &std::path::Path) -> Result<Self> {
        let python = std::env::var("TEST_MAUTRIX_PYTHON")
            .context("TEST_MAUTRIX_PYTHON must name a Python with mautrix installed (tests/run.sh makes one)")?;
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mautrix/bridge.py");
        let mut child = Command::new(python)
            .arg(script)
            .args([hs, "localhost", &port.to_string(), AS_TOKEN, HS_TOKEN])
            .arg(state)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = child.stdin.take().context("stdin")?;
        let stdout = child.stdout.take().context("stdout")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        {
            let lines = lines.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = reader.next_line().await {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        lines.lock().unwrap().push(v);
                    }
                }
            });
        }
        let b = Self { child, stdin, lines };
        b.wait_for("ready", |v| v["ready"] == true).await?;
        Ok(b)
    }

    fn lines(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    async fn wait_for(&self, what: &str, done: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(v) = self.lines().into_iter().find(|v| done(v)) {
                return Ok(v);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "bridge never printed {what}; it printed {:#?}",
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs one command and returns its answer (the first line of `key` or `error` after it).
    async fn run(&mut self, cmd: &str, key: &str) -> Result<Value> {
        let before = self.lines().len();
        self.stdin.write_all(format!("{cmd}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let lines = self.lines();
            if let Some(v) = lines[before..].iter().find(|v| v.get(key).is_some() || v.get("error").is_some()) {
                anyhow::ensure!(v.get("error").is_none(), "{cmd}: {v}");
                return Ok(v[key].clone());
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "{cmd}: no answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn messages(&self) -> Vec<String> {
        self.lines()
            .iter()
            .filter(|v| v["event"]["type"] == "m.room.message")
            .filter_map(|v| v["event"]["content"]["body"].as_str().map(str::to_owned))
            .collect()
    }
}

async fn ok(c: &RawClient, method: &str, path: &str, body: Value) -> Result<Value> {
    let r = c.call(method, path, Some(&body)).await?;
    anyhow::ensure!(r.status == 200, "{method} {path}: {r:?}");
    Ok(r.body)
}

#[tokio::test]
async fn a_mautrix_bridge_runs_against_the_split_deployment() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let as_port = free_port();
    let reg = write_registration(dir.path(), &format!("http://127.0.0.1:{as_port}"), "localhost")?;
    let split = Split::start_with_config(1, 0, json!({ "app_service_config_files": [reg] })).await?;
    let mut pusher = split.spawn_worker("pusher", "pusher-a", json!({})).await?;
    let state = dir.path().join("mx-state.json");
    let mut bridge = Bridge::start(&split.url, as_port, &state).await?;

    // The framework checks it is reachable the way bridges do at start-up.
    let ping = bridge.run("ping", "ping").await?;
    assert!(ping.is_u64(), "{ping}");

    // A puppet, in a room with an ordinary user: messages both ways.
    assert_eq!(bridge.run("register irc_bob", "registered").await?, "@irc_bob:localhost");
    let alice = RawClient::register(&split.url, "alice").await?;
    let room = ok(&alice, "POST", "/_matrix/client/v3/createRoom", json!({ "invite": ["@irc_bob:localhost"] })).await?
        ["room_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    bridge.run(&format!("join irc_bob {room}"), "joined").await?;
    ok(
        &alice,
        "PUT",
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/m1"),
        json!({ "msgtype": "m.text", "body": "hi bridge" }),
    )
    .await?;
    bridge.wait_for("alice's message", |v| v["event"]["content"]["body"] == "hi bridge").await?;
    bridge.run(&format!("send irc_bob {room} hello from irc"), "sent").await?;
    let msgs = alice.call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5"), None).await?.body;
    let from_bob = msgs["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["sender"] == "@irc_bob:localhost" && e["type"] == "m.room.message");
    assert_eq!(from_bob.map(|e| e["content"]["body"].clone()), Some(json!("hello from irc")), "{msgs}");

    // Typing reaches the framework's ephemeral handler.
    ok(
        &alice,
        "PUT",
        &format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id),
        json!({ "typing": true, "timeout": 30000 }),
    )
    .await?;
    bridge
        .wait_for("typing", |v| v["ephemeral"]["type"] == "m.typing" && v["ephemeral"]["room_id"] == room.as_str())
        .await?;

    // Looking up a bridged channel's alias makes the bridge create it; the join goes through.
    let joined = ok(&alice, "POST", "/_matrix/client/v3/join/%23irc_linux%3Alocalhost", json!({}))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nbridge: {:#?}\n{}", bridge.lines(), split.logs()))?;
    let created = bridge.wait_for("alias_created", |v| v["alias_created"] == "#irc_linux:localhost").await?;
    assert_eq!(joined["room_id"], created["room_id"], "{joined} {created}");

    // The bridge dies; what is said meanwhile reaches it once it is back, each message once.
    bridge.child.kill().await?;
    for i in 0..3 {
        ok(
            &alice,
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/o{i}"),
            json!({ "msgtype": "m.text", "body": format!("while down {i}") }),
        )
        .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let bridge = Bridge::start(&split.url, as_port, &state).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = bridge.messages();
        if (0..3).all(|i| got.contains(&format!("while down {i}"))) {
            for i in 0..3 {
                let n = got.iter().filter(|m| **m == format!("while down {i}")).count();
                assert_eq!(n, 1, "message {i} arrived {n} times: {got:?}");
            }
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "missed messages never arrived: {got:?}\n{}",
            pusher.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pusher.kill().await;
    split.stop().await;
    Ok(())
}
