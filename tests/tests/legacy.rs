//! The legacy polling API as an old-style client or bot uses it (`/initialSync`, `/events`,
//! `/rooms/{roomId}/initialSync`, `/events/{eventId}`, peeking into world-readable rooms), on the
//! embedded default and through nginx on the split deployment, where the sync role serves them.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use ganglion_e2e::{OneProcess, RawClient, Split};
use serde_json::{Value, json};

async fn ok(c: &RawClient, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
    let r = c.call(method, path, body.as_ref()).await?;
    ensure!(r.status == 200, "{method} {path}: {r:?}");
    Ok(r.body)
}

async fn send(c: &RawClient, room: &str, txn: &str, body: &str) -> Result<String> {
    let b = ok(
        c,
        "PUT",
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
        Some(json!({ "msgtype": "m.text", "body": body })),
    )
    .await?;
    Ok(b["event_id"].as_str().context("event_id")?.to_owned())
}

fn bodies(chunk: &Value) -> Vec<String> {
    chunk
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|e| e["type"] == "m.room.message")
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

async fn old_style_client(url: &str) -> Result<()> {
    let alice = RawClient::register(url, "oldschool").await?;
    let bob = RawClient::register(url, "bobby").await?;
    let carol = RawClient::register(url, "peeker").await?;
    let room =
        ok(&alice, "POST", "/_matrix/client/v3/createRoom", Some(json!({ "preset": "public_chat", "name": "Lobby" })))
            .await?["room_id"]
            .as_str()
            .context("room_id")?
            .to_owned();
    ok(&bob, "POST", &format!("/_matrix/client/v3/rooms/{room}/join"), Some(json!({}))).await?;
    for i in 0..3 {
        send(&alice, &room, &format!("m{i}"), &format!("message {i}")).await?;
    }

    // Global initialSync: the room, its latest events and its whole state.
    let init = ok(&alice, "GET", "/_matrix/client/r0/initialSync?limit=2", None).await?;
    let rooms = init["rooms"].as_array().context("rooms")?;
    let entry = rooms.iter().find(|r| r["room_id"] == room.as_str()).context("the room is listed")?;
    assert_eq!(entry["membership"], "join");
    assert_eq!(bodies(&entry["messages"]["chunk"]), ["message 1", "message 2"], "{entry}");
    assert!(entry["messages"]["chunk"].as_array().is_some_and(|c| c.iter().all(|e| e["room_id"] == room.as_str())));
    let state_types: Vec<&str> =
        entry["state"].as_array().context("state")?.iter().filter_map(|e| e["type"].as_str()).collect();
    for t in ["m.room.create", "m.room.name", "m.room.join_rules", "m.room.member"] {
        assert!(state_types.contains(&t), "{t} missing from {state_types:?}");
    }
    assert_eq!(entry["visibility"], "private", "not published in the directory");
    let end = init["end"].as_str().context("end")?.to_owned();
    // Older events page backwards from the chunk's start with /messages.
    let start = entry["messages"]["start"].as_str().context("start")?;
    let older =
        ok(&alice, "GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from={start}&limit=1"), None)
            .await?;
    assert_eq!(bodies(&older["chunk"]), ["message 0"], "{older}");

    // /events long-polls from `end`: a message bob sends meanwhile arrives, with its room.
    let poll = {
        let alice = alice.clone();
        let end = end.clone();
        tokio::spawn(async move {
            ok(&alice, "GET", &format!("/_matrix/client/r0/events?from={end}&timeout=10000"), None).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = send(&bob, &room, "b1", "hello from bob").await?;
    let got = poll.await??;
    let chunk = got["chunk"].as_array().context("chunk")?;
    let ev =
        chunk.iter().find(|e| e["event_id"] == later.as_str()).with_context(|| format!("bob's message in {got}"))?;
    assert_eq!(ev["room_id"], room.as_str());
    assert_eq!(got["start"], end.as_str());
    let end = got["end"].as_str().context("end")?.to_owned();

    // An invite shows up as the member event, which is what bots wait for.
    let other =
        ok(&bob, "POST", "/_matrix/client/v3/createRoom", Some(json!({ "invite": [alice.user_id] }))).await?["room_id"]
            .as_str()
            .context("room_id")?
            .to_owned();
    let got = ok(&alice, "GET", &format!("/_matrix/client/v3/events?from={end}&timeout=5000"), None).await?;
    let invite = got["chunk"]
        .as_array()
        .and_then(|c| c.iter().find(|e| e["type"] == "m.room.member" && e["room_id"] == other.as_str()))
        .with_context(|| format!("the invite in {got}"))?;
    assert_eq!(
        (invite["state_key"].as_str(), invite["content"]["membership"].as_str()),
        (Some(alice.user_id.as_str()), Some("invite"))
    );
    let init = ok(&alice, "GET", "/_matrix/client/v3/initialSync?limit=1", None).await?;
    let inv =
        init["rooms"].as_array().and_then(|r| r.iter().find(|r| r["room_id"] == other.as_str())).context("invite")?;
    assert_eq!((inv["membership"].as_str(), inv["inviter"].as_str()), (Some("invite"), Some(bob.user_id.as_str())));

    // With nothing new, /events answers at its timeout with the same position.
    let end = got["end"].as_str().context("end")?.to_owned();
    let quiet =
        ok(&alice, "GET", &format!("/_matrix/client/v3/events?from={end}&timeout=200&room_id={room}"), None).await?;
    assert_eq!(quiet["chunk"], json!([]), "{quiet}");

    // Per-room initialSync for a member.
    let r = ok(&alice, "GET", &format!("/_matrix/client/v3/rooms/{room}/initialSync?limit=2"), None).await?;
    assert_eq!(r["membership"], "join");
    assert_eq!(bodies(&r["messages"]["chunk"]), ["message 2", "hello from bob"], "{r}");
    assert!(r["state"].as_array().is_some_and(|s| s.iter().any(|e| e["type"] == "m.room.create")));

    // GET /events/{eventId}: for whoever may see it.
    let e = ok(&alice, "GET", &format!("/_matrix/client/v3/events/{later}"), None).await?;
    assert_eq!((e["event_id"].as_str(), e["room_id"].as_str()), (Some(later.as_str()), Some(room.as_str())));
    let hidden = carol.call("GET", &format!("/_matrix/client/v3/events/{later}"), None).await?;
    assert_eq!((hidden.status, hidden.body["errcode"].as_str()), (404, Some("M_NOT_FOUND")));

    // Peeking: refused for a room whose history is not world-readable, allowed once it is.
    let refused = carol.call("GET", &format!("/_matrix/client/v3/rooms/{room}/initialSync"), None).await?;
    assert_eq!((refused.status, refused.body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{refused:?}");
    let refused = carol.call("GET", &format!("/_matrix/client/v3/events?room_id={room}&timeout=0"), None).await?;
    assert_eq!(refused.status, 403);
    ok(
        &alice,
        "PUT",
        &format!("/_matrix/client/v3/rooms/{room}/state/m.room.history_visibility/"),
        Some(json!({ "history_visibility": "world_readable" })),
    )
    .await?;
    let peek = ok(&carol, "GET", &format!("/_matrix/client/v3/rooms/{room}/initialSync?limit=1"), None).await?;
    assert!(peek.get("membership").is_none() || peek["membership"] != "join", "{peek}");
    assert_eq!(peek["messages"]["chunk"].as_array().map(Vec::len), Some(1), "{peek}");
    let from = peek["messages"]["end"].as_str().context("end")?.to_owned();
    let poll = {
        let carol = carol.clone();
        let room = room.clone();
        tokio::spawn(async move {
            ok(&carol, "GET", &format!("/_matrix/client/v3/events?room_id={room}&from={from}&timeout=10000"), None)
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&alice, &room, "m9", "seen by a peeker").await?;
    let got = poll.await??;
    assert_eq!(bodies(&got["chunk"]), ["seen by a peeker"], "{got}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_style_client_works_against_the_embedded_default() {
    let server = OneProcess::start_with(json!({"rate_limits": {"enabled": false}})).await.expect("server starts");
    if let Err(e) = old_style_client(&server.url).await {
        panic!("{e:#}\n{}", server.proc.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_style_client_works_against_the_split_deployment() {
    let split = Split::start(1).await.expect("deployment starts");
    if let Err(e) = old_style_client(&split.url).await {
        panic!("{e:#}\n{}", split.logs());
    }
    split.stop().await;
}
