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

/// Polls `/events` from `from` (with `extra` query parameters) as an old client does, until a
/// chunk holds an event `wanted` picks, for up to ten seconds; returns that event and the `end`
/// of its answer. Other news (the user's own presence, say) may come first.
async fn poll_until(
    c: &RawClient,
    from: &str,
    extra: &str,
    wanted: impl Fn(&Value) -> bool,
) -> Result<(Value, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut from = from.to_owned();
    loop {
        let got = ok(c, "GET", &format!("/_matrix/client/v3/events?from={from}&timeout=2000{extra}"), None).await?;
        ensure!(got["start"] == from.as_str(), "start is the from token: {got}");
        let end = got["end"].as_str().context("end")?.to_owned();
        if let Some(e) = got["chunk"].as_array().and_then(|c| c.iter().find(|e| wanted(e))) {
            return Ok((e.clone(), end));
        }
        ensure!(tokio::time::Instant::now() < deadline, "nothing wanted arrived; last answer {got}");
        from = end;
    }
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
        tokio::spawn(async move { poll_until(&alice, &end, "", |e| e["type"] == "m.room.message").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = send(&bob, &room, "b1", "hello from bob").await?;
    let (ev, end) = poll.await??;
    assert_eq!((ev["event_id"].as_str(), ev["room_id"].as_str()), (Some(later.as_str()), Some(room.as_str())), "{ev}");

    // An invite shows up as the member event, which is what bots wait for.
    let other =
        ok(&bob, "POST", "/_matrix/client/v3/createRoom", Some(json!({ "invite": [alice.user_id] }))).await?["room_id"]
            .as_str()
            .context("room_id")?
            .to_owned();
    let (invite, end) =
        poll_until(&alice, &end, "", |e| e["type"] == "m.room.member" && e["room_id"] == other.as_str()).await?;
    assert_eq!(
        (invite["state_key"].as_str(), invite["content"]["membership"].as_str()),
        (Some(alice.user_id.as_str()), Some("invite"))
    );
    let init = ok(&alice, "GET", "/_matrix/client/v3/initialSync?limit=1", None).await?;
    let inv =
        init["rooms"].as_array().and_then(|r| r.iter().find(|r| r["room_id"] == other.as_str())).context("invite")?;
    assert_eq!((inv["membership"].as_str(), inv["inviter"].as_str()), (Some("invite"), Some(bob.user_id.as_str())));

    // Typing and presence travel the same stream.
    ok(
        &bob,
        "PUT",
        &format!("/_matrix/client/v3/rooms/{room}/typing/{}", bob.user_id),
        Some(json!({ "typing": true, "timeout": 10000 })),
    )
    .await?;
    let (typing, end) = poll_until(&alice, &end, "", |e| e["type"] == "m.typing").await?;
    assert_eq!(typing["room_id"], room.as_str(), "{typing}");
    assert_eq!(typing["content"]["user_ids"], json!([bob.user_id]), "{typing}");
    ok(
        &bob,
        "PUT",
        &format!("/_matrix/client/v3/presence/{}/status", bob.user_id),
        Some(json!({ "presence": "unavailable", "status_msg": "lunch" })),
    )
    .await?;
    let (presence, end) = poll_until(&alice, &end, "", |e| {
        e["type"] == "m.presence"
            && e["content"]["user_id"] == bob.user_id.as_str()
            && e["content"]["status_msg"] == "lunch"
    })
    .await?;
    assert_eq!(presence["content"]["presence"], "unavailable", "{presence}");

    // With nothing new, /events answers at its timeout with the same position.
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
    assert_eq!((hidden.status, hidden.body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "as Synapse");
    let unknown = alice.call("GET", "/_matrix/client/v3/events/%24nope%3Alocalhost", None).await?;
    assert_eq!(unknown.status, 404, "{unknown:?}");

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
        let (carol, room) = (carol.clone(), room.clone());
        tokio::spawn(async move {
            poll_until(&carol, &from, &format!("&room_id={room}"), |e| e["type"] == "m.room.message").await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&alice, &room, "m9", "seen by a peeker").await?;
    let (ev, _) = poll.await??;
    assert_eq!(ev["content"]["body"], "seen by a peeker", "{ev}");
    Ok(())
}

/// A guest (registered with `kind=guest`) reads a world-readable room it may join through the
/// legacy API, joins it, and follows it on `/events`.
async fn guest_flow(url: &str) -> Result<()> {
    let host = RawClient::register(url, "host").await?;
    let room = ok(
        &host,
        "POST",
        "/_matrix/client/v3/createRoom",
        Some(json!({ "preset": "public_chat", "initial_state": [
            { "type": "m.room.guest_access", "state_key": "", "content": { "guest_access": "can_join" } },
            { "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "world_readable" } },
        ] })),
    )
    .await?["room_id"]
        .as_str()
        .context("room_id")?
        .to_owned();
    send(&host, &room, "h1", "welcome, guests").await?;
    let mut guest = RawClient::new(url);
    let reg = guest.call("POST", "/_matrix/client/v3/register?kind=guest", Some(&json!({}))).await?;
    ensure!(reg.status == 200, "guest registration: {reg:?}");
    guest.token = reg.body["access_token"].as_str().context("token")?.to_owned();
    guest.user_id = reg.body["user_id"].as_str().context("user_id")?.to_owned();
    let peek = ok(&guest, "GET", &format!("/_matrix/client/v3/rooms/{room}/initialSync?limit=5"), None).await?;
    ensure!(bodies(&peek["messages"]["chunk"]).contains(&"welcome, guests".to_owned()), "guest peek: {peek}");
    let from = peek["messages"]["end"].as_str().context("end")?.to_owned();
    ok(&guest, "POST", &format!("/_matrix/client/v3/rooms/{room}/join"), Some(json!({}))).await?;
    // Guests name the room (Synapse insists on it for guests).
    let poll = {
        let (guest, room) = (guest.clone(), room.clone());
        tokio::spawn(async move {
            let wanted = |e: &Value| e["type"] == "m.room.message" && e["content"]["body"] == "hello guest";
            poll_until(&guest, &from, &format!("&room_id={room}"), wanted).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&host, &room, "h2", "hello guest").await?;
    let (ev, _) = poll.await??;
    ensure!(ev["room_id"] == room.as_str(), "{ev}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_style_client_works_against_the_embedded_default() {
    let server =
        OneProcess::start_with(json!({"rate_limits": {"enabled": false}, "registration": {"guest_access": true}}))
            .await
            .expect("server starts");
    if let Err(e) = old_style_client(&server.url).await {
        panic!("{e:#}\n{}", server.proc.log());
    }
    if let Err(e) = guest_flow(&server.url).await {
        panic!("guest: {e:#}\n{}", server.proc.log());
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

/// The same old-style client against a real Synapse: what it relies on is what Synapse does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_style_client_works_against_synapse_too() {
    let Some(synapse) = ganglion_e2e::Synapse::start().await.expect("Synapse starts") else {
        eprintln!("TEST_SYNAPSE_PYTHON is not set (tests/run.sh sets it): skipping the Synapse comparison");
        return;
    };
    if let Err(e) = old_style_client(&synapse.url).await {
        panic!("{e:#}\n{}", synapse.log());
    }
    if let Err(e) = guest_flow(&synapse.url).await {
        panic!("guest: {e:#}\n{}", synapse.log());
    }
}
