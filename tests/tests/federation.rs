//! Two Ganglion servers federating on loopback (TLS listeners with self-signed certificates):
//! server keys, signed requests, and media fetched from the other server and cached.

use ganglion_e2e::{OneProcess, RawClient, errcode, message_bodies, urlencode};
use serde_json::Value;

#[path = "support/images.rs"]
mod images;
use images::png;

/// The other server's federation API, as a stranger without a signing key would call it.
fn insecure() -> reqwest::Client {
    reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap()
}

/// `GET url` as a stranger, the body as JSON.
async fn get_json(url: &str) -> Value {
    insecure().get(url).send().await.unwrap().json().await.unwrap()
}

async fn send_text(c: &RawClient, room_id: &str, txn: &str, body: &str) {
    let path = format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/{txn}");
    let r = c.call("PUT", &path, Some(&serde_json::json!({ "msgtype": "m.text", "body": body }))).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
}

async fn invite(c: &RawClient, room_id: &str, user: &str) -> ganglion_e2e::Reply {
    let path = format!("/_matrix/client/v3/rooms/{room_id}/invite");
    c.call("POST", &path, Some(&serde_json::json!({ "user_id": user }))).await.unwrap()
}

/// `user`'s membership of the room as `c`'s server has it, once it is `want` (or after 10 s).
async fn membership_becomes(c: &RawClient, room_id: &str, user: &str, want: &str) -> Value {
    let path = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{}", urlencode(user));
    let mut got = Value::Null;
    for _ in 0..100 {
        got = c.call("GET", &path, None).await.unwrap().body["membership"].clone();
        if got == want {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    got
}

async fn get(http: &reqwest::Client, url: &str, token: &str) -> reqwest::Response {
    http.get(url).bearer_auth(token).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_is_fetched_over_federation_with_signed_requests_and_cached() {
    let a = OneProcess::start_federating().await.expect("server A");
    let b = OneProcess::start_federating().await.expect("server B");

    // Each server publishes its key, signed by itself.
    let keys = get_json(&format!("https://{}/_matrix/key/v2/server", a.server_name)).await;
    assert_eq!(keys["server_name"], a.server_name.as_str(), "{keys}");
    let key_id = keys["verify_keys"].as_object().unwrap().keys().next().unwrap().clone();
    assert!(keys["signatures"][&a.server_name][&key_id].is_string(), "{keys}");

    // Alice uploads on A.
    let alice = RawClient::register(&a.url, "alice").await.unwrap();
    let image = png(256, 128);
    let http = reqwest::Client::new();
    let up: Value = http
        .post(format!("{}/_matrix/media/v3/upload?filename=cat%20photo.png", a.url))
        .bearer_auth(&alice.token)
        .header("content-type", "image/png")
        .body(image.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mxc = up["content_uri"].as_str().unwrap().strip_prefix("mxc://").unwrap().to_owned();
    let media_id = mxc.rsplit('/').next().unwrap().to_owned();
    assert!(mxc.starts_with(&a.server_name), "{mxc}");

    // A refuses federation requests that are not signed, or signed badly.
    let fed_url = format!("https://{}/_matrix/federation/v1/media/download/{media_id}", a.server_name);
    let (status, code) = errcode(insecure().get(&fed_url).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "M_UNAUTHORIZED"));
    let forged = format!(
        "X-Matrix origin=\"{}\",destination=\"{}\",key=\"{key_id}\",sig=\"AAAA\"",
        b.server_name, a.server_name
    );
    let (status, code) = errcode(insecure().get(&fed_url).header("authorization", forged).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "M_UNAUTHORIZED"));

    // Bob on B asks for it: B fetches it from A with a signed request (A checks it with B's key).
    let bob = RawClient::register(&b.url, "bob").await.unwrap();
    let resp = get(&http, &format!("{}/_matrix/client/v1/media/download/{mxc}", b.url), &bob.token).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "image/png");
    let disposition = resp.headers()["content-disposition"].to_str().unwrap().to_owned();
    assert!(disposition.contains("cat photo.png"), "the file name travels: {disposition}");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), image);
    let thumb =
        get(&http, &format!("{}/_matrix/client/v1/media/thumbnail/{mxc}?width=32&height=32", b.url), &bob.token).await;
    assert_eq!(thumb.status(), 200);
    assert!(thumb.headers()["content-type"].to_str().unwrap().starts_with("image/"));

    // Media A does not have is 404 on B too.
    let missing = format!("{}/_matrix/client/v1/media/download/{}/nosuchmedia", b.url, a.server_name);
    let (status, code) = errcode(get(&http, &missing, &bob.token).await).await;
    assert_eq!((status, code.as_str()), (404, "M_NOT_FOUND"));

    // With A gone, B still serves its cached copy.
    let mut a = a;
    a.proc.kill().await;
    let resp = get(&http, &format!("{}/_matrix/client/v1/media/download/{mxc}", b.url), &bob.token).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().to_vec(), image, "served from B's cache");
}

/// The key notary, the version, and profiles asked across servers: B signs its query with
/// its key, A fetches that key from B (over TLS from the test CA, loopback allow-listed) to
/// check it. A stranger asking A as a notary gets B's keys signed by B and by A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_vouched_for_and_profiles_are_asked_of_the_users_server() {
    let a = OneProcess::start_federating().await.expect("server A");
    let b = OneProcess::start_federating().await.expect("server B");
    let fed = |s: &OneProcess, path: &str| format!("https://{}{path}", s.server_name);

    let version = get_json(&fed(&a, "/_matrix/federation/v1/version")).await;
    assert_eq!(version["server"]["name"], "Ganglion", "{version}");

    // A as a notary for B.
    let body = serde_json::json!({ "server_keys": { b.server_name.as_str(): {} } });
    let resp = insecure().post(fed(&a, "/_matrix/key/v2/query")).json(&body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().await.unwrap();
    let docs = answer["server_keys"].as_array().expect("server_keys");
    assert_eq!(docs.len(), 1, "{answer}");
    assert_eq!(docs[0]["server_name"], b.server_name.as_str());
    let signers: Vec<&String> = docs[0]["signatures"].as_object().unwrap().keys().collect();
    assert!(signers.contains(&&b.server_name) && signers.contains(&&a.server_name), "{answer}");
    // The same through GET, from A's store now.
    let again = get_json(&fed(&a, &format!("/_matrix/key/v2/query/{}", b.server_name))).await;
    assert_eq!(again["server_keys"][0]["verify_keys"], docs[0]["verify_keys"], "{again}");
    // A server nobody answers for: no keys, no error.
    let nobody = get_json(&fed(&a, "/_matrix/key/v2/query/127.0.0.1:9")).await;
    assert_eq!(nobody["server_keys"], serde_json::json!([]), "{nobody}");

    // Profiles: Bob on B reads Alice's on A.
    let alice = RawClient::register(&a.url, "alice").await.unwrap();
    let alice_id = format!("@alice:{}", a.server_name);
    let r = alice
        .call(
            "PUT",
            &format!("/_matrix/client/v3/profile/{alice_id}/displayname"),
            Some(&serde_json::json!({ "displayname": "Alice of A" })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let bob = RawClient::register(&b.url, "bob").await.unwrap();
    let r = bob.call("GET", &format!("/_matrix/client/v3/profile/{alice_id}"), None).await.unwrap();
    assert_eq!((r.status, r.body["displayname"].as_str()), (200, Some("Alice of A")), "{r:?}");
    let r = bob.call("GET", &format!("/_matrix/client/v3/profile/{alice_id}/displayname"), None).await.unwrap();
    assert_eq!(r.body["displayname"], "Alice of A", "{r:?}");
    let r = bob.call("GET", &format!("/_matrix/client/v3/profile/@nobody:{}", a.server_name), None).await.unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{r:?}");

    // Unsigned queries are refused.
    let url = fed(&a, &format!("/_matrix/federation/v1/query/profile?user_id=%40alice%3A{}", a.server_name));
    let (status, code) = errcode(insecure().get(&url).send().await.unwrap()).await;
    assert_eq!((status, code.as_str()), (401, "M_UNAUTHORIZED"));

    // A server that is gone: a clear 502, not a hang.
    let mut a = a;
    a.proc.kill().await;
    let r = bob.call("GET", &format!("/_matrix/client/v3/profile/@carol:{}", a.server_name), None).await.unwrap();
    assert_eq!(r.status, 502, "{r:?}");
}

/// Rooms across servers: Bob on B joins Alice's room on A by its alias (B asks A's directory,
/// then `make_join` / `send_join`), both see each other's messages in `/sync` (A's federation
/// sender to B's reader and back), and B can read the room's state and events over federation
/// only once it is in the room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_joins_a_room_on_another_server_and_messages_flow_both_ways() {
    let a = OneProcess::start_federating().await.expect("server A");
    let b = OneProcess::start_federating().await.expect("server B");
    let alice = RawClient::register(&a.url, "alice").await.unwrap();
    let bob = RawClient::register(&b.url, "bob").await.unwrap();

    let r = alice
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&serde_json::json!({ "preset": "public_chat", "room_alias_name": "lobby", "name": "Lobby" })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let room_id = r.body["room_id"].as_str().unwrap().to_owned();
    send_text(&alice, &room_id, "t1", "before bob").await;
    let alice_since = alice.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();

    // A stranger's room: not joinable through a server that is not in it.
    let alias = format!("#lobby:{}", a.server_name);
    let nobody = format!("#nobody:{}", a.server_name);
    let r = bob
        .call("POST", &format!("/_matrix/client/v3/join/{}", urlencode(&nobody)), Some(&serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (404, Some("M_NOT_FOUND")), "{r:?}");

    let r = bob
        .call("POST", &format!("/_matrix/client/v3/join/{}", urlencode(&alias)), Some(&serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body["room_id"], room_id.as_str());

    // Bob's server has the room: its name, both members, and Bob joined.
    let sync = bob.sync(None, 0).await.unwrap();
    let joined = &sync["rooms"]["join"][&room_id];
    assert!(joined.is_object(), "bob's sync has the room: {sync}");
    let r = bob.call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name/"), None).await.unwrap();
    assert_eq!((r.status, r.body["name"].as_str()), (200, Some("Lobby")), "{r:?}");
    let r = bob.call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/joined_members"), None).await.unwrap();
    let members = r.body["joined"].as_object().map(|m| m.len());
    assert_eq!(members, Some(2), "{r:?}");
    let bob_since = sync["next_batch"].as_str().unwrap().to_owned();

    // Alice sees Bob arrive.
    let bob_id = bob.user_id.clone();
    alice
        .sync_until(&alice_since, |s| {
            s["rooms"]["join"][&room_id]["timeline"]["events"].as_array().is_some_and(|evs| {
                evs.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == bob_id.as_str())
            })
        })
        .await
        .expect("alice sees bob's join");

    // Messages both ways.
    send_text(&bob, &room_id, "b1", "hello from B").await;
    alice
        .sync_until(&alice_since, |s| message_bodies(s, &room_id).contains(&"hello from B".to_owned()))
        .await
        .expect("alice gets bob's message");
    send_text(&alice, &room_id, "t2", "hello from A").await;
    bob.sync_until(&bob_since, |s| message_bodies(s, &room_id).contains(&"hello from A".to_owned()))
        .await
        .expect("bob gets alice's message");

    // A state change on A reaches B's current state.
    let r = alice
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic/"),
            Some(&serde_json::json!({ "topic": "federated" })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let mut topic = None;
    for _ in 0..100 {
        let r =
            bob.call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.topic/"), None).await.unwrap();
        if r.status == 200 {
            topic = r.body["topic"].as_str().map(str::to_owned);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(topic.as_deref(), Some("federated"));
}

/// Invites across servers: the invitee's server countersigns, the invitee sees the invite with
/// the room's stripped state, and joins through the inviter's server; a second invitee rejects
/// theirs through the inviter's server, which records the leave. Inviting a user the other
/// server does not have is refused by that server.
#[tokio::test]
async fn invites_to_users_of_another_server_are_accepted_or_rejected() {
    let a = OneProcess::start_federating().await.expect("server A");
    let b = OneProcess::start_federating().await.expect("server B");
    let alice = RawClient::register(&a.url, "alice").await.unwrap();
    let bob = RawClient::register(&b.url, "bob").await.unwrap();
    let carol = RawClient::register(&b.url, "carol").await.unwrap();
    let bob_since = bob.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();
    let carol_since = carol.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();
    let alice_since = alice.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();

    // A private room, Bob invited at creation, Carol after.
    let r = alice
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&serde_json::json!({ "preset": "private_chat", "name": "Secret", "invite": [bob.user_id] })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let room_id = r.body["room_id"].as_str().unwrap().to_owned();
    let r = invite(&alice, &room_id, &carol.user_id).await;
    assert_eq!(r.status, 200, "{r:?}");
    let nobody = format!("@nobody:{}", b.server_name);
    let r = invite(&alice, &room_id, &nobody).await;
    assert_eq!(r.status, 404, "inviting a user the other server lacks: {r:?}");
    let r = alice
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{}", urlencode(&bob.user_id)),
            None,
        )
        .await
        .unwrap();
    assert_eq!(r.body["membership"], "invite", "the invite is in the room on A: {r:?}");

    // Bob sees the invite, with the room's name from the stripped state.
    let sync =
        bob.sync_until(&bob_since, |s| s["rooms"]["invite"][&room_id].is_object()).await.expect("bob sees the invite");
    let stripped = sync["rooms"]["invite"][&room_id]["invite_state"]["events"].as_array().cloned().unwrap_or_default();
    assert!(
        stripped.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Secret"),
        "stripped state has the name: {stripped:?}"
    );
    assert!(
        stripped.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob.user_id.as_str()
            && e["content"]["membership"] == "invite"),
        "stripped state has bob's invite: {stripped:?}"
    );

    // Carol rejects hers (B is in the room only through the invites, so through A): A records her leave, and her sync moves the room to leave.
    carol.sync_until(&carol_since, |s| s["rooms"]["invite"][&room_id].is_object()).await.expect("carol's invite");
    let r = carol
        .call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/leave"), Some(&serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let on_a = membership_becomes(&alice, &room_id, &carol.user_id, "leave").await;
    assert_eq!(on_a, "leave", "A has carol's rejection");
    carol
        .sync_until(&carol_since, |s| {
            s["rooms"]["leave"][&room_id].is_object() && s["rooms"]["invite"][&room_id].is_null()
        })
        .await
        .expect("carol's sync shows the room left");
    let via = format!("?via={}", urlencode(&a.server_name));
    let r = carol
        .call("POST", &format!("/_matrix/client/v3/join/{}{via}", urlencode(&room_id)), Some(&serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "no invite any more: {r:?}");

    // Bob joins with no via: the inviter's server lets him in.
    let r = bob
        .call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/join"), Some(&serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = bob.call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.name/"), None).await.unwrap();
    assert_eq!((r.status, r.body["name"].as_str()), (200, Some("Secret")), "{r:?}");
    send_text(&bob, &room_id, "b1", "thanks for the invite").await;
    alice
        .sync_until(&alice_since, |s| message_bodies(s, &room_id).contains(&"thanks for the invite".to_owned()))
        .await
        .expect("alice gets bob's message");
}

/// A room's server ACL shuts a server out: its PDUs are refused and it cannot join again; a
/// server may not send an ACL that denies itself. (B is `localhost:PORT`, so an ACL can tell it
/// from A, `127.0.0.1:PORT`.)
#[tokio::test]
async fn a_server_acl_shuts_a_server_out_of_a_room() {
    let a = OneProcess::start_federating().await.expect("server A");
    let b = OneProcess::start_federating_as("localhost").await.expect("server B");
    let alice = RawClient::register(&a.url, "alice").await.unwrap();
    let bob = RawClient::register(&b.url, "bob").await.unwrap();
    let r = alice
        .call("POST", "/_matrix/client/v3/createRoom", Some(&serde_json::json!({ "preset": "public_chat" })))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let room_id = r.body["room_id"].as_str().unwrap().to_owned();
    let via = format!("?via={}", urlencode(&a.server_name));
    let join = format!("/_matrix/client/v3/join/{}{via}", urlencode(&room_id));
    let r = bob.call("POST", &join, Some(&serde_json::json!({}))).await.unwrap();
    assert_eq!(r.status, 200, "B joins before the ACL: {r:?}");
    let alice_since = alice.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();
    send_text(&bob, &room_id, "b1", "before the acl").await;
    alice
        .sync_until(&alice_since, |s| message_bodies(s, &room_id).contains(&"before the acl".to_owned()))
        .await
        .expect("alice gets bob's message");

    let acl = format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.server_acl/");
    let r = alice
        .call("PUT", &acl, Some(&serde_json::json!({ "allow": ["*"], "deny": [], "allow_ip_literals": false })))
        .await
        .unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (400, Some("M_UNKNOWN")), "denying itself: {r:?}");
    let r = alice
        .call(
            "PUT",
            &acl,
            Some(&serde_json::json!({ "allow": ["*"], "deny": ["localhost"], "allow_ip_literals": true })),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");

    // B's events no longer get in, and B cannot join again.
    send_text(&bob, &room_id, "b2", "after the acl").await;
    // (B sends within milliseconds; three seconds of A's sync without it is ample.)
    let mut since = alice_since.clone();
    for _ in 0..3 {
        let s = alice.sync(Some(&since), 1_000).await.unwrap();
        assert!(
            !message_bodies(&s, &room_id).contains(&"after the acl".to_owned()),
            "A took a PDU from a server its ACL denies"
        );
        since = s["next_batch"].as_str().unwrap().to_owned();
    }
    let r = bob
        .call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/leave"), Some(&serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = bob.call("POST", &join, Some(&serde_json::json!({}))).await.unwrap();
    assert_eq!((r.status, r.body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "rejoining: {r:?}");
    assert!(r.body["error"].as_str().is_some_and(|e| e.contains("ACL")), "{r:?}");
}

/// Knocking across servers: the knock reaches the host (B's sync shows it with the room's
/// stripped state), the host's user lets the knocker in with an invite, and the knocker joins;
/// a second knock is withdrawn, which the host hears.
#[tokio::test]
async fn knocks_on_a_room_of_another_server_are_answered_or_withdrawn() {
    let a = OneProcess::start_federating().await.expect("server A");
    let b = OneProcess::start_federating().await.expect("server B");
    let alice = RawClient::register(&a.url, "alice").await.unwrap();
    let bob = RawClient::register(&b.url, "bob").await.unwrap();
    let carol = RawClient::register(&b.url, "carol").await.unwrap();
    let bob_since = bob.sync(None, 0).await.unwrap()["next_batch"].as_str().unwrap().to_owned();
    let body = serde_json::json!({
        "preset": "private_chat",
        "name": "Knock knock",
        "initial_state": [{ "type": "m.room.join_rules", "state_key": "", "content": { "join_rule": "knock" } }],
    });
    let r = alice.call("POST", "/_matrix/client/v3/createRoom", Some(&body)).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let room_id = r.body["room_id"].as_str().unwrap().to_owned();
    let knock = format!("/_matrix/client/v3/knock/{}?via={}", urlencode(&room_id), urlencode(&a.server_name));
    let member = |u: &str| format!("/_matrix/client/v3/rooms/{room_id}/state/m.room.member/{}", urlencode(u));

    let r = bob.call("POST", &knock, Some(&serde_json::json!({ "reason": "let me in" }))).await.unwrap();
    assert_eq!((r.status, r.body["room_id"].as_str()), (200, Some(room_id.as_str())), "{r:?}");
    let r = alice.call("GET", &member(&bob.user_id), None).await.unwrap();
    assert_eq!((r.body["membership"].as_str(), r.body["reason"].as_str()), (Some("knock"), Some("let me in")), "{r:?}");
    let sync = bob.sync_until(&bob_since, |s| s["rooms"]["knock"][&room_id].is_object()).await.expect("bob's knock");
    let stripped = sync["rooms"]["knock"][&room_id]["knock_state"]["events"].as_array().cloned().unwrap_or_default();
    assert!(
        stripped.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Knock knock"),
        "knock_state has the room's name: {stripped:?}"
    );

    // Carol knocks and withdraws while B is in the room only through knocks: the withdrawal
    // goes to the host.
    let r = carol.call("POST", &knock, Some(&serde_json::json!({}))).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    let r = carol
        .call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/leave"), Some(&serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(membership_becomes(&alice, &room_id, &carol.user_id, "leave").await, "leave", "A hears carol withdraw");

    // Alice answers with an invite; Bob joins.
    let r = invite(&alice, &room_id, &bob.user_id).await;
    assert_eq!(r.status, 200, "{r:?}");
    bob.sync_until(&bob_since, |s| s["rooms"]["invite"][&room_id].is_object()).await.expect("bob's invite");
    let r = bob
        .call("POST", &format!("/_matrix/client/v3/rooms/{room_id}/join"), Some(&serde_json::json!({})))
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(membership_becomes(&alice, &room_id, &bob.user_id, "join").await, "join", "A has bob's join");
}
