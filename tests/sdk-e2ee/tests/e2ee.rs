//! End-to-end encryption with real matrix-sdk clients (Olm/Megolm through vodozemac) against
//! `ganglion serve` and against the split deployment behind nginx: encrypted messages that
//! decrypt, cross-signing with device and user verification, key backup restored from a new
//! login, and a dehydrated device that receives room keys while its owner is offline.

// matrix-sdk's sync future is deep enough to need more than the default to prove it is `Send`.
#![recursion_limit = "256"]

use std::time::Duration;

use ganglion_e2e::sdk::sdk_register;
use ganglion_e2e::{OneProcess, Split};
use ganglion_sdk_e2ee::{PATIENCE, eventually};
use matrix_sdk::Client;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::EncryptionInfo;
use matrix_sdk::encryption::verification::{SasVerification, Verification};
use matrix_sdk::ruma::api::client::dehydrated_device::{get_dehydrated_device, get_events};
use matrix_sdk::ruma::api::client::keys::upload_signing_keys::v3::Request as UploadSigningKeys;
use matrix_sdk::ruma::api::client::message::get_message_events;
use matrix_sdk::ruma::api::client::room::Visibility;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, UserId, device_id};
use matrix_sdk_crypto::store::types::DehydratedDeviceKey;
use matrix_sdk_crypto::types::CrossSigningKey;
use matrix_sdk_crypto::types::events::room::encrypted::EncryptedEvent;
use matrix_sdk_crypto::{DecryptionSettings, OlmMachine, TrustRequirement};
use serde_json::Value;
use tokio::sync::mpsc;

/// Keeps `client` syncing in the background (which also sends its key uploads, queries, claims
/// and to-device messages), after one sync in the foreground so its keys are on the server.
async fn keep_syncing(client: &Client) -> tokio::task::JoinHandle<()> {
    client.sync_once(SyncSettings::default()).await.expect("first sync");
    let c = client.clone();
    tokio::spawn(async move {
        let _ = c.sync(SyncSettings::default().timeout(Duration::from_secs(2))).await;
    })
}

async fn login(url: &str, user: &str, device: &str) -> Client {
    let client = Client::builder().homeserver_url(url).build().await.expect("client");
    client.matrix_auth().login_username(user, "secret").device_id(device).send().await.expect("login");
    client
}

/// Text messages a client decrypts, with whether they arrived encrypted.
fn decrypted_texts(client: &Client) -> mpsc::UnboundedReceiver<(String, bool)> {
    let (tx, rx) = mpsc::unbounded_channel();
    client.add_event_handler(move |ev: OriginalSyncRoomMessageEvent, info: Option<EncryptionInfo>| {
        let tx = tx.clone();
        async move {
            if let MessageType::Text(text) = ev.content.msgtype {
                let _ = tx.send((text.body, info.is_some()));
            }
        }
    });
    rx
}

async fn expect_text(rx: &mut mpsc::UnboundedReceiver<(String, bool)>, body: &str) {
    let found = tokio::time::timeout(PATIENCE, async {
        while let Some((text, encrypted)) = rx.recv().await {
            if text == body {
                return encrypted;
            }
        }
        panic!("event handler gone");
    })
    .await
    .unwrap_or_else(|_| panic!("{body:?} was not decrypted in time"));
    assert!(found, "{body:?} arrived, but not encrypted");
}

/// `creator` makes an encrypted private room with `invitee`, who joins. Both must be syncing.
async fn encrypted_room(creator: &Client, invitee: &Client) -> OwnedRoomId {
    let mut req = CreateRoom::new();
    req.preset = Some(RoomPreset::PrivateChat);
    req.visibility = Visibility::Private;
    req.invite = vec![invitee.user_id().unwrap().to_owned()];
    req.initial_state = vec![
        InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults()).to_raw_any(),
    ];
    let room_id = creator.create_room(req).await.expect("createRoom").room_id().to_owned();
    let invited = eventually("the invite", || async { invitee.get_room(&room_id) }).await;
    invited.join().await.expect("join");
    let room = eventually("the creator seeing the join", || async {
        let room = creator.get_room(&room_id)?;
        (room.joined_members_count() == 2).then_some(room)
    })
    .await;
    assert!(room.latest_encryption_state().await.expect("encryption state").is_encrypted());
    room_id
}

async fn send_text(client: &Client, room: &OwnedRoomId, body: &str) -> OwnedEventId {
    let room = client.get_room(room).expect("a joined room");
    room.send(RoomMessageEventContent::text_plain(body)).await.expect("send").response.event_id
}

/// Two users chat in an encrypted room, cross-sign, verify each other and a second device (by
/// signature and interactively), and one restores the history from key backup on a third login.
async fn chat_verify_and_restore(url: &str) {
    let alice = sdk_register(url, "alice").await;
    let bob = sdk_register(url, "bob").await;
    let (alice_id, bob_id) = (alice.user_id().unwrap().to_owned(), bob.user_id().unwrap().to_owned());
    let mut bob_inbox = decrypted_texts(&bob);
    let mut alice_inbox = decrypted_texts(&alice);
    let _alice_sync = keep_syncing(&alice).await;
    let _bob_sync = keep_syncing(&bob).await;

    let room_id = encrypted_room(&alice, &bob).await;
    let hello = send_text(&alice, &room_id, "hello bob, nobody else can read this").await;
    expect_text(&mut bob_inbox, "hello bob, nobody else can read this").await;
    send_text(&bob, &room_id, "hello alice").await;
    expect_text(&mut alice_inbox, "hello alice").await;

    // Cross-signing: both bootstrap (first upload needs no password), alice verifies bob.
    alice.encryption().bootstrap_cross_signing(None).await.expect("alice bootstraps cross-signing");
    bob.encryption().bootstrap_cross_signing(None).await.expect("bob bootstraps cross-signing");
    assert!(alice.encryption().cross_signing_status().await.is_some_and(|s| s.is_complete()));
    let bob_identity = eventually("bob's identity", || async {
        alice.encryption().request_user_identity(&bob_id).await.ok().flatten()
    })
    .await;
    assert!(!bob_identity.is_verified());
    bob_identity.verify().await.expect("alice signs bob's master key");
    eventually("alice's signature on bob, read back from the server", || async {
        let fresh = alice.encryption().request_user_identity(&bob_id).await.ok().flatten()?;
        fresh.is_verified().then_some(())
    })
    .await;

    // A second device of alice's, verified by her first: bob sees it cross-signed.
    let alice2 = login(url, "alice", "ALICETWO").await;
    let _alice2_sync = keep_syncing(&alice2).await;
    let second = eventually("alice's new device", || async {
        alice.encryption().get_device(&alice_id, device_id!("ALICETWO")).await.ok().flatten()
    })
    .await;
    assert!(!second.is_cross_signed_by_owner());
    second.verify().await.expect("alice's self-signing key signs the new device");
    eventually("bob seeing alice's second device as cross-signed", || async {
        bob.encryption().request_user_identity(&alice_id).await.ok()?;
        let device = bob.encryption().get_device(&alice_id, device_id!("ALICETWO")).await.ok().flatten()?;
        device.is_cross_signed_by_owner().then_some(())
    })
    .await;

    // Interactive verification (SAS, emoji) between bob and alice's second device, carried by
    // to-device messages: both sides show the same emoji and end verified.
    let alice2_device = bob.encryption().get_device(&alice_id, device_id!("ALICETWO")).await.unwrap().unwrap();
    let request = alice2_device.request_verification().await.expect("bob requests verification");
    let incoming = eventually("alice's second device receiving the request", || async {
        alice2.encryption().get_verification_request(&bob_id, request.flow_id()).await
    })
    .await;
    incoming.accept().await.expect("accept");
    eventually("the request being ready", || async { request.is_ready().then_some(()) }).await;
    let bob_sas = request.start_sas().await.expect("start SAS").expect("SAS started");
    let alice_sas = eventually("alice's side of the SAS", || async {
        match alice2.encryption().get_verification(&bob_id, request.flow_id()).await {
            Some(Verification::SasV1(sas)) => Some(sas),
            _ => None,
        }
    })
    .await;
    alice_sas.accept().await.expect("accept SAS");
    eventually("both sides able to show emoji", || async {
        (bob_sas.can_be_presented() && alice_sas.can_be_presented()).then_some(())
    })
    .await;
    let symbols = |sas: &SasVerification| sas.emoji().expect("emoji").map(|e| e.symbol).to_vec();
    assert_eq!(symbols(&bob_sas), symbols(&alice_sas), "both sides derived the same emoji");
    bob_sas.confirm().await.expect("bob confirms");
    alice_sas.confirm().await.expect("alice confirms");
    eventually("the verification to finish on both sides", || async {
        (bob_sas.is_done() && alice_sas.is_done()).then_some(())
    })
    .await;
    let verified = bob.encryption().get_device(&alice_id, device_id!("ALICETWO")).await.unwrap().unwrap();
    assert!(verified.is_verified(), "bob now trusts alice's second device");

    // Key backup behind a recovery key; a new login restores the first message from it.
    let recovery_key = alice.encryption().recovery().enable().await.expect("recovery and backup enabled");
    alice.encryption().backups().wait_for_steady_state().await.expect("room keys backed up");
    let alice3 = login(url, "alice", "ALICETHREE").await;
    alice3.sync_once(SyncSettings::default()).await.expect("sync");
    alice3.encryption().recovery().recover(&recovery_key).await.expect("recover with the key");
    alice3.encryption().backups().download_room_keys_for_room(&room_id).await.expect("download from backup");
    let room = alice3.get_room(&room_id).expect("alice3 sees the room");
    let restored = room.event(&hello, None).await.expect("the first message");
    assert!(restored.encryption_info().is_some(), "it was decrypted with a key from the backup");
    let content: Value = serde_json::from_str(restored.raw().json().get()).expect("json");
    assert_eq!(content["content"]["body"], "hello bob, nobody else can read this");
    assert!(
        alice3.encryption().cross_signing_status().await.is_some_and(|s| s.is_complete()),
        "the cross-signing keys came back from secret storage"
    );
}

/// Erin keeps a dehydrated device, logs out; frank writes to her; her next login rehydrates
/// the device and reads the message with the room key it received while she was away.
async fn dehydrated_device_receives_keys_while_offline(url: &str) {
    let erin = sdk_register(url, "erin").await;
    let frank = sdk_register(url, "frank").await;
    let erin_id: &UserId = erin.user_id().unwrap();
    let _frank_sync = keep_syncing(&frank).await;
    let erin_sync = keep_syncing(&erin).await;
    let room_id = encrypted_room(&erin, &frank).await;

    // The dehydrated device is made by an Olm machine that holds erin's cross-signing keys, so
    // it comes signed by her self-signing key: senders only trust a dehydrated device its owner
    // cross-signed.
    let maker = OlmMachine::new(erin_id, device_id!("ERINMAKER")).await;
    let keys = maker.bootstrap_cross_signing(false).await.expect("cross-signing keys").upload_signing_keys_req;
    let raw = |k: Option<CrossSigningKey>| k.map(|k| Raw::new(&k).expect("json").cast_unchecked());
    let mut upload_signing = UploadSigningKeys::new();
    upload_signing.master_key = raw(keys.master_key);
    upload_signing.self_signing_key = raw(keys.self_signing_key);
    upload_signing.user_signing_key = raw(keys.user_signing_key);
    erin.send(upload_signing).await.expect("erin uploads cross-signing keys");
    let pickle_key = DehydratedDeviceKey::new();
    let dehydrated = maker.dehydrated_devices().create().await.expect("create");
    let upload = dehydrated.keys_for_upload("Dehydrated".to_owned(), &pickle_key).await.expect("keys");
    let dehydrated_id = erin.send(upload).await.expect("PUT dehydrated_device").device_id;

    // Erin goes away: her only live device logs out.
    erin_sync.abort();
    erin.matrix_auth().logout().await.expect("logout");
    let seen = eventually("frank seeing the signed dehydrated device", || async {
        frank.encryption().request_user_identity(erin_id).await.ok()?;
        let d = frank.encryption().get_device(erin_id, &dehydrated_id).await.ok().flatten()?;
        d.is_cross_signed_by_owner().then_some(d)
    })
    .await;
    assert!(seen.is_dehydrated());
    send_text(&frank, &room_id, "while you were away").await;

    // Erin's next login: before rehydrating it cannot read the message; after, it can.
    let erin2 = login(url, "erin", "ERINTWO").await;
    let reader = OlmMachine::new(erin_id, device_id!("ERINTWO")).await;
    let settings = DecryptionSettings { sender_device_trust_requirement: TrustRequirement::Untrusted };
    let messages =
        erin2.send(get_message_events::v3::Request::backward(room_id.clone())).await.expect("messages").chunk;
    let encrypted: Raw<EncryptedEvent> = messages
        .iter()
        .find(|e| e.get_field::<String>("type").ok().flatten().as_deref() == Some("m.room.encrypted"))
        .expect("frank's message is stored encrypted")
        .clone()
        .cast_unchecked();
    assert!(reader.decrypt_room_event(&encrypted, &room_id, &settings).await.is_err(), "no key yet");

    let stored = erin2.send(get_dehydrated_device::unstable::Request::new()).await.expect("GET dehydrated_device");
    assert_eq!(stored.device_id, dehydrated_id);
    let rehydrated = reader
        .dehydrated_devices()
        .rehydrate(&pickle_key, &stored.device_id, stored.device_data)
        .await
        .expect("rehydrate with the pickle key");
    let mut next_batch = None;
    let mut room_keys = 0;
    loop {
        let mut req = get_events::unstable::Request::new(stored.device_id.clone());
        req.next_batch = next_batch.clone();
        let page = erin2.send(req).await.expect("dehydrated device events");
        if page.events.is_empty() {
            break;
        }
        room_keys += rehydrated.receive_events(page.events, &settings).await.expect("to-device events").len();
        assert_ne!(page.next_batch, next_batch, "the server moves on");
        next_batch = page.next_batch;
    }
    assert!(room_keys >= 1, "the dehydrated device received frank's room key");
    let decrypted = reader.decrypt_room_event(&encrypted, &room_id, &settings).await.expect("decrypts now");
    let event: Value = serde_json::from_str(decrypted.event.json().get()).expect("json");
    assert_eq!(event["content"]["body"], "while you were away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_chat_verify_and_restore() {
    let server = OneProcess::start().await.expect("server starts");
    chat_verify_and_restore(&server.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_dehydrated_device() {
    let server = OneProcess::start().await.expect("server starts");
    dehydrated_device_receives_keys_while_offline(&server.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_chat_verify_and_restore() {
    let split = Split::start(2).await.expect("split deployment starts");
    chat_verify_and_restore(&split.url).await;
    split.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_dehydrated_device() {
    let split = Split::start(1).await.expect("split deployment starts");
    dehydrated_device_receives_keys_while_offline(&split.url).await;
    split.stop().await;
}
