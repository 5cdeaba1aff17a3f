//! Pushes through a push gateway, black-box: pushers registered by a real client (matrix-sdk), a
//! recording gateway speaking the Push Gateway API, `ganglion serve`, and the split deployment
//! with two pusher instances of which one is killed.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use ganglion_e2e::push_gateway::RecordingGateway;
use ganglion_e2e::{OneProcess, RawClient, Split};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn pusher(pushkey: &str, url: &str, event_id_only: bool) -> Value {
    let mut data = json!({ "url": url });
    if event_id_only {
        data["format"] = json!("event_id_only");
    }
    json!({
        "kind": "http", "app_id": "io.element.test", "pushkey": pushkey, "app_display_name": "Element",
        "device_display_name": "Phone", "lang": "en", "data": data,
    })
}

async fn ok(c: &RawClient, method: &str, path: &str, body: Value) -> Result<Value> {
    let r = c.call(method, path, Some(&body)).await?;
    anyhow::ensure!(r.status == 200, "{method} {path}: {r:?}");
    Ok(r.body)
}

async fn send(c: &RawClient, room: &str, txn: &str, content: Value) -> Result<String> {
    let b = ok(c, "PUT", &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"), content).await?;
    Ok(b["event_id"].as_str().unwrap_or_default().to_owned())
}

fn for_event<'a>(got: &'a [Value], event_id: &str) -> Vec<&'a Value> {
    got.iter().filter(|n| n["event_id"] == event_id).collect()
}

/// A DM, a mention, a muted room, an encrypted room with `event_id_only`, badges after reading,
/// a failing gateway retried, and a rejected pushkey, against `ganglion serve`.
#[tokio::test]
async fn pushes_reach_the_gateway_with_what_the_rules_say() -> Result<()> {
    let server = OneProcess::start().await?;
    let gateway = RecordingGateway::start().await?;
    let url = server.url.clone();

    // Alice's phone registers its pusher the way Element does, through matrix-sdk.
    let alice_sdk = ganglion_e2e::sdk::sdk_register(&url, "alice").await;
    let body = pusher("alice-phone", &gateway.url, false);
    let sdk_pusher: matrix_sdk::ruma::api::client::push::Pusher = serde_json::from_value(body)?;
    alice_sdk.pusher().set(sdk_pusher, false).await?;
    let mut alice = RawClient::new(&url);
    alice.token = alice_sdk.access_token().unwrap_or_default();
    alice.user_id = alice_sdk.user_id().map(ToString::to_string).unwrap_or_default();
    let listed = alice.call("GET", "/_matrix/client/v3/pushers", None).await?.body;
    assert_eq!(listed["pushers"][0]["pushkey"], "alice-phone", "{listed}");
    let bob = RawClient::register(&url, "bob").await?;
    ok(
        &bob,
        "PUT",
        &format!("/_matrix/client/v3/profile/{}/displayname", bob.user_id),
        json!({ "displayname": "Bob B" }),
    )
    .await?;

    // A DM: the one-to-one rule, with sound, high priority, the content and the room's name.
    let dm = ok(
        &bob,
        "POST",
        "/_matrix/client/v3/createRoom",
        json!({ "is_direct": true, "invite": [alice.user_id], "name": "Bob and Alice" }),
    )
    .await?["room_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let invites = gateway.wait_for(WAIT, |got| got.iter().any(|n| n["type"] == "m.room.member")).await?;
    let invite = invites.iter().find(|n| n["type"] == "m.room.member").unwrap_or(&Value::Null);
    assert_eq!(
        (invite["user_is_target"].as_bool(), invite["membership"].as_str()),
        (Some(true), Some("invite")),
        "{invite}"
    );
    assert_eq!(invite["sender_display_name"], "Bob B");
    ok(&alice, "POST", &format!("/_matrix/client/v3/rooms/{dm}/join"), json!({})).await?;
    let hello = send(&bob, &dm, "t1", json!({ "msgtype": "m.text", "body": "hello alice" })).await?;
    let got = gateway.wait_for(WAIT, |got| !for_event(got, &hello).is_empty()).await?;
    let n = for_event(&got, &hello)[0];
    assert_eq!(n["room_id"], dm.as_str());
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], bob.user_id.as_str());
    assert_eq!(n["sender_display_name"], "Bob B");
    assert_eq!(n["room_name"], "Bob and Alice");
    assert_eq!(n["content"]["body"], "hello alice");
    assert_eq!(n["prio"], "high", "the one-to-one rule plays a sound");
    assert_eq!(n["counts"]["unread"], 1);
    let device = &n["devices"][0];
    assert_eq!((device["app_id"].as_str(), device["pushkey"].as_str()), (Some("io.element.test"), Some("alice-phone")));
    assert_eq!(device["tweaks"]["sound"], "default");
    assert!(device["data"].get("url").is_none(), "the gateway's own URL is not echoed: {device}");
    assert!(device["pushkey_ts"].as_u64().is_some_and(|t| t > 1_600_000_000 && t < 10_000_000_000), "seconds");

    // A group room: a plain message is low priority; a mention highlights.
    let group = ok(&bob, "POST", "/_matrix/client/v3/createRoom", json!({ "preset": "public_chat", "name": "Group" }))
        .await?["room_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let carol = RawClient::register(&url, "carol").await?;
    ok(&alice, "POST", &format!("/_matrix/client/v3/rooms/{group}/join"), json!({})).await?;
    ok(&carol, "POST", &format!("/_matrix/client/v3/rooms/{group}/join"), json!({})).await?;
    let plain = send(&bob, &group, "g1", json!({ "msgtype": "m.text", "body": "morning all" })).await?;
    let mention = send(
        &bob,
        &group,
        "g2",
        json!({ "msgtype": "m.text", "body": "alice: look", "m.mentions": { "user_ids": [alice.user_id] } }),
    )
    .await?;
    let got = gateway.wait_for(WAIT, |got| !for_event(got, &mention).is_empty()).await?;
    assert_eq!(for_event(&got, &plain)[0]["prio"], "low");
    let m = for_event(&got, &mention)[0];
    assert_eq!((m["prio"].as_str(), m["devices"][0]["tweaks"]["highlight"].as_bool()), (Some("high"), Some(true)));
    assert_eq!(m["counts"]["unread"], 2, "two rooms hold unread notifications");

    // Muted: a room rule with no actions; nothing is pushed from that room.
    ok(
        &alice,
        "PUT",
        &format!("/_matrix/client/v3/pushrules/global/room/{}", group.replace('!', "%21")),
        json!({ "actions": [] }),
    )
    .await?;
    let muted = send(&bob, &group, "g3", json!({ "msgtype": "m.text", "body": "nobody hears this" })).await?;

    // Encrypted DM and an event_id_only pusher: only IDs, counts and devices travel.
    ok(&alice, "POST", "/_matrix/client/v3/pushers/set", pusher("alice-tablet", &gateway.url, true)).await?;
    ok(
        &bob,
        "PUT",
        &format!("/_matrix/client/v3/rooms/{dm}/state/m.room.encryption/"),
        json!({ "algorithm": "m.megolm.v1.aes-sha2" }),
    )
    .await?;
    let secret = ok(
        &bob,
        "PUT",
        &format!("/_matrix/client/v3/rooms/{dm}/send/m.room.encrypted/e1"),
        json!({ "algorithm": "m.megolm.v1.aes-sha2", "ciphertext": "AwgAEn...", "device_id": "BOBDEV", "sender_key": "k", "session_id": "s" }),
    )
    .await?["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let got = gateway.wait_for(WAIT, |got| for_event(got, &secret).len() == 2).await?;
    let only_id = for_event(&got, &secret)
        .into_iter()
        .find(|n| n["devices"][0]["pushkey"] == "alice-tablet")
        .cloned()
        .unwrap_or_default();
    let keys: Vec<&str> = only_id.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default();
    assert_eq!(keys, ["counts", "devices", "event_id", "prio", "room_id"], "{only_id}");
    assert_eq!(only_id["prio"], "high", "encrypted events are high priority");
    assert!(for_event(&got, &muted).is_empty(), "the muted room pushed: {got:?}");

    // Reading the DM updates the badge on both devices.
    let before = gateway.received().len();
    ok(&alice, "POST", &format!("/_matrix/client/v3/rooms/{dm}/receipt/m.read/{secret}"), json!({})).await?;
    let got = gateway
        .wait_for(WAIT, |got| {
            got[before..].iter().filter(|n| n["counts"]["unread"] == 1 && n.get("event_id").is_none()).count() == 2
        })
        .await?;
    assert!(got[before..].iter().all(|n| n["devices"][0].get("tweaks").is_none()), "a badge update plays nothing");

    // A failing gateway is retried until it answers; the push arrives once.
    gateway.set_failing(true);
    let retried = send(&bob, &dm, "t2", json!({ "msgtype": "m.text", "body": "are you there?" })).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while gateway.refused() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gateway.refused() >= 2, "the pusher did not try");
    gateway.set_failing(false);
    let got = gateway.wait_for(WAIT, |got| for_event(got, &retried).len() == 2).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(for_event(&gateway.received(), &retried).len(), 2, "once per pusher: {got:?}");

    // A rejected pushkey loses its pusher.
    gateway.reject("alice-tablet");
    let last = send(&bob, &dm, "t3", json!({ "msgtype": "m.text", "body": "last one" })).await?;
    gateway.wait_for(WAIT, |got| for_event(got, &last).len() == 2).await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let listed = alice.call("GET", "/_matrix/client/v3/pushers", None).await?.body;
        let keys: Vec<&str> = listed["pushers"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["pushkey"].as_str()).collect())
            .unwrap_or_default();
        if keys == ["alice-phone"] {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the rejected pusher stayed: {listed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Two pusher instances share the users with no configuration; one is killed between bursts and
/// the other takes its users over: every push arrives exactly once.
#[tokio::test]
async fn two_pushers_share_users_and_survive_one_killed() -> Result<()> {
    let split = Split::start(1).await?;
    let gateway = RecordingGateway::start().await?;
    let sender = RawClient::register(&split.url, "sender").await?;
    let room =
        ok(&sender, "POST", "/_matrix/client/v3/createRoom", json!({ "preset": "public_chat" })).await?["room_id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
    let mut users = Vec::new();
    for i in 0..8 {
        let u = RawClient::register(&split.url, &format!("phone{i}")).await?;
        ok(&u, "POST", &format!("/_matrix/client/v3/rooms/{room}/join"), json!({})).await?;
        ok(&u, "POST", "/_matrix/client/v3/pushers/set", pusher(&format!("key{i}"), &gateway.url, true)).await?;
        users.push(u);
    }
    // Started after the pushers exist, so each logs how many users it owns as the ring forms.
    let mut a = split.spawn_worker("pusher", "pusher-a", json!({})).await?;
    let b = split.spawn_worker("pusher", "pusher-b", json!({})).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let count = |got: &[Value]| {
        let mut per: HashMap<(String, String), usize> = HashMap::new();
        for n in got.iter().filter(|n| n.get("event_id").is_some()) {
            let key = n["devices"][0]["pushkey"].as_str().unwrap_or_default().to_owned();
            *per.entry((key, n["event_id"].as_str().unwrap_or_default().to_owned())).or_default() += 1;
        }
        per
    };
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            send(&sender, &room, &format!("a{i}"), json!({ "msgtype": "m.text", "body": format!("burst one {i}") }))
                .await?,
        );
    }
    let expected = |sent: &[String]| sent.len() * users.len();
    let result = gateway.wait_for(WAIT, |got| count(got).len() == expected(&sent)).await;
    if let Err(e) = result {
        panic!("{e}\n--- pusher-a\n{}\n--- pusher-b\n{}\n{}", a.log(), b.log(), split.logs());
    }
    // Both instances owned some of the users before the kill (so the kill moves users).
    let owned_max = |log: &str| {
        log.lines()
            .rev()
            // The number after `owned`, past the `=` and any colour codes around it.
            .filter_map(|l| {
                let rest = l.split("owned").nth(1)?.split_once('=')?.1;
                let rest = rest.strip_prefix("\u{1b}[0m").unwrap_or(rest);
                rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<usize>().ok()
            })
            .next()
            .unwrap_or(0)
    };
    assert!(
        owned_max(&a.log()) > 0 && owned_max(&b.log()) > 0,
        "one instance owned every user:\n{}\n{}",
        a.log(),
        b.log()
    );
    a.kill().await;
    for i in 0..5 {
        sent.push(
            send(&sender, &room, &format!("b{i}"), json!({ "msgtype": "m.text", "body": format!("burst two {i}") }))
                .await?,
        );
    }
    let result = gateway.wait_for(Duration::from_secs(40), |got| count(got).len() == expected(&sent)).await;
    if let Err(e) = result {
        panic!("{e}\n--- pusher-b\n{}\n{}", b.log(), split.logs());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(owned_max(&b.log()), users.len(), "the survivor took every user over:\n{}", b.log());
    let per = count(&gateway.received());
    let doubled: Vec<_> = per.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubled.is_empty(), "pushed twice: {doubled:?}");
    for (i, _) in users.iter().enumerate() {
        for e in &sent {
            assert!(per.contains_key(&(format!("key{i}"), e.clone())), "key{i} missed {e}");
        }
    }
    drop(b);
    split.stop().await;
    Ok(())
}
