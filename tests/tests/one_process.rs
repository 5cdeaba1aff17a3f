//! `ganglion serve` (every role in one process, SQLite, in-process bus) driven by a real client
//! (matrix-sdk) and by raw HTTP.

use std::time::{Duration, Instant};

use ganglion_e2e::conformance::query_escape;
use ganglion_e2e::sdk::{sdk_bodies, sdk_register};
use ganglion_e2e::{OneProcess, RawClient, message_bodies};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset};
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_client_registers_creates_a_room_sends_and_syncs() {
    let server = OneProcess::start().await.expect("server starts");
    let alice = sdk_register(&server.url, "alice").await;
    let whoami = alice.whoami().await.expect("whoami");
    assert_eq!(whoami.user_id.as_str(), "@alice:localhost");

    let mut req = CreateRoomRequest::new();
    req.preset = Some(RoomPreset::PublicChat);
    req.name = Some("Lobby".to_owned());
    let room = alice.create_room(req).await.expect("createRoom");
    let room_id = room.room_id().to_owned();

    let bob = RawClient::register(&server.url, "bob").await.expect("bob registers");
    let joined = bob.call("POST", &format!("/_matrix/client/v3/join/{room_id}"), Some(&json!({}))).await.unwrap();
    assert_eq!(joined.status, 200, "{joined:?}");
    let initial = bob.sync(None, 0).await.unwrap();
    let since = initial["next_batch"].as_str().unwrap().to_owned();
    let state = &initial["rooms"]["join"][room_id.as_str()];
    assert!(state.is_object(), "bob's initial sync has the room: {initial}");

    // Bob long-polls; alice's message must wake him well before the timeout.
    let waiter = {
        let bob = bob.clone();
        let since = since.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = bob.sync(Some(&since), 20_000).await.unwrap();
            (resp, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    room.send(RoomMessageEventContent::text_plain("hello from the sdk")).await.expect("sdk send");
    let (resp, waited) = waiter.await.unwrap();
    assert_eq!(message_bodies(&resp, room_id.as_str()), vec!["hello from the sdk".to_owned()]);
    assert!(waited < Duration::from_secs(10), "long-poll woke on the new event, after {waited:?}");

    let sent = bob
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/b1"),
            Some(&json!({"msgtype": "m.text", "body": "hi alice"})),
        )
        .await
        .unwrap();
    assert_eq!(sent.status, 200, "{sent:?}");

    // The sdk sees both messages, once each, in order.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while seen.len() < 2 && Instant::now() < deadline {
        let resp = alice.sync_once(SyncSettings::default().timeout(Duration::from_secs(5))).await.expect("sdk sync");
        seen.extend(sdk_bodies(&resp, &room_id));
    }
    assert_eq!(seen, vec!["hello from the sdk".to_owned(), "hi alice".to_owned()]);

    // /messages pages backwards through the same history.
    let page =
        bob.call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=2"), None).await.unwrap();
    assert_eq!(page.status, 200);
    let bodies: Vec<&str> =
        page.body["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["hi alice", "hello from the sdk"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_matrix_errors() {
    let server = OneProcess::start().await.expect("server starts");
    let anon = RawClient::new(&server.url);
    let r = anon.call("GET", "/_matrix/client/v3/no/such/endpoint", None).await.unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (404, Some("M_UNRECOGNIZED")));
    let r = anon.call("DELETE", "/_matrix/client/versions", None).await.unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (405, Some("M_UNRECOGNIZED")));
    let r = anon.call("GET", "/_matrix/client/v3/account/whoami", None).await.unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")));
    let mut bogus = RawClient::new(&server.url);
    bogus.token = "not-a-token".into();
    let r = bogus.call("GET", "/_matrix/client/v3/sync", None).await.unwrap();
    assert_eq!(
        (r.status, r.body["errcode"].as_str()),
        (401, Some("M_UNKNOWN_TOKEN")),
        "the sync role checks tokens too"
    );

    let carol = RawClient::register(&server.url, "carol").await.unwrap();
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/_matrix/client/v3/createRoom", server.url))
        .bearer_auth(&carol.token)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await.unwrap()["errcode"], "M_NOT_JSON");
    let r = carol.call("POST", "/_matrix/client/v3/createRoom", Some(&json!({"invite": "not-a-list"}))).await.unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (400, Some("M_BAD_JSON")));
    let r = carol.call("GET", "/_matrix/client/v3/sync?since=garbage", None).await.unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));

    // A private room refuses strangers and their messages.
    let room =
        carol.call("POST", "/_matrix/client/v3/createRoom", Some(&json!({"preset": "private_chat"}))).await.unwrap();
    assert_eq!(room.status, 200, "{room:?}\n{}", server.proc.log());
    let room_id = room.body["room_id"].as_str().unwrap().to_owned();
    let dave = RawClient::register(&server.url, "dave").await.unwrap();
    let r = dave.call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/join"), Some(&json!({}))).await.unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{r:?}");
    let r = dave
        .call("PUT", &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/x"), Some(&json!({"body": "x"})))
        .await
        .unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));
    let r = dave.call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b"), None).await.unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (403, Some("M_FORBIDDEN")));

    // CORS on every response, errors included.
    let resp = http.get(format!("{}/_matrix/client/v3/nope", server.url)).send().await.unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sections_follow_membership_and_limits() {
    let server = OneProcess::start().await.expect("server starts");
    let alice = RawClient::register(&server.url, "alice").await.unwrap();
    let bob = RawClient::register(&server.url, "bob").await.unwrap();
    let room = alice
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&json!({"name": "Secret", "topic": "Plans", "invite": ["@bob:localhost"]})),
        )
        .await
        .unwrap();
    let room_id = room.body["room_id"].as_str().unwrap().to_owned();

    // An invite shows stripped state (the spec's recommended types), with the invite itself.
    let s0 = bob.sync(None, 0).await.unwrap();
    let invite = &s0["rooms"]["invite"][room_id.as_str()]["invite_state"]["events"];
    let types: Vec<&str> = invite.as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    for t in ["m.room.name", "m.room.create", "m.room.topic", "m.room.join_rules"] {
        assert!(types.contains(&t), "{t} missing: {invite}");
    }
    assert!(!types.contains(&"m.room.power_levels"), "{invite}");
    assert_eq!(types.last(), Some(&"m.room.member"));
    assert!(s0["rooms"]["join"].get(room_id.as_str()).is_none());

    // Joining moves it to join, with the state before the timeline and the join in the timeline.
    let since = s0["next_batch"].as_str().unwrap().to_owned();
    bob.call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/join"), Some(&json!({}))).await.unwrap();
    let s1 = bob.sync(Some(&since), 5_000).await.unwrap();
    let joined = &s1["rooms"]["join"][room_id.as_str()];
    assert!(joined.is_object(), "{s1}");
    let timeline_ids: Vec<&str> =
        joined["timeline"]["events"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str()).collect();
    for e in joined["state"]["events"].as_array().unwrap() {
        assert!(!timeline_ids.contains(&e["event_id"].as_str().unwrap()), "state and timeline do not overlap");
    }

    // 15 messages with a limit of 5: limited, and prev_batch pages back to the rest.
    let since = s1["next_batch"].as_str().unwrap().to_owned();
    for i in 0..15 {
        alice
            .call(
                "PUT",
                &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/l{i}"),
                Some(&json!({"msgtype": "m.text", "body": format!("m{i}")})),
            )
            .await
            .unwrap();
    }
    let filter = r#"{"room":{"timeline":{"limit":5}}}"#;
    let path = format!("/_matrix/client/v3/sync?since={since}&filter={}", query_escape(filter));
    let s2 = bob.call("GET", &path, None).await.unwrap().body;
    let t = &s2["rooms"]["join"][room_id.as_str()]["timeline"];
    assert_eq!(t["limited"], json!(true));
    assert_eq!(message_bodies(&s2, &room_id), vec!["m10", "m11", "m12", "m13", "m14"]);
    let prev = t["prev_batch"].as_str().unwrap();
    let page = bob
        .call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=b&limit=3&from={prev}"), None)
        .await
        .unwrap();
    let older: Vec<&str> =
        page.body["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(older, vec!["m9", "m8", "m7"]);

    // Leaving shows the room under leave, once.
    let since = s2["next_batch"].as_str().unwrap().to_owned();
    bob.call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/leave"), Some(&json!({}))).await.unwrap();
    let s3 = bob.sync(Some(&since), 5_000).await.unwrap();
    assert!(s3["rooms"]["leave"][room_id.as_str()].is_object(), "{s3}");
    let s4 = bob.sync(Some(s3["next_batch"].as_str().unwrap()), 0).await.unwrap();
    assert!(s4["rooms"]["leave"].get(room_id.as_str()).is_none());
}

/// Alice and Bob registered, in a public room Alice created.
async fn alice_and_bob_in_a_public_room(server: &OneProcess) -> (RawClient, RawClient, String) {
    let alice = RawClient::register(&server.url, "alice").await.unwrap();
    let bob = RawClient::register(&server.url, "bob").await.unwrap();
    let room =
        alice.call("POST", "/_matrix/client/v3/createRoom", Some(&json!({"preset": "public_chat"}))).await.unwrap();
    assert_eq!(room.status, 200, "{room:?}");
    let room_id = room.body["room_id"].as_str().unwrap().to_owned();
    let r = bob.call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/join"), Some(&json!({}))).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    (alice, bob, room_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_data_and_stored_filters_reach_sync() {
    let server = OneProcess::start().await.expect("server starts");
    let alice = RawClient::register(&server.url, "alice").await.unwrap();
    let room = alice.call("POST", "/_matrix/client/v3/createRoom", Some(&json!({}))).await.unwrap();
    let room_id = room.body["room_id"].as_str().unwrap().to_owned();
    let initial = alice.sync(None, 0).await.unwrap();
    let types: Vec<&str> =
        initial["account_data"]["events"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(types.contains(&"m.push_rules"), "an initial sync carries the default push rules: {types:?}");

    // A long-poll wakes for account data alone.
    let since = initial["next_batch"].as_str().unwrap().to_owned();
    let waiter = {
        let alice = alice.clone();
        tokio::spawn(async move { alice.sync(Some(&since), 20_000).await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    alice
        .call(
            "PUT",
            &format!("/_matrix/client/v3/user/@alice:localhost/rooms/{room_id}/tags/m.favourite"),
            Some(&json!({"order": 1})),
        )
        .await
        .unwrap();
    let resp = waiter.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let room_data = &resp["rooms"]["join"][room_id.as_str()]["account_data"]["events"];
    assert_eq!(room_data[0]["type"], "m.tag", "{resp}");
    assert_eq!(room_data[0]["content"]["tags"]["m.favourite"]["order"], 1);

    // A stored filter applies by ID.
    let f = alice
        .call(
            "POST",
            "/_matrix/client/v3/user/@alice:localhost/filter",
            Some(&json!({"room": {"timeline": {"limit": 1}}})),
        )
        .await
        .unwrap();
    let filter_id = f.body["filter_id"].as_str().unwrap().to_owned();
    let r = alice.call("GET", &format!("/_matrix/client/v3/sync?filter={filter_id}"), None).await.unwrap();
    let timeline = r.body["rooms"]["join"][room_id.as_str()]["timeline"].clone();
    assert_eq!(timeline["events"].as_array().unwrap().len(), 1);
    assert_eq!(timeline["limited"], json!(true));
    let r = alice.call("GET", "/_matrix/client/v3/sync?filter=unknown", None).await.unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_messages_and_device_lists_reach_sync() {
    let server = OneProcess::start().await.expect("server starts");
    let (alice, bob, room_id) = alice_and_bob_in_a_public_room(&server).await;
    let s0 = alice.sync(None, 0).await.unwrap();
    assert!(s0["device_one_time_keys_count"].is_object());
    let since = s0["next_batch"].as_str().unwrap().to_owned();

    // Bob's keys change: alice, who shares a room with him, hears of it; with them a message for
    // every one of alice's devices.
    let up = bob
        .call(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(&json!({"one_time_keys": {"signed_curve25519:K1": {"key": "k"}}})),
        )
        .await
        .unwrap();
    assert_eq!(up.body["one_time_key_counts"]["signed_curve25519"], 1);
    let r = bob
        .call(
            "PUT",
            "/_matrix/client/v3/sendToDevice/m.room_key_request/t1",
            Some(&json!({"messages": {"@alice:localhost": {"*": {"n": 1}}}})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let s1 =
        alice.sync_until(&since, |r| !r["to_device"]["events"].as_array().is_none_or(|a| a.is_empty())).await.unwrap();
    let td = s1["to_device"]["events"].as_array().unwrap();
    assert_eq!(td.len(), 1, "{s1}");
    assert_eq!(
        (td[0]["sender"].as_str(), td[0]["type"].as_str()),
        (Some("@bob:localhost"), Some("m.room_key_request"))
    );

    // The same `since` gets the message again (not acknowledged); the next token does not.
    let again = alice.sync(Some(&since), 0).await.unwrap();
    assert_eq!(again["to_device"]["events"].as_array().unwrap().len(), 1, "redelivered until acknowledged");
    let next = s1["next_batch"].as_str().unwrap().to_owned();
    let s2 = alice.sync(Some(&next), 0).await.unwrap();
    assert!(s2["to_device"]["events"].as_array().unwrap().is_empty(), "{s2}");

    // Device-list changes: bob's device rename reaches alice.
    let next = s2["next_batch"].as_str().unwrap().to_owned();
    let whoami = bob.call("GET", "/_matrix/client/v3/account/whoami", None).await.unwrap();
    let bob_device = whoami.body["device_id"].as_str().unwrap().to_owned();
    bob.call("PUT", &format!("/_matrix/client/v3/devices/{bob_device}"), Some(&json!({"display_name": "phone"})))
        .await
        .unwrap();
    let s3 = alice
        .sync_until(&next, |r| !r["device_lists"]["changed"].as_array().is_none_or(|a| a.is_empty()))
        .await
        .unwrap();
    assert_eq!(s3["device_lists"]["changed"], json!(["@bob:localhost"]), "{s3}");
    let changes = alice
        .call(
            "GET",
            &format!("/_matrix/client/v3/keys/changes?from={next}&to={}", s3["next_batch"].as_str().unwrap()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(changes.body["changed"], json!(["@bob:localhost"]));

    // Bob leaves their only shared room: alice may stop tracking him (`left`). Joining again
    // puts him back in `changed`.
    let next = s3["next_batch"].as_str().unwrap().to_owned();
    let r = bob.call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/leave"), Some(&json!({}))).await.unwrap();
    assert_eq!(r.status, 200);
    let s4 =
        alice.sync_until(&next, |r| !r["device_lists"]["left"].as_array().is_none_or(|a| a.is_empty())).await.unwrap();
    assert_eq!((&s4["device_lists"]["left"], &s4["device_lists"]["changed"]), (&json!(["@bob:localhost"]), &json!([])));
    let next = s4["next_batch"].as_str().unwrap().to_owned();
    bob.call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/join"), Some(&json!({}))).await.unwrap();
    let s5 = alice
        .sync_until(&next, |r| !r["device_lists"]["changed"].as_array().is_none_or(|a| a.is_empty()))
        .await
        .unwrap();
    assert_eq!((&s5["device_lists"]["changed"], &s5["device_lists"]["left"]), (&json!(["@bob:localhost"]), &json!([])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_typing_and_read_markers_reach_sync() {
    let server = OneProcess::start().await.expect("server starts");
    let (alice, bob, room_id) = alice_and_bob_in_a_public_room(&server).await;
    let sent = bob
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/r1"),
            Some(&json!({"msgtype": "m.text", "body": "read me"})),
        )
        .await
        .unwrap();
    let event_id = sent.body["event_id"].as_str().unwrap().to_owned();
    let since = bob.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();

    // A public receipt reaches bob; a private one does not.
    let r = alice
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read.private/{event_id}"),
            Some(&json!({})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = alice
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{event_id}"),
            Some(&json!({"thread_id": "main"})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = alice
        .call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.bogus/{event_id}"), Some(&json!({})))
        .await
        .unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let r = alice
        .call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/$nope"), Some(&json!({})))
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    let s1 = bob
        .sync_until(&since, |r| {
            r["rooms"]["join"][room_id.as_str()]["ephemeral"]["events"].to_string().contains("m.receipt")
        })
        .await
        .unwrap();
    let eph = s1["rooms"]["join"][room_id.as_str()]["ephemeral"]["events"].as_array().unwrap().clone();
    let receipt = eph.iter().find(|e| e["type"] == "m.receipt").expect("a receipt");
    let by_alice = &receipt["content"][event_id.as_str()];
    assert_eq!(by_alice["m.read"]["@alice:localhost"]["thread_id"], "main", "{receipt}");
    assert!(by_alice.get("m.read.private").is_none(), "private receipts stay private: {receipt}");
    let own = alice.sync(None, 0).await.unwrap();
    let own_eph = own["rooms"]["join"][room_id.as_str()]["ephemeral"]["events"].to_string();
    assert!(own_eph.contains("m.read.private"), "the owner sees their private receipt: {own_eph}");

    // Typing: shown, then gone when it times out.
    let since = s1["next_batch"].as_str().unwrap().to_owned();
    let r = alice
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/typing/@alice:localhost"),
            Some(&json!({"typing": true, "timeout": 1500})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = alice
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/typing/@bob:localhost"),
            Some(&json!({"typing": true})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 403, "nobody types for someone else");
    let typing_of = |r: &Value| {
        r["rooms"]["join"][room_id.as_str()]["ephemeral"]["events"]
            .as_array()
            .and_then(|evs| evs.iter().find(|e| e["type"] == "m.typing").cloned())
    };
    let s2 = bob.sync_until(&since, |r| typing_of(r).is_some()).await.unwrap();
    assert_eq!(typing_of(&s2).unwrap()["content"]["user_ids"], json!(["@alice:localhost"]));
    let since = s2["next_batch"].as_str().unwrap().to_owned();
    let s3 = bob.sync_until(&since, |r| typing_of(r).is_some()).await.unwrap();
    assert_eq!(typing_of(&s3).unwrap()["content"]["user_ids"], json!([]), "the notification expired");

    // read_markers sets m.fully_read room account data.
    let r = alice
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{room_id}/read_markers"),
            Some(&json!({"m.fully_read": event_id, "m.read": event_id})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let data = alice
        .call(
            "GET",
            &format!("/_matrix/client/v3/user/@alice:localhost/rooms/{room_id}/account_data/m.fully_read"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(data.body["event_id"], json!(event_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_follow_push_rules_and_receipts() {
    let server = OneProcess::start().await.expect("server starts");
    let (alice, bob, room_id) = alice_and_bob_in_a_public_room(&server).await;
    let mut last = String::new();
    for (i, content) in [
        json!({"msgtype": "m.text", "body": "one"}),
        json!({"msgtype": "m.text", "body": "two"}),
        json!({"msgtype": "m.text", "body": "hey alice", "m.mentions": {"user_ids": ["@alice:localhost"]}}),
    ]
    .iter()
    .enumerate()
    {
        let r = bob
            .call("PUT", &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/u{i}"), Some(content))
            .await
            .unwrap();
        last = r.body["event_id"].as_str().unwrap().to_owned();
    }
    let s1 = alice.sync(None, 0).await.unwrap();
    let counts = &s1["rooms"]["join"][room_id.as_str()]["unread_notifications"];
    assert_eq!(
        (counts["notification_count"].as_i64(), counts["highlight_count"].as_i64()),
        (Some(3), Some(1)),
        "{counts}"
    );
    let bob_counts =
        bob.sync(None, 0).await.unwrap()["rooms"]["join"][room_id.as_str()]["unread_notifications"].clone();
    assert_eq!(bob_counts["notification_count"], 0, "your own messages never notify you");

    let since = s1["next_batch"].as_str().unwrap().to_owned();
    alice
        .call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{last}"), Some(&json!({})))
        .await
        .unwrap();
    let s2 = alice.sync_until(&since, |r| r["rooms"]["join"][room_id.as_str()].is_object()).await.unwrap();
    let counts = &s2["rooms"]["join"][room_id.as_str()]["unread_notifications"];
    assert_eq!((counts["notification_count"].as_i64(), counts["highlight_count"].as_i64()), (Some(0), Some(0)), "{s2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_per_thread_and_state_after() {
    let server = OneProcess::start().await.expect("server starts");
    let alice = RawClient::register(&server.url, "alice").await.unwrap();
    let bob = RawClient::register(&server.url, "bob").await.unwrap();
    let room = alice
        .call("POST", "/_matrix/client/v3/createRoom", Some(&json!({"preset": "public_chat", "topic": "old"})))
        .await
        .unwrap();
    let room_id = room.body["room_id"].as_str().unwrap().to_owned();
    bob.call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/join"), Some(&json!({}))).await.unwrap();
    let send = |txn: &str, content: Value| {
        let (bob, room_id, txn) = (bob.clone(), room_id.clone(), txn.to_owned());
        async move {
            let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}");
            let r = bob.call("PUT", &path, Some(&content)).await.unwrap();
            assert_eq!(r.status, 200, "{r:?}");
            r.body["event_id"].as_str().unwrap().to_owned()
        }
    };
    let root = send("r", json!({"msgtype": "m.text", "body": "root"})).await;
    let in_thread = |body: &str| json!({"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
    send("t1", in_thread("reply 1")).await;
    let last_reply = send("t2", in_thread("reply 2")).await;

    // Without the filter option every notification counts in the room; with it, the thread's
    // are counted apart.
    let counts = |sync: &Value| sync["rooms"]["join"][room_id.as_str()].clone();
    let plain = alice.sync(None, 0).await.unwrap();
    assert_eq!(counts(&plain)["unread_notifications"]["notification_count"], 3, "{plain}");
    assert!(counts(&plain).get("unread_thread_notifications").is_none());
    // The timeline bundles the thread summary into the root.
    let root_event = counts(&plain)["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_id"] == root.as_str())
        .cloned()
        .expect("the root is in the timeline");
    let summary = &root_event["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(
        (summary["count"].as_u64(), summary["latest_event"]["content"]["body"].as_str()),
        (Some(2), Some("reply 2"))
    );
    let filter = r#"{"room":{"timeline":{"unread_thread_notifications":true}}}"#;
    let path = format!("/_matrix/client/v3/sync?filter={}", query_escape(filter));
    let threaded = alice.call("GET", &path, None).await.unwrap().body;
    assert_eq!(counts(&threaded)["unread_notifications"]["notification_count"], 1, "the root: {threaded}");
    assert_eq!(counts(&threaded)["unread_thread_notifications"][&root]["notification_count"], 2, "{threaded}");

    // A receipt in the thread reads the thread, not the main timeline.
    let r = alice
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{last_reply}"),
            Some(&json!({"thread_id": root})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let after = alice.call("GET", &path, None).await.unwrap().body;
    assert_eq!(counts(&after)["unread_notifications"]["notification_count"], 1, "{after}");
    assert!(counts(&after)["unread_thread_notifications"].get(&root).is_none(), "{after}");

    // use_state_after: state as of the end of the timeline, under `state_after`.
    let since = plain["next_batch"].as_str().unwrap().to_owned();
    let r = alice
        .call("PUT", &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic"), Some(&json!({"topic": "new"})))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let one = query_escape(r#"{"room":{"timeline":{"limit":1}}}"#);
    let initial =
        alice.call("GET", &format!("/_matrix/client/v3/sync?use_state_after=true&filter={one}"), None).await.unwrap();
    let room_now = counts(&initial.body);
    assert!(room_now.get("state").is_none(), "{room_now}");
    let topics: Vec<&Value> = room_now["state_after"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.topic")
        .map(|e| &e["content"]["topic"])
        .collect();
    assert_eq!(topics, vec![&json!("new")], "state_after includes the timeline's state: {room_now}");
    let before = alice.call("GET", &format!("/_matrix/client/v3/sync?filter={one}"), None).await.unwrap();
    let room_before = counts(&before.body);
    let old_topic: Vec<&Value> = room_before["state"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.topic")
        .map(|e| &e["content"]["topic"])
        .collect();
    assert_eq!(old_topic, vec![&json!("old")], "`state` stops where the timeline starts");
    let inc = alice
        .call("GET", &format!("/_matrix/client/v3/sync?use_state_after=true&since={since}&filter={one}"), None)
        .await
        .unwrap();
    let room_inc = counts(&inc.body);
    let changed: Vec<&str> =
        room_inc["state_after"]["events"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(changed.contains(&"m.room.topic"), "{}", inc.body);
    let bad = alice.call("GET", "/_matrix/client/v3/sync?use_state_after=maybe", None).await.unwrap();
    assert_eq!((bad.status, bad.body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_shared_with_room_members_only() {
    let server = OneProcess::start().await.expect("server starts");
    let alice = RawClient::register(&server.url, "alice").await.unwrap();
    let bob = RawClient::register(&server.url, "bob").await.unwrap();
    let carol = RawClient::register(&server.url, "carol").await.unwrap();
    let room =
        alice.call("POST", "/_matrix/client/v3/createRoom", Some(&json!({"preset": "public_chat"}))).await.unwrap();
    let room_id = room.body["room_id"].as_str().unwrap().to_owned();
    bob.call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/join"), Some(&json!({}))).await.unwrap();
    let since = bob.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();

    let status = "/_matrix/client/v3/presence/@alice:localhost/status";
    let r = alice.call("PUT", status, Some(&json!({"presence": "unavailable", "status_msg": "lunch"}))).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = alice.call("PUT", status, Some(&json!({"presence": "asleep"}))).await.unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
    let r = bob.call("PUT", status, Some(&json!({"presence": "online"}))).await.unwrap();
    assert_eq!(r.status, 403, "nobody sets another's presence");

    let alice_presence = |r: &Value| {
        r["presence"]["events"].as_array().and_then(|evs| {
            evs.iter().find(|e| e["sender"] == "@alice:localhost" && e["content"]["presence"] == "unavailable").cloned()
        })
    };
    let s = bob.sync_until(&since, |r| alice_presence(r).is_some()).await.unwrap();
    let event = alice_presence(&s).unwrap();
    assert_eq!((event["type"].as_str(), event["content"]["status_msg"].as_str()), (Some("m.presence"), Some("lunch")));

    let r = bob.call("GET", status, None).await.unwrap();
    assert_eq!(
        (r.status, r.body["presence"].as_str(), r.body["status_msg"].as_str()),
        (200, Some("unavailable"), Some("lunch"))
    );
    assert!(r.body["last_active_ago"].is_u64());
    let r = carol.call("GET", status, None).await.unwrap();
    assert_eq!(r.status, 403, "presence is only for those sharing a room");
    let carol_initial = carol.sync(None, 0).await.unwrap();
    assert!(alice_presence(&carol_initial).is_none(), "{carol_initial}");

    // A sync with set_presence=online marks its user online again.
    alice.call("GET", "/_matrix/client/v3/sync?set_presence=online&timeout=0", None).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = bob.call("GET", status, None).await.unwrap();
        if r.body["presence"] == "online" {
            assert_eq!(r.body["currently_active"], true);
            break;
        }
        assert!(Instant::now() < deadline, "presence never went back online: {r:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = alice.call("GET", "/_matrix/client/v3/sync?set_presence=asleep", None).await.unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (400, Some("M_INVALID_PARAM")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lazy_loaded_members_and_room_summaries() {
    let server = OneProcess::start().await.expect("server starts");
    let alice = RawClient::register(&server.url, "alice").await.unwrap();
    let bob = RawClient::register(&server.url, "bob").await.unwrap();
    let carol = RawClient::register(&server.url, "carol").await.unwrap();
    let room =
        alice.call("POST", "/_matrix/client/v3/createRoom", Some(&json!({"preset": "public_chat"}))).await.unwrap();
    let room_id = room.body["room_id"].as_str().unwrap().to_owned();
    for c in [&bob, &carol] {
        c.call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/join"), Some(&json!({}))).await.unwrap();
    }
    for i in 0..3 {
        bob.call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/l{i}"),
            Some(&json!({"msgtype": "m.text", "body": format!("b{i}")})),
        )
        .await
        .unwrap();
    }
    let members_in = |r: &Value| -> Vec<String> {
        let mut m: Vec<String> = r["rooms"]["join"][room_id.as_str()]["state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
            .collect();
        m.sort();
        m
    };
    let filter = r#"{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":3}}}"#;
    let lazy = alice
        .call("GET", &format!("/_matrix/client/v3/sync?filter={}", query_escape(filter)), None)
        .await
        .unwrap()
        .body;
    assert_eq!(members_in(&lazy), vec!["@alice:localhost", "@bob:localhost"], "only timeline senders and the user");
    let summary = &lazy["rooms"]["join"][room_id.as_str()]["summary"];
    assert_eq!(
        (summary["m.joined_member_count"].as_u64(), summary["m.invited_member_count"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(summary["m.heroes"], json!(["@bob:localhost", "@carol:localhost"]), "an unnamed room has heroes");
    let full = alice
        .call(
            "GET",
            "/_matrix/client/v3/sync?filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A3%7D%7D%7D",
            None,
        )
        .await
        .unwrap()
        .body;
    assert_eq!(members_in(&full).len(), 3, "without lazy loading every member is sent");
    // In an incremental sync, a new speaker's member event comes along.
    let since = lazy["next_batch"].as_str().unwrap().to_owned();
    carol
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/c1"),
            Some(&json!({"msgtype": "m.text", "body": "hi"})),
        )
        .await
        .unwrap();
    let path = format!("/_matrix/client/v3/sync?since={since}&timeout=5000&filter={}", query_escape(filter));
    let inc = alice.call("GET", &path, None).await.unwrap().body;
    assert!(members_in(&inc).contains(&"@carol:localhost".to_owned()), "{inc}");
}

/// A profile change is a join → join member event: incremental sync sends just that event, not
/// the room's history again as if the user had newly joined (matrix-js-sdk warned of duplicates).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_change_does_not_resend_the_room() {
    let server = OneProcess::start().await.expect("server starts");
    let alice = RawClient::register(&server.url, "alice").await.expect("alice registers");
    let created = alice.call("POST", "/_matrix/client/v3/createRoom", Some(&json!({"name": "Quiet"}))).await.unwrap();
    assert_eq!(created.status, 200, "{created:?}");
    let room_id = created.body["room_id"].as_str().unwrap().to_owned();
    let initial = alice.sync(None, 0).await.unwrap();
    assert!(initial["rooms"]["join"][room_id.as_str()].is_object(), "{initial}");
    let since = initial["next_batch"].as_str().unwrap().to_owned();

    let path = format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id);
    let put = alice.call("PUT", &path, Some(&json!({"displayname": "Alice A."}))).await.unwrap();
    assert_eq!(put.status, 200, "{put:?}");
    let resp = alice
        .sync_until(&since, |r| r["rooms"]["join"][room_id.as_str()]["timeline"]["events"].is_array())
        .await
        .expect("the new member event arrives");
    let events = resp["rooms"]["join"][room_id.as_str()]["timeline"]["events"].as_array().unwrap().clone();
    let types: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, vec!["m.room.member"], "only the changed member event: {resp}");
    assert_eq!(events[0]["content"]["displayname"], "Alice A.");
}

/// The sync worker answers incremental syncs from what it keeps of the stream (recent events,
/// memberships, lazy-loaded members, unread counts): each step here changes one of those
/// behind a long-polling client, and the answers must be what the database says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_syncs_from_memory_follow_every_change() {
    let server = OneProcess::start().await.expect("server starts");
    let (alice, bob, room_id) = alice_and_bob_in_a_public_room(&server).await;
    let filter = query_escape(r#"{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":10}}}"#);
    let sync = |since: String| {
        let bob = &bob;
        let filter = filter.clone();
        async move {
            let r = bob
                .call("GET", &format!("/_matrix/client/v3/sync?since={since}&timeout=10000&filter={filter}"), None)
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{r:?}");
            r.body
        }
    };
    let first = bob.call("GET", &format!("/_matrix/client/v3/sync?filter={filter}"), None).await.unwrap().body;
    let mut since = first["next_batch"].as_str().unwrap().to_owned();
    let send = |txn: String, body: String| {
        let alice = &alice;
        let room_id = room_id.clone();
        async move {
            let r = alice
                .call(
                    "PUT",
                    &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}"),
                    Some(&json!({"msgtype": "m.text", "body": body})),
                )
                .await
                .unwrap();
            assert_eq!(r.status, 200, "{r:?}");
            r.body["event_id"].as_str().unwrap().to_owned()
        }
    };
    let joined = |r: &Value| r["rooms"]["join"][room_id.as_str()].clone();
    let alice_member = |room: &Value| -> Option<Value> {
        room["state"]["events"]
            .as_array()?
            .iter()
            .chain(room["timeline"]["events"].as_array()?.iter())
            .rfind(|e| e["type"] == "m.room.member" && e["state_key"] == "@alice:localhost")
            .cloned()
    };

    // Messages one at a time: each answer carries the message, alice's member event (lazy
    // loading), and an unread count one higher than the last.
    for i in 1..=3 {
        let id = send(format!("m{i}"), format!("hello {i}")).await;
        let r = sync(since.clone()).await;
        since = r["next_batch"].as_str().unwrap().to_owned();
        let room = joined(&r);
        let events = room["timeline"]["events"].as_array().cloned().unwrap_or_default();
        assert_eq!(events.iter().map(|e| e["event_id"].clone()).collect::<Vec<_>>(), vec![json!(id)], "{r}");
        assert_eq!(alice_member(&room).unwrap()["content"]["membership"], "join", "{r}");
        assert_eq!(room["unread_notifications"]["notification_count"], i, "{r}");
    }

    // A new display name: the next message brings the new member event, not the cached one.
    let r = alice
        .call(
            "PUT",
            &format!("/_matrix/client/v3/profile/{}/displayname", alice.user_id),
            Some(&json!({"displayname": "Alice Two"})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = sync(since.clone()).await;
    since = r["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(alice_member(&joined(&r)).unwrap()["content"]["displayname"], "Alice Two", "{r}");
    send("m4".into(), "after the rename".into()).await;
    let r = sync(since.clone()).await;
    since = r["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(alice_member(&joined(&r)).unwrap()["content"]["displayname"], "Alice Two", "{r}");
    assert_eq!(joined(&r)["unread_notifications"]["notification_count"], 4, "{r}");

    // A read receipt clears the count; the next message counts from it.
    let last = joined(&r)["timeline"]["events"][0]["event_id"].as_str().unwrap().to_owned();
    let receipt = bob
        .call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/receipt/m.read/{last}"), Some(&json!({})))
        .await
        .unwrap();
    assert_eq!(receipt.status, 200, "{receipt:?}");
    let r = sync(since.clone()).await;
    since = r["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(joined(&r)["unread_notifications"]["notification_count"], 0, "{r}");
    send("m5".into(), "one more".into()).await;
    let r = sync(since.clone()).await;
    since = r["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(joined(&r)["unread_notifications"]["notification_count"], 1, "{r}");

    // A message redacted before bob syncs arrives redacted, with its redaction.
    let secret = send("m6".into(), "oops".into()).await;
    let r = alice
        .call("PUT", &format!("/_matrix/client/v3/rooms/{room_id}/redact/{secret}/r1"), Some(&json!({})))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = bob.sync_until(&since, |r| {
        r["rooms"]["join"][room_id.as_str()]["timeline"]["events"]
            .as_array()
            .is_some_and(|evs| evs.iter().any(|e| e["type"] == "m.room.redaction"))
    });
    let r = r.await.unwrap();
    let events = joined(&r)["timeline"]["events"].as_array().cloned().unwrap();
    let redacted = events.iter().find(|e| e["event_id"] == secret.as_str()).expect("the redacted message is there");
    assert_eq!(redacted["content"], json!({}), "{r}");
    since = r["next_batch"].as_str().unwrap().to_owned();

    // Leaving, then forgetting: a sync from before the leave no longer lists the room.
    let before_leave = since.clone();
    let r = bob.call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/leave"), Some(&json!({}))).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = sync(before_leave.clone()).await;
    assert!(r["rooms"]["leave"][room_id.as_str()].is_object(), "{r}");
    let r = bob.call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/forget"), Some(&json!({}))).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r =
        bob.call("GET", &format!("/_matrix/client/v3/sync?since={before_leave}&filter={filter}"), None).await.unwrap();
    assert!(r.body["rooms"]["leave"][room_id.as_str()].is_null(), "{r:?}");
}

/// A long-poll sleeps through events elsewhere (they wake only the syncs of their room's
/// members) and answers at once when one concerns it: a message in its room, or an invite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_wakes_for_its_own_rooms_only() {
    let server = OneProcess::start().await.expect("server starts");
    let (alice, bob, room_id) = alice_and_bob_in_a_public_room(&server).await;
    let elsewhere = bob.call("POST", "/_matrix/client/v3/createRoom", Some(&json!({}))).await.unwrap();
    let elsewhere = elsewhere.body["room_id"].as_str().unwrap().to_owned();
    let noise = bob.call("POST", "/_matrix/client/v3/createRoom", Some(&json!({}))).await.unwrap();
    let noise = noise.body["room_id"].as_str().unwrap().to_owned();
    let mut since = alice.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();
    for step in ["message", "invite"] {
        let poll = async {
            let started = Instant::now();
            let r = alice.sync(Some(&since), 20_000).await.unwrap();
            (r, started.elapsed())
        };
        let act = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            for i in 0..3 {
                let path = format!("/_matrix/client/v3/rooms/{noise}/send/m.room.message/n{step}{i}");
                let r = bob.call("PUT", &path, Some(&json!({"msgtype": "m.text", "body": "noise"}))).await.unwrap();
                assert_eq!(r.status, 200, "{r:?}");
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let r = if step == "message" {
                let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/m");
                bob.call("PUT", &path, Some(&json!({"msgtype": "m.text", "body": "for alice"}))).await.unwrap()
            } else {
                let path = format!("/_matrix/client/v3/rooms/{elsewhere}/invite");
                bob.call("POST", &path, Some(&json!({"user_id": alice.user_id}))).await.unwrap()
            };
            assert_eq!(r.status, 200, "{r:?}");
        };
        let ((r, took), ()) = tokio::join!(poll, act);
        assert!(took < Duration::from_secs(10), "{step}: answered after {took:?}: {r}");
        if step == "message" {
            assert_eq!(message_bodies(&r, &room_id), vec!["for alice"], "{r}");
        } else {
            assert!(r["rooms"]["invite"][elsewhere.as_str()].is_object(), "{r}");
        }
        assert!(r["rooms"]["join"][noise.as_str()].is_null(), "{r}");
        since = r["next_batch"].as_str().unwrap().to_owned();
    }
}
