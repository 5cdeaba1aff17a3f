//! The split deployment behind nginx: `main` and two `sync` workers as separate processes on
//! PostgreSQL and Redis, nginx configured by `ganglion routes`. Two users exchange 200 messages, one
//! through matrix-sdk; a sync worker is killed half-way; nothing is lost or duplicated.

use std::time::{Duration, Instant};

use ganglion_e2e::sdk::{sdk_bodies, sdk_register};
use ganglion_e2e::{RawClient, Split, message_bodies};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::UInt;
use matrix_sdk::ruma::api::client::filter::FilterDefinition;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoomRequest, RoomPreset};
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use serde_json::json;

const MESSAGES: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_exchange_200_messages_through_nginx_while_a_sync_worker_dies() {
    let mut split = Split::start(2).await.expect("deployment starts");
    let url = split.url.clone();

    let alice = sdk_register(&url, "alice").await;
    let mut req = CreateRoomRequest::new();
    req.preset = Some(RoomPreset::PublicChat);
    let room = alice.create_room(req).await.expect("createRoom");
    let room_id = room.room_id().to_owned();
    let bob = RawClient::register(&url, "bob").await.expect("bob registers");
    let r = bob.call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/join"), Some(&json!({}))).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    // Both start from a sync that already shows the room, so every message arrives incrementally.
    let initial = bob.sync(None, 0).await.unwrap();
    let mut bob_since = initial["next_batch"].as_str().unwrap().to_owned();
    alice.sync_once(SyncSettings::default()).await.expect("sdk initial sync");

    // Bob syncs continuously (long-polls through nginx) while the messages are sent.
    let collector = {
        let bob = bob.clone();
        let room_id = room_id.to_string();
        tokio::spawn(async move {
            // A timeline limit above the message count: on a loaded machine many messages may
            // land between two syncs, and a `limited` timeline would hide some of them.
            let filter = "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A1000%7D%7D%7D";
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(240);
            while got.len() < MESSAGES && Instant::now() < deadline {
                let path = format!("/_matrix/client/v3/sync?since={bob_since}&timeout=5000&filter={filter}");
                let resp = match bob.call("GET", &path, None).await {
                    Ok(r) if r.status == 200 => r.body,
                    // A request in flight on the dead worker; the next one goes to the other.
                    _ => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                assert_ne!(resp["rooms"]["join"][room_id.as_str()]["timeline"]["limited"], true, "{resp}");
                got.extend(message_bodies(&resp, &room_id));
                bob_since = resp["next_batch"].as_str().unwrap().to_owned();
            }
            got
        })
    };

    // Alice's sdk syncs continuously too, with a timeline limit large enough that no sync is
    // `limited` (a limited timeline would need back-pagination to fill the gap).
    let alice_collector = {
        let alice = alice.clone();
        let room_id = room_id.clone();
        tokio::spawn(async move {
            let mut filter = FilterDefinition::default();
            filter.room.timeline.limit = Some(UInt::from(1000u32));
            let settings = SyncSettings::default().timeout(Duration::from_secs(5)).filter(filter.into());
            let mut got = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(240);
            while got.len() < MESSAGES && Instant::now() < deadline {
                match alice.sync_once(settings.clone()).await {
                    Ok(resp) => got.extend(sdk_bodies(&resp, &room_id)),
                    Err(e) => {
                        // A request in flight on the dead worker; the next one goes to the other.
                        eprintln!("sdk sync error (retrying): {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
            got
        })
    };

    let mut expected = Vec::new();
    for i in 0..MESSAGES / 2 {
        if i == MESSAGES / 4 {
            // Half-way through: one sync worker dies without warning.
            split.syncs[0].kill().await;
        }
        let a = format!("alice {i}");
        room.send(RoomMessageEventContent::text_plain(&a)).await.expect("sdk send");
        expected.push(a);
        let b = format!("bob {i}");
        let r = bob
            .call(
                "PUT",
                &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/m{i}"),
                Some(&json!({"msgtype": "m.text", "body": b})),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{r:?}");
        expected.push(b);
    }

    let bob_got = collector.await.unwrap();
    assert_eq!(bob_got.len(), MESSAGES, "bob got {} of {MESSAGES} messages\n{}", bob_got.len(), split.logs());
    assert_eq!(bob_got, expected, "bob sees every message once, in order");

    let alice_got = alice_collector.await.unwrap();
    assert_eq!(alice_got, expected, "the sdk sees every message once, in order");

    // A write through main's gRPC API, as a worker makes it, carries its request id into main's
    // logs and reaches the sync workers like any other event.
    let since = bob.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();
    let rpc = ganglion_rpc::MainClient::new(&split.rpc_url).unwrap();
    let req = ganglion_rpc::v1::SendEventRequest {
        room_id: room_id.to_string(),
        sender: bob.user_id.clone(),
        device_id: "RPC".into(),
        txn_id: "rpc1".into(),
        event_type: "m.room.message".into(),
        state_key: None,
        content_json: json!({"msgtype": "m.text", "body": "via grpc"}).to_string(),
    };
    let sent = rpc.send_event(req.clone(), "rpc-request-7f3a").await.expect("SendEvent");
    let again = rpc.send_event(req, "rpc-request-7f3a").await.expect("SendEvent retried");
    assert_eq!(sent.event_id, again.event_id, "txn ids make gRPC retries idempotent too");
    let resp = bob.sync(Some(&since), 10_000).await.unwrap();
    assert_eq!(message_bodies(&resp, room_id.as_str()), vec!["via grpc".to_owned()]);
    let mut bad = ganglion_rpc::v1::SendEventRequest {
        room_id: room_id.to_string(),
        sender: bob.user_id.clone(),
        ..Default::default()
    };
    bad.content_json = "not json".into();
    assert!(rpc.send_event(bad, "").await.is_err(), "bad content is refused");

    // A request id set at the proxy edge is logged by the process that served it.
    let http = reqwest::Client::new();
    let resp = http
        .get(format!("{url}/_matrix/client/v3/joined_rooms"))
        .bearer_auth(&bob.token)
        .header("x-request-id", "edge-request-91c2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "edge-request-91c2");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(split.main.log().contains("edge-request-91c2") && split.main.log().contains("rpc-request-7f3a")) {
        assert!(Instant::now() < deadline, "request ids missing from main's log:\n{}", split.main.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Account data travels on its own stream: written on main, seen by a sync worker.
    let since = bob.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();
    let r = bob
        .call("PUT", "/_matrix/client/v3/user/@bob:localhost/account_data/org.example.split", Some(&json!({"n": 1})))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let resp = bob.sync(Some(&since), 10_000).await.unwrap();
    let events = resp["account_data"]["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["type"] == "org.example.split" && e["content"]["n"] == 1), "{resp}");
    split.stop().await;
}
