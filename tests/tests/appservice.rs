//! Application services, black-box: a recording application service registered through a
//! Synapse-style YAML file, driving `ganglion serve` through the Client-Server API as its users
//! and receiving transactions (events and ephemeral events), across an outage.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use ganglion_e2e::appservice::{AS_TOKEN, RecordingAppservice};
use ganglion_e2e::{OneProcess, RawClient};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(20);

fn as_client(url: &str) -> RawClient {
    let mut c = RawClient::new(url);
    c.token = AS_TOKEN.to_owned();
    c
}

async fn ok(c: &RawClient, method: &str, path: &str, body: Value) -> Result<Value> {
    let r = c.call(method, path, Some(&body)).await?;
    anyhow::ensure!(r.status == 200, "{method} {path}: {r:?}");
    Ok(r.body)
}

/// A recording bridge and a one-process server that has it registered (the directory holds the
/// registration file and must outlive the server).
async fn bridged_server() -> Result<(RecordingAppservice, OneProcess, tempfile::TempDir)> {
    let homeserver = Arc::new(Mutex::new(String::new()));
    let bridge = RecordingAppservice::start(homeserver.clone()).await?;
    let dir = tempfile::tempdir()?;
    let reg = bridge.write_registration(dir.path(), "localhost")?;
    let server = OneProcess::start_with(json!({ "app_service_config_files": [reg] })).await?;
    *homeserver.lock().unwrap() = server.url.clone();
    Ok((bridge, server, dir))
}

fn body_of(ev: &Value) -> &str {
    ev["content"]["body"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_bridge_registers_puppets_and_receives_what_it_should() -> Result<()> {
    let (bridge, server, _dir) = bridged_server().await?;
    let url = server.url.clone();
    let bot = as_client(&url);

    // The sender exists from the start; the service acts as it with its token alone.
    let who = ok(&bot, "GET", "/_matrix/client/v3/account/whoami", json!(null)).await;
    let who = match who {
        Ok(w) => w,
        Err(_) => bot.call("GET", "/_matrix/client/v3/account/whoami", None).await?.body,
    };
    assert_eq!(who["user_id"], "@ircbot:localhost", "{who}");
    assert!(who.get("device_id").is_none(), "{who}");

    // Puppets: registered without UIA, inside the namespace only.
    let puppet = ok(
        &bot,
        "POST",
        "/_matrix/client/v3/register",
        json!({ "type": "m.login.application_service", "username": "irc_alice", "inhibit_login": true }),
    )
    .await?;
    assert_eq!(puppet["user_id"], "@irc_alice:localhost");
    assert!(puppet.get("access_token").is_none());
    let outside = bot
        .call(
            "POST",
            "/_matrix/client/v3/register",
            Some(&json!({ "type": "m.login.application_service", "username": "carol" })),
        )
        .await?;
    assert_eq!((outside.status, outside.body["errcode"].as_str()), (400, Some("M_EXCLUSIVE")), "{outside:?}");
    let mut stranger = RawClient::new(&url);
    stranger.token = "nope".into();
    let bad_token = stranger
        .call(
            "POST",
            "/_matrix/client/v3/register",
            Some(&json!({ "type": "m.login.application_service", "username": "irc_x" })),
        )
        .await?;
    assert_eq!((bad_token.status, bad_token.body["errcode"].as_str()), (401, Some("M_UNKNOWN_TOKEN")));
    let no_token = RawClient::new(&url)
        .call(
            "POST",
            "/_matrix/client/v3/register",
            Some(&json!({ "type": "m.login.application_service", "username": "irc_x" })),
        )
        .await?;
    assert_eq!((no_token.status, no_token.body["errcode"].as_str()), (401, Some("M_MISSING_TOKEN")));

    // Ordinary users may not take the namespace.
    let alice = RawClient::register(&url, "alice").await?;
    let taken =
        RawClient::new(&url).call("GET", "/_matrix/client/v3/register/available?username=irc_bob", None).await?;
    assert_eq!(taken.body["errcode"], "M_EXCLUSIVE", "{taken:?}");
    let login = ok(
        &bot,
        "POST",
        "/_matrix/client/v3/login",
        json!({ "type": "m.login.application_service", "identifier": { "type": "m.id.user", "user": "irc_alice" } }),
    )
    .await?;
    assert_eq!(login["user_id"], "@irc_alice:localhost");
    let flows = RawClient::new(&url).call("GET", "/_matrix/client/v3/login", None).await?.body;
    assert!(flows["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.application_service"), "{flows}");

    // Masquerading: as a puppet, never as someone outside the namespace.
    let as_puppet = bot.call("GET", "/_matrix/client/v3/account/whoami?user_id=%40irc_alice%3Alocalhost", None).await?;
    assert_eq!(as_puppet.body["user_id"], "@irc_alice:localhost", "{as_puppet:?}");
    let as_alice =
        bot.call("GET", &format!("/_matrix/client/v3/account/whoami?user_id={}", "%40alice%3Alocalhost"), None).await?;
    assert_eq!((as_alice.status, as_alice.body["errcode"].as_str()), (403, Some("M_FORBIDDEN")), "{as_alice:?}");
    let unregistered =
        bot.call("GET", "/_matrix/client/v3/account/whoami?user_id=%40irc_nobody%3Alocalhost", None).await?;
    assert_eq!(unregistered.status, 403, "{unregistered:?}");

    // A room with a puppet in it: the service receives the room's events.
    let room = ok(&alice, "POST", "/_matrix/client/v3/createRoom", json!({ "invite": ["@irc_alice:localhost"] }))
        .await?["room_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let q = "user_id=%40irc_alice%3Alocalhost";
    ok(&bot, "POST", &format!("/_matrix/client/v3/rooms/{room}/join?{q}"), json!({})).await?;
    ok(
        &alice,
        "PUT",
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"),
        json!({ "msgtype": "m.text", "body": "hello bridge" }),
    )
    .await?;
    let got = bridge.wait_for(WAIT, |evs| evs.iter().any(|e| body_of(e) == "hello bridge")).await?;
    let hello = got.iter().find(|e| body_of(e) == "hello bridge").unwrap();
    assert_eq!(hello["room_id"], room.as_str());
    assert_eq!(hello["sender"], alice.user_id.as_str());
    assert!(got.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == "@irc_alice:localhost"));
    assert_eq!(bridge.bad_auth(), 0, "the homeserver always presents the hs_token");

    // A puppet sends with its original timestamp (`ts`), past the rate limits.
    let ts = 1_600_000_000_000u64;
    for i in 0..15 {
        ok(
            &bot,
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/p{i}?{q}&ts={ts}"),
            json!({ "msgtype": "m.text", "body": format!("from irc {i}") }),
        )
        .await?;
    }
    let msgs = ok(&alice, "GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"), json!(null)).await;
    let msgs = match msgs {
        Ok(m) => m,
        Err(_) => {
            alice.call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1"), None).await?.body
        }
    };
    assert_eq!(msgs["chunk"][0]["sender"], "@irc_alice:localhost", "{msgs}");
    assert_eq!(msgs["chunk"][0]["origin_server_ts"], ts, "{msgs}");

    // Typing in the room reaches the service as an ephemeral event.
    ok(
        &alice,
        "PUT",
        &format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id),
        json!({ "typing": true, "timeout": 30000 }),
    )
    .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !bridge.ephemeral().iter().any(|e| e["type"] == "m.typing" && e["room_id"] == room.as_str()) {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no typing: {:?}", bridge.ephemeral());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // An alias in the service's namespace that does not exist yet: the service is asked, creates
    // the room, and the join goes through.
    let joined = ok(&alice, "POST", "/_matrix/client/v3/join/%23irc_general%3Alocalhost", json!({})).await?;
    assert!(joined["room_id"].as_str().is_some_and(|r| r.starts_with('!')), "{joined}");
    let missing = alice.call("GET", "/_matrix/client/v3/directory/room/%23irc_missing%3Alocalhost", None).await?;
    assert_eq!(missing.status, 404, "{missing:?}");
    // Ordinary users may not take the service's aliases.
    let reserved = alice
        .call("PUT", "/_matrix/client/v3/directory/room/%23irc_mine%3Alocalhost", Some(&json!({ "room_id": room })))
        .await?;
    assert_eq!(reserved.body["errcode"], "M_EXCLUSIVE", "{reserved:?}");

    // Third-party lookups go to the service that declares the protocol.
    let protocols = alice.call("GET", "/_matrix/client/v3/thirdparty/protocols", None).await?.body;
    assert_eq!(protocols["irc"]["user_fields"], json!(["nick"]), "{protocols}");
    let users = alice.call("GET", "/_matrix/client/v3/thirdparty/user/irc?nick=alice", None).await?;
    assert_eq!(users.body[0]["userid"], "@irc_alice:localhost", "{users:?}");

    // A profile look-up of a namespace user that does not exist yet asks the service, which
    // makes the puppet; one it does not know stays 404.
    let known = alice.call("GET", "/_matrix/client/v3/profile/%40irc_known_carol%3Alocalhost", None).await?;
    assert_eq!((known.status, known.body["displayname"].as_str()), (200, Some("irc_known_carol")), "{known:?}");
    let unknown = alice.call("GET", "/_matrix/client/v3/profile/%40irc_ghost%3Alocalhost", None).await?;
    assert_eq!(unknown.status, 404, "{unknown:?}");
    // So does inviting one: the puppet exists by the time the invite is sent.
    ok(
        &alice,
        "POST",
        &format!("/_matrix/client/v3/rooms/{room}/invite"),
        json!({ "user_id": "@irc_known_dan:localhost" }),
    )
    .await?;
    let dan = bot.call("GET", "/_matrix/client/v3/account/whoami?user_id=%40irc_known_dan%3Alocalhost", None).await?;
    assert_eq!(dan.body["user_id"], "@irc_known_dan:localhost", "{dan:?}");

    // MSC4190: the service creates and deletes its puppets' devices itself, without UIA.
    let created = bot
        .call("PUT", &format!("/_matrix/client/v3/devices/BRIDGEDEV?{q}"), Some(&json!({ "display_name": "IRC" })))
        .await?;
    assert_eq!(created.status, 201, "{created:?}");
    let on_device = bot
        .call("GET", &format!("/_matrix/client/v3/account/whoami?{q}&org.matrix.msc3202.device_id=BRIDGEDEV"), None)
        .await?;
    assert_eq!(on_device.body["device_id"], "BRIDGEDEV", "{on_device:?}");
    let keys =
        bot.call("POST", &format!("/_matrix/client/v3/keys/upload?{q}"), Some(&json!({ "one_time_keys": {} }))).await?;
    assert_eq!(keys.body["errcode"], "M_MISSING_PARAM", "keys need a device: {keys:?}");
    let deleted = bot.call("DELETE", &format!("/_matrix/client/v3/devices/BRIDGEDEV?{q}"), Some(&json!({}))).await?;
    assert_eq!(deleted.status, 200, "{deleted:?}");
    let gone = bot
        .call("GET", &format!("/_matrix/client/v3/account/whoami?{q}&org.matrix.msc3202.device_id=BRIDGEDEV"), None)
        .await?;
    assert_eq!(gone.status, 403, "{gone:?}");
    // Ordinary users still need UIA to delete a device, and cannot create one by PUT.
    let missing_dev =
        alice.call("PUT", "/_matrix/client/v3/devices/NOPE", Some(&json!({ "display_name": "x" }))).await?;
    assert_eq!(missing_dev.status, 404, "{missing_dev:?}");

    // The service publishes a bridged room in the directory.
    let listed = bot
        .call(
            "PUT",
            &format!("/_matrix/client/v3/directory/list/appservice/irc/{room}"),
            Some(&json!({ "visibility": "public" })),
        )
        .await?;
    assert_eq!(listed.status, 200, "{listed:?}");
    let public = alice.call("GET", "/_matrix/client/v3/publicRooms", None).await?.body;
    assert!(public["chunk"].as_array().unwrap().iter().any(|r| r["room_id"] == room.as_str()), "{public}");
    let not_as = alice
        .call(
            "PUT",
            &format!("/_matrix/client/v3/directory/list/appservice/irc/{room}"),
            Some(&json!({ "visibility": "private" })),
        )
        .await?;
    assert_eq!(not_as.status, 403, "{not_as:?}");

    // Ping: only the service itself.
    let ping = ok(&bot, "POST", "/_matrix/client/v1/appservice/irc/ping", json!({ "transaction_id": "p1" })).await?;
    assert!(ping["duration_ms"].is_u64(), "{ping}");
    assert_eq!(bridge.pings(), vec![json!({ "transaction_id": "p1" })]);
    let other = alice.call("POST", "/_matrix/client/v1/appservice/irc/ping", Some(&json!({}))).await?;
    assert_eq!(other.status, 403, "{other:?}");

    // An outage: what happens meanwhile arrives afterwards, each event once.
    bridge.set_failing(true);
    for i in 0..5 {
        ok(
            &alice,
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/o{i}"),
            json!({ "msgtype": "m.text", "body": format!("during outage {i}") }),
        )
        .await?;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while bridge.refused() == 0 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "nothing was tried during the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bridge.set_failing(false);
    let got = bridge
        .wait_for(Duration::from_secs(40), |evs| {
            (0..5).all(|i| evs.iter().any(|e| body_of(e) == format!("during outage {i}")))
        })
        .await?;
    for i in 0..5 {
        let n = got.iter().filter(|e| body_of(e) == format!("during outage {i}")).count();
        assert_eq!(n, 1, "event {i} delivered {n} times");
    }
    // A repeated transaction ID always carries the same body.
    let txns = bridge.transactions();
    for (id, body) in &txns {
        assert!(txns.iter().filter(|(i, _)| i == id).all(|(_, b)| b == body), "txn {id} changed between attempts");
    }
    Ok(())
}

/// The transactions (each ID once) whose body satisfies `done`, waited for up to `WAIT`.
async fn wait_for_transaction(bridge: &RecordingAppservice, done: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some((_, body)) = bridge.transactions().into_iter().find(|(_, b)| done(b)) {
            return Ok(body);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no such transaction; got {}",
            serde_json::to_string_pretty(&bridge.transactions())?
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Encrypted bridging (MSC2409 to-device, MSC3202): the service keeps a puppet's device stocked
/// with one-time keys from the counts in its transactions, receives the to-device messages sent
/// to that device (which then leave the device's inbox), and hears of device-list changes of
/// users it shares a room with. Messages to other users' devices never reach it.
#[tokio::test]
async fn an_encrypted_bridge_gets_to_device_messages_device_lists_and_key_counts() -> Result<()> {
    let (bridge, server, _dir) = bridged_server().await?;
    let url = server.url.clone();
    let bot = as_client(&url);
    let puppet = "@irc_bob:localhost";
    let q = "user_id=%40irc_bob%3Alocalhost";
    let qd = format!("{q}&org.matrix.msc3202.device_id=PUPDEV");

    ok(
        &bot,
        "POST",
        "/_matrix/client/v3/register",
        json!({ "type": "m.login.application_service", "username": "irc_bob", "inhibit_login": true }),
    )
    .await?;
    let made = bot.call("PUT", &format!("/_matrix/client/v3/devices/PUPDEV?{q}"), Some(&json!({}))).await?;
    assert!(made.status == 200 || made.status == 201, "{made:?}");
    let device_keys = json!({
        "user_id": puppet, "device_id": "PUPDEV",
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { "curve25519:PUPDEV": "Y3VydmU", "ed25519:PUPDEV": "ZWQ" },
    });
    let otk = |id: &str| json!({ "key": format!("key{id}"), "signatures": {} });
    ok(
        &bot,
        "POST",
        &format!("/_matrix/client/v3/keys/upload?{qd}"),
        json!({
            "device_keys": device_keys,
            "one_time_keys": { "signed_curve25519:A": otk("A"), "signed_curve25519:B": otk("B") },
            "fallback_keys": { "signed_curve25519:F": otk("F") },
        }),
    )
    .await?;

    // The upload is a device-list change of a namespace user: the counts come with it.
    let counts = |b: &Value| b["org.matrix.msc3202.device_one_time_keys_count"][puppet]["PUPDEV"].clone();
    // (Counts are read when a transaction is built, so one built between the stores of the
    // one-time keys and of the fallback key, for the device's creation say, may carry the new
    // count without the fallback key; a later one carries both.)
    let announced = |b: &Value| {
        b["org.matrix.msc3202.device_lists"]["changed"].as_array().is_some_and(|c| c.iter().any(|u| u == puppet))
    };
    let fallback = |b: &Value| b["org.matrix.msc3202.device_unused_fallback_key_types"][puppet]["PUPDEV"].clone();
    let first = wait_for_transaction(&bridge, |b| {
        counts(b)["signed_curve25519"] == 2 && fallback(b) == json!(["signed_curve25519"])
    })
    .await?;
    wait_for_transaction(&bridge, announced).await?;
    assert_eq!(
        first["org.matrix.msc3202.device_one_time_key_counts"],
        first["org.matrix.msc3202.device_one_time_keys_count"]
    );

    // Alice shares a room with the puppet, claims one of its keys and sends it an olm message.
    let alice = RawClient::register(&url, "alice").await?;
    let room = ok(&alice, "POST", "/_matrix/client/v3/createRoom", json!({ "invite": [puppet] })).await?["room_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ok(&bot, "POST", &format!("/_matrix/client/v3/rooms/{room}/join?{q}"), json!({})).await?;
    let claimed = ok(
        &alice,
        "POST",
        "/_matrix/client/v3/keys/claim",
        json!({ "one_time_keys": { puppet: { "PUPDEV": "signed_curve25519" } } }),
    )
    .await?;
    assert_eq!(claimed["one_time_keys"][puppet]["PUPDEV"].as_object().map(|o| o.len()), Some(1), "{claimed}");
    let alice_device = ok(&alice, "GET", "/_matrix/client/v3/account/whoami", json!(null)).await?["device_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ok(
        &alice,
        "PUT",
        "/_matrix/client/v3/sendToDevice/m.room.encrypted/t1",
        json!({ "messages": {
            puppet: { "PUPDEV": { "algorithm": "m.olm.v1.curve25519-aes-sha2", "ciphertext": { "Y3VydmU": { "type": 0, "body": "olm" } } } },
            "@alice:localhost": { alice_device.clone(): { "note": "for alice only" } },
        } }),
    )
    .await?;
    let with_message = wait_for_transaction(&bridge, |b| {
        b["to_device"].as_array().is_some_and(|m| m.iter().any(|m| m["to_device_id"] == "PUPDEV"))
    })
    .await?;
    let msgs = with_message["to_device"].as_array().cloned().unwrap_or_default();
    let m = msgs.iter().find(|m| m["to_device_id"] == "PUPDEV").unwrap();
    assert_eq!(
        (&m["type"], &m["sender"], &m["to_user_id"], &m["content"]["ciphertext"]["Y3VydmU"]["body"]),
        (&json!("m.room.encrypted"), &json!("@alice:localhost"), &json!(puppet), &json!("olm")),
        "{with_message}"
    );
    assert_eq!(with_message["de.sorunome.msc2409.to_device"], with_message["to_device"]);
    assert_eq!(counts(&with_message)["signed_curve25519"], 1, "the claim shows in the counts: {with_message}");
    assert!(
        bridge.transactions().iter().all(|(_, b)| b["to_device"]
            .as_array()
            .is_none_or(|m| m.iter().all(|m| m["to_user_id"] != "@alice:localhost"))),
        "another user's to-device message reached the service"
    );

    // Acknowledged, the message is gone from the puppet device's inbox...
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let synced = ok(&bot, "GET", &format!("/_matrix/client/v3/sync?{qd}&timeout=0"), json!(null)).await?;
        if synced["to_device"]["events"].as_array().is_none_or(Vec::is_empty) {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "still in the inbox: {}", synced["to_device"]);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...while alice's own message still waits for her device.
    let mine = alice.sync(None, 0).await?;
    assert!(
        mine["to_device"]["events"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["content"]["note"] == "for alice only"))
    );

    // Alice's new keys are a change the service hears of: she shares a room with its puppet.
    ok(
        &alice,
        "POST",
        "/_matrix/client/v3/keys/upload",
        json!({ "device_keys": {
            "user_id": "@alice:localhost", "device_id": alice_device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"], "keys": { format!("ed25519:{alice_device}"): "QQ" },
        } }),
    )
    .await?;
    wait_for_transaction(&bridge, |b| {
        b["org.matrix.msc3202.device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == "@alice:localhost"))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn bad_registration_files_stop_the_server_with_one_line_each() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let reg = dir.path().join("bad.yaml");
    std::fs::write(
        &reg,
        "id: bad\nurl: 12\nas_token: a\nhs_token: a\nnamespaces:\n  users:\n    - regex: \"([\"\n      exclusive: true\n",
    )?;
    let cfg = dir.path().join("ganglion.yaml");
    std::fs::write(&cfg, format!("app_service_config_files: [{:?}]\ndata_dir: {:?}\n", reg, dir.path().join("data")))?;
    let out = std::process::Command::new(ganglion_e2e::ganglion_bin())
        .arg("--config")
        .arg(&cfg)
        .args(["config", "check"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for needle in [
        "url: must be a URL or null",
        "sender_localpart: is required",
        "namespaces.users[0].regex",
        "hs_token: must differ from as_token",
    ] {
        assert!(stderr.lines().any(|l| l.contains(needle) && l.contains("bad.yaml")), "{needle:?} not in:\n{stderr}");
    }
    Ok(())
}

/// The split deployment: main and sync authenticate the bridge, two pusher instances share the
/// delivery; the one that delivers is killed while messages are sent, and the other delivers
/// them, each once.
#[tokio::test]
async fn split_deployment_delivers_across_a_pusher_dying() -> Result<()> {
    let homeserver = Arc::new(Mutex::new(String::new()));
    let bridge = RecordingAppservice::start(homeserver.clone()).await?;
    let dir = tempfile::tempdir()?;
    let reg = bridge.write_registration(dir.path(), "localhost")?;
    let split = ganglion_e2e::Split::start_with_config(1, 0, json!({ "app_service_config_files": [reg] })).await?;
    *homeserver.lock().unwrap() = split.url.clone();
    let bot = as_client(&split.url);
    ok(
        &bot,
        "POST",
        "/_matrix/client/v3/register",
        json!({ "type": "m.login.application_service", "username": "irc_dave" }),
    )
    .await?;
    let alice = RawClient::register(&split.url, "alice").await?;
    let room = ok(&alice, "POST", "/_matrix/client/v3/createRoom", json!({ "invite": ["@irc_dave:localhost"] }))
        .await?["room_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let q = "user_id=%40irc_dave%3Alocalhost";
    ok(&bot, "POST", &format!("/_matrix/client/v3/rooms/{room}/join?{q}"), json!({})).await?;
    // Sync (its own role) serves the puppet too.
    let synced = bot.call("GET", &format!("/_matrix/client/v3/sync?{q}&timeout=0"), None).await?;
    assert!(synced.body["rooms"]["join"][&room].is_object(), "{synced:?}");

    let mut a = split.spawn_worker("pusher", "pusher-a", json!({})).await?;
    let mut b = split.spawn_worker("pusher", "pusher-b", json!({})).await?;
    ok(
        &alice,
        "PUT",
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/s0"),
        json!({ "msgtype": "m.text", "body": "split 0" }),
    )
    .await?;
    bridge.wait_for(WAIT, |evs| evs.iter().any(|e| body_of(e) == "split 0")).await?;
    // Whichever instance delivered holds the service; kill it and send more.
    let a_delivers = a.log().contains("delivering transactions to the application service");
    let survivor_name = if a_delivers { "pusher-b" } else { "pusher-a" };
    if a_delivers {
        a.kill().await
    } else {
        b.kill().await
    }
    for i in 1..6 {
        ok(
            &alice,
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/s{i}"),
            json!({ "msgtype": "m.text", "body": format!("split {i}") }),
        )
        .await?;
    }
    let got = bridge
        .wait_for(Duration::from_secs(60), |evs| (0..6).all(|i| evs.iter().any(|e| body_of(e) == format!("split {i}"))))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\nsurvivor {survivor_name}\n{}\n{}\n{}", a.log(), b.log(), split.logs()))?;
    for i in 0..6 {
        let n = got.iter().filter(|e| body_of(e) == format!("split {i}")).count();
        assert_eq!(n, 1, "event {i} delivered {n} times");
    }
    a.kill().await;
    b.kill().await;
    split.stop().await;
    Ok(())
}
