//! Simplified sliding sync (MSC4186) against `ganglion serve`, over raw HTTP.

use std::time::{Duration, Instant};

use ganglion_e2e::{OneProcess, RawClient, Reply, Split};
use serde_json::{Value, json};

const PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// One sliding sync request.
async fn ss(c: &RawClient, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Reply {
    let mut path = format!("{PATH}?timeout={timeout_ms}");
    if let Some(p) = pos {
        path.push_str(&format!("&pos={p}"));
    }
    c.call("POST", &path, Some(body)).await.expect("sliding sync answers")
}

/// One sliding sync request that must succeed.
async fn ok(c: &RawClient, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Value {
    let r = ss(c, pos, timeout_ms, body).await;
    assert_eq!(r.status, 200, "{r:?}");
    r.body
}

fn pos(resp: &Value) -> String {
    resp["pos"].as_str().expect("pos").to_owned()
}

/// The room IDs in a response, sorted by bump_stamp, newest first.
fn rooms_by_bump(resp: &Value) -> Vec<String> {
    let mut rooms: Vec<(i64, String)> = resp["rooms"]
        .as_object()
        .map(|o| o.iter().map(|(id, r)| (r["bump_stamp"].as_i64().unwrap_or(0), id.clone())).collect())
        .unwrap_or_default();
    rooms.sort_by(|a, b| b.cmp(a));
    rooms.into_iter().map(|(_, id)| id).collect()
}

fn room_ids(resp: &Value) -> Vec<String> {
    let mut ids: Vec<String> = resp["rooms"].as_object().map(|o| o.keys().cloned().collect()).unwrap_or_default();
    ids.sort();
    ids
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .map(|t| t.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

async fn create_room(c: &RawClient, body: Value) -> String {
    let r = c.call("POST", "/_matrix/client/v3/createRoom", Some(&body)).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    r.body["room_id"].as_str().unwrap().to_owned()
}

async fn send(c: &RawClient, room: &str, body: &str) -> String {
    let txn = format!("t{}", rand_suffix());
    let r = c
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            Some(&json!({ "msgtype": "m.text", "body": body })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    r.body["event_id"].as_str().unwrap().to_owned()
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

async fn join(c: &RawClient, room: &str) {
    let r = c.call("POST", &format!("/_matrix/client/v3/join/{room}"), Some(&json!({}))).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_order_by_bump_stamp_and_send_only_what_changed() {
    let server = OneProcess::start().await.expect("server starts");
    let versions = RawClient::new(&server.url).call("GET", "/_matrix/client/versions", None).await.unwrap();
    assert_eq!(versions.body["unstable_features"]["org.matrix.simplified_msc3575"], true, "{versions:?}");

    let alice = RawClient::register(&server.url, "alice").await.unwrap();
    let a = create_room(&alice, json!({ "name": "A" })).await;
    let b = create_room(&alice, json!({ "name": "B" })).await;
    let c = create_room(&alice, json!({ "name": "C" })).await;
    send(&alice, &b, "b1").await;

    let list =
        |ranges: Value| json!({ "lists": { "all": { "ranges": ranges, "timeline_limit": 1, "required_state": [] } } });
    let first = ok(&alice, None, 0, &list(json!([[0, 1]]))).await;
    assert_eq!(first["lists"]["all"]["count"], 3, "{first}");
    assert_eq!(rooms_by_bump(&first), vec![b.clone(), c.clone()], "the two most recently bumped rooms: {first}");
    let rb = &first["rooms"][b.as_str()];
    assert_eq!(rb["initial"], true);
    assert_eq!(rb["name"], "B");
    assert_eq!(bodies(rb), vec!["b1"]);
    assert_eq!(rb["limited"], true);
    assert_eq!(rb["joined_count"], 1);
    assert!(rb["prev_batch"].as_str().unwrap().starts_with('t'), "{rb}");
    assert!(rb["timeline"][0].get("room_id").is_none(), "sync format: {rb}");
    assert!(rb["bump_stamp"].as_i64().unwrap() > first["rooms"][c.as_str()]["bump_stamp"].as_i64().unwrap());

    // Nothing changed: a long-poll with a short timeout answers empty.
    let quiet = ok(&alice, Some(&pos(&first)), 300, &list(json!([[0, 1]]))).await;
    assert_eq!(room_ids(&quiet), Vec::<String>::new(), "unchanged rooms are not sent again: {quiet}");
    assert_eq!(quiet["lists"]["all"]["count"], 3);

    // A message in A wakes the long-poll well before its timeout and moves A to the top: A is new
    // in range (initial), C drops out, B is unchanged and not repeated.
    let waiter = {
        let alice = alice.clone();
        let (p, body) = (pos(&quiet), list(json!([[0, 1]])));
        tokio::spawn(async move {
            let started = Instant::now();
            (ok(&alice, Some(&p), 20_000, &body).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(&alice, &a, "a1").await;
    let (woke, waited) = waiter.await.unwrap();
    assert!(waited < Duration::from_secs(10), "the long-poll woke on the message after {waited:?}");
    assert_eq!(room_ids(&woke), vec![a.clone()], "{woke}");
    assert_eq!(woke["rooms"][a.as_str()]["initial"], true);
    assert_eq!(bodies(&woke["rooms"][a.as_str()]), vec!["a1"]);

    // A message in B (already held): sent incrementally, no `initial`, only the new event.
    send(&alice, &b, "b2").await;
    let inc = ok(&alice, Some(&pos(&woke)), 10_000, &list(json!([[0, 1]]))).await;
    assert_eq!(room_ids(&inc), vec![b.clone()], "{inc}");
    let rb = &inc["rooms"][b.as_str()];
    assert!(rb.get("initial").is_none(), "{rb}");
    assert_eq!(bodies(rb), vec!["b2"]);
    assert_eq!(rb["num_live"], 1);
    assert_eq!(rb["limited"], false);
    assert_eq!(rooms_by_bump(&inc), vec![b.clone()]);

    // Growing the range brings C in, with `initial`; A and B are not repeated.
    let grown = ok(&alice, Some(&pos(&inc)), 0, &list(json!([[0, 2]]))).await;
    assert_eq!(room_ids(&grown), vec![c.clone()], "{grown}");
    assert_eq!(grown["rooms"][c.as_str()]["initial"], true);
    assert_eq!(grown["rooms"][c.as_str()]["name"], "C");

    // A filter that keeps the same rooms in range keeps them held; a new list starts from scratch.
    let filtered =
        json!({ "lists": { "all": { "ranges": [[0, 2]], "timeline_limit": 1, "filters": { "is_invite": false } } } });
    let same = ok(&alice, Some(&pos(&grown)), 0, &filtered).await;
    assert_eq!(room_ids(&same), Vec::<String>::new(), "{same}");
    let other = json!({ "lists": { "other": { "ranges": [[0, 9]], "timeline_limit": 1 } } });
    let again = ok(&alice, Some(&pos(&same)), 0, &other).await;
    assert_eq!(again["lists"]["other"]["count"], 3);
    let mut all = vec![a.clone(), b, c];
    all.sort();
    assert_eq!(room_ids(&again), all, "{again}");
    assert!(again["rooms"].as_object().unwrap().values().all(|r| r["initial"] == true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_state_wildcards_me_and_lazy_members() {
    let server = OneProcess::start().await.expect("server starts");
    let alice = RawClient::register(&server.url, "alice").await.unwrap();
    let bob = RawClient::register(&server.url, "bob").await.unwrap();
    let carol = RawClient::register(&server.url, "carol").await.unwrap();
    let room = create_room(&alice, json!({ "name": "Lobby", "topic": "chat", "preset": "public_chat" })).await;
    join(&bob, &room).await;
    join(&carol, &room).await;
    send(&carol, &room, "from carol").await;
    send(&bob, &room, "from bob").await;

    let with = |required: Value| {
        let list = json!({ "ranges": [[0, 0]], "timeline_limit": 1, "required_state": required });
        json!({ "lists": { "l": list } })
    };
    let state_keys = |resp: &Value| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = resp["rooms"][room.as_str()]["required_state"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["type"].as_str().unwrap().to_owned(), e["state_key"].as_str().unwrap().to_owned()))
            .collect();
        v.sort();
        v
    };
    let pair = |t: &str, k: &str| (t.to_owned(), k.to_owned());

    let me = ok(&alice, None, 0, &with(json!([["m.room.name", ""], ["m.room.member", "$ME"]]))).await;
    assert_eq!(state_keys(&me), vec![pair("m.room.member", "@alice:localhost"), pair("m.room.name", "")], "{me}");
    assert_eq!(me["rooms"][room.as_str()]["joined_count"], 3);
    let heroes: Vec<&str> =
        me["rooms"][room.as_str()]["heroes"].as_array().unwrap().iter().filter_map(|h| h["user_id"].as_str()).collect();
    assert!(heroes.contains(&"@bob:localhost") && !heroes.contains(&"@alice:localhost"), "{heroes:?}");

    // $LAZY: the members who sent the timeline (bob's message only, with a limit of 1).
    let lazy = ok(&alice, None, 0, &with(json!([["m.room.member", "$LAZY"]]))).await;
    assert_eq!(state_keys(&lazy), vec![pair("m.room.member", "@bob:localhost")], "{lazy}");

    // Wildcards: every member; and everything.
    let members = ok(&alice, None, 0, &with(json!([["m.room.member", "*"]]))).await;
    assert_eq!(state_keys(&members).len(), 3, "{members}");
    let all = ok(&alice, None, 0, &with(json!([["*", "*"]]))).await;
    let keys = state_keys(&all);
    for t in ["m.room.create", "m.room.topic", "m.room.power_levels", "m.room.join_rules", "m.room.name"] {
        assert!(keys.iter().any(|(ty, _)| ty == t), "{t} in {keys:?}");
    }
    let none = ok(&alice, None, 0, &with(json!([]))).await;
    assert!(state_keys(&none).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_subscriptions_and_invites() {
    let server = OneProcess::start().await.expect("server starts");
    let alice = RawClient::register(&server.url, "alice").await.unwrap();
    let bob = RawClient::register(&server.url, "bob").await.unwrap();
    let old = create_room(&alice, json!({ "name": "Old" })).await;
    send(&alice, &old, "o1").await;
    send(&alice, &old, "o2").await;
    let newer = create_room(&alice, json!({ "name": "Newer" })).await;

    // The list shows only the newest room; the subscription brings the old one with its own details.
    let body = json!({
        "lists": { "l": { "ranges": [[0, 0]], "timeline_limit": 0 } },
        "room_subscriptions": {
            old.as_str(): { "timeline_limit": 5, "required_state": [["m.room.name", ""]] },
            "!nope:localhost": { "timeline_limit": 5 },
        },
    });
    let first = ok(&alice, None, 0, &body).await;
    let mut expected = vec![old.clone(), newer.clone()];
    expected.sort();
    assert_eq!(room_ids(&first), expected, "a room the user is not in is ignored: {first}");
    let ro = &first["rooms"][old.as_str()];
    assert_eq!(bodies(ro), vec!["o1", "o2"]);
    assert_eq!(ro["required_state"][0]["type"], "m.room.name");
    assert_eq!(first["rooms"][newer.as_str()]["timeline"].as_array().unwrap().len(), 0, "timeline_limit 0");

    // A new message in the subscribed room comes on the next request, incrementally.
    send(&alice, &old, "o3").await;
    let inc = ok(&alice, Some(&pos(&first)), 10_000, &body).await;
    assert_eq!(room_ids(&inc), vec![old.clone()], "{inc}");
    assert_eq!(bodies(&inc["rooms"][old.as_str()]), vec!["o3"]);
    assert!(inc["rooms"][old.as_str()].get("initial").is_none());

    // Invites: bob sees the room with its stripped state, and an is_invite filter finds it.
    let r = alice
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{newer}/invite"),
            Some(&json!({ "user_id": "@bob:localhost" })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let invites =
        json!({ "lists": { "inv": { "ranges": [[0, 9]], "timeline_limit": 5, "filters": { "is_invite": true } } } });
    let b = ok(&bob, None, 0, &invites).await;
    assert_eq!(b["lists"]["inv"]["count"], 1, "{b}");
    let invited = &b["rooms"][newer.as_str()];
    assert_eq!(invited["initial"], true);
    assert_eq!(invited["invited_count"], 1);
    let stripped = invited["invite_state"].as_array().expect("invite_state");
    assert!(stripped.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Newer"), "{invited}");
    assert!(stripped.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == "@bob:localhost"));
    assert!(invited.get("timeline").is_none_or(|t| t.as_array().is_none_or(Vec::is_empty)), "no timeline for invites");
    let not_invites =
        json!({ "lists": { "l": { "ranges": [[0, 9]], "timeline_limit": 5, "filters": { "is_invite": false } } } });
    assert_eq!(ok(&bob, None, 0, &not_invites).await["lists"]["l"]["count"], 0);

    // Accepting the invite: the room comes whole (`initial`), with the timeline bob can now see.
    let all = json!({ "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 5 } } });
    let before = ok(&bob, None, 0, &all).await;
    assert!(before["rooms"][newer.as_str()]["invite_state"].is_array(), "{before}");
    join(&bob, &newer).await;
    let joined = ok(&bob, Some(&pos(&before)), 10_000, &all).await;
    let r = &joined["rooms"][newer.as_str()];
    assert_eq!(r["initial"], true, "{joined}");
    assert!(r.get("invite_state").is_none());
    let timeline = r["timeline"].as_array().unwrap();
    assert_eq!(timeline.last().unwrap()["state_key"], "@bob:localhost", "{r}");
    assert_eq!(r["joined_count"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_pos_is_rejected() {
    let server = OneProcess::start().await.expect("server starts");
    let alice = RawClient::register(&server.url, "alice").await.unwrap();
    let bob = RawClient::register(&server.url, "bob").await.unwrap();
    let body = json!({ "conn_id": "room-list", "lists": {} });
    for bad in ["garbage", "ss1_AAAA", "g1_e1.a1", "ss9_e30"] {
        let r = ss(&alice, Some(bad), 0, &body).await;
        assert_eq!((r.status, r.body["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")), "{bad}: {r:?}");
    }
    let good = ok(&alice, None, 0, &body).await;
    let p = pos(&good);
    assert_eq!(ss(&alice, Some(&p), 0, &body).await.status, 200);
    let other_conn = ss(&alice, Some(&p), 0, &json!({ "conn_id": "encryption" })).await;
    assert_eq!(other_conn.body["errcode"], "M_UNKNOWN_POS", "a pos belongs to its connection");
    let other_user = ss(&bob, Some(&p), 0, &body).await;
    assert_eq!((other_user.status, other_user.body["errcode"].as_str()), (400, Some("M_UNKNOWN_POS")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extensions_to_device_e2ee_account_data_receipts_typing() {
    let server = OneProcess::start().await.expect("server starts");
    let alice = RawClient::register(&server.url, "alice").await.unwrap();
    let bob = RawClient::register(&server.url, "bob").await.unwrap();
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    join(&bob, &room).await;
    let r = alice
        .call(
            "POST",
            "/_matrix/client/v3/keys/upload",
            Some(&json!({"one_time_keys": {"signed_curve25519:K1": {"key": "k"}}})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = alice
        .call("PUT", "/_matrix/client/v3/user/@alice:localhost/account_data/org.example.cfg", Some(&json!({"x": 1})))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = bob
        .call(
            "PUT",
            "/_matrix/client/v3/sendToDevice/m.room_key_request/t1",
            Some(&json!({"messages": {"@alice:localhost": {"*": {"n": 1}}}})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    let body = |since: Option<&str>| {
        let mut to_device = json!({ "enabled": true });
        if let Some(s) = since {
            to_device["since"] = json!(s);
        }
        json!({
            "conn_id": "encryption",
            "extensions": {
                "to_device": to_device,
                "e2ee": { "enabled": true },
                "account_data": { "enabled": true },
                "receipts": { "enabled": true },
                "typing": { "enabled": true },
            },
        })
    };
    let first = ok(&alice, None, 0, &body(None)).await;
    let ext = &first["extensions"];
    assert_eq!(ext["to_device"]["events"][0]["type"], "m.room_key_request", "{first}");
    assert_eq!(ext["to_device"]["events"][0]["sender"], "@bob:localhost");
    assert_eq!(ext["e2ee"]["device_one_time_keys_count"]["signed_curve25519"], 1, "{ext}");
    assert!(ext["e2ee"]["device_unused_fallback_key_types"].is_array());
    let global: Vec<&str> =
        ext["account_data"]["global"].as_array().unwrap().iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(global.contains(&"org.example.cfg") && global.contains(&"m.push_rules"), "{global:?}");
    let next_batch = ext["to_device"]["next_batch"].as_str().unwrap().to_owned();

    // Acknowledged messages are not delivered again; a new one is, and wakes the long-poll.
    let again = ok(&alice, Some(&pos(&first)), 0, &body(Some(&next_batch))).await;
    assert_eq!(again["extensions"]["to_device"]["events"].as_array().map_or(0, Vec::len), 0, "{again}");
    let waiter = {
        let (alice, p, b) = (alice.clone(), pos(&again), body(Some(&next_batch)));
        tokio::spawn(async move { ok(&alice, Some(&p), 20_000, &b).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = bob
        .call(
            "PUT",
            "/_matrix/client/v3/sendToDevice/m.room_key_request/t2",
            Some(&json!({"messages": {"@alice:localhost": {"*": {"n": 2}}}})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let woke = waiter.await.unwrap();
    let events = woke["extensions"]["to_device"]["events"].as_array().unwrap();
    assert_eq!((events.len(), &events[0]["content"]["n"]), (1, &json!(2)), "{woke}");
    let mut p = pos(&woke);
    let next_batch = woke["extensions"]["to_device"]["next_batch"].as_str().unwrap().to_owned();

    // Device list changes of someone sharing a room, room account data, receipts and typing.
    let whoami = bob.call("GET", "/_matrix/client/v3/account/whoami", None).await.unwrap();
    let device = whoami.body["device_id"].as_str().unwrap().to_owned();
    let r = bob
        .call("PUT", &format!("/_matrix/client/v3/devices/{device}"), Some(&json!({"display_name": "phone"})))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = alice
        .call(
            "PUT",
            &format!("/_matrix/client/v3/user/@alice:localhost/rooms/{room}/account_data/m.tag"),
            Some(&json!({"tags": {}})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let event_id = send(&bob, &room, "hi").await;
    let r = bob
        .call("POST", &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event_id}"), Some(&json!({})))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = bob
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/typing/@bob:localhost"),
            Some(&json!({"typing": true, "timeout": 30000})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    // Collect until everything arrived (each change wakes a long-poll on its own).
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut changed, mut tagged, mut receipt, mut typing) = (false, false, false, false);
    while !(changed && tagged && receipt && typing) {
        assert!(
            Instant::now() < deadline,
            "missing: changed {changed} tagged {tagged} receipt {receipt} typing {typing}"
        );
        let resp = ok(&alice, Some(&p), 5_000, &body(Some(&next_batch))).await;
        let ext = &resp["extensions"];
        changed |=
            ext["e2ee"]["device_lists"]["changed"].as_array().is_some_and(|c| c.contains(&json!("@bob:localhost")));
        tagged |= ext["account_data"]["rooms"][room.as_str()][0]["type"] == "m.tag";
        receipt |=
            ext["receipts"]["rooms"][room.as_str()]["content"][event_id.as_str()]["m.read"]["@bob:localhost"]["ts"]
                .is_number();
        typing |= ext["typing"]["rooms"][room.as_str()]["content"]["user_ids"] == json!(["@bob:localhost"]);
        p = pos(&resp);
    }
}

/// matrix-sdk's own sliding sync (discovered through `/versions`) lists the room and receives a
/// message sent after the first response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_sdk_sliding_sync_lists_rooms_and_receives_messages() {
    use matrix_sdk::ruma::api::client::account::register::v3::Request as RegistrationRequest;
    use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset};
    use matrix_sdk::ruma::api::client::uiaa;
    use matrix_sdk::ruma::events::StateEventType;
    use matrix_sdk::ruma::events::room::message::OriginalSyncRoomMessageEvent;
    use matrix_sdk::sliding_sync::VersionBuilder;
    use matrix_sdk::{SlidingSyncList, SlidingSyncMode};

    let server = OneProcess::start().await.expect("server starts");
    let client = matrix_sdk::Client::builder()
        .homeserver_url(&server.url)
        .sliding_sync_version_builder(VersionBuilder::DiscoverNative)
        .build()
        .await
        .expect("client discovers simplified sliding sync");
    let mut req = RegistrationRequest::new();
    req.username = Some("alice".to_owned());
    req.password = Some("secret".to_owned());
    let err = client.matrix_auth().register(req.clone()).await.expect_err("UIA challenge");
    let mut dummy = uiaa::Dummy::new();
    dummy.session = err.as_uiaa_response().expect("UIA").session.clone();
    req.auth = Some(uiaa::AuthData::Dummy(dummy));
    client.matrix_auth().register(req).await.expect("registration");

    let mut create = CreateRoomRequest::new();
    create.preset = Some(RoomPreset::PublicChat);
    create.name = Some("Lobby".to_owned());
    let room_id = client.create_room(create).await.expect("createRoom").room_id().to_owned();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(ev.content.body().to_owned());
        }
    });
    let sliding = client
        .sliding_sync("test")
        .expect("sliding sync builder")
        .add_list(
            SlidingSyncList::builder("all")
                .sync_mode(SlidingSyncMode::new_selective().add_range(0..=19))
                .timeline_limit(10)
                .required_state(vec![(StateEventType::RoomName, String::new())]),
        )
        .poll_timeout(Duration::from_secs(5))
        .build()
        .await
        .expect("sliding sync");
    let summary = match sliding.sync_once().await {
        Ok(s) => s,
        Err(e) => panic!("first sliding sync: {e:?}\n{}", server.proc.log()),
    };
    assert!(summary.rooms.contains(&room_id), "{summary:?}");
    let room = client.get_room(&room_id).expect("the sdk knows the room");
    assert_eq!(room.name().as_deref(), Some("Lobby"));

    let bob = RawClient::register(&server.url, "bob").await.unwrap();
    join(&bob, room_id.as_str()).await;
    send(&bob, room_id.as_str(), "hello over sliding sync").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "the message never arrived");
        sliding.sync_once().await.expect("sliding sync");
        if let Ok(body) = rx.try_recv() {
            assert_eq!(body, "hello over sliding sync");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_follow_messages_and_own_receipts() {
    let server = OneProcess::start().await.expect("server starts");
    let alice = RawClient::register(&server.url, "alice").await.unwrap();
    let bob = RawClient::register(&server.url, "bob").await.unwrap();
    let room = create_room(&alice, json!({ "preset": "public_chat" })).await;
    join(&bob, &room).await;
    let body = json!({ "lists": { "l": { "ranges": [[0, 9]], "timeline_limit": 5 } } });
    let first = ok(&alice, None, 0, &body).await;
    assert_eq!(first["rooms"][room.as_str()]["notification_count"], 0, "{first}");

    let event_id = send(&bob, &room, "ping").await;
    let inc = ok(&alice, Some(&pos(&first)), 10_000, &body).await;
    assert_eq!(inc["rooms"][room.as_str()]["notification_count"], 1, "{inc}");

    // Alice's own receipt clears the count: the room comes again, with no new events.
    let r = alice
        .call("POST", &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event_id}"), Some(&json!({})))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let read = ok(&alice, Some(&pos(&inc)), 10_000, &body).await;
    let r = &read["rooms"][room.as_str()];
    assert_eq!(
        (r["notification_count"].as_i64(), r["timeline"].as_array().map(Vec::len)),
        (Some(0), Some(0)),
        "{read}"
    );
}

/// Behind nginx with two sync workers, consecutive requests of one connection land on either
/// worker: `pos` alone carries the connection, so every message arrives once and nothing else is
/// repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_moves_between_sync_workers() {
    let split = Split::start(2).await.expect("split deployment starts");
    let alice = RawClient::register(&split.url, "alice").await.unwrap();
    let quiet = create_room(&alice, json!({ "name": "Quiet" })).await;
    let busy = create_room(&alice, json!({ "name": "Busy" })).await;
    let body = json!({ "conn_id": "room-list", "lists": { "all": { "ranges": [[0, 9]], "timeline_limit": 3 } } });
    let first = ok(&alice, None, 0, &body).await;
    let mut expected = vec![quiet.clone(), busy.clone()];
    expected.sort();
    assert_eq!(room_ids(&first), expected, "{first}");
    let mut p = pos(&first);
    let mut received = Vec::new();
    for i in 0..6 {
        send(&alice, &busy, &format!("m{i}")).await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while received.len() <= i {
            assert!(Instant::now() < deadline, "m{i} never arrived; got {received:?}\n{}", split.logs());
            let resp = ok(&alice, Some(&p), 5_000, &body).await;
            assert!(resp["rooms"].get(quiet.as_str()).is_none(), "the quiet room is not repeated: {resp}");
            if let Some(r) = resp["rooms"].get(busy.as_str()) {
                assert!(r.get("initial").is_none(), "{r}");
                received.extend(bodies(r));
            }
            p = pos(&resp);
        }
    }
    let want: Vec<String> = (0..6).map(|i| format!("m{i}")).collect();
    assert_eq!(received, want, "each message once, in order");
    split.stop().await;
}

/// A long-poll woken by events that do not concern its user keeps waiting, and still answers
/// at once for the first one that does: a message in a room they are in, or an invite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_ignores_other_rooms_and_answers_its_own() {
    let server = OneProcess::start().await.expect("server starts");
    let alice = RawClient::register(&server.url, "alice").await.unwrap();
    let bob = RawClient::register(&server.url, "bob").await.unwrap();
    let mine = create_room(&alice, json!({"preset": "public_chat"})).await;
    let elsewhere = create_room(&bob, json!({"preset": "public_chat"})).await;
    let noise = create_room(&bob, json!({"preset": "public_chat"})).await;
    join(&bob, &mine).await;
    let body = json!({ "lists": {"all": {"ranges": [[0, 20]], "timeline_limit": 5}} });
    let first = ok(&alice, None, 0, &body).await;
    let mut at = pos(&first);

    // Each step: a long-poll starts, bob first sends where alice is not, then does the thing
    // that concerns her; the answer must carry it, well before the long-poll's timeout.
    for step in ["message", "invite"] {
        let poll = {
            let alice = &alice;
            let body = body.clone();
            let at = at.clone();
            async move {
                let started = Instant::now();
                let r = ok(alice, Some(&at), 20_000, &body).await;
                (r, started.elapsed())
            }
        };
        let act = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            for i in 0..3 {
                send(&bob, &noise, &format!("noise {step} {i}")).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            match step {
                "message" => {
                    send(&bob, &mine, "for alice").await;
                }
                _ => {
                    let r = bob
                        .call(
                            "POST",
                            &format!("/_matrix/client/v3/rooms/{elsewhere}/invite"),
                            Some(&json!({"user_id": alice.user_id})),
                        )
                        .await
                        .unwrap();
                    assert_eq!(r.status, 200, "{r:?}");
                }
            }
        };
        let ((r, took), ()) = tokio::join!(poll, act);
        assert!(took < Duration::from_secs(10), "{step}: answered after {took:?}: {r}");
        let expected = if step == "message" { &mine } else { &elsewhere };
        assert!(r["rooms"][expected.as_str()].is_object(), "{step}: {r}");
        if step == "message" {
            assert_eq!(bodies(&r["rooms"][mine.as_str()]), vec!["for alice"], "{r}");
        }
        at = pos(&r);
    }
}
