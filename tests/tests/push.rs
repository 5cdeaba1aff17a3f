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
    // Read on another device while the gateway is down: not pushed once it is back.
    let read_meanwhile = send(&bob, &dm, "t2b", json!({ "msgtype": "m.text", "body": "never mind" })).await?;
    ok(&alice, "POST", &format!("/_matrix/client/v3/rooms/{dm}/receipt/m.read/{read_meanwhile}"), json!({})).await?;
    gateway.set_failing(false);
    let got = gateway.wait_for(WAIT, |got| for_event(got, &retried).len() == 2).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(for_event(&gateway.received(), &retried).len(), 2, "once per pusher: {got:?}");
    assert!(for_event(&gateway.received(), &read_meanwhile).is_empty(), "pushed a message already read");

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

    // What happened shows in the metrics.
    let metrics = reqwest::get(format!("{url}/metrics")).await?.text().await?;
    let value = |name: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert!(value(r#"ganglion_pusher_pushes_total{kind="http",outcome="accepted"}"#) >= 8.0, "{metrics}");
    assert!(value(r#"ganglion_pusher_pushes_total{kind="http",outcome="rejected"}"#) >= 1.0, "{metrics}");
    assert!(value(r#"ganglion_pusher_pushes_total{kind="badge",outcome="accepted"}"#) >= 2.0, "{metrics}");
    assert!(value("ganglion_pusher_push_retries_total") >= 2.0, "{metrics}");
    assert_eq!(value("ganglion_pusher_owned_users"), 1.0, "alice's pushers, owned here: {metrics}");
    Ok(())
}

/// Two pusher instances share the users with no configuration; one is killed between bursts and
/// the other takes its users over: every push arrives exactly once. Then a third joins and the
/// second is killed under load: nothing is lost.
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
    let a = split.spawn_worker("pusher", "pusher-a", json!({})).await?;
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
    // Kill an instance that owns users, so the kill moves them (rendezvous hashing gives one of
    // two instances all 8 users about once in 128 runs; then the other is the survivor).
    let (mut a, b) = if owned_max(&a.log()) > 0 { (a, b) } else { (b, a) };
    assert!(owned_max(&a.log()) > 0, "neither instance owned a user:\n{}\n{}", a.log(), b.log());
    a.kill().await;
    for i in 0..5 {
        sent.push(
            send(&sender, &room, &format!("b{i}"), json!({ "msgtype": "m.text", "body": format!("burst two {i}") }))
                .await?,
        );
    }
    let result = gateway.wait_for(Duration::from_secs(40), |got| count(got).len() == expected(&sent)).await;
    if let Err(e) = result {
        panic!("{e}\n--- {}\n{}\n{}", b.name, b.log(), split.logs());
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

    // Scale up again, then kill the old instance while messages keep coming: nothing is lost;
    // only a push in flight at the kill (sent, not yet recorded) may arrive twice.
    let mut b = b;
    let c = split.spawn_worker("pusher", "pusher-c", json!({})).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before: HashMap<(String, String), usize> = count(&gateway.received());
    let load = {
        let (sender, room) = (sender.clone(), room.clone());
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..10 {
                let body = json!({ "msgtype": "m.text", "body": format!("under load {i}") });
                ids.push(send(&sender, &room, &format!("c{i}"), body).await?);
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            anyhow::Ok(ids)
        })
    };
    tokio::time::sleep(Duration::from_millis(120)).await;
    b.kill().await;
    let under_load = load.await??;
    sent.extend(under_load.iter().cloned());
    let result = gateway.wait_for(Duration::from_secs(40), |got| count(got).len() == expected(&sent)).await;
    if let Err(e) = result {
        panic!("{e}\n--- pusher-c\n{}\n{}", c.log(), split.logs());
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let per = count(&gateway.received());
    for (i, _) in users.iter().enumerate() {
        let key = format!("key{i}");
        for e in &under_load {
            assert!(per.contains_key(&(key.clone(), e.clone())), "{key} missed {e} (pushed under load)");
        }
        let repeats: usize = per
            .iter()
            .filter(|((k, _), _)| *k == key)
            .map(|(id, n)| n - before.get(id).copied().unwrap_or(0).min(*n))
            .sum::<usize>()
            .saturating_sub(under_load.len());
        assert!(repeats <= 1, "{key} got {repeats} repeated pushes; at most the one in flight may repeat");
    }
    drop(c);
    split.stop().await;
    Ok(())
}

/// An address validated through the mailed link, an email pusher on it, and notification
/// emails: one for an unread message once the delay passed, none for a message read in time,
/// none for a room mailed within the throttle, one for another room.
#[tokio::test]
async fn email_notifications_for_missed_messages() -> Result<()> {
    use ganglion_e2e::smtp::RecordingSmtp;
    let smtp = RecordingSmtp::start().await?;
    let delay_ms = 1500;
    let server = OneProcess::start_with(json!({
        "email": {
            "smtp_host": "127.0.0.1", "smtp_port": smtp.port, "security": "none",
            "notif_from": "Test Chat <noreply@localhost>", "app_name": "Test Chat",
            "notif_delay_ms": delay_ms, "throttle_ms": 600_000,
        },
    }))
    .await?;
    let url = server.url.clone();
    let alice = RawClient::register(&url, "alice").await?;
    let bob = RawClient::register(&url, "bob").await?;

    // Validate alice@example.org: requestToken mails a link; following it validates the session.
    let r = alice
        .call(
            "POST",
            "/_matrix/client/v3/account/3pid/email/requestToken",
            Some(&json!({ "client_secret": "s3cret", "email": "Alice@Example.org", "send_attempt": 1 })),
        )
        .await?;
    assert_eq!(r.status, 200, "{r:?}");
    let sid = r.body["sid"].as_str().unwrap_or_default().to_owned();
    let mails = smtp.wait_for(1, WAIT).await?;
    assert_eq!(mails[0].to, ["alice@example.org"]);
    let link = mails[0]
        .text
        .split_whitespace()
        .find(|w| w.contains("submit_token?") && w.starts_with("http"))
        .map(|w| w.trim_end_matches(['"', '>', '.']).replace("&amp;", "&"))
        .unwrap_or_else(|| panic!("no link in {}", mails[0].text));
    // Asking again with the same attempt sends nothing new.
    let again = alice
        .call(
            "POST",
            "/_matrix/client/v3/account/3pid/email/requestToken",
            Some(&json!({ "client_secret": "s3cret", "email": "alice@example.org", "send_attempt": 1 })),
        )
        .await?;
    assert_eq!(again.body["sid"], sid.as_str());
    let add = json!({ "client_secret": "s3cret", "sid": sid });
    let early = alice.call("POST", "/_matrix/client/v3/account/3pid/add", Some(&add)).await?;
    let session = early.body["session"].as_str().unwrap_or_default().to_owned();
    let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "secret", "session": session });
    let not_yet = alice
        .call(
            "POST",
            "/_matrix/client/v3/account/3pid/add",
            Some(&json!({ "client_secret": "s3cret", "sid": sid, "auth": auth })),
        )
        .await?;
    assert_eq!(
        (not_yet.status, not_yet.body["errcode"].as_str()),
        (400, Some("M_THREEPID_AUTH_FAILED")),
        "{not_yet:?}"
    );
    let page = reqwest::get(&link).await?;
    assert_eq!(page.status().as_u16(), 200, "{link}");
    // The same token can be submitted by a client too; a wrong one is refused.
    let submit = "/_matrix/client/unstable/add_threepid/email/submit_token";
    let wrong =
        alice.call("POST", submit, Some(&json!({ "sid": sid, "client_secret": "s3cret", "token": "nope" }))).await?;
    assert_eq!((wrong.status, wrong.body["success"].as_bool()), (200, Some(false)), "{wrong:?}");
    let token = link.split("token=").nth(1).and_then(|t| t.split('&').next()).unwrap_or_default();
    let right =
        alice.call("POST", submit, Some(&json!({ "sid": sid, "client_secret": "s3cret", "token": token }))).await?;
    assert_eq!(right.body["success"], true, "{right:?}");
    let missing = alice.call("POST", submit, Some(&json!({ "sid": sid }))).await?;
    assert_eq!((missing.status, missing.body["errcode"].as_str()), (400, Some("M_MISSING_PARAM")));
    let early = alice.call("POST", "/_matrix/client/v3/account/3pid/add", Some(&add)).await?;
    let session = early.body["session"].as_str().unwrap_or_default().to_owned();
    let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "alice" }, "password": "secret", "session": session });
    let added = alice
        .call(
            "POST",
            "/_matrix/client/v3/account/3pid/add",
            Some(&json!({ "client_secret": "s3cret", "sid": sid, "auth": auth })),
        )
        .await?;
    assert_eq!(added.status, 200, "{added:?}");
    let listed = alice.call("GET", "/_matrix/client/v3/account/3pid", None).await?.body;
    assert_eq!(listed["threepids"][0]["address"], "alice@example.org", "{listed}");
    // Someone else cannot take the address.
    let taken = bob
        .call(
            "POST",
            "/_matrix/client/v3/account/3pid/email/requestToken",
            Some(&json!({ "client_secret": "other", "email": "alice@example.org", "send_attempt": 1 })),
        )
        .await?;
    assert_eq!(taken.body["errcode"], "M_THREEPID_IN_USE");

    // Email pushers only for the account's own addresses.
    let email_pusher = |key: &str| {
        json!({ "kind": "email", "app_id": "m.email", "pushkey": key, "app_display_name": "Email",
                "device_display_name": key, "lang": "en", "data": {} })
    };
    let stranger = alice.call("POST", "/_matrix/client/v3/pushers/set", Some(&email_pusher("eve@example.org"))).await?;
    assert_eq!((stranger.status, stranger.body["errcode"].as_str()), (400, Some("M_THREEPID_NOT_FOUND")));
    ok(&alice, "POST", "/_matrix/client/v3/pushers/set", email_pusher("alice@example.org")).await?;

    let new_room = |name: &'static str| {
        let (bob, alice) = (bob.clone(), alice.clone());
        async move {
            let room =
                ok(&bob, "POST", "/_matrix/client/v3/createRoom", json!({ "preset": "public_chat", "name": name }))
                    .await?["room_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            ok(&alice, "POST", &format!("/_matrix/client/v3/rooms/{room}/join"), json!({})).await?;
            anyhow::Ok(room)
        }
    };
    let garden = new_room("Garden").await?;
    let kitchen = new_room("Kitchen").await?;
    let before = smtp.mails().len();
    send(&bob, &garden, "m1", json!({ "msgtype": "m.text", "body": "the roses are out" })).await?;
    let mails = smtp.wait_for(before + 1, WAIT).await?;
    let mail = &mails[before];
    assert_eq!(mail.to, ["alice@example.org"]);
    assert!(mail.text.contains("the roses are out") && mail.text.contains("Garden"), "{}", mail.text);
    assert!(mail.text.contains("Test Chat"), "{}", mail.text);

    // Read in time on another device: not mailed. Unread in the throttled room: not mailed yet.
    let read = send(&bob, &kitchen, "k1", json!({ "msgtype": "m.text", "body": "dinner is ready" })).await?;
    ok(&alice, "POST", &format!("/_matrix/client/v3/rooms/{kitchen}/receipt/m.read/{read}"), json!({})).await?;
    send(&bob, &garden, "m2", json!({ "msgtype": "m.text", "body": "and the tulips" })).await?;
    tokio::time::sleep(Duration::from_millis(delay_ms as u64 * 2 + 1000)).await;
    assert_eq!(
        smtp.mails().len(),
        before + 1,
        "mailed a read or throttled message: {:#?}",
        &smtp.mails()[before + 1..]
    );

    // Another room still gets its email.
    send(&bob, &kitchen, "k2", json!({ "msgtype": "m.text", "body": "where are you?" })).await?;
    let mails = smtp.wait_for(before + 2, WAIT).await?;
    let mail = &mails[before + 1];
    assert!(mail.text.contains("where are you?") && !mail.text.contains("dinner is ready"), "{}", mail.text);
    assert!(!mail.text.contains("tulips"), "the throttled room came along: {}", mail.text);

    // Removing the address removes its pusher.
    ok(
        &alice,
        "POST",
        "/_matrix/client/v3/account/3pid/delete",
        json!({ "medium": "email", "address": "alice@example.org" }),
    )
    .await?;
    let pushers = alice.call("GET", "/_matrix/client/v3/pushers", None).await?.body;
    assert_eq!(pushers["pushers"], json!([]), "{pushers}");
    Ok(())
}
