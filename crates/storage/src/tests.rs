//! The storage conformance suite: every test runs on SQLite and on PostgreSQL.

use ganglion_core::PageToken;
use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, owned_room_id, owned_user_id};

use crate::test_util::TestDb;
use crate::{Backend, Error, EventStore, KeyStore, NewEvent, SchemaStatus, StoredSigningKey, UserStore};

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $name() { let t = super::TestDb::new(super::Backend::Sqlite).await; super::$name(&t).await; t.cleanup().await; })*
        }
        mod postgres {
            $(#[tokio::test] async fn $name() { let t = super::TestDb::new(super::Backend::Postgres).await; super::$name(&t).await; t.cleanup().await; })*
        }
    };
}

on_both_backends!(
    appservice_transactions_are_staged_then_acknowledged,
    migrations_are_idempotent_and_current,
    users_tokens_and_devices,
    refresh_login_tokens_guests_and_profile_fields,
    uia_sessions_round_trip,
    persist_tracks_state_extremities_and_txns,
    pagination_and_ranges,
    signing_keys_first_writer_wins,
    remote_keys_keep_the_longest_validity_and_retirement,
    federation_reads_and_destination_positions,
    aliases_are_unique,
    state_at_a_position_and_redactions,
    user_directory_finds_room_mates_and_public_rooms,
    forgotten_rooms,
    account_data_log_and_current,
    filters_and_profiles,
    e2ee_keys_and_inbox,
    receipts_and_typing,
    unread_counts_stop_at_the_read_receipt,
    full_text_search_finds_words_in_visible_rooms,
    memberships_and_bump_stamps_at_a_position,
    relations_threads_and_timestamps,
    dehydrated_devices_replace_each_other,
    cross_user_signatures_are_per_signer,
    state_groups_are_deltas_with_bounded_snapshots,
    forks_outliers_rejected_and_soft_failed_events,
    rooms_from_before_state_groups_keep_their_state,
    group_commit_is_all_or_nothing,
    sync_hot_path_queries_match_their_parts,
    pushers_their_log_and_pending_pushes,
    threepids_sessions_and_email_throttle,
);

async fn e2ee_keys_and_inbox(t: &TestDb) {
    use crate::{E2eeStore, ToDeviceMessage};
    let store = E2eeStore::new(t.db.clone());
    let alice = owned_user_id!("@alice:example.org");
    assert!(store.set_device_keys(&alice, "D", "{\"k\":1}").await.unwrap());
    assert!(!store.set_device_keys(&alice, "D", "{\"k\":1}").await.unwrap(), "unchanged keys are not a change");
    store.add_one_time_keys(&alice, "D", &[("c:1".into(), "{}".into()), ("c:2".into(), "{}".into())]).await.unwrap();
    store.add_one_time_keys(&alice, "D", &[("c:1".into(), "{\"dup\":1}".into())]).await.unwrap();
    assert_eq!(store.one_time_key_counts(&alice, "D").await.unwrap(), vec![("c".to_owned(), 2)]);
    store.set_fallback_key(&alice, "D", "c:F", "{}").await.unwrap();
    assert_eq!(store.key_counts(&alice, "D").await.unwrap().1, vec!["c".to_owned()]);
    let claims: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(store.claim_key(&alice, "D", "c").await.unwrap().unwrap().0);
        }
        v
    };
    assert_eq!(claims, vec!["c:1", "c:2", "c:F", "c:F"], "the fallback key is reused once one-time keys run out");
    assert!(store.key_counts(&alice, "D").await.unwrap().1.is_empty());
    let msg = |p: i64| ToDeviceMessage {
        position: p,
        user_id: alice.to_string(),
        device_id: "D".into(),
        sender: "@bob:x".into(),
        event_type: "m.t".into(),
        content: "{}".into(),
    };
    store.queue_to_device(&[msg(1), msg(2), msg(3)]).await.unwrap();
    assert_eq!(store.to_device_for(&alice, "D", 2, 10).await.unwrap().len(), 2);
    assert_eq!(store.ack_to_device(&alice, "D", 3).await.unwrap(), 3);
    assert_eq!(store.max_to_device_position().await.unwrap(), 3, "the high-water mark survives deletion");
    assert!(store.record_to_device_txn(&alice, "D", "t").await.unwrap());
    assert!(!store.record_to_device_txn(&alice, "D", "t").await.unwrap());
    store.log_device_change(1, &alice).await.unwrap();
    store.log_device_change(2, &alice).await.unwrap();
    assert_eq!(store.users_with_device_changes(0, 2).await.unwrap(), vec![alice.to_string()]);
    assert!(store.users_with_device_changes(2, 2).await.unwrap().is_empty());
    store.queue_to_device(&[msg(4), msg(5)]).await.unwrap();
    let after = store.to_device_after_for(&alice, "D", 4, 10).await.unwrap();
    assert_eq!(after.iter().map(|m| m.position).collect::<Vec<_>>(), vec![5]);
    store.delete_device(&alice, "D").await.unwrap();
    assert!(store.device_keys(&alice).await.unwrap().is_empty());
    assert!(store.to_device_after_for(&alice, "D", 0, 10).await.unwrap().is_empty());
}

async fn dehydrated_devices_replace_each_other(t: &TestDb) {
    use crate::E2eeStore;
    let store = E2eeStore::new(t.db.clone());
    let alice = owned_user_id!("@alice:example.org");
    assert_eq!(store.dehydrated_device(&alice).await.unwrap(), None);
    assert_eq!(store.set_dehydrated_device(&alice, "D1", "{\"a\":1}").await.unwrap(), None);
    assert_eq!(
        store.set_dehydrated_device(&alice, "D1", "{\"a\":2}").await.unwrap(),
        None,
        "same device: nothing replaced"
    );
    assert_eq!(store.set_dehydrated_device(&alice, "D2", "{\"a\":3}").await.unwrap(), Some("D1".to_owned()));
    assert_eq!(store.dehydrated_device(&alice).await.unwrap(), Some(("D2".to_owned(), "{\"a\":3}".to_owned())));
    assert_eq!(store.remove_dehydrated_device(&alice).await.unwrap(), Some("D2".to_owned()));
    assert_eq!(store.remove_dehydrated_device(&alice).await.unwrap(), None);
    store.set_dehydrated_device(&alice, "D3", "{}").await.unwrap();
    store.delete_device(&alice, "D3").await.unwrap();
    assert_eq!(store.dehydrated_device(&alice).await.unwrap(), None, "deleting the device forgets it");
}

async fn cross_user_signatures_are_per_signer(t: &TestDb) {
    use crate::E2eeStore;
    let store = E2eeStore::new(t.db.clone());
    let (alice, bob, carol) = (owned_user_id!("@alice:x"), owned_user_id!("@bob:x"), owned_user_id!("@carol:x"));
    store.put_cross_user_signature(&alice, "ed25519:A", &bob, "s1").await.unwrap();
    store.put_cross_user_signature(&alice, "ed25519:A", &bob, "s2").await.unwrap();
    store.put_cross_user_signature(&carol, "ed25519:C", &bob, "s3").await.unwrap();
    assert_eq!(store.cross_user_signatures(&alice, &bob).await.unwrap(), vec![("ed25519:A".into(), "s2".into())]);
    store.drop_cross_user_signatures(&alice, false).await.unwrap();
    assert!(store.cross_user_signatures(&alice, &bob).await.unwrap().is_empty());
    assert_eq!(store.cross_user_signatures(&carol, &bob).await.unwrap().len(), 1);
    store.drop_cross_user_signatures(&bob, true).await.unwrap();
    assert!(store.cross_user_signatures(&carol, &bob).await.unwrap().is_empty());
}

async fn receipts_and_typing(t: &TestDb) {
    use crate::{EphemeralStore, Receipt};
    let store = EphemeralStore::new(t.db.clone());
    let room = owned_room_id!("!r:example.org");
    let receipt = |p: i64, user: &str, ty: &str, event: &str| Receipt {
        position: p,
        room_id: room.to_string(),
        user_id: user.into(),
        receipt_type: ty.into(),
        thread_id: String::new(),
        event_id: event.into(),
        ts: 5,
    };
    store.put_receipt(&receipt(1, "@a:x", "m.read", "$1")).await.unwrap();
    store.put_receipt(&receipt(2, "@a:x", "m.read", "$2")).await.unwrap();
    store.put_receipt(&receipt(3, "@b:x", "m.read.private", "$2")).await.unwrap();
    let rooms = vec![room.to_string()];
    let all = store.receipts_in_rooms(&rooms, 0, 3).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>(),
        vec!["$2", "$2"],
        "latest per user and type"
    );
    assert!(!EphemeralStore::visible_to(&all[1], &owned_user_id!("@a:x")));
    assert!(EphemeralStore::visible_to(&all[1], &owned_user_id!("@b:x")));
    assert_eq!(store.receipts_after(1, 10).await.unwrap().len(), 2);
    store.put_typing(1, &room, &["@a:x".into()]).await.unwrap();
    store.put_typing(2, &room, &[]).await.unwrap();
    assert_eq!(store.typing_in_rooms(&rooms, 0, 1).await.unwrap(), vec![(room.to_string(), vec!["@a:x".to_owned()])]);
    assert_eq!(store.typing_in_rooms(&rooms, 0, 2).await.unwrap(), vec![(room.to_string(), Vec::<String>::new())]);
    assert!(store.typing_in_rooms(&rooms, 2, 2).await.unwrap().is_empty());
    assert_eq!(store.max_typing_position().await.unwrap(), 2);
}

async fn account_data_log_and_current(t: &TestDb) {
    use crate::{AccountDataEntry, AccountDataStore};
    let store = AccountDataStore::new(t.db.clone());
    let alice = owned_user_id!("@alice:example.org");
    assert_eq!(store.max_position().await.unwrap(), 0);
    let entry = |pos: i64, room: &str, ty: &str, content: &str| AccountDataEntry {
        position: pos,
        user_id: alice.to_string(),
        room_id: room.to_owned(),
        data_type: ty.to_owned(),
        content: content.to_owned(),
    };
    store.write(&entry(1, "", "a", "{\"v\":1}")).await.unwrap();
    store.write(&entry(2, "!r:x", "a", "{\"v\":2}")).await.unwrap();
    store.write(&entry(3, "", "a", "{\"v\":3}")).await.unwrap();
    assert_eq!(store.max_position().await.unwrap(), 3);
    assert_eq!(store.get(&alice, "", "a").await.unwrap().as_deref(), Some("{\"v\":3}"));
    assert_eq!(store.get(&alice, "!r:x", "a").await.unwrap().as_deref(), Some("{\"v\":2}"));
    let log: Vec<i64> = store.log_after(0, 10).await.unwrap().iter().map(|e| e.position).collect();
    assert_eq!(log, vec![1, 2, 3], "the log keeps every write, contiguous");
    let changed: Vec<i64> = store.changed_for_user(&alice, 1, 3).await.unwrap().iter().map(|e| e.position).collect();
    assert_eq!(changed, vec![2, 3], "only the latest of each entry");
    assert!(store.write(&entry(3, "", "b", "{}")).await.is_err(), "a position is written once");
}

async fn filters_and_profiles(t: &TestDb) {
    let users = UserStore::new(t.db.clone());
    let alice = owned_user_id!("@alice:example.org");
    users.create_user(&alice, None, false).await.unwrap();
    users.create_filter(&alice, "f1", "{}").await.unwrap();
    assert!(matches!(users.create_filter(&alice, "f1", "{}").await, Err(Error::Conflict(_))));
    assert_eq!(users.filter(&alice, "f1").await.unwrap().as_deref(), Some("{}"));
    assert!(users.filter(&alice, "f2").await.unwrap().is_none());
    assert_eq!(users.profile(&alice).await.unwrap(), Some((None, None)));
    users.set_profile_field(&alice, "displayname", Some("Alice")).await.unwrap();
    users.set_profile_field(&alice, "avatar_url", Some("mxc://x/y")).await.unwrap();
    users.set_profile_field(&alice, "displayname", None).await.unwrap();
    assert_eq!(users.profile(&alice).await.unwrap(), Some((None, Some("mxc://x/y".to_owned()))));
    assert!(users.profile(&owned_user_id!("@bob:example.org")).await.unwrap().is_none());
}

async fn state_at_a_position_and_redactions(t: &TestDb) {
    let events = EventStore::new(t.db.clone());
    let room = owned_room_id!("!r:example.org");
    let alice = owned_user_id!("@alice:example.org");
    events.persist(&event(1, &room, &alice, "m.room.create", Some(""), &[])).await.unwrap();
    events.persist(&event(2, &room, &alice, "m.room.name", Some(""), &["$e1"])).await.unwrap();
    events.persist(&event(3, &room, &alice, "m.room.message", None, &["$e2"])).await.unwrap();
    events.persist(&event(4, &room, &alice, "m.room.name", Some(""), &["$e3"])).await.unwrap();
    let at = |v: Vec<crate::PersistedEvent>| v.iter().map(|e| e.stream_ordering).collect::<Vec<_>>();
    assert_eq!(at(events.state_at(&room, 3).await.unwrap()), vec![1, 2]);
    assert_eq!(at(events.state_at(&room, 4).await.unwrap()), vec![1, 4]);
    assert_eq!(at(events.state_at(&room, 0).await.unwrap()), Vec::<i64>::new());

    let mut redaction = event(5, &room, &alice, "m.room.redaction", None, &["$e4"]);
    redaction.redacts = Some((OwnedEventId::try_from("$e3").unwrap(), "{\"redacted\":true}".to_owned()));
    events.persist(&redaction).await.unwrap();
    assert_eq!(events.event("$e3").await.unwrap().unwrap().json, "{\"redacted\":true}");
    assert_eq!(events.redacted_by("$e3").await.unwrap().as_deref(), Some("$e5"));
    assert!(events.redacted_by("$e2").await.unwrap().is_none());

    // An event redacted before the writer kept `redacted_because` gets it, once.
    assert_eq!(events.backfill_redacted_because().await.unwrap(), 1);
    let mended: serde_json::Value = serde_json::from_str(&events.event("$e3").await.unwrap().unwrap().json).unwrap();
    assert_eq!(mended["redacted"], true);
    assert_eq!(mended["unsigned"]["redacted_because"]["event_id"], "$e5");
    assert_eq!(mended["unsigned"]["redacted_because"]["room_id"], "!r:example.org");
    assert_eq!(events.backfill_redacted_because().await.unwrap(), 0);
}

async fn user_directory_finds_room_mates_and_public_rooms(t: &TestDb) {
    use crate::DirectoryScope;
    let users = UserStore::new(t.db.clone());
    let events = EventStore::new(t.db.clone());
    let [alice, bob, carol, dave, erin] =
        ["alice", "bob", "carol", "dave", "erin"].map(|n| OwnedUserId::try_from(format!("@{n}:x.org")).unwrap());
    for u in [&alice, &bob, &carol, &dave, &erin] {
        users.create_user(u, None, false).await.unwrap();
    }
    users.set_profile_field(&dave, "displayname", Some("Dave Public")).await.unwrap();
    // A private room of Alice and Bob; a public room of Carol; a world-readable room of Dave.
    let mut pos = 0;
    let mut state = |room: &OwnedRoomId, sender: &OwnedUserId, ty: &str, key: &str, json: String| {
        pos += 1;
        let mut e = event(pos, room, sender, ty, Some(key), &[]);
        e.event_id = OwnedEventId::try_from(format!("$d{pos}").as_str()).unwrap();
        e.creates_room = None;
        e.json = json;
        e
    };
    let mut rows = Vec::new();
    for (room, members, rule) in [
        (owned_room_id!("!private:x.org"), vec![&alice, &bob], ("m.room.join_rules", r#"{"join_rule":"invite"}"#)),
        (owned_room_id!("!public:x.org"), vec![&carol], ("m.room.join_rules", r#"{"join_rule":"public"}"#)),
        (
            owned_room_id!("!readable:x.org"),
            vec![&dave],
            ("m.room.history_visibility", r#"{"history_visibility":"world_readable"}"#),
        ),
    ] {
        let mut create = state(&room, members[0], "m.room.create", "", "{}".into());
        create.creates_room = Some(("11".into(), members[0].clone()));
        rows.push(create);
        rows.push(state(&room, members[0], rule.0, "", format!(r#"{{"content":{}}}"#, rule.1)));
        for m in members {
            rows.push(state(&room, m, "m.room.member", m.as_str(), r#"{"content":{"membership":"join"}}"#.into()));
        }
    }
    for r in &rows {
        events.persist(r).await.unwrap();
    }
    let ids = |v: Vec<(String, Option<String>, Option<String>)>| v.into_iter().map(|r| r.0).collect::<Vec<_>>();
    let users = &users;
    let found = |scope| async move { ids(users.search_user_directory("x.org", 10, scope).await.unwrap()) };
    assert_eq!(
        found(DirectoryScope::VisibleTo(&bob)).await,
        vec!["@alice:x.org", "@bob:x.org", "@carol:x.org", "@dave:x.org"],
        "room mates and members of public rooms, not Erin"
    );
    assert_eq!(found(DirectoryScope::VisibleTo(&erin)).await, vec!["@carol:x.org", "@dave:x.org"]);
    assert_eq!(found(DirectoryScope::AllUsers).await.len(), 5);
    let by_name = users.search_user_directory("public", 10, DirectoryScope::VisibleTo(&erin)).await.unwrap();
    assert_eq!(by_name, vec![("@dave:x.org".to_owned(), Some("Dave Public".to_owned()), None)]);
    assert!(users.search_user_directory("alice", 10, DirectoryScope::VisibleTo(&erin)).await.unwrap().is_empty());
    users.deactivate(&carol).await.unwrap();
    assert_eq!(found(DirectoryScope::VisibleTo(&erin)).await, vec!["@dave:x.org"], "deactivated users are gone");
}

async fn forgotten_rooms(t: &TestDb) {
    let events = EventStore::new(t.db.clone());
    let room = owned_room_id!("!r:example.org");
    let alice = owned_user_id!("@alice:example.org");
    events.forget_room(&alice, &room).await.unwrap();
    events.forget_room(&alice, &room).await.unwrap();
    assert_eq!(events.forgotten_rooms(&alice).await.unwrap(), vec![room.to_string()]);
    events.unforget_room(&alice, &room).await.unwrap();
    assert!(events.forgotten_rooms(&alice).await.unwrap().is_empty());
    events.create_alias("#a:example.org", &room, &alice).await.unwrap();
    assert_eq!(events.alias_creator("#a:example.org").await.unwrap().as_deref(), Some("@alice:example.org"));
    assert_eq!(events.room_aliases(&room).await.unwrap(), vec!["#a:example.org".to_owned()]);
    assert!(events.delete_alias("#a:example.org").await.unwrap());
    assert!(!events.delete_alias("#a:example.org").await.unwrap());
}

async fn migrations_are_idempotent_and_current(t: &TestDb) {
    assert_eq!(t.db.schema_status().await.unwrap(), SchemaStatus::Current);
    assert!(t.db.migrate().await.unwrap().is_empty(), "second migrate applies nothing");
}

async fn users_tokens_and_devices(t: &TestDb) {
    let users = UserStore::new(t.db.clone());
    let alice = owned_user_id!("@alice:example.org");
    users.create_user(&alice, Some("hash"), false).await.unwrap();
    assert!(matches!(users.create_user(&alice, None, false).await, Err(Error::Conflict(_))));
    assert!(users.user_exists(&alice).await.unwrap());
    assert_eq!(users.password_hash(&alice).await.unwrap().as_deref(), Some("hash"));

    users.upsert_device(&alice, "DEV1", Some("phone")).await.unwrap();
    users.upsert_device(&alice, "DEV1", None).await.unwrap();
    let devices = users.devices(&alice).await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].display_name.as_deref(), Some("phone"), "a re-login keeps the name");

    users.add_access_token("h1", &alice, "DEV1").await.unwrap();
    let who = users.whoami("h1").await.unwrap().unwrap();
    assert_eq!(who.user_id, alice);
    assert_eq!(who.device_id.as_str(), "DEV1");
    assert!(!who.is_admin);
    users.replace_device_tokens("h2", &alice, "DEV1").await.unwrap();
    assert!(users.whoami("h1").await.unwrap().is_none(), "old token of the device is gone");
    assert!(users.whoami("h2").await.unwrap().is_some());
    users.delete_access_token("h2").await.unwrap();
    assert!(users.whoami("h2").await.unwrap().is_none());
}

async fn refresh_login_tokens_guests_and_profile_fields(t: &TestDb) {
    let users = UserStore::new(t.db.clone());
    let alice = owned_user_id!("@alice:example.org");
    users.create_user(&alice, None, false).await.unwrap();
    let r1 = crate::NewRefresh { refresh_hash: "r1", expires_ts: 42 };
    users.start_session("a1", &alice, "DEV", Some(r1)).await.unwrap();
    assert_eq!(users.whoami("a1").await.unwrap().unwrap().expires_ts, Some(42));
    let r2 = crate::NewRefresh { refresh_hash: "r2", expires_ts: 43 };
    let (user, device) = users.refresh_session("r1", "a2", r2).await.unwrap().unwrap();
    assert_eq!((user.as_str(), device.as_str()), ("@alice:example.org", "DEV"));
    assert!(users.whoami("a1").await.unwrap().is_some(), "the old access token lives until a2 is used");
    assert!(users.whoami("a2").await.unwrap().is_some());
    assert!(users.whoami("a1").await.unwrap().is_none(), "the first use of a2 retired r1 and a1");
    let r3 = crate::NewRefresh { refresh_hash: "r3", expires_ts: 44 };
    assert!(users.refresh_session("r1", "a3", r3).await.unwrap().is_none());
    assert!(users.refresh_session("nope", "a3", r3).await.unwrap().is_none());
    users.delete_access_token("a2").await.unwrap();
    assert!(users.refresh_session("r2", "a3", r3).await.unwrap().is_none(), "logout ends the refresh token");

    users.create_login_token("l1", &alice, i64::MAX).await.unwrap();
    assert_eq!(users.take_login_token("l1").await.unwrap(), Some(alice.clone()));
    assert_eq!(users.take_login_token("l1").await.unwrap(), None, "single use");
    users.create_login_token("l2", &alice, 1).await.unwrap();
    assert_eq!(users.take_login_token("l2").await.unwrap(), None, "expired");

    let guest = owned_user_id!("@123:example.org");
    users.create_guest(&guest).await.unwrap();
    users.add_access_token("g", &guest, "GDEV").await.unwrap();
    assert!(users.whoami("g").await.unwrap().unwrap().is_guest);
    assert!(matches!(users.create_guest(&guest).await, Err(Error::Conflict(_))));
    assert!(users.is_guest(&guest).await.unwrap());
    assert!(!users.is_guest(&alice).await.unwrap());
    assert!(users.upgrade_guest(&guest, Some("hash")).await.unwrap());
    assert!(!users.is_guest(&guest).await.unwrap(), "upgraded to a full account");
    assert!(!users.upgrade_guest(&guest, Some("hash")).await.unwrap(), "only a guest is upgraded");
    assert_eq!(users.password_hash(&guest).await.unwrap().as_deref(), Some("hash"));

    users.set_profile_custom_field(&alice, "m.tz", &serde_json::json!("UTC")).await.unwrap();
    users.set_profile_custom_field(&alice, "m.tz", &serde_json::json!("Europe/Paris")).await.unwrap();
    assert_eq!(
        users.profile_fields(&alice).await.unwrap(),
        vec![("m.tz".to_owned(), serde_json::json!("Europe/Paris"))]
    );
    assert!(users.delete_profile_custom_field(&alice, "m.tz").await.unwrap());
    assert!(!users.delete_profile_custom_field(&alice, "m.tz").await.unwrap());
}

async fn uia_sessions_round_trip(t: &TestDb) {
    let users = UserStore::new(t.db.clone());
    assert!(users.uia_session("nope").await.unwrap().is_none());
    users.create_uia_session("s1").await.unwrap();
    assert_eq!(users.uia_session("s1").await.unwrap().unwrap(), Vec::<String>::new());
    users.set_uia_stages("s1", &["m.login.dummy".to_owned()]).await.unwrap();
    assert_eq!(users.uia_session("s1").await.unwrap().unwrap(), vec!["m.login.dummy".to_owned()]);
    users.delete_uia_session("s1").await.unwrap();
    assert!(users.uia_session("s1").await.unwrap().is_none());
}

fn event(
    pos: i64,
    room: &OwnedRoomId,
    sender: &OwnedUserId,
    ty: &str,
    state_key: Option<&str>,
    prev: &[&str],
) -> NewEvent {
    let membership = (ty == "m.room.member").then(|| "join".to_owned());
    NewEvent {
        stream_ordering: pos,
        event_id: OwnedEventId::try_from(format!("$e{pos}").as_str()).unwrap(),
        room_id: room.clone(),
        sender: sender.clone(),
        event_type: ty.to_owned(),
        state_key: state_key.map(str::to_owned),
        membership,
        depth: pos,
        origin_server_ts: 1000 + pos,
        json: format!("{{\"n\":{pos}}}"),
        prev_events: prev.iter().map(|p| OwnedEventId::try_from(*p).unwrap()).collect(),
        txn: None,
        request_id: format!("req{pos}"),
        creates_room: (pos == 1).then(|| ("11".to_owned(), sender.clone())),
        redacts: None,
        push_actions: Vec::new(),
        relation: None,
        auth_events: Vec::new(),
        status: Default::default(),
        state_before: Default::default(),
        new_current_state: None,
    }
}

async fn persist_tracks_state_extremities_and_txns(t: &TestDb) {
    let events = EventStore::new(t.db.clone());
    let room = owned_room_id!("!r:example.org");
    let alice = owned_user_id!("@alice:example.org");
    assert_eq!(events.max_stream_ordering().await.unwrap(), 0);
    events.persist(&event(1, &room, &alice, "m.room.create", Some(""), &[])).await.unwrap();
    events.persist(&event(2, &room, &alice, "m.room.member", Some(alice.as_str()), &["$e1"])).await.unwrap();
    let mut msg = event(3, &room, &alice, "m.room.message", None, &["$e2"]);
    msg.txn = Some(("DEV".to_owned(), "t1".to_owned()));
    events.persist(&msg).await.unwrap();
    assert!(matches!(events.persist(&msg).await, Err(Error::Conflict(_))), "same event twice is refused");

    assert_eq!(events.max_stream_ordering().await.unwrap(), 3);
    assert_eq!(events.room_version(&room).await.unwrap().as_deref(), Some("11"));
    assert_eq!(events.current_state(&room).await.unwrap().len(), 2);
    assert_eq!(events.membership(&room, &alice).await.unwrap().as_deref(), Some("join"));
    let ext = events.forward_extremities(&room).await.unwrap();
    assert_eq!(ext, vec![(OwnedEventId::try_from("$e3").unwrap(), 3)]);
    assert_eq!(events.event_for_txn(&alice, "DEV", "t1").await.unwrap().unwrap().as_str(), "$e3");
    assert!(events.event_for_txn(&alice, "OTHER", "t1").await.unwrap().is_none(), "txn ids are per device");
    let rooms = events.rooms_for_user(&alice).await.unwrap();
    assert_eq!(rooms.len(), 1);
    assert_eq!((rooms[0].membership.as_str(), rooms[0].stream_ordering), ("join", 2));
    let e = events.event("$e3").await.unwrap().unwrap();
    assert_eq!((e.json.as_str(), e.request_id.as_str()), ("{\"n\":3}", "req3"));
    assert_eq!(events.state_event(&room, "m.room.create", "").await.unwrap().unwrap().stream_ordering, 1);
    assert_eq!(events.members_with(&room, "join").await.unwrap(), vec![alice.to_string()]);
}

async fn pagination_and_ranges(t: &TestDb) {
    let events = EventStore::new(t.db.clone());
    let room = owned_room_id!("!r:example.org");
    let other = owned_room_id!("!o:example.org");
    let alice = owned_user_id!("@alice:example.org");
    events.persist(&event(1, &room, &alice, "m.room.create", Some(""), &[])).await.unwrap();
    for pos in 2..=20 {
        let r = if pos % 2 == 0 { &room } else { &other };
        let mut e = event(pos, r, &alice, "m.room.message", None, &[]);
        e.creates_room = None;
        events.persist(&e).await.unwrap();
    }
    let latest = events.latest_room_events(&room, 20, 3).await.unwrap();
    assert_eq!(latest.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(), vec![16, 18, 20]);
    // Depth follows the position in these rows, so topological and stream order agree.
    let at_16 = PageToken::after(16, 16);
    let back = events.room_messages(&room, at_16, true, 20, 3).await.unwrap();
    assert_eq!(
        back.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(),
        vec![16, 14, 12],
        "a token covers its event"
    );
    let back = events.room_messages(&room, PageToken::before(16, 16), true, 20, 3).await.unwrap();
    assert_eq!(back.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(), vec![14, 12, 10]);
    let fwd = events.room_messages(&room, at_16, false, 18, 10).await.unwrap();
    assert_eq!(fwd.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(), vec![18], "upto bounds what is visible");
    let fwd = events.room_messages(&room, PageToken::before(16, 16), false, 20, 2).await.unwrap();
    assert_eq!(fwd.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(), vec![16, 18]);
    let back = events.room_messages(&room, PageToken::Stream(15), true, 20, 2).await.unwrap();
    assert_eq!(back.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(), vec![14, 12], "a stream token");
    let fwd = events.room_messages(&room, PageToken::Stream(15), false, 20, 10).await.unwrap();
    assert_eq!(fwd.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(), vec![16, 18, 20]);
    let all = events.room_messages(&room, PageToken::START, false, 20, 2).await.unwrap();
    assert_eq!(all.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(), vec![1, 2]);
    let newest = events.room_messages(&room, PageToken::END, true, 20, 1).await.unwrap();
    assert_eq!(newest.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(), vec![20]);
    let between = events.events_in_rooms_between(std::slice::from_ref(&other), 10, 15, 100).await.unwrap();
    assert_eq!(between.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(), vec![11, 13, 15]);
    let after = events.events_after(17, 100).await.unwrap();
    assert_eq!(after.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(), vec![18, 19, 20]);
    let picked = events.events(&["$e5", "$e2", "$missing"]).await.unwrap();
    assert_eq!(picked.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(), vec![2, 5]);
}

async fn signing_keys_first_writer_wins(t: &TestDb) {
    let keys = KeyStore::new(t.db.clone());
    assert!(keys.active_key().await.unwrap().is_none());
    let k = StoredSigningKey { version: "a_AAAA".to_owned(), pkcs8_base64: "cGtjczg=".to_owned() };
    assert!(keys.insert_key(&k).await.unwrap());
    assert!(!keys.insert_key(&k).await.unwrap());
    assert_eq!(keys.active_key().await.unwrap().unwrap().version, "a_AAAA");
    let before = keys.active_key().await.unwrap().unwrap();
    let newer = StoredSigningKey { version: "b_2".into(), pkcs8_base64: "cGtjczg".into() };
    keys.rotate_to(&newer).await.unwrap();
    assert_eq!(keys.active_key().await.unwrap().unwrap().version, "b_2", "the new key signs");
    let expired = keys.expired_keys().await.unwrap();
    assert_eq!(expired.iter().map(|(k, _)| k.version.clone()).collect::<Vec<_>>(), vec![before.version]);
    assert!(expired[0].1 > 0, "with when it expired");
    assert!(keys.rotate_to(&newer).await.is_err(), "a version is never reused");
    assert_eq!(keys.active_key().await.unwrap().unwrap().version, "b_2", "a failed rotation changes nothing");
}

async fn remote_keys_keep_the_longest_validity_and_retirement(t: &TestDb) {
    let store = crate::RemoteKeyStore::new(t.db.clone());
    assert!(store.keys_of("other.org").await.unwrap().is_empty());
    assert!(store.document("other.org").await.unwrap().is_none());
    let key = |id: &str, until: i64, expired: Option<i64>| crate::RemoteKey {
        key_id: id.into(),
        public_key: format!("pub-{id}"),
        valid_until_ts: until,
        expired_ts: expired,
    };
    store.store("other.org", 2_000, "{\"v\":2}", &[key("ed25519:a", 2_000, None)]).await.unwrap();
    // An older answer (a notary's stale copy) neither shortens the key nor replaces the document.
    store.store("other.org", 1_000, "{\"v\":1}", &[key("ed25519:a", 1_000, None)]).await.unwrap();
    assert_eq!(store.keys_of("other.org").await.unwrap(), vec![key("ed25519:a", 2_000, None)]);
    assert_eq!(store.document("other.org").await.unwrap(), Some((2_000, "{\"v\":2}".to_owned())));
    // The key is retired and a new one listed: both kept, the old one marked.
    store
        .store("other.org", 5_000, "{\"v\":5}", &[key("ed25519:b", 5_000, None), key("ed25519:a", 3_000, Some(3_000))])
        .await
        .unwrap();
    let keys = store.keys_of("other.org").await.unwrap();
    assert_eq!(keys, vec![key("ed25519:a", 3_000, Some(3_000)), key("ed25519:b", 5_000, None)]);
    assert_eq!(store.document("other.org").await.unwrap().unwrap().0, 5_000);
    assert!(store.keys_of("third.org").await.unwrap().is_empty(), "per server");
}

async fn federation_reads_and_destination_positions(t: &TestDb) {
    let events = EventStore::new(t.db.clone());
    let fed = crate::FederationStore::new(t.db.clone());
    let room = owned_room_id!("!r:example.org");
    let alice = owned_user_id!("@alice:example.org");
    let bob = owned_user_id!("@bob:other.org");
    let mallory = owned_user_id!("@m:evil-other.org");
    let mut create = event(1, &room, &alice, "m.room.create", Some(""), &[]);
    create.state_before = crate::StateBefore::Current;
    events.persist(&create).await.unwrap();
    let mut e2 = event(2, &room, &alice, "m.room.member", Some(alice.as_str()), &["$e1"]);
    e2.auth_events = vec![OwnedEventId::try_from("$e1").unwrap()];
    events.persist(&e2).await.unwrap();
    let mut e3 = event(3, &room, &bob, "m.room.member", Some(bob.as_str()), &["$e2"]);
    e3.auth_events = vec![OwnedEventId::try_from("$e1").unwrap(), OwnedEventId::try_from("$e2").unwrap()];
    events.persist(&e3).await.unwrap();
    events.persist(&event(4, &room, &alice, "m.room.message", None, &["$e3"])).await.unwrap();
    events.persist(&event(5, &room, &bob, "m.room.message", None, &["$e4"])).await.unwrap();
    events.persist(&event(6, &room, &mallory, "m.room.message", None, &["$e5"])).await.unwrap();

    let servers: Vec<String> = fed.joined_servers(room.as_str()).await.unwrap().into_iter().collect();
    assert_eq!(servers, vec!["example.org".to_owned(), "other.org".to_owned()]);
    assert!(fed.server_in_room(room.as_str(), "other.org").await.unwrap());
    assert!(!fed.server_in_room(room.as_str(), "evil-other.org").await.unwrap(), "not joined");

    // Owed to other.org: only example.org's events, after the position asked.
    let owed: Vec<i64> =
        fed.events_owed("other.org", "example.org", 1, 50).await.unwrap().iter().map(|e| e.stream_ordering).collect();
    assert_eq!(owed, vec![2, 4]);
    let owed = fed.events_owed("other.org", "example.org", 2, 1).await.unwrap();
    assert_eq!(owed.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(), vec![4], "limited");
    assert!(fed.events_owed("third.org", "example.org", 0, 50).await.unwrap().is_empty(), "not in the room");
    assert_eq!(fed.rooms_written(3, 6, "example.org").await.unwrap(), vec![room.to_string()]);
    assert!(fed.rooms_written(4, 6, "example.org").await.unwrap().is_empty(), "others wrote 5 and 6");

    let chain: Vec<String> =
        fed.auth_chain(&["$e3".to_owned()]).await.unwrap().iter().map(|e| e.event_id.to_string()).collect();
    assert_eq!(chain, vec!["$e1".to_owned(), "$e2".to_owned()], "auth events and theirs, by depth");
    let back: Vec<String> = fed
        .backfill(room.as_str(), &["$e4".to_owned()], 2)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_id.to_string())
        .collect();
    assert_eq!(back, vec!["$e4".to_owned(), "$e3".to_owned()]);
    let missing: Vec<String> = fed
        .missing_events(room.as_str(), &["$e2".to_owned()], &["$e5".to_owned()], 10, 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.event_id.to_string())
        .collect();
    assert_eq!(missing, vec!["$e3".to_owned(), "$e4".to_owned()], "between earliest and latest, oldest first");

    // Destinations: tracked once, moved on only forward, failures recorded and cleared.
    let d = fed.track_destination("other.org", 3).await.unwrap();
    assert_eq!((d.last_position, d.retry_interval_ms), (3, 0));
    assert_eq!(fed.track_destination("other.org", 1).await.unwrap().last_position, 3, "kept");
    fed.destination_failed("other.org", 99_000, 4_000).await.unwrap();
    let d = fed.destination("other.org").await.unwrap().unwrap();
    assert_eq!((d.retry_at_ms, d.retry_interval_ms), (99_000, 4_000));
    fed.destination_caught_up("other.org", 5).await.unwrap();
    fed.destination_caught_up("other.org", 4).await.unwrap();
    let d = fed.destination("other.org").await.unwrap().unwrap();
    assert_eq!((d.last_position, d.retry_at_ms, d.retry_interval_ms), (5, 0, 0));
    assert_eq!(fed.destinations().await.unwrap().len(), 1);
}

async fn aliases_are_unique(t: &TestDb) {
    let events = EventStore::new(t.db.clone());
    let room = owned_room_id!("!r:example.org");
    let alice = owned_user_id!("@alice:example.org");
    events.create_alias("#a:example.org", &room, &alice).await.unwrap();
    assert!(matches!(events.create_alias("#a:example.org", &room, &alice).await, Err(Error::Conflict(_))));
    assert_eq!(events.alias_room("#a:example.org").await.unwrap(), Some(room));
    assert!(events.alias_room("#b:example.org").await.unwrap().is_none());
}

async fn memberships_and_bump_stamps_at_a_position(t: &TestDb) {
    let events = EventStore::new(t.db.clone());
    let (r1, r2) = (owned_room_id!("!r1:example.org"), owned_room_id!("!r2:example.org"));
    let alice = owned_user_id!("@alice:example.org");
    let bob = owned_user_id!("@bob:example.org");
    events.persist(&event(1, &r1, &alice, "m.room.create", Some(""), &[])).await.unwrap();
    events.persist(&event(2, &r1, &alice, "m.room.member", Some(alice.as_str()), &["$e1"])).await.unwrap();
    let mut r2_create = event(3, &r2, &bob, "m.room.create", Some(""), &[]);
    r2_create.creates_room = Some(("11".to_owned(), bob.clone()));
    events.persist(&r2_create).await.unwrap();
    events.persist(&event(4, &r2, &alice, "m.room.member", Some(alice.as_str()), &["$e3"])).await.unwrap();
    events.persist(&event(5, &r1, &alice, "m.room.message", None, &["$e2"])).await.unwrap();
    events.persist(&event(6, &r2, &bob, "m.room.topic", Some(""), &["$e4"])).await.unwrap();
    let mut leave = event(7, &r2, &alice, "m.room.member", Some(alice.as_str()), &["$e6"]);
    leave.membership = Some("leave".to_owned());
    events.persist(&leave).await.unwrap();

    let at = |v: Vec<crate::RoomMembership>| {
        v.into_iter().map(|m| (m.room_id.to_string(), m.membership, m.stream_ordering)).collect::<Vec<_>>()
    };
    assert_eq!(
        at(events.memberships_at(&alice, 6).await.unwrap()),
        vec![
            ("!r1:example.org".to_owned(), "join".to_owned(), 2),
            ("!r2:example.org".to_owned(), "join".to_owned(), 4)
        ]
    );
    assert_eq!(at(events.memberships_at(&alice, 7).await.unwrap())[1].1, "leave");
    assert_eq!(at(events.memberships_at(&alice, 1).await.unwrap()), Vec::new());
    assert!(events.memberships_at(&bob, 7).await.unwrap().is_empty(), "bob has no member events");
    let r2s = r2.to_string();
    assert_eq!(
        events.membership_changes_around(&alice, 3, 7).await.unwrap(),
        vec![(r2s.clone(), alice.to_string(), "join".to_owned()), (r2s, alice.to_string(), "leave".to_owned())]
    );
    assert_eq!(events.membership_changes_around(&alice, 4, 6).await.unwrap(), Vec::new());
    assert!(events.membership_changes_around(&bob, 0, 7).await.unwrap().is_empty(), "bob is in no room");

    let rooms = vec![r1.clone(), r2.clone()];
    let types = ["m.room.message", "m.room.create"];
    let mut stamps = events.latest_of_types(&rooms, &types, &alice, 7).await.unwrap();
    stamps.sort();
    assert_eq!(stamps, vec![(r1.clone(), 5), (r2.clone(), 7)], "the topic is no bump; alice's leave is");
    let mut stamps = events.latest_of_types(&rooms, &types, &alice, 4).await.unwrap();
    stamps.sort();
    assert_eq!(stamps, vec![(r1.clone(), 2), (r2.clone(), 4)]);
    assert_eq!(events.latest_of_types(&rooms, &[], &bob, 7).await.unwrap(), Vec::new());
    assert!(events.latest_of_types(&[], &types, &alice, 7).await.unwrap().is_empty());
}

async fn unread_counts_stop_at_the_read_receipt(t: &TestDb) {
    use crate::{EphemeralStore, Receipt};
    let events = EventStore::new(t.db.clone());
    let room = owned_room_id!("!r:example.org");
    let alice = owned_user_id!("@alice:example.org");
    let bob = owned_user_id!("@bob:example.org");
    events.persist(&event(1, &room, &bob, "m.room.create", Some(""), &[])).await.unwrap();
    for pos in 2..=4 {
        let mut e = event(pos, &room, &bob, "m.room.message", None, &[]);
        e.creates_room = None;
        e.push_actions = vec![crate::PushAction {
            user_id: alice.clone(),
            highlight: pos == 4,
            thread_id: String::new(),
            actions: "[\"notify\"]".into(),
        }];
        events.persist(&e).await.unwrap();
    }
    let c = events.unread_counts(&alice, &room, 10).await.unwrap();
    assert_eq!((c.notifications, c.highlights), (3, 1));
    assert_eq!(events.unread_counts(&alice, &room, 3).await.unwrap().notifications, 2, "bounded by the position");
    assert_eq!(events.unread_counts(&bob, &room, 10).await.unwrap().notifications, 0);
    let receipt = Receipt {
        position: 1,
        room_id: room.to_string(),
        user_id: alice.to_string(),
        receipt_type: "m.read".into(),
        thread_id: String::new(),
        event_id: "$e3".into(),
        ts: 1,
    };
    EphemeralStore::new(t.db.clone()).put_receipt(&receipt).await.unwrap();
    let c = events.unread_counts(&alice, &room, 10).await.unwrap();
    assert_eq!((c.notifications, c.highlights), (1, 1), "only what follows the receipt");

    // Threads: 5 and 6 reply in the thread of $e2, 7 is in the main timeline again.
    for (pos, thread) in [(5, "$e2"), (6, "$e2"), (7, "")] {
        let mut e = event(pos, &room, &bob, "m.room.message", None, &[]);
        e.push_actions = vec![crate::PushAction {
            user_id: alice.clone(),
            highlight: false,
            thread_id: thread.to_owned(),
            actions: "[\"notify\"]".into(),
        }];
        events.persist(&e).await.unwrap();
    }
    let counts =
        |v: Vec<(String, crate::UnreadCounts)>| v.into_iter().map(|(t, c)| (t, c.notifications)).collect::<Vec<_>>();
    assert_eq!(
        counts(events.unread_counts_by_thread(&alice, &room, 10).await.unwrap()),
        vec![(String::new(), 2), ("$e2".to_owned(), 2)]
    );
    // Counted in two steps under the same receipts: the part after 5 is what to add to the
    // counts up to 5.
    let receipts = events.read_receipts(&alice, &room).await.unwrap();
    assert_eq!(receipts, crate::ReadReceipts { unthreaded: 3, threads: Vec::new() });
    assert_eq!(
        counts(events.unread_counts_between(&alice, &room, &receipts, 0, 5).await.unwrap()),
        vec![(String::new(), 1), ("$e2".to_owned(), 1)]
    );
    assert_eq!(
        counts(events.unread_counts_between(&alice, &room, &receipts, 5, 10).await.unwrap()),
        vec![(String::new(), 1), ("$e2".to_owned(), 1)]
    );
    assert!(events.unread_counts_between(&alice, &room, &receipts, 7, 10).await.unwrap().is_empty());
    // A receipt in the thread clears only the thread; `main` only the main timeline.
    let threaded = |pos: i64, thread: &str, event: &str| Receipt {
        position: pos,
        thread_id: thread.into(),
        event_id: event.into(),
        ..receipt.clone()
    };
    let ephemeral = EphemeralStore::new(t.db.clone());
    ephemeral.put_receipt(&threaded(2, "$e2", "$e6")).await.unwrap();
    assert_eq!(counts(events.unread_counts_by_thread(&alice, &room, 10).await.unwrap()), vec![(String::new(), 2)]);
    let receipts = events.read_receipts(&alice, &room).await.unwrap();
    assert_eq!(receipts, crate::ReadReceipts { unthreaded: 3, threads: vec![("$e2".to_owned(), 6)] });
    assert_eq!(
        counts(events.unread_counts_between(&alice, &room, &receipts, 5, 10).await.unwrap()),
        vec![(String::new(), 1)]
    );
    ephemeral.put_receipt(&threaded(3, "main", "$e7")).await.unwrap();
    assert!(events.unread_counts_by_thread(&alice, &room, 10).await.unwrap().is_empty());
    assert_eq!(events.unread_counts(&alice, &room, 10).await.unwrap(), crate::UnreadCounts::default());
}

async fn relations_threads_and_timestamps(t: &TestDb) {
    use crate::RelationFilter;
    let events = EventStore::new(t.db.clone());
    let room = owned_room_id!("!r:example.org");
    let alice = owned_user_id!("@alice:example.org");
    let bob = owned_user_id!("@bob:example.org");
    let id = |n: i64| OwnedEventId::try_from(format!("$e{n}").as_str()).unwrap();
    // 1 create, 2 root, 3 thread reply (bob) to 2, 4 annotation on 3, 5 edit of 2 (alice),
    // 6 thread reply (alice) to 2, 7 a root with a thread reply 8 (bob), 9 edit of 3, later redacted by 10.
    type Row<'a> = (i64, Option<(i64, &'a str)>, &'a OwnedUserId, &'a str);
    let rels: &[Row<'_>] = &[
        (1, None, &alice, "m.room.create"),
        (2, None, &alice, "m.room.message"),
        (3, Some((2, "m.thread")), &bob, "m.room.message"),
        (4, Some((3, "m.annotation")), &alice, "m.reaction"),
        (5, Some((2, "m.replace")), &alice, "m.room.message"),
        (6, Some((2, "m.thread")), &alice, "m.room.message"),
        (7, None, &alice, "m.room.message"),
        (8, Some((7, "m.thread")), &bob, "m.room.message"),
        (9, Some((3, "m.replace")), &bob, "m.room.message"),
    ];
    for (pos, rel, sender, ty) in rels {
        let prev = format!("$e{}", pos - 1);
        let mut e = event(
            *pos,
            &room,
            sender,
            ty,
            (*ty == "m.room.create").then_some(""),
            &[prev.as_str()][..(*pos > 1) as usize],
        );
        e.relation = rel.map(|(p, r)| (id(p), r.to_owned()));
        events.persist(&e).await.unwrap();
    }
    let mut redaction = event(10, &room, &bob, "m.room.redaction", None, &["$e9"]);
    redaction.redacts = Some((id(9), "{\"redacted\":true}".to_owned()));
    events.persist(&redaction).await.unwrap();
    // An event in another room naming $e2 as its parent relates to nothing here.
    let other_room = owned_room_id!("!other:example.org");
    let mut intruder = event(11, &other_room, &bob, "m.room.create", Some(""), &[]);
    intruder.creates_room = Some(("11".to_owned(), bob.clone()));
    intruder.relation = Some((id(2), "m.thread".to_owned()));
    events.persist(&intruder).await.unwrap();

    let ids = |v: Vec<crate::PersistedEvent>| v.into_iter().map(|e| e.stream_ordering).collect::<Vec<_>>();
    let all = RelationFilter { max_depth: 1, backwards: true, upto: i64::MAX, limit: 10, ..RelationFilter::default() };
    assert_eq!(
        ids(events.relations(&room, "$e2", &all).await.unwrap()),
        vec![6, 5, 3],
        "direct children, newest first"
    );
    let fwd = RelationFilter { backwards: false, ..all.clone() };
    assert_eq!(ids(events.relations(&room, "$e2", &fwd).await.unwrap()), vec![3, 5, 6]);
    let deep = RelationFilter { max_depth: 3, ..all.clone() };
    assert_eq!(
        ids(events.relations(&room, "$e2", &deep).await.unwrap()),
        vec![6, 5, 4, 3],
        "recursion finds the annotation of a reply; the redacted edit is gone"
    );
    let threads_only = RelationFilter { rel_type: Some("m.thread"), ..all.clone() };
    assert_eq!(ids(events.relations(&room, "$e2", &threads_only).await.unwrap()), vec![6, 3]);
    let reactions = RelationFilter { event_type: Some("m.reaction"), ..deep.clone() };
    assert_eq!(ids(events.relations(&room, "$e2", &reactions).await.unwrap()), vec![4]);
    let paged = RelationFilter { from: Some(6), limit: 1, ..all.clone() };
    assert_eq!(ids(events.relations(&room, "$e2", &paged).await.unwrap()), vec![5]);
    let bounded = RelationFilter { to: Some(5), ..all.clone() };
    assert_eq!(ids(events.relations(&room, "$e2", &bounded).await.unwrap()), vec![6, 5]);
    let hidden = RelationFilter { upto: 4, ..all.clone() };
    assert_eq!(ids(events.relations(&room, "$e2", &hidden).await.unwrap()), vec![3]);
    assert_eq!(
        ids(events.relations(&other_room, "$e2", &all).await.unwrap()),
        vec![11],
        "each room sees only its own children (callers check the parent is in the room)"
    );

    let rows = events.relation_rows(&room, &["$e2", "$e3"], &["m.thread", "m.replace"], i64::MAX).await.unwrap();
    assert_eq!(
        rows.iter().map(|r| (r.stream_ordering, r.relates_to.as_str(), r.rel_type.as_str())).collect::<Vec<_>>(),
        vec![(3, "$e2", "m.thread"), (5, "$e2", "m.replace"), (6, "$e2", "m.thread")]
    );
    assert_eq!(rows[0].sender, bob);

    assert_eq!(events.threads(&room, None, i64::MAX, i64::MAX, 10).await.unwrap(), vec![(id(7), 8), (id(2), 6)]);
    assert_eq!(events.threads(&room, None, i64::MAX, 8, 10).await.unwrap(), vec![(id(2), 6)], "paged");
    assert_eq!(events.threads(&room, None, 5, i64::MAX, 10).await.unwrap(), vec![(id(2), 3)], "visibility");
    assert_eq!(
        events.threads(&room, Some(&alice), i64::MAX, i64::MAX, 10).await.unwrap(),
        vec![(id(7), 8), (id(2), 6)]
    );
    let carol = owned_user_id!("@carol:example.org");
    assert!(events.threads(&room, Some(&carol), i64::MAX, i64::MAX, 10).await.unwrap().is_empty());
    let bob_threads = events.threads(&room, Some(&bob), 5, i64::MAX, 10).await.unwrap();
    assert_eq!(bob_threads, vec![(id(2), 3)], "bob replied in $e2's thread");

    // origin_server_ts is 1000 + position.
    let near = |ts, fwd, upto| {
        let events = events.clone();
        let room = room.clone();
        async move { events.event_near_ts(&room, ts, fwd, upto).await.unwrap().map(|e| e.stream_ordering) }
    };
    assert_eq!(near(1004, true, i64::MAX).await, Some(4));
    assert_eq!(near(1004, false, i64::MAX).await, Some(4));
    assert_eq!(near(1000, false, i64::MAX).await, None);
    assert_eq!(near(2000, true, i64::MAX).await, None);
    assert_eq!(near(2000, false, i64::MAX).await, Some(10));
    assert_eq!(near(2000, false, 7).await, Some(7), "only visible events");
}

async fn full_text_search_finds_words_in_visible_rooms(t: &TestDb) {
    let events = EventStore::new(t.db.clone());
    let room = owned_room_id!("!r:example.org");
    let other = owned_room_id!("!o:example.org");
    let alice = owned_user_id!("@alice:example.org");
    events.persist(&event(1, &room, &alice, "m.room.create", Some(""), &[])).await.unwrap();
    let bodies = [
        (2, &room, "the quick brown fox"),
        (3, &room, "a lazy dog sleeps"),
        (4, &other, "quick thinking"),
        (5, &room, "quick quick quick"),
    ];
    for (pos, r, body) in bodies {
        let mut e = event(pos, r, &alice, "m.room.message", None, &[]);
        e.creates_room = None;
        e.json = serde_json::json!({ "content": { "body": body, "msgtype": "m.text" } }).to_string();
        events.persist(&e).await.unwrap();
    }
    let rooms = vec![room.to_string()];
    let keys = ["content.body", "content.name", "content.topic"];
    let (hits, total) = events.search("QUICK", &rooms, &keys, false, 0, 10).await.unwrap();
    assert_eq!(total, 2, "case-insensitive, only the rooms asked for");
    assert_eq!(hits.iter().map(|h| h.event_id.as_str()).collect::<Vec<_>>(), vec!["$e5", "$e2"], "recent first");
    let (hits, _) = events.search("quick brown", &rooms, &keys, true, 0, 10).await.unwrap();
    assert_eq!(hits.iter().map(|h| h.event_id.as_str()).collect::<Vec<_>>(), vec!["$e2"], "every word must match");
    let (page, total) = events.search("quick", &rooms, &keys, true, 1, 1).await.unwrap();
    assert_eq!((page.len(), total), (1, 2));
    let (none, _) = events.search("quick", &rooms, &["content.name"], true, 0, 10).await.unwrap();
    assert!(none.is_empty(), "keys restrict the fields");
    let (none, _) = events.search("\"); DROP", &rooms, &keys, true, 0, 10).await.unwrap();
    assert!(none.is_empty(), "odd input is just words");
    let mut redaction = event(6, &room, &alice, "m.room.redaction", None, &[]);
    redaction.creates_room = None;
    redaction.redacts = Some((OwnedEventId::try_from("$e3").unwrap(), "{}".to_owned()));
    events.persist(&redaction).await.unwrap();
    let (none, _) = events.search("lazy", &rooms, &keys, true, 0, 10).await.unwrap();
    assert!(none.is_empty(), "a redacted event is no longer found");
}

async fn count(t: &TestDb, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(t.db.pool()).await.unwrap()
}

/// Linear history: messages share their predecessor's group, each state event adds one delta row,
/// snapshots come when the chain reaches half the state, and the state at every position is the
/// latest event of each key up to it.
async fn state_groups_are_deltas_with_bounded_snapshots(t: &TestDb) {
    let events = EventStore::new(t.db.clone());
    let room = owned_room_id!("!big:example.org");
    let alice = owned_user_id!("@alice:example.org");
    events.persist(&event(1, &room, &alice, "m.room.create", Some(""), &[])).await.unwrap();
    let mut expected: std::collections::BTreeMap<(String, String), i64> =
        [(("m.room.create".to_owned(), String::new()), 1)].into();
    let mut at: Vec<std::collections::BTreeMap<(String, String), i64>> = vec![Default::default(), expected.clone()];
    for pos in 2..=700_i64 {
        let prev = format!("$e{}", pos - 1);
        let e = match pos % 3 {
            0 => event(pos, &room, &alice, "m.room.message", None, &[&prev]),
            1 => event(pos, &room, &alice, "m.room.member", Some(&format!("@u{pos}:example.org")), &[&prev]),
            // Re-sets one key: a replacement, not growth.
            _ => event(pos, &room, &alice, "m.room.topic", Some(""), &[&prev]),
        };
        if let Some(key) = &e.state_key {
            expected.insert((e.event_type.clone(), key.clone()), pos);
        }
        let mut e = e;
        e.creates_room = None;
        events.persist(&e).await.unwrap();
        at.push(expected.clone());
    }
    for pos in [1_i64, 2, 3, 50, 101, 102, 333, 500, 699, 700] {
        let got: std::collections::BTreeMap<(String, String), i64> = events
            .state_at(&room, pos)
            .await
            .unwrap()
            .into_iter()
            .map(|e| ((e.event_type, e.state_key.unwrap_or_default()), e.stream_ordering))
            .collect();
        assert_eq!(got, at[usize::try_from(pos).unwrap()], "state at {pos}");
    }
    let state_events = count(t, "SELECT COUNT(*) FROM events WHERE state_key IS NOT NULL").await;
    let groups = count(t, "SELECT COUNT(*) FROM state_groups").await;
    assert_eq!(groups, state_events, "one group per state event; messages share their predecessor's");
    let snapshots = count(t, "SELECT COUNT(*) FROM state_groups WHERE prev_group IS NULL").await;
    assert!(snapshots >= 2, "long chains are cut by snapshots ({snapshots})");
    let max_chain = count(t, "SELECT MAX(chain_length) FROM state_groups").await;
    assert!(max_chain <= crate::MIN_CHAIN.max(235 / 2), "chains stay bounded ({max_chain})");
    let rows = count(t, "SELECT COUNT(*) FROM state_group_entries").await;
    assert!(rows < state_events * 4, "{rows} entry rows for {state_events} state events: no copy per event");
    let some =
        events.members_at(&room, 500, &["@u4:example.org", "@u499:example.org", "@nobody:example.org"]).await.unwrap();
    assert_eq!(some.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(), vec![4, 499], "only the members asked for");
    assert!(events.members_at(&room, 498, &["@u499:example.org"]).await.unwrap().is_empty(), "not yet joined");
    let after = events.state_ids_after("$e699").await.unwrap().unwrap();
    assert_eq!(after.get(&("m.room.topic".to_owned(), String::new())).map(String::as_str), Some("$e698"));
}

/// A fork: two branches off one event, merged by an event whose state the caller resolved; an
/// outlier, a rejected and a soft-failed event are kept off the live stream and out of clients'
/// sight, and only ordinary events become forward extremities.
async fn forks_outliers_rejected_and_soft_failed_events(t: &TestDb) {
    use crate::{EventStatus, StateBefore, StateIds};
    let events = EventStore::new(t.db.clone());
    let room = owned_room_id!("!fork:example.org");
    let alice = owned_user_id!("@alice:example.org");
    events.persist(&event(1, &room, &alice, "m.room.create", Some(""), &[])).await.unwrap();
    let ids = |pairs: &[(&str, &str, &str)]| -> StateIds {
        pairs.iter().map(|(t, k, e)| (((*t).to_owned(), (*k).to_owned()), (*e).to_owned())).collect()
    };
    let base = ids(&[("m.room.create", "", "$e1")]);
    let remote = |pos: i64, ty: &str, key: Option<&str>, prev: &[&str], before: StateIds| {
        let mut e = event(pos, &room, &alice, ty, key, prev);
        e.creates_room = None;
        e.state_before = StateBefore::Ids(before);
        e
    };
    // Branch A: a name; branch B (from another server): a topic. Both follow $e1.
    let a = remote(2, "m.room.name", Some(""), &["$e1"], base.clone());
    events.persist(&a).await.unwrap();
    let mut b = remote(3, "m.room.topic", Some(""), &["$e1"], base.clone());
    let merged = ids(&[("m.room.create", "", "$e1"), ("m.room.name", "", "$e2"), ("m.room.topic", "", "$e3")]);
    b.new_current_state = Some(merged.clone());
    events.persist(&b).await.unwrap();
    let mut ext: Vec<String> =
        events.forward_extremities(&room).await.unwrap().into_iter().map(|(e, _)| e.to_string()).collect();
    ext.sort();
    assert_eq!(ext, vec!["$e2", "$e3"], "two branches, two extremities");
    assert_eq!(events.current_state(&room).await.unwrap().len(), 3, "current state is the resolved one");
    assert_eq!(
        events.state_ids_after("$e2").await.unwrap().unwrap(),
        ids(&[("m.room.create", "", "$e1"), ("m.room.name", "", "$e2")])
    );
    // The merge follows both; its state before is the resolved state.
    let m = remote(4, "m.room.message", None, &["$e2", "$e3"], merged.clone());
    events.persist(&m).await.unwrap();
    assert_eq!(events.state_ids_after("$e4").await.unwrap().unwrap(), merged);
    assert_eq!(events.forward_extremities(&room).await.unwrap().len(), 1);

    // Off the live stream, below zero.
    let mut outlier = remote(-1, "m.room.member", Some("@bob:example.org"), &[], StateIds::new());
    outlier.status = EventStatus::Outlier;
    outlier.state_before = StateBefore::Unknown;
    events.persist(&outlier).await.unwrap();
    let mut rejected = remote(-2, "m.room.name", Some(""), &["$e4"], merged.clone());
    rejected.status = EventStatus::Rejected("not allowed".into());
    events.persist(&rejected).await.unwrap();
    let mut soft = remote(-3, "m.room.topic", Some(""), &["$e4"], merged.clone());
    soft.status = EventStatus::SoftFailed("sender is banned".into());
    events.persist(&soft).await.unwrap();

    for hidden in ["$e-1", "$e-2", "$e-3"] {
        assert!(events.event(hidden).await.unwrap().is_none(), "{hidden} is not shown to clients");
    }
    let latest = events.latest_room_events(&room, i64::MAX, 10).await.unwrap();
    assert_eq!(latest.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(), vec![1, 2, 3, 4]);
    assert_eq!(
        events.forward_extremities(&room).await.unwrap()[0].0.as_str(),
        "$e4",
        "only ordinary events extend the room"
    );
    assert_eq!(events.current_state(&room).await.unwrap().len(), 3, "hidden events leave the current state alone");
    let pdus = events.pdus(&["$e-1", "$e-2", "$e-3", "$e4", "$missing"]).await.unwrap();
    let mut statuses: Vec<(String, EventStatus)> = pdus.into_iter().map(|(e, s)| (e.event_id.to_string(), s)).collect();
    statuses.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        statuses,
        vec![
            ("$e-1".to_owned(), EventStatus::Outlier),
            ("$e-2".to_owned(), EventStatus::Rejected("not allowed".into())),
            ("$e-3".to_owned(), EventStatus::SoftFailed("sender is banned".into())),
            ("$e4".to_owned(), EventStatus::Ordinary),
        ]
    );
    assert!(events.state_ids_after("$e-1").await.unwrap().is_none(), "an outlier's state is unknown");
    assert_eq!(events.state_ids_after("$e-2").await.unwrap().unwrap(), merged, "a rejected event changes no state");
    let soft_after = events.state_ids_after("$e-3").await.unwrap().unwrap();
    assert_eq!(
        soft_after.get(&("m.room.topic".to_owned(), String::new())).map(String::as_str),
        Some("$e-3"),
        "a soft-failed event's state counts after it"
    );
    assert_eq!(events.min_stream_ordering().await.unwrap(), -3);
    assert_eq!(events.max_stream_ordering().await.unwrap(), 4);
    assert_eq!(count(t, "SELECT COUNT(*) FROM event_edges WHERE event_id = '$e4'").await, 2);
}

/// Events written before schema 17 have no state group: their state is still read from the linear
/// history, and the next event snapshots the room's current state.
async fn rooms_from_before_state_groups_keep_their_state(t: &TestDb) {
    let events = EventStore::new(t.db.clone());
    let room = owned_room_id!("!old:example.org");
    let alice = owned_user_id!("@alice:example.org");
    events.persist(&event(1, &room, &alice, "m.room.create", Some(""), &[])).await.unwrap();
    let mut name = event(2, &room, &alice, "m.room.name", Some(""), &["$e1"]);
    name.creates_room = None;
    events.persist(&name).await.unwrap();
    for sql in [
        "UPDATE events SET state_group = NULL",
        "UPDATE rooms SET state_group = NULL",
        "DELETE FROM state_group_entries",
        "DELETE FROM state_groups",
    ] {
        sqlx::query(sql).execute(t.db.pool()).await.unwrap();
    }
    let positions = |v: Vec<crate::PersistedEvent>| v.iter().map(|e| e.stream_ordering).collect::<Vec<_>>();
    assert_eq!(positions(events.state_at(&room, 2).await.unwrap()), vec![1, 2]);
    assert!(events.members_at(&room, 2, &["@alice:example.org"]).await.unwrap().is_empty());
    let mut topic = event(3, &room, &alice, "m.room.topic", Some(""), &["$e2"]);
    topic.creates_room = None;
    events.persist(&topic).await.unwrap();
    assert_eq!(positions(events.state_at(&room, 3).await.unwrap()), vec![1, 2, 3]);
    assert_eq!(positions(events.state_at(&room, 1).await.unwrap()), vec![1], "older positions still read linearly");
}

/// A group that fails leaves nothing behind.
async fn group_commit_is_all_or_nothing(t: &TestDb) {
    let events = EventStore::new(t.db.clone());
    let room = owned_room_id!("!g:example.org");
    let alice = owned_user_id!("@alice:example.org");
    let first = event(1, &room, &alice, "m.room.create", Some(""), &[]);
    let mut second = event(2, &room, &alice, "m.room.name", Some(""), &["$e1"]);
    second.creates_room = None;
    let mut clash = event(3, &room, &alice, "m.room.message", None, &["$e2"]);
    clash.creates_room = None;
    clash.event_id = OwnedEventId::try_from("$e1").unwrap();
    assert!(events.persist_batch(&[first.clone(), second.clone(), clash]).await.is_err());
    assert_eq!(events.max_stream_ordering().await.unwrap(), 0, "nothing of the failed group is kept");
    events.persist_batch(&[first, second]).await.unwrap();
    assert_eq!(events.max_stream_ordering().await.unwrap(), 2);
    assert_eq!(events.current_state(&room).await.unwrap().len(), 2);
}

/// The combined queries sync uses agree with the single ones they replace.
async fn sync_hot_path_queries_match_their_parts(t: &TestDb) {
    use crate::E2eeStore;
    let events = EventStore::new(t.db.clone());
    let alice = owned_user_id!("@alice:example.org");
    let (r1, r2) = (owned_room_id!("!one:example.org"), owned_room_id!("!two:example.org"));
    events.persist(&event(1, &r1, &alice, "m.room.create", Some(""), &[])).await.unwrap();
    events.persist(&event(2, &r1, &alice, "m.room.member", Some(alice.as_str()), &["$e1"])).await.unwrap();
    let mut create2 = event(3, &r2, &alice, "m.room.create", Some(""), &[]);
    create2.room_id = r2.clone();
    events.persist(&create2).await.unwrap();
    let mut join2 = event(4, &r2, &alice, "m.room.member", Some(alice.as_str()), &["$e3"]);
    join2.creates_room = None;
    events.persist(&join2).await.unwrap();
    events.forget_room(&alice, &r2).await.unwrap();
    let (rooms, forgotten) = events.rooms_for_user_and_forgotten(&alice).await.unwrap();
    assert_eq!(rooms, events.rooms_for_user(&alice).await.unwrap());
    assert_eq!(forgotten, [r2.to_string()].into_iter().collect());

    let e2ee = E2eeStore::new(t.db.clone());
    assert_eq!(e2ee.key_counts(&alice, "D").await.unwrap(), (vec![], vec![]));
    e2ee.add_one_time_keys(
        &alice,
        "D",
        &[("curve:1".into(), "{}".into()), ("curve:2".into(), "{}".into()), ("ed:1".into(), "{}".into())],
    )
    .await
    .unwrap();
    e2ee.set_fallback_key(&alice, "D", "curve:F", "{}").await.unwrap();
    let (counts, fallback) = e2ee.key_counts(&alice, "D").await.unwrap();
    assert_eq!(counts, e2ee.one_time_key_counts(&alice, "D").await.unwrap());
    assert_eq!(counts, vec![("curve".to_owned(), 2), ("ed".to_owned(), 1)]);
    assert_eq!(fallback, vec!["curve".to_owned()]);

    // Per device for whole users: a device with identity keys and nothing left says 0.
    e2ee.set_device_keys(&alice, "D", "{}").await.unwrap();
    e2ee.set_device_keys(&alice, "EMPTY", "{}").await.unwrap();
    let all = e2ee.key_counts_of_users(&[alice.to_string(), "@nobody:x".to_owned()]).await.unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), vec![alice.as_str()], "users without devices are left out");
    let d = |id: &str| all[alice.as_str()][id].clone();
    assert_eq!(all[alice.as_str()].len(), 2);
    let counts: Vec<(&str, i64)> = vec![("curve", 2), ("ed", 1), ("signed_curve25519", 0)];
    assert_eq!(d("D").one_time_keys, counts.into_iter().map(|(a, n)| (a.to_owned(), n)).collect());
    assert_eq!(d("D").unused_fallback, vec!["curve".to_owned()]);
    assert_eq!(d("EMPTY").one_time_keys, [("signed_curve25519".to_owned(), 0)].into_iter().collect());
    assert!(d("EMPTY").unused_fallback.is_empty());
}

async fn pushers_their_log_and_pending_pushes(t: &TestDb) {
    use crate::{EphemeralStore, PushAction, Pusher, PusherStore, Receipt};
    let store = PusherStore::new(t.db.clone());
    let events = EventStore::new(t.db.clone());
    let alice = owned_user_id!("@alice:example.org");
    let bob = owned_user_id!("@bob:example.org");
    let pusher = |user: &OwnedUserId, app: &str, key: &str, device: &str| Pusher {
        user_id: user.to_string(),
        app_id: app.into(),
        pushkey: key.into(),
        device_id: device.into(),
        kind: "http".into(),
        app_display_name: "App".into(),
        device_display_name: "Phone".into(),
        profile_tag: None,
        lang: "en".into(),
        data: r#"{"url":"https://push.example.org/_matrix/push/v1/notify"}"#.into(),
        pushkey_ts: 5,
        last_stream_ordering: 1,
        last_badge: None,
        failing_since: None,
    };
    let mut last = store.max_position().await.unwrap();
    assert_eq!(last, 0);
    let logged = store.set(&pusher(&alice, "app", "k1", "A"), false, &mut last).await.unwrap();
    assert_eq!(logged, vec![(1, alice.to_string())]);
    store.set(&pusher(&alice, "app", "k2", "A2"), false, &mut last).await.unwrap();
    // Bob takes k1 without append: alice's k1 goes, and both users are logged.
    let logged = store.set(&pusher(&bob, "app", "k1", "B"), false, &mut last).await.unwrap();
    assert_eq!(logged, vec![(3, alice.to_string()), (4, bob.to_string())]);
    assert_eq!(
        store.for_user(alice.as_str()).await.unwrap().iter().map(|p| p.pushkey.as_str()).collect::<Vec<_>>(),
        ["k2"]
    );
    // With append both keep it.
    store.set(&pusher(&alice, "app", "k1", "A"), true, &mut last).await.unwrap();
    assert_eq!(store.for_user(alice.as_str()).await.unwrap().len(), 2);
    assert_eq!(store.for_user(bob.as_str()).await.unwrap().len(), 1);
    // An update keeps the position and replaces the rest.
    let mut moved = store.for_user(alice.as_str()).await.unwrap().remove(0);
    store.advance(&moved, 7).await.unwrap();
    store.advance(&moved, 3).await.unwrap();
    moved.lang = "de".into();
    store.set(&moved, true, &mut last).await.unwrap();
    let now = store.for_user(alice.as_str()).await.unwrap().remove(0);
    assert_eq!((now.lang.as_str(), now.last_stream_ordering), ("de", 7), "never moves back; update keeps it");
    assert_eq!(store.log_after(4, 100).await.unwrap().len(), 2);
    assert_eq!(store.max_position().await.unwrap(), last);
    assert_eq!(store.users_with_pushers().await.unwrap(), vec![alice.to_string(), bob.to_string()]);

    // Removal by device, by user, one by one; removing nothing logs nothing.
    assert_eq!(store.remove_for_device(&alice, "A2", &mut last).await.unwrap().len(), 1);
    assert!(store.remove_for_device(&alice, "nope", &mut last).await.unwrap().is_empty());
    assert_eq!(store.for_user(alice.as_str()).await.unwrap().len(), 1);
    store.remove(&alice, "app", "k1", &mut last).await.unwrap();
    assert!(store.for_user(alice.as_str()).await.unwrap().is_empty());
    store.remove_for_user(&bob, &mut last).await.unwrap();
    assert!(store.users_with_pushers().await.unwrap().is_empty());

    // Pending pushes after a position, who was notified, and the badge.
    let room = owned_room_id!("!r:example.org");
    events.persist(&event(1, &room, &bob, "m.room.create", Some(""), &[])).await.unwrap();
    let mut join = event(2, &room, &alice, "m.room.member", Some(alice.as_str()), &[]);
    join.creates_room = None;
    events.persist(&join).await.unwrap();
    for pos in 3..=5 {
        let mut e = event(pos, &room, &bob, "m.room.message", None, &[]);
        e.creates_room = None;
        e.push_actions = vec![PushAction {
            user_id: alice.clone(),
            highlight: pos == 5,
            thread_id: String::new(),
            actions: r#"["notify",{"set_tweak":"sound","value":"default"}]"#.into(),
        }];
        events.persist(&e).await.unwrap();
    }
    assert_eq!(store.notified_users(0, 5).await.unwrap(), vec![alice.to_string()]);
    assert!(store.notified_users(5, 9).await.unwrap().is_empty());
    let pending = store.pending(alice.as_str(), 3, 10).await.unwrap();
    assert_eq!(pending.iter().map(|p| p.event.stream_ordering).collect::<Vec<_>>(), [4, 5]);
    assert!(pending[1].highlight && pending[0].actions.contains("sound"));
    assert_eq!(store.badge_count(alice.as_str(), true).await.unwrap(), 1, "one room");
    assert_eq!(store.badge_count(alice.as_str(), false).await.unwrap(), 3, "three notifications");
    let receipt = Receipt {
        position: 1,
        room_id: room.to_string(),
        user_id: alice.to_string(),
        receipt_type: "m.read".into(),
        thread_id: String::new(),
        event_id: "$e5".into(),
        ts: 1,
    };
    EphemeralStore::new(t.db.clone()).put_receipt(&receipt).await.unwrap();
    assert_eq!(store.badge_count(alice.as_str(), true).await.unwrap(), 0, "read up to the last notification");
}

async fn threepids_sessions_and_email_throttle(t: &TestDb) {
    use crate::{ThreepidSession, ThreepidStore};
    let store = ThreepidStore::new(t.db.clone());
    let alice = owned_user_id!("@alice:example.org");
    let bob = owned_user_id!("@bob:example.org");
    let s = ThreepidSession {
        sid: "sid1".into(),
        client_secret: "secret".into(),
        medium: "email".into(),
        address: "alice@example.org".into(),
        send_attempt: 1,
        created_ts: 1000,
        validated_ts: None,
    };
    store.put_session(&s, "hash1").await.unwrap();
    assert_eq!(store.session_for("secret", "alice@example.org").await.unwrap().unwrap().sid, "sid1");
    // A newer attempt replaces the token: the old link no longer works.
    store.put_session(&ThreepidSession { send_attempt: 2, ..s.clone() }, "hash2").await.unwrap();
    assert!(!store.validate("sid1", "secret", "hash1", 0).await.unwrap());
    assert!(!store.validate("sid1", "wrong", "hash2", 0).await.unwrap());
    assert!(!store.validate("sid1", "secret", "hash2", 2000).await.unwrap(), "expired");
    assert!(store.validate("sid1", "secret", "hash2", 0).await.unwrap());
    let got = store.session("sid1", "secret").await.unwrap().unwrap();
    assert_eq!(got.send_attempt, 2);
    assert!(got.validated_ts.is_some());

    assert!(store.add(&alice, "email", "alice@example.org", 5).await.unwrap());
    assert!(store.add(&alice, "email", "alice@example.org", 5).await.unwrap(), "adding again is fine");
    assert!(!store.add(&bob, "email", "alice@example.org", 5).await.unwrap(), "one account per address");
    assert_eq!(store.owner("email", "alice@example.org").await.unwrap().as_deref(), Some(alice.as_str()));
    assert_eq!(store.for_user(&alice).await.unwrap().len(), 1);
    assert!(store.remove(&alice, "email", "alice@example.org").await.unwrap());
    assert!(store.for_user(&alice).await.unwrap().is_empty());
    store.add(&alice, "email", "a2@example.org", 5).await.unwrap();
    store.remove_all(&alice).await.unwrap();
    assert!(store.owner("email", "a2@example.org").await.unwrap().is_none());

    store.set_email_throttle("@alice:x", "a@x", "!r:x", 10, 3).await.unwrap();
    store.set_email_throttle("@alice:x", "a@x", "!r:x", 20, 7).await.unwrap();
    assert_eq!(store.email_throttle("@alice:x", "a@x").await.unwrap(), vec![("!r:x".to_owned(), 20, 7)]);
}

async fn appservice_transactions_are_staged_then_acknowledged(t: &TestDb) {
    let store = crate::AppserviceStore::new(t.db.clone());
    let start =
        crate::AppservicePositions { events: 5, receipts: 1, typing: 2, presence: 3, to_device: 4, device_lists: 6 };
    let first = store.state_or_start("irc", start).await.unwrap();
    assert_eq!((first.positions, first.next_txn_id, first.pending.clone()), (start, 1, None));
    // A second start (another instance at a hand-over) keeps the stored row.
    let again = store.state_or_start("irc", crate::AppservicePositions { events: 99, ..start }).await.unwrap();
    assert_eq!(again, first);

    // Two messages in the inbox of the service's device; the staged transaction consumes one.
    let alice = owned_user_id!("@_irc_alice:x");
    let msg = |position| crate::ToDeviceMessage {
        position,
        user_id: alice.to_string(),
        device_id: "D".into(),
        sender: "@bob:x".into(),
        event_type: "m.room_key".into(),
        content: "{}".into(),
    };
    let e2ee = crate::E2eeStore::new(t.db.clone());
    e2ee.queue_to_device(&[msg(7), msg(8)]).await.unwrap();

    let to = crate::AppservicePositions { events: 9, receipts: 4, to_device: 7, ..start };
    assert!(store.stage("irc", 1, r#"{"events":[]}"#, to, &[7]).await.unwrap());
    // Nothing else is staged while one is pending, nor with a stale ID.
    assert!(!store.stage("irc", 2, "{}", to, &[]).await.unwrap());
    let staged = store.state_or_start("irc", start).await.unwrap();
    assert_eq!(staged.pending, Some((1, r#"{"events":[]}"#.to_owned())));
    assert_eq!((staged.positions, staged.next_txn_id), (to, 2));
    store.skip_to("irc", crate::AppservicePositions { events: 50, ..to }).await.unwrap();
    assert_eq!(store.state_or_start("irc", start).await.unwrap().positions.events, 9, "no skipping past a staged one");

    store.set_failing("irc", Some(123)).await.unwrap();
    store.acknowledged("irc", 7).await.unwrap();
    assert!(store.state_or_start("irc", start).await.unwrap().pending.is_some(), "only its own ID clears it");
    assert_eq!(e2ee.to_device_for(&alice, "D", 100, 10).await.unwrap().len(), 2, "nothing consumed before the ack");
    store.acknowledged("irc", 1).await.unwrap();
    let done = store.state_or_start("irc", start).await.unwrap();
    assert_eq!((done.pending, done.failing_since), (None, None));
    let left: Vec<i64> = e2ee.to_device_for(&alice, "D", 100, 10).await.unwrap().iter().map(|m| m.position).collect();
    assert_eq!(left, vec![8], "the acknowledged message left the inbox, the other stayed");
    assert!(!store.stage("irc", 1, "{}", to, &[]).await.unwrap(), "a used ID is never staged again");
    store.skip_to("irc", crate::AppservicePositions { events: 50, ..to }).await.unwrap();
    assert_eq!(store.state_or_start("irc", start).await.unwrap().positions.events, 50);
}
