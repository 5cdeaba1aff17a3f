//! Ganglion and a real Synapse federating on loopback (TLS from the test CA on both sides):
//! each fetches the other's keys to check signed requests, and profiles are asked across.

use ganglion_e2e::{OneProcess, RawClient, Synapse, message_bodies, urlencode};
use serde_json::{Value, json};

async fn set_name(c: &RawClient, name: &str) {
    let r = c
        .call(
            "PUT",
            &format!("/_matrix/client/v3/profile/{}/displayname", c.user_id),
            Some(&json!({ "displayname": name })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_profiles_travel_between_ganglion_and_synapse() {
    let Some((synapse, synapse_name)) = Synapse::start_federating().await.expect("Synapse starts") else {
        eprintln!("TEST_SYNAPSE_PYTHON is not set (tests/run.sh sets it): skipping the Synapse federation test");
        return;
    };
    let ganglion = OneProcess::start_federating().await.expect("Ganglion starts");

    // Ganglion vouches for Synapse's keys, fetched over TLS from Synapse.
    let http = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
    let answer: Value = http
        .post(format!("https://{}/_matrix/key/v2/query", ganglion.server_name))
        .json(&json!({ "server_keys": { synapse_name.as_str(): {} } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let doc = &answer["server_keys"][0];
    assert_eq!(doc["server_name"], synapse_name.as_str(), "{answer}\n{}", synapse.log());
    assert!(doc["signatures"][&synapse_name].is_object() && doc["signatures"][&ganglion.server_name].is_object());

    let alice = RawClient::register(&ganglion.url, "alice").await.unwrap();
    set_name(&alice, "Alice of Ganglion").await;
    let sam = RawClient::register(&synapse.url, "sam").await.unwrap();
    set_name(&sam, "Sam of Synapse").await;

    // Synapse asks Ganglion (Ganglion checks Synapse's signature with Synapse's key).
    let r = sam.call("GET", &format!("/_matrix/client/v3/profile/{}", alice.user_id), None).await.unwrap();
    assert_eq!(r.body["displayname"], "Alice of Ganglion", "{r:?}\n{}", synapse.log());
    let r =
        sam.call("GET", &format!("/_matrix/client/v3/profile/@nobody:{}", ganglion.server_name), None).await.unwrap();
    assert_eq!(r.status, 404, "{r:?}");

    // Ganglion asks Synapse (Synapse checks Ganglion's signature with Ganglion's key).
    let r = alice.call("GET", &format!("/_matrix/client/v3/profile/{}", sam.user_id), None).await.unwrap();
    assert_eq!(r.body["displayname"], "Sam of Synapse", "{r:?}\n{}", synapse.log());
    let r = alice.call("GET", &format!("/_matrix/client/v3/profile/@nobody:{synapse_name}"), None).await.unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{r:?}");
}

async fn create_public_room(c: &RawClient, alias: &str, log: impl Fn() -> String) -> String {
    let r = c
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&json!({ "preset": "public_chat", "room_alias_name": alias, "name": format!("Room {alias}") })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}\n{}", log());
    r.body["room_id"].as_str().unwrap().to_owned()
}

async fn say(c: &RawClient, room_id: &str, txn: &str, body: &str) {
    let r = c
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}"),
            Some(&json!({ "msgtype": "m.text", "body": body })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}

/// Rooms between Ganglion and Synapse, both ways: a Ganglion user joins a Synapse room by its
/// alias and a Synapse user joins a Ganglion room by its alias (each server's `make_join` and
/// `send_join` as the other calls them), and messages flow in both directions through each
/// server's transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_are_joined_and_messages_flow_between_ganglion_and_synapse() {
    let Some((synapse, synapse_name)) = Synapse::start_federating().await.expect("Synapse starts") else {
        eprintln!("TEST_SYNAPSE_PYTHON is not set (tests/run.sh sets it): skipping the Synapse federation test");
        return;
    };
    let ganglion = OneProcess::start_federating().await.expect("Ganglion starts");
    let alice = RawClient::register(&ganglion.url, "alice").await.unwrap();
    let sam = RawClient::register(&synapse.url, "sam").await.unwrap();
    let logs = || format!("--- synapse ---\n{}\n--- ganglion ---\n{}", synapse.log(), ganglion.proc.log());

    // Alice joins Sam's room on Synapse.
    let on_synapse = create_public_room(&sam, "synlobby", logs).await;
    say(&sam, &on_synapse, "s1", "welcome from synapse").await;
    let alias = format!("#synlobby:{synapse_name}");
    let r =
        alice.call("POST", &format!("/_matrix/client/v3/join/{}", urlencode(&alias)), Some(&json!({}))).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}\n{}", logs());
    assert_eq!(r.body["room_id"], on_synapse.as_str());
    let alice_since = alice.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();
    let sam_since = sam.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();
    say(&sam, &on_synapse, "s2", "synapse to ganglion").await;
    alice
        .sync_until(&alice_since, |s| message_bodies(s, &on_synapse).contains(&"synapse to ganglion".to_owned()))
        .await
        .unwrap_or_else(|e| panic!("alice gets sam's message: {e}\n{}", logs()));
    say(&alice, &on_synapse, "a1", "ganglion to synapse").await;
    sam.sync_until(&sam_since, |s| message_bodies(s, &on_synapse).contains(&"ganglion to synapse".to_owned()))
        .await
        .unwrap_or_else(|e| panic!("sam gets alice's message: {e}\n{}", logs()));

    // Sam joins Alice's room on Ganglion.
    let on_ganglion = create_public_room(&alice, "ganlobby", logs).await;
    say(&alice, &on_ganglion, "a2", "welcome from ganglion").await;
    let alias = format!("#ganlobby:{}", ganglion.server_name);
    let r =
        sam.call("POST", &format!("/_matrix/client/v3/join/{}", urlencode(&alias)), Some(&json!({}))).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}\n{}", logs());
    assert_eq!(r.body["room_id"], on_ganglion.as_str());
    let r = sam.call("GET", &format!("/_matrix/client/v3/rooms/{on_ganglion}/state/m.room.name/"), None).await.unwrap();
    assert_eq!(r.body["name"], "Room ganlobby", "{r:?}");
    let alice_since = alice.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();
    let sam_since = sam.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();
    say(&sam, &on_ganglion, "s3", "sam was here").await;
    alice
        .sync_until(&alice_since, |s| message_bodies(s, &on_ganglion).contains(&"sam was here".to_owned()))
        .await
        .unwrap_or_else(|e| panic!("alice gets sam's message in her room: {e}\n{}", logs()));
    say(&alice, &on_ganglion, "a3", "alice answers").await;
    sam.sync_until(&sam_since, |s| message_bodies(s, &on_ganglion).contains(&"alice answers".to_owned()))
        .await
        .unwrap_or_else(|e| panic!("sam gets alice's message in her room: {e}\n{}", logs()));
}

async fn create_private_room(c: &RawClient, invite: &[&str], log: impl Fn() -> String) -> String {
    let r = c
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&json!({ "preset": "private_chat", "name": "Private", "invite": invite })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}\n{}", log());
    r.body["room_id"].as_str().unwrap().to_owned()
}

async fn membership_of(c: &RawClient, room_id: &str, user: &str) -> Value {
    let path = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{}", urlencode(user));
    c.call("GET", &path, None).await.unwrap().body["membership"].clone()
}

/// Invites both ways with a real Synapse: Synapse countersigns Ganglion's invite and its user
/// joins; Ganglion countersigns Synapse's invites, shows them with the room's stripped state,
/// and its users accept one (joining through Synapse) and reject another (`make_leave` and
/// `send_leave` against Synapse).
#[tokio::test]
async fn invites_travel_between_ganglion_and_synapse() {
    let Some((synapse, _)) = Synapse::start_federating().await.expect("Synapse starts") else {
        eprintln!("TEST_SYNAPSE_PYTHON is not set (tests/run.sh sets it): skipping the Synapse federation test");
        return;
    };
    let ganglion = OneProcess::start_federating().await.expect("Ganglion starts");
    let alice = RawClient::register(&ganglion.url, "alice").await.unwrap();
    let bob = RawClient::register(&ganglion.url, "bob").await.unwrap();
    let sam = RawClient::register(&synapse.url, "sam").await.unwrap();
    let logs = || format!("--- synapse ---\n{}\n--- ganglion ---\n{}", synapse.log(), ganglion.proc.log());
    let sam_since = sam.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();
    let alice_since = alice.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();
    let bob_since = bob.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();

    // Ganglion invites Sam; Synapse countersigns, Sam joins and talks.
    let on_ganglion = create_private_room(&alice, &[sam.user_id.as_str()], logs).await;
    assert_eq!(membership_of(&alice, &on_ganglion, &sam.user_id).await, "invite", "{}", logs());
    sam.sync_until(&sam_since, |s| s["rooms"]["invite"][&on_ganglion].is_object())
        .await
        .unwrap_or_else(|e| panic!("sam sees the invite: {e}\n{}", logs()));
    let r = sam.call("POST", &format!("/_matrix/client/v3/rooms/{on_ganglion}/join"), Some(&json!({}))).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}\n{}", logs());
    say(&sam, &on_ganglion, "s1", "sam accepted").await;
    alice
        .sync_until(&alice_since, |s| message_bodies(s, &on_ganglion).contains(&"sam accepted".to_owned()))
        .await
        .unwrap_or_else(|e| panic!("alice gets sam's message: {e}\n{}", logs()));

    // Synapse invites Alice and Bob: Ganglion countersigns and shows both.
    let on_synapse = create_private_room(&sam, &[alice.user_id.as_str(), bob.user_id.as_str()], logs).await;
    let sync = alice
        .sync_until(&alice_since, |s| s["rooms"]["invite"][&on_synapse].is_object())
        .await
        .unwrap_or_else(|e| panic!("alice sees sam's invite: {e}\n{}", logs()));
    let stripped =
        sync["rooms"]["invite"][&on_synapse]["invite_state"]["events"].as_array().cloned().unwrap_or_default();
    assert!(
        stripped.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Private"),
        "stripped state from Synapse has the name: {stripped:?}"
    );
    bob.sync_until(&bob_since, |s| s["rooms"]["invite"][&on_synapse].is_object())
        .await
        .unwrap_or_else(|e| panic!("bob sees sam's invite: {e}\n{}", logs()));

    // Bob rejects through Synapse, which records the leave.
    let r = bob.call("POST", &format!("/_matrix/client/v3/rooms/{on_synapse}/leave"), Some(&json!({}))).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}\n{}", logs());
    assert_eq!(membership_of(&sam, &on_synapse, &bob.user_id).await, "leave", "{}", logs());

    // Alice accepts, joining through the inviter's server, and the room works both ways.
    let r = alice.call("POST", &format!("/_matrix/client/v3/rooms/{on_synapse}/join"), Some(&json!({}))).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}\n{}", logs());
    let sam_since = sam.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();
    say(&alice, &on_synapse, "a1", "alice accepted").await;
    sam.sync_until(&sam_since, |s| message_bodies(s, &on_synapse).contains(&"alice accepted".to_owned()))
        .await
        .unwrap_or_else(|e| panic!("sam gets alice's message: {e}\n{}", logs()));
    let alice_since = alice.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();
    say(&sam, &on_synapse, "s2", "welcome alice").await;
    alice
        .sync_until(&alice_since, |s| message_bodies(s, &on_synapse).contains(&"welcome alice".to_owned()))
        .await
        .unwrap_or_else(|e| panic!("alice gets sam's message: {e}\n{}", logs()));
}
