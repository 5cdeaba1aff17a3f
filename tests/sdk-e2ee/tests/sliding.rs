//! Simplified sliding sync (MSC4186) with matrix-sdk, as Element X uses it: a room list, room
//! names from required state, live timelines, and room keys arriving through the to-device
//! extension so an encrypted message decrypts. Against `ganglion serve` and against the split
//! deployment (sync workers behind nginx).

// matrix-sdk's sync futures are deep enough to need more than the default to prove they are `Send`.
#![recursion_limit = "256"]

use std::time::Duration;

use futures_util::StreamExt as _;
use ganglion_e2e::sdk::sdk_register;
use ganglion_e2e::{OneProcess, Split};
use ganglion_sdk_e2ee::{PATIENCE, eventually};
use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::EncryptionInfo;
use matrix_sdk::ruma::api::client::room::create_room::v3::{Request as CreateRoom, RoomPreset};
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::{MessageType, OriginalSyncRoomMessageEvent, RoomMessageEventContent};
use matrix_sdk::ruma::events::{InitialStateEvent, StateEventType};
use matrix_sdk::ruma::{OwnedRoomId, RoomId};
use matrix_sdk::sliding_sync::Version;
use matrix_sdk::{Client, SlidingSyncList, SlidingSyncMode};
use tokio::sync::mpsc;

async fn create(client: &Client, name: &str, encrypted_with: Option<&Client>) -> OwnedRoomId {
    let mut req = CreateRoom::new();
    req.name = Some(name.to_owned());
    req.preset = Some(RoomPreset::PrivateChat);
    if let Some(other) = encrypted_with {
        req.invite = vec![other.user_id().unwrap().to_owned()];
        req.initial_state = vec![
            InitialStateEvent::with_empty_state_key(RoomEncryptionEventContent::with_recommended_defaults())
                .to_raw_any(),
        ];
    }
    client.create_room(req).await.expect("createRoom").room_id().to_owned()
}

fn name_of(client: &Client, room: &RoomId) -> Option<String> {
    client.get_room(room)?.name()
}

async fn sliding_sync_lists_rooms_and_decrypts(url: &str) {
    let alice = sdk_register(url, "alice").await;
    let bob = sdk_register(url, "bob").await;
    bob.sync_once(SyncSettings::default()).await.expect("bob's first sync uploads his keys");
    let bob_sync = {
        let bob = bob.clone();
        tokio::spawn(async move {
            let _ = bob.sync(SyncSettings::default().timeout(Duration::from_secs(2))).await;
        })
    };

    let (tx, mut texts) = mpsc::unbounded_channel();
    alice.add_event_handler(move |ev: OriginalSyncRoomMessageEvent, info: Option<EncryptionInfo>| {
        let tx = tx.clone();
        async move {
            if let MessageType::Text(t) = ev.content.msgtype {
                let _ = tx.send((t.body, info.is_some()));
            }
        }
    });
    let list = SlidingSyncList::builder("all")
        .sync_mode(SlidingSyncMode::new_selective().add_range(0..=19))
        .timeline_limit(5)
        .required_state(vec![
            (StateEventType::RoomName, String::new()),
            (StateEventType::RoomEncryption, String::new()),
            (StateEventType::RoomMember, "$LAZY".to_owned()),
            (StateEventType::RoomMember, "$ME".to_owned()),
        ]);
    let sliding = alice
        .sliding_sync("elementx")
        .expect("builder")
        .version(Version::Native)
        .with_all_extensions()
        .poll_timeout(Duration::from_secs(2))
        .add_list(list)
        .build()
        .await
        .expect("sliding sync");
    let driver = tokio::spawn(async move {
        let stream = sliding.sync();
        futures_util::pin_mut!(stream);
        while let Some(update) = stream.next().await {
            if let Err(e) = update {
                eprintln!("sliding sync error: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });

    // The room list fills, with names from required state.
    let general = create(&alice, "General", None).await;
    let random = create(&alice, "Random", None).await;
    eventually("both rooms with their names", || async {
        (name_of(&alice, &general).as_deref() == Some("General")
            && name_of(&alice, &random).as_deref() == Some("Random"))
        .then_some(())
    })
    .await;

    // An encrypted room with bob; his message reaches alice's sliding sync and decrypts with the
    // room key that came through the to-device extension.
    let secret = create(&alice, "Secret", Some(&bob)).await;
    let invited = eventually("bob's invite", || async { bob.get_room(&secret) }).await;
    invited.join().await.expect("bob joins");
    eventually("alice seeing bob joined", || async {
        let room = alice.get_room(&secret)?;
        (room.joined_members_count() == 2).then_some(())
    })
    .await;
    let room = eventually("bob's view of the room", || async {
        let room = bob.get_room(&secret)?;
        (room.joined_members_count() == 2).then_some(room)
    })
    .await;
    room.send(RoomMessageEventContent::text_plain("hello over sliding sync")).await.expect("bob sends");
    let (body, encrypted) = tokio::time::timeout(PATIENCE, async {
        loop {
            let got = texts.recv().await.expect("handler alive");
            if got.0 == "hello over sliding sync" {
                return got;
            }
        }
    })
    .await
    .expect("alice decrypts bob's message through sliding sync");
    assert_eq!(body, "hello over sliding sync");
    assert!(encrypted, "it arrived encrypted and was decrypted");
    assert_eq!(name_of(&alice, &secret).as_deref(), Some("Secret"));
    driver.abort();
    bob_sync.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_sliding_sync() {
    let server = OneProcess::start().await.expect("server starts");
    sliding_sync_lists_rooms_and_decrypts(&server.url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_sliding_sync_through_nginx() {
    let split = Split::start(2).await.expect("split deployment starts");
    sliding_sync_lists_rooms_and_decrypts(&split.url).await;
    split.stop().await;
}
