//! `main`'s endpoints through its router (no socket), on SQLite and on PostgreSQL.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use ganglion_config::Config;
use ganglion_replication::InProcessBus;
use ganglion_storage::Backend;
use ganglion_storage::test_util::TestDb;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::{MainState, router};

struct App {
    router: Router,
    db: TestDb,
    writer: Arc<crate::writer::EventWriter>,
}

async fn app(backend: Backend, tweak: impl FnOnce(&mut Config)) -> App {
    let db = TestDb::new(backend).await;
    let mut cfg = Config::default();
    cfg.password_hashing.memory_kib = 64;
    cfg.password_hashing.iterations = 1;
    tweak(&mut cfg);
    let state = MainState::new(&cfg, db.db.clone(), Arc::new(InProcessBus::new(64))).await.expect("state");
    let writer = state.rooms.writer.clone();
    App { router: ganglion_http::matrix_fallbacks(router(state)), db, writer }
}

impl App {
    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
        let resp = self.router.clone().oneshot(req.body(body).unwrap()).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    async fn register(&self, username: &str) -> String {
        let (s, b) = self
            .call("POST", "/_matrix/client/v3/register", None, Some(json!({"username": username, "password": "pw"})))
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
        let session = b["session"].as_str().unwrap().to_owned();
        let (s, b) = self
            .call(
                "POST",
                "/_matrix/client/v3/register",
                None,
                Some(json!({"username": username, "password": "pw", "auth": {"type": "m.login.dummy", "session": session}})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
        b["access_token"].as_str().unwrap().to_owned()
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $(#[tokio::test] async fn $name() { super::$name(super::Backend::Sqlite).await; })* }
        mod postgres { $(#[tokio::test] async fn $name() { super::$name(super::Backend::Postgres).await; })* }
    };
}

on_both_backends!(
    room_and_sender_rules_with_odd_ids_are_kept_as_synapse_does,
    room_upgrade_carries_tags_push_rules_direct_flags_and_bans,
    pushers_are_set_listed_replaced_and_removed,
    registration_follows_uia_and_validates_usernames,
    closed_registration_and_guests_are_refused,
    login_logout_and_whoami,
    create_room_presets_and_errors,
    sends_are_idempotent_per_device_and_checked,
    messages_paginate_both_ways,
    room_version_12_derives_the_room_id,
    membership_changes_follow_the_auth_rules,
    state_events_and_single_events,
    redactions_strip_content_and_need_power,
    aliases_in_the_directory,
    account_data_tags_filters_and_push_rules,
    profiles_are_stored_and_copied_into_rooms,
    devices_are_listed_renamed_and_deleted_behind_uia,
    keys_upload_query_claim_and_to_device,
    key_backup_versions_and_keys,
    push_rules_can_be_changed,
    password_change_and_deactivation,
    public_rooms_and_user_directory,
    rate_limits_answer_limit_exceeded,
    reports_openid_and_turn,
    space_hierarchy_and_room_summary,
    registration_tokens_gate_registration,
    search_finds_messages_in_joined_rooms,
    notifications_list_what_notified,
    relations_page_filter_and_recurse,
    threads_list_roots_by_latest_activity,
    bundled_aggregations_on_returned_events,
    timestamp_to_event_finds_the_nearest_visible_event,
    room_upgrade_tombstones_and_carries_state_over,
    room_upgrade_by_a_moderator_keeps_their_level,
    cross_signing_signatures_are_verified,
    restricted_rooms_admit_members_of_allowed_rooms,
    dehydrated_device_lifecycle,
    key_changes_report_users_who_left,
    versions_and_capabilities_advertise_what_is_served,
    refresh_tokens_rotate_and_expire,
    expired_access_tokens_are_a_soft_logout,
    login_tokens_from_get_token_are_single_use,
    expired_login_tokens_are_refused,
    extended_profile_fields,
    guests_are_limited_to_their_endpoints,
    search_groups_results_and_includes_state,
    concurrent_writes_keep_rooms_linear_and_positions_contiguous,
    received_events_are_accepted_rejected_soft_failed_and_resolved,
    identical_rooms_created_at_once_get_their_own_ids,
);

async fn registration_follows_uia_and_validates_usernames(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let (s, b) = app
        .call("POST", "/_matrix/client/v3/register", None, Some(json!({"username": "alice", "password": "pw"})))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(b["flows"], json!([{"stages": ["m.login.dummy"]}]));
    assert!(b["session"].is_string());
    app.register("alice").await;
    let (s, b) = app.call("POST", "/_matrix/client/v3/register", None, Some(json!({"username": "alice"}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_USER_IN_USE")));
    let (s, b) = app.call("POST", "/_matrix/client/v3/register", None, Some(json!({"username": "Bad Name!"}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_USERNAME")));
    let (s, b) = app.call("GET", "/_matrix/client/v3/register/available?username=alice", None, None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_USER_IN_USE")));
    let (s, b) = app.call("GET", "/_matrix/client/v3/register/available?username=bob", None, None).await;
    assert_eq!((s, b["available"].as_bool()), (StatusCode::OK, Some(true)));
    let (s, b) = app.call("GET", "/_matrix/client/v3/register/available", None, None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_MISSING_PARAM")));
    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "carol", "auth": {"type": "m.login.dummy", "session": "nope"}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "an unknown UIA session is refused: {b}");
    app.db.cleanup().await;
}

async fn closed_registration_and_guests_are_refused(backend: Backend) {
    let app = app(backend, |c| c.registration.enabled = Some(false)).await;
    let (s, b) = app.call("POST", "/_matrix/client/v3/register", None, Some(json!({"username": "alice"}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")));
    let (s, b) = app.call("POST", "/_matrix/client/v3/register?kind=guest", None, Some(json!({}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_GUEST_ACCESS_FORBIDDEN")));
    app.db.cleanup().await;
}

async fn login_logout_and_whoami(backend: Backend) {
    let app = app(backend, |_| {}).await;
    app.register("alice").await;
    let (s, b) = app.call("GET", "/_matrix/client/v3/login", None, None).await;
    assert_eq!((s, b["flows"][0]["type"].as_str()), (StatusCode::OK, Some("m.login.password")));
    let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw", "device_id": "PHONE"});
    let (s, b) = app.call("POST", "/_matrix/client/v3/login", None, Some(login.clone())).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!((b["user_id"].as_str(), b["device_id"].as_str()), (Some("@alice:localhost"), Some("PHONE")));
    let token = b["access_token"].as_str().unwrap().to_owned();
    let (s, b) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&token), None).await;
    assert_eq!(
        (s, b["user_id"].as_str(), b["device_id"].as_str()),
        (StatusCode::OK, Some("@alice:localhost"), Some("PHONE"))
    );

    let mut wrong = login.clone();
    wrong["password"] = json!("nope");
    let (s, b) = app.call("POST", "/_matrix/client/v3/login", None, Some(wrong)).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")));
    let (s, b) =
        app.call("POST", "/_matrix/client/v3/login", None, Some(json!({"type": "m.login.sso", "token": "x"}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_UNKNOWN")));
    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/login",
            None,
            Some(json!({"type": "m.login.password", "user": "@alice:localhost", "password": "pw"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "the deprecated user field with a full user ID works: {b}");

    let (s, _) = app.call("POST", "/_matrix/client/v3/logout", Some(&token), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&token), None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_UNKNOWN_TOKEN")));
    assert_eq!(b["soft_logout"], json!(false));
    app.db.cleanup().await;
}

async fn state_of(app: &App, token: &str, room_id: &str) -> Vec<(String, String, Value)> {
    // Read the room's state through /messages from the start, as a client would.
    let (s, b) = app
        .call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/messages?dir=f&limit=100"), Some(token), None)
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("state_key").is_some())
        .map(|e| {
            (e["type"].as_str().unwrap().to_owned(), e["state_key"].as_str().unwrap().to_owned(), e["content"].clone())
        })
        .collect()
}

async fn create_room_presets_and_errors(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&alice),
            Some(json!({"preset": "public_chat", "name": "Lobby", "topic": "hi", "room_alias_name": "lobby", "invite": ["@bob:localhost"], "room_version": "11"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let room_id = b["room_id"].as_str().unwrap().to_owned();
    let state = state_of(&app, &alice, &room_id).await;
    let types: Vec<&str> = state.iter().map(|(t, _, _)| t.as_str()).collect();
    assert_eq!(
        types,
        vec![
            "m.room.create",
            "m.room.member",
            "m.room.power_levels",
            "m.room.canonical_alias",
            "m.room.join_rules",
            "m.room.history_visibility",
            "m.room.name",
            "m.room.topic",
            "m.room.member"
        ],
        "the spec's order"
    );
    assert_eq!(state[0].2["room_version"], "11");
    assert_eq!(state[2].2["users"]["@alice:localhost"], 100);
    // Without `room_version`, the spec's current default: 12.
    let (_, b) = app.call("POST", "/_matrix/client/v3/createRoom", Some(&alice), Some(json!({}))).await;
    let default_state = state_of(&app, &alice, b["room_id"].as_str().unwrap()).await;
    assert_eq!(default_state[0].2["room_version"], "12");
    assert_eq!(state[3].2["alias"], "#lobby:localhost");
    assert_eq!(state[4].2["join_rule"], "public");
    assert_eq!((state[8].1.as_str(), &state[8].2["membership"]), ("@bob:localhost", &json!("invite")));

    let (s, b) = app
        .call("POST", "/_matrix/client/v3/createRoom", Some(&alice), Some(json!({"room_alias_name": "lobby"})))
        .await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_ROOM_IN_USE")));
    let (s, b) =
        app.call("POST", "/_matrix/client/v3/createRoom", Some(&alice), Some(json!({"room_version": "99"}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_UNSUPPORTED_ROOM_VERSION")));
    let (s, b) =
        app.call("POST", "/_matrix/client/v3/createRoom", Some(&alice), Some(json!({"preset": "party"}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")));
    let (s, b) = app.call("POST", "/_matrix/client/v3/createRoom", None, Some(json!({}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_MISSING_TOKEN")));

    // The private preset: invite-only, guests may join; a stranger cannot.
    let (_, b) = app.call("POST", "/_matrix/client/v3/createRoom", Some(&alice), Some(json!({}))).await;
    let private = b["room_id"].as_str().unwrap().to_owned();
    let state = state_of(&app, &alice, &private).await;
    assert!(state.iter().any(|(t, _, c)| t == "m.room.join_rules" && c["join_rule"] == "invite"));
    assert!(state.iter().any(|(t, _, c)| t == "m.room.guest_access" && c["guest_access"] == "can_join"));
    let bob = app.register("bob").await;
    let (s, b) = app.call("POST", &format!("/_matrix/client/v3/join/{private}"), Some(&bob), Some(json!({}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")));
    // Bob was invited to the public room: joining by alias works.
    let (s, b) = app.call("POST", "/_matrix/client/v3/join/%23lobby:localhost", Some(&bob), Some(json!({}))).await;
    assert_eq!((s, b["room_id"].as_str()), (StatusCode::OK, Some(room_id.as_str())), "{b}");
    let (_, b) = app.call("GET", "/_matrix/client/v3/joined_rooms", Some(&bob), None).await;
    assert_eq!(b["joined_rooms"], json!([room_id]));
    let (s, b) = app.call("POST", "/_matrix/client/v3/join/%23nowhere:localhost", Some(&bob), Some(json!({}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")));
    app.db.cleanup().await;
}

async fn sends_are_idempotent_per_device_and_checked(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let (_, b) =
        app.call("POST", "/_matrix/client/v3/createRoom", Some(&alice), Some(json!({"preset": "public_chat"}))).await;
    let room = b["room_id"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/txn1");
    let (s1, b1) = app.call("PUT", &path, Some(&alice), Some(json!({"msgtype": "m.text", "body": "one"}))).await;
    let (s2, b2) = app.call("PUT", &path, Some(&alice), Some(json!({"msgtype": "m.text", "body": "one"}))).await;
    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(b1["event_id"], b2["event_id"], "a retried transaction returns the same event");
    let (_, page) =
        app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"), Some(&alice), None).await;
    let messages = page["chunk"].as_array().unwrap().iter().filter(|e| e["type"] == "m.room.message").count();
    assert_eq!(messages, 1);

    let bob = app.register("bob").await;
    let (s, b) = app.call("PUT", &path, Some(&bob), Some(json!({"body": "x"}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")), "non-members cannot send");
    let big = "x".repeat(70_000);
    let (s, b) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/big"),
            Some(&alice),
            Some(json!({"body": big})),
        )
        .await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("M_TOO_LARGE")));
    let (s, b) = app
        .call("PUT", "/_matrix/client/v3/rooms/not-a-room/send/m.room.message/t", Some(&alice), Some(json!({})))
        .await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")));
    app.db.cleanup().await;
}

async fn messages_paginate_both_ways(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let (_, b) = app.call("POST", "/_matrix/client/v3/createRoom", Some(&alice), Some(json!({}))).await;
    let room = b["room_id"].as_str().unwrap().to_owned();
    for i in 0..5 {
        app.call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t{i}"),
            Some(&alice),
            Some(json!({"body": format!("m{i}")})),
        )
        .await;
    }
    let body = |b: &Value| -> Vec<String> {
        b["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect()
    };
    let (s, p1) =
        app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=2"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body(&p1), vec!["m4", "m3"]);
    let end = p1["end"].as_str().unwrap();
    let (_, p2) = app
        .call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=2&from={end}"), Some(&alice), None)
        .await;
    assert_eq!(body(&p2), vec!["m2", "m1"]);
    let end2 = p2["end"].as_str().unwrap();
    let (_, fwd) = app
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=10&from={end2}"),
            Some(&alice),
            None,
        )
        .await;
    // A token names the gap before the oldest event of a backward page: paging forwards from it
    // returns that event first, oldest first (the spec's tokens between events; Synapse agrees).
    assert_eq!(body(&fwd), vec!["m1", "m2", "m3", "m4"], "forward from a token starts after its gap");
    assert!(fwd.get("end").is_none(), "no end when the room is exhausted");
    let (_, fwd) = app
        .call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=2&from={end}"), Some(&alice), None)
        .await;
    assert_eq!(body(&fwd), vec!["m3", "m4"]);
    let (_, back) = app
        .call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=1&from={end}"), Some(&alice), None)
        .await;
    assert_eq!(body(&back), vec!["m2"], "backward from the same token goes on where the first page stopped");

    // Forward pages from the start chain without gaps or repeats.
    let mut seen = Vec::new();
    let mut from = String::new();
    loop {
        let q = if from.is_empty() { String::new() } else { format!("&from={from}") };
        let (_, p) = app
            .call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=2{q}"), Some(&alice), None)
            .await;
        seen.extend(body(&p));
        match p["end"].as_str() {
            Some(e) => from = e.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, vec!["m0", "m1", "m2", "m3", "m4"]);

    // A start token from paging back without `from` lets a client page forwards to what is new.
    let start = p1["start"].as_str().unwrap().to_owned();
    app.call(
        "PUT",
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t5"),
        Some(&alice),
        Some(json!({"body": "m5"})),
    )
    .await;
    let (_, newer) = app
        .call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&from={start}"), Some(&alice), None)
        .await;
    assert_eq!(body(&newer), vec!["m5"]);
    // A sync token pages too: back over what it covers, forwards over what came after.
    let (_, back) = app
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=2&from={start}"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(body(&back), vec!["m4", "m3"], "m5 came after the token");
    let (s, b) = app
        .call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from=garbage"), Some(&alice), None)
        .await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")));
    let (s, b) =
        app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=sideways"), Some(&alice), None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")));
    let (s, b) =
        app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=-1"), Some(&alice), None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")));
    app.db.cleanup().await;
}

async fn room_version_12_derives_the_room_id(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let (s, b) = app
        .call("POST", "/_matrix/client/v3/createRoom", Some(&alice), Some(json!({"room_version": "12", "name": "v12"})))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let room_id = b["room_id"].as_str().unwrap().to_owned();
    assert!(!room_id.contains(':'), "v12 room IDs are the create event's hash: {room_id}");
    let state = state_of(&app, &alice, &room_id).await;
    let create = state.iter().find(|(t, _, _)| t == "m.room.create").unwrap();
    assert_eq!(create.2["room_version"], "12");
    let pl = state.iter().find(|(t, _, _)| t == "m.room.power_levels").unwrap();
    assert!(pl.2["users"].get("@alice:localhost").is_none(), "v12 creators are not listed in power levels");
    let (s, _) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/t"),
            Some(&alice),
            Some(json!({"body": "hi"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    app.db.cleanup().await;
}

async fn create(app: &App, token: &str, body: Value) -> String {
    let (s, b) = app.call("POST", "/_matrix/client/v3/createRoom", Some(token), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["room_id"].as_str().unwrap().to_owned()
}

async fn membership_of(app: &App, token: &str, room: &str, user: &str) -> Option<String> {
    let (_, b) = app
        .call("GET", &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{user}"), Some(token), None)
        .await;
    b["membership"].as_str().map(str::to_owned)
}

async fn membership_changes_follow_the_auth_rules(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = create(&app, &alice, json!({})).await;
    let post = |token: &str, what: &str, body: Value| {
        let path = format!("/_matrix/client/v3/rooms/{room}/{what}");
        let token = token.to_owned();
        let app = &app;
        async move { app.call("POST", &path, Some(&token), Some(body)).await }
    };
    // Bob may not invite himself, nor join uninvited.
    let (s, _) = post(&bob, "invite", json!({"user_id": "@bob:localhost"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, b) = post(&alice, "invite", json!({"user_id": "not a user"})).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")));
    let (s, b) = post(&alice, "invite", json!({"user_id": "@bob:localhost", "reason": "come"})).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = post(&bob, "join", json!({})).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(membership_of(&app, &alice, &room, "@bob:localhost").await.as_deref(), Some("join"));
    // Bob (power 0) may not kick alice (100); alice kicks bob.
    let (s, _) = post(&bob, "kick", json!({"user_id": "@alice:localhost"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = post(&alice, "kick", json!({"user_id": "@bob:localhost", "reason": "bye"})).await;
    assert_eq!(s, StatusCode::OK);
    let (_, ev) = app
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/@bob:localhost?format=event"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!((ev["content"]["membership"].as_str(), ev["content"]["reason"].as_str()), (Some("leave"), Some("bye")));
    assert_eq!(ev["sender"], "@alice:localhost");
    // Kicked bob sees history up to his kick, not after.
    let (s, _) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::OK);
    // Ban, then unban; a banned user cannot rejoin.
    let (s, _) = post(&alice, "ban", json!({"user_id": "@bob:localhost"})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = post(&alice, "invite", json!({"user_id": "@bob:localhost"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "banned users cannot be invited");
    let (s, _) = post(&alice, "unban", json!({"user_id": "@bob:localhost"})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = post(&alice, "unban", json!({"user_id": "@bob:localhost"})).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "not banned any more");
    assert_eq!(membership_of(&app, &alice, &room, "@bob:localhost").await.as_deref(), Some("leave"));
    // Forget: only once out of the room; then the history is gone for bob.
    let (s, _) = post(&alice, "forget", json!({})).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "alice is still in the room");
    let (s, _) = post(&bob, "forget", json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Leave: alice leaves; leaving twice is harmless; a stranger gets 404.
    let carol = app.register("carol").await;
    let (s, _) = post(&carol, "leave", json!({})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    // Knocking needs a knock join rule.
    let (s, _) = app.call("POST", &format!("/_matrix/client/v3/knock/{room}"), Some(&carol), Some(json!({}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let knockable = create(
        &app,
        &alice,
        json!({"initial_state": [{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}]}),
    )
    .await;
    let (s, b) = app
        .call(
            "POST",
            &format!("/_matrix/client/v3/knock/{knockable}"),
            Some(&carol),
            Some(json!({"reason": "let me in"})),
        )
        .await;
    assert_eq!((s, b["room_id"].as_str()), (StatusCode::OK, Some(knockable.as_str())), "{b}");
    assert_eq!(membership_of(&app, &alice, &knockable, "@carol:localhost").await.as_deref(), Some("knock"));
    let (s, _) = post(&alice, "leave", json!({})).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = post(&alice, "leave", json!({})).await;
    assert_eq!(s, StatusCode::OK);
    app.db.cleanup().await;
}

async fn state_events_and_single_events(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = create(&app, &alice, json!({"preset": "public_chat", "name": "One"})).await;
    app.call("POST", &format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob), Some(json!({}))).await;
    let (s, b) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"), Some(&bob), None).await;
    assert_eq!((s, b["name"].as_str()), (StatusCode::OK, Some("One")));
    let (s, b) =
        app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic"), Some(&bob), None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")));
    // Bob has power 0; the name needs 50.
    let (s, b) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"),
            Some(&bob),
            Some(json!({"name": "Two"})),
        )
        .await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")));
    let (s, b) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
            Some(&alice),
            Some(json!({"name": "Two"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let first = b["event_id"].as_str().unwrap().to_owned();
    let (_, again) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name"),
            Some(&alice),
            Some(json!({"name": "Two"})),
        )
        .await;
    assert_eq!(again["event_id"].as_str(), Some(first.as_str()), "unchanged state is not sent twice");
    let (_, all) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/state"), Some(&bob), None).await;
    let names: Vec<&Value> = all.as_array().unwrap().iter().filter(|e| e["type"] == "m.room.name").collect();
    assert_eq!(names.len(), 1);
    assert_eq!(names[0]["content"]["name"], "Two");
    let (s, ev) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/event/{first}"), Some(&bob), None).await;
    assert_eq!((s, ev["event_id"].as_str()), (StatusCode::OK, Some(first.as_str())));
    let stranger = app.register("carol").await;
    let (s, _) =
        app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/event/{first}"), Some(&stranger), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/state"), Some(&stranger), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let (_, m) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/members"), Some(&bob), None).await;
    assert_eq!(m["chunk"].as_array().unwrap().len(), 2);
    let (_, m) = app
        .call("GET", &format!("/_matrix/client/v3/rooms/{room}/members?not_membership=join"), Some(&bob), None)
        .await;
    assert_eq!(m["chunk"].as_array().unwrap().len(), 0);
    let (s, _) =
        app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/members?membership=dancing"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, j) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/joined_members"), Some(&bob), None).await;
    assert_eq!(j["joined"].as_object().unwrap().len(), 2);
    assert!(j["joined"]["@alice:localhost"].is_object());

    for i in 0..6 {
        app.call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/c{i}"),
            Some(&alice),
            Some(json!({"body": format!("c{i}")})),
        )
        .await;
    }
    let (_, page) =
        app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=6"), Some(&alice), None).await;
    let mid = page["chunk"][3]["event_id"].as_str().unwrap().to_owned();
    let (s, ctx) =
        app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/context/{mid}?limit=4"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::OK, "{ctx}");
    assert_eq!(ctx["event"]["content"]["body"], "c2");
    let bodies = |v: &Value| {
        v.as_array().unwrap().iter().map(|e| e["content"]["body"].as_str().unwrap_or("").to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(bodies(&ctx["events_before"]), vec!["c1", "c0"]);
    assert_eq!(bodies(&ctx["events_after"]), vec!["c3", "c4"]);
    assert!(ctx["state"].as_array().unwrap().iter().any(|e| e["type"] == "m.room.create"));
    app.db.cleanup().await;
}

async fn redactions_strip_content_and_need_power(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = create(&app, &alice, json!({"preset": "public_chat"})).await;
    app.call("POST", &format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob), Some(json!({}))).await;
    let (_, a) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/a"),
            Some(&alice),
            Some(json!({"msgtype": "m.text", "body": "secret"})),
        )
        .await;
    let (_, b) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/b"),
            Some(&bob),
            Some(json!({"msgtype": "m.text", "body": "oops"})),
        )
        .await;
    let (a, b) = (a["event_id"].as_str().unwrap().to_owned(), b["event_id"].as_str().unwrap().to_owned());
    let (s, _) =
        app.call("PUT", &format!("/_matrix/client/v3/rooms/{room}/redact/{a}/r1"), Some(&bob), Some(json!({}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "bob may not redact alice's message");
    let (s, r) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/redact/{b}/r2"),
            Some(&bob),
            Some(json!({"reason": "typo"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let (s, r2) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/redact/{b}/r2"),
            Some(&bob),
            Some(json!({"reason": "typo"})),
        )
        .await;
    assert_eq!((s, &r2["event_id"]), (StatusCode::OK, &r["event_id"]), "txn ids make redactions idempotent");
    let (_, ev) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/event/{b}"), Some(&alice), None).await;
    assert_eq!(ev["content"], json!({}), "the redacted event lost its content");
    let (s, _) =
        app.call("PUT", &format!("/_matrix/client/v3/rooms/{room}/redact/{a}/r3"), Some(&alice), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK);
    let (_, ev) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/event/{a}"), Some(&bob), None).await;
    assert_eq!(ev["content"], json!({}));
    app.db.cleanup().await;
}

async fn aliases_in_the_directory(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = create(&app, &alice, json!({"preset": "public_chat"})).await;
    let path = "/_matrix/client/v3/directory/room/%23hall:localhost";
    let (s, _) = app.call("PUT", path, Some(&bob), Some(json!({"room_id": room}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "not in the room");
    let (s, b) = app.call("PUT", path, Some(&alice), Some(json!({"room_id": room}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app.call("PUT", path, Some(&alice), Some(json!({"room_id": room}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::CONFLICT, Some("M_UNKNOWN")));
    let (s, b) = app
        .call(
            "PUT",
            "/_matrix/client/v3/directory/room/%23x:elsewhere.org",
            Some(&alice),
            Some(json!({"room_id": room})),
        )
        .await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")));
    let (s, b) = app.call("GET", path, None, None).await;
    assert_eq!((s, b["room_id"].as_str()), (StatusCode::OK, Some(room.as_str())));
    assert_eq!(b["servers"], json!(["localhost"]));
    let (_, b) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/aliases"), Some(&alice), None).await;
    assert_eq!(b["aliases"], json!(["#hall:localhost"]));
    let (s, _) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/aliases"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // The canonical alias must point at the room.
    let (s, b) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias"),
            Some(&alice),
            Some(json!({"alias": "#nope:localhost"})),
        )
        .await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_BAD_ALIAS")));
    let (s, _) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias"),
            Some(&alice),
            Some(json!({"alias": "#hall:localhost"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.call("DELETE", path, Some(&bob), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app.call("DELETE", path, Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = app.call("GET", path, None, None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")));
    // The deleted alias left the canonical alias too (as Synapse does), so the room is no longer
    // advertised, or found in the room directory, by it.
    let (_, b) = app
        .call("GET", &format!("/_matrix/client/v3/rooms/{room}/state/m.room.canonical_alias"), Some(&alice), None)
        .await;
    assert!(b.get("alias").is_none(), "{b}");
    let (s, _) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/directory/list/room/{room}"),
            Some(&alice),
            Some(json!({"visibility": "public"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) = app.call("GET", "/_matrix/client/v3/publicRooms", Some(&alice), None).await;
    let entry =
        b["chunk"].as_array().unwrap().iter().find(|r| r["room_id"] == room.as_str()).cloned().unwrap_or_default();
    assert!(entry.get("canonical_alias").is_none(), "{entry}");
    let (_, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/publicRooms",
            Some(&alice),
            Some(json!({"filter": {"generic_search_term": "hall"}})),
        )
        .await;
    assert_eq!(b["chunk"], json!([]), "found by the deleted alias: {b}");
    app.db.cleanup().await;
}

async fn account_data_tags_filters_and_push_rules(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = create(&app, &alice, json!({})).await;
    let global = "/_matrix/client/v3/user/@alice:localhost/account_data/org.example.settings";
    let (s, b) = app.call("GET", global, Some(&alice), None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")));
    let (s, _) = app.call("PUT", global, Some(&alice), Some(json!({"theme": "dark"}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = app.call("GET", global, Some(&alice), None).await;
    assert_eq!((s, b), (StatusCode::OK, json!({"theme": "dark"})));
    let (s, b) = app.call("GET", global, Some(&bob), None).await;
    assert_eq!(
        (s, b["errcode"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")),
        "other users' data is private"
    );
    let (s, b) = app
        .call(
            "PUT",
            "/_matrix/client/v3/user/@alice:localhost/account_data/m.push_rules",
            Some(&alice),
            Some(json!({})),
        )
        .await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::METHOD_NOT_ALLOWED, Some("M_BAD_JSON")));
    let per_room = format!("/_matrix/client/v3/user/@alice:localhost/rooms/{room}/account_data/org.example.draft");
    let (s, _) = app.call("PUT", &per_room, Some(&alice), Some(json!({"text": "hi"}))).await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) = app.call("GET", &per_room, Some(&alice), None).await;
    assert_eq!(b["text"], "hi");
    let (s, _) =
        app.call("GET", "/_matrix/client/v3/user/@alice:localhost/rooms/bad/account_data/x", Some(&alice), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let tags = format!("/_matrix/client/v3/user/@alice:localhost/rooms/{room}/tags");
    let (s, _) = app.call("PUT", &format!("{tags}/m.favourite"), Some(&alice), Some(json!({"order": 0.5}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.call("PUT", &format!("{tags}/u.work"), Some(&alice), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = app.call("PUT", &format!("{tags}/u.bad"), Some(&alice), Some(json!({"order": "first"}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_BAD_JSON")));
    app.call("DELETE", &format!("{tags}/u.work"), Some(&alice), None).await;
    let (_, b) = app.call("GET", &tags, Some(&alice), None).await;
    assert_eq!(b, json!({"tags": {"m.favourite": {"order": 0.5}}}));

    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/user/@alice:localhost/filter",
            Some(&alice),
            Some(json!({"room": {"timeline": {"limit": 5}}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let id = b["filter_id"].as_str().unwrap().to_owned();
    let (s, b) =
        app.call("GET", &format!("/_matrix/client/v3/user/@alice:localhost/filter/{id}"), Some(&alice), None).await;
    assert_eq!((s, b["room"]["timeline"]["limit"].as_u64()), (StatusCode::OK, Some(5)));
    let (s, _) =
        app.call("GET", &format!("/_matrix/client/v3/user/@bob:localhost/filter/{id}"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app.call("GET", "/_matrix/client/v3/user/@alice:localhost/filter/nope", Some(&alice), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/user/@alice:localhost/filter",
            Some(&alice),
            Some(json!({"room": {"timeline": {"limit": "x"}}})),
        )
        .await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_BAD_JSON")));

    let (s, b) = app.call("GET", "/_matrix/client/v3/pushrules/", Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
    let ids: Vec<&str> =
        b["global"]["override"].as_array().unwrap().iter().filter_map(|r| r["rule_id"].as_str()).collect();
    assert!(ids.contains(&".m.rule.master") && ids.contains(&".m.rule.suppress_notices"), "{ids:?}");
    let (s, b) =
        app.call("GET", "/_matrix/client/v3/user/@alice:localhost/account_data/m.push_rules", Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK, "push rules read as account data too: {b}");
    app.db.cleanup().await;
}

async fn profiles_are_stored_and_copied_into_rooms(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = create(&app, &alice, json!({})).await;
    let (s, b) = app.call("GET", "/_matrix/client/v3/profile/@alice:localhost", None, None).await;
    assert_eq!((s, b), (StatusCode::OK, json!({"displayname": "alice"})), "new accounts show their localpart");
    let (s, _) = app.call("GET", "/_matrix/client/v3/profile/@alice:localhost/avatar_url", None, None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, b) = app.call("GET", "/_matrix/client/v3/profile/@nobody:localhost", None, None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")));
    let (s, _) = app
        .call(
            "PUT",
            "/_matrix/client/v3/profile/@alice:localhost/displayname",
            Some(&bob),
            Some(json!({"displayname": "Eve"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .call(
            "PUT",
            "/_matrix/client/v3/profile/@alice:localhost/avatar_url",
            Some(&alice),
            Some(json!({"avatar_url": "https://x"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = app
        .call(
            "PUT",
            "/_matrix/client/v3/profile/@alice:localhost/displayname",
            Some(&alice),
            Some(json!({"displayname": "Alice"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app
        .call(
            "PUT",
            "/_matrix/client/v3/profile/@alice:localhost/avatar_url",
            Some(&alice),
            Some(json!({"avatar_url": "mxc://localhost/abc"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) = app.call("GET", "/_matrix/client/v3/profile/@alice:localhost", None, None).await;
    assert_eq!(b, json!({"displayname": "Alice", "avatar_url": "mxc://localhost/abc"}));
    // The member event follows, in the background.
    let path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/@alice:localhost");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, m) = app.call("GET", &path, Some(&alice), None).await;
        if m["displayname"] == "Alice" && m["avatar_url"] == "mxc://localhost/abc" {
            assert_eq!(m["membership"], "join");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "member event not updated: {m}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    app.db.cleanup().await;
}

async fn login_device(app: &App, user: &str, device: &str) -> String {
    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/login",
            None,
            Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": "pw", "device_id": device})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["access_token"].as_str().unwrap().to_owned()
}

async fn devices_are_listed_renamed_and_deleted_behind_uia(backend: Backend) {
    let app = app(backend, |_| {}).await;
    app.register("alice").await;
    let phone = login_device(&app, "alice", "PHONE").await;
    let laptop = login_device(&app, "alice", "LAPTOP").await;
    let (_, b) = app.call("GET", "/_matrix/client/v3/devices", Some(&phone), None).await;
    let ids: Vec<&str> = b["devices"].as_array().unwrap().iter().filter_map(|d| d["device_id"].as_str()).collect();
    assert!(ids.contains(&"PHONE") && ids.contains(&"LAPTOP"), "{ids:?}");
    let (s, _) = app
        .call("PUT", "/_matrix/client/v3/devices/LAPTOP", Some(&phone), Some(json!({"display_name": "Work laptop"})))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) = app.call("GET", "/_matrix/client/v3/devices/LAPTOP", Some(&phone), None).await;
    assert_eq!(b["display_name"], "Work laptop");
    let (s, _) = app.call("GET", "/_matrix/client/v3/devices/NOPE", Some(&phone), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // Deleting needs the password, through UIA.
    let (s, b) = app.call("DELETE", "/_matrix/client/v3/devices/LAPTOP", Some(&phone), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(b["flows"][0]["stages"][0], "m.login.password");
    let session = b["session"].as_str().unwrap().to_owned();
    let wrong = json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "nope", "session": session}});
    let (s, b) = app.call("DELETE", "/_matrix/client/v3/devices/LAPTOP", Some(&phone), Some(wrong)).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_FORBIDDEN")));
    let right = json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "@alice:localhost"}, "password": "pw", "session": session}});
    let (s, b) = app.call("DELETE", "/_matrix/client/v3/devices/LAPTOP", Some(&phone), Some(right.clone())).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&laptop), None).await;
    assert_eq!(
        (s, b["errcode"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("M_UNKNOWN_TOKEN")),
        "the deleted device is logged out"
    );
    let mut many = right;
    many["devices"] = json!(["PHONE"]);
    let (s, _) = app.call("POST", "/_matrix/client/v3/delete_devices", Some(&phone), Some(many)).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.call("GET", "/_matrix/client/v3/devices", Some(&phone), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    app.db.cleanup().await;
}

/// Signed device keys as a client makes them.
fn device_keys(user: &str, device: &str) -> (Value, ruma::signatures::Ed25519KeyPair) {
    use base64::Engine as _;
    let pair =
        ruma::signatures::Ed25519KeyPair::from_der(&ruma::signatures::Ed25519KeyPair::generate(), device.to_owned())
            .unwrap();
    let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(pair.public_key());
    let mut keys: ruma::CanonicalJsonObject = serde_json::from_value(json!({
        "user_id": user,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{device}"): "Y3VydmU", format!("ed25519:{device}"): public },
    }))
    .unwrap();
    ruma::signatures::sign_json(user, &pair, &mut keys).unwrap();
    (serde_json::to_value(keys).unwrap(), pair)
}

async fn keys_upload_query_claim_and_to_device(backend: Backend) {
    let app = app(backend, |_| {}).await;
    app.register("alice").await;
    app.register("bob").await;
    let alice = login_device(&app, "alice", "ALICEDEV").await;
    let bob = login_device(&app, "bob", "BOBDEV").await;
    let (keys, _) = device_keys("@alice:localhost", "ALICEDEV");
    let upload = json!({
        "device_keys": keys.clone(),
        "one_time_keys": { "signed_curve25519:AAA": {"key": "a"}, "signed_curve25519:AAB": {"key": "b"} },
        "fallback_keys": { "signed_curve25519:FFF": {"key": "f", "fallback": true} },
    });
    let (s, b) = app.call("POST", "/_matrix/client/v3/keys/upload", Some(&alice), Some(upload)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["one_time_key_counts"]["signed_curve25519"], 2);

    // Keys whose signature does not check out are stored (clients judge signatures, as with
    // Synapse); keys of the wrong shape, or for another device, are refused.
    let (mut unsigned, _) = device_keys("@alice:localhost", "ALICEDEV");
    unsigned["algorithms"] = json!(["m.olm.v1.curve25519-aes-sha2", "tampered"]);
    unsigned.as_object_mut().unwrap().remove("signatures");
    let (s, b) =
        app.call("POST", "/_matrix/client/v3/keys/upload", Some(&alice), Some(json!({"device_keys": unsigned}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    for (field, bad) in [("algorithms", json!("x")), ("keys", json!(["k"])), ("signatures", json!("s"))] {
        let (mut malformed, _) = device_keys("@alice:localhost", "ALICEDEV");
        malformed[field] = bad;
        let (s, b) = app
            .call("POST", "/_matrix/client/v3/keys/upload", Some(&alice), Some(json!({"device_keys": malformed})))
            .await;
        assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_BAD_JSON")), "{field}: {b}");
    }
    let (s, _) =
        app.call("POST", "/_matrix/client/v3/keys/upload", Some(&alice), Some(json!({"device_keys": keys}))).await;
    assert_eq!(s, StatusCode::OK);
    let (other, _) = device_keys("@alice:localhost", "OTHER");
    let (s, _) =
        app.call("POST", "/_matrix/client/v3/keys/upload", Some(&alice), Some(json!({"device_keys": other}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/keys/query",
            Some(&bob),
            Some(json!({"device_keys": {"@alice:localhost": [], "@carol:remote.example": []}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["device_keys"]["@alice:localhost"]["ALICEDEV"]["device_id"], "ALICEDEV");
    assert!(b["failures"]["remote.example"].is_object(), "remote users are failures until federation: {b}");

    let claim = json!({"one_time_keys": {"@alice:localhost": {"ALICEDEV": "signed_curve25519"}}});
    let mut claimed = Vec::new();
    for _ in 0..3 {
        let (_, b) = app.call("POST", "/_matrix/client/v3/keys/claim", Some(&bob), Some(claim.clone())).await;
        let keys = b["one_time_keys"]["@alice:localhost"]["ALICEDEV"].as_object().unwrap().clone();
        claimed.push(keys.keys().next().unwrap().clone());
    }
    assert_eq!(
        claimed,
        vec!["signed_curve25519:AAA", "signed_curve25519:AAB", "signed_curve25519:FFF"],
        "one-time keys, then the fallback"
    );

    // Cross-signing: first upload free, replacement behind UIA.
    let master = json!({"user_id": "@alice:localhost", "usage": ["master"], "keys": {"ed25519:master1": "bWFzdGVy"}});
    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/keys/device_signing/upload",
            Some(&alice),
            Some(json!({"master_key": master})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let master2 =
        json!({"user_id": "@alice:localhost", "usage": ["master"], "keys": {"ed25519:master2": "bWFzdGVyMg"}});
    let (s, _) = app
        .call(
            "POST",
            "/_matrix/client/v3/keys/device_signing/upload",
            Some(&alice),
            Some(json!({"master_key": master2})),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let b = query_keys(&app, &bob, "@alice:localhost").await;
    assert_eq!(b["master_keys"]["@alice:localhost"]["keys"]["ed25519:master1"], "bWFzdGVy");
    let sigs = json!({"@alice:localhost": {
        "ALICEDEV": {"signatures": {"@alice:localhost": {"ed25519:master1": "c2ln"}}},
        "NOPE": {"signatures": {"@alice:localhost": {"ed25519:master1": "c2ln"}}},
    }});
    let (s, b) = app.call("POST", "/_matrix/client/v3/keys/signatures/upload", Some(&alice), Some(sigs)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["failures"]["@alice:localhost"]["NOPE"]["errcode"], "M_NOT_FOUND");
    assert_eq!(
        b["failures"]["@alice:localhost"]["ALICEDEV"]["errcode"], "M_INVALID_SIGNATURE",
        "devices are signed by the self-signing key, and alice has none: {b}"
    );

    // To-device: idempotent per txn id; * reaches every device.
    let msg = json!({"messages": {"@alice:localhost": {"*": {"hello": 1}}}});
    let (s, _) = app.call("PUT", "/_matrix/client/v3/sendToDevice/m.test/t1", Some(&bob), Some(msg.clone())).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.call("PUT", "/_matrix/client/v3/sendToDevice/m.test/t1", Some(&bob), Some(msg)).await;
    assert_eq!(s, StatusCode::OK);
    let queued = ganglion_storage::E2eeStore::new(app.db.db.clone());
    let inbox =
        queued.to_device_for(&ruma::owned_user_id!("@alice:localhost"), "ALICEDEV", i64::MAX, 100).await.unwrap();
    assert_eq!(inbox.len(), 1, "the retried transaction queued nothing more");
    assert_eq!((inbox[0].sender.as_str(), inbox[0].event_type.as_str()), ("@bob:localhost", "m.test"));
    let (s, _) = app.call("GET", "/_matrix/client/v3/keys/changes?from=g1_e0&to=bad", Some(&bob), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    app.db.cleanup().await;
}

async fn key_backup_versions_and_keys(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let (s, b) = app.call("GET", "/_matrix/client/v3/room_keys/version", Some(&alice), None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")));
    let alg = "m.megolm_backup.v1.curve25519-aes-sha2";
    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/room_keys/version",
            Some(&alice),
            Some(json!({"algorithm": alg, "auth_data": {"public_key": "abc"}})),
        )
        .await;
    assert_eq!((s, b["version"].as_str()), (StatusCode::OK, Some("1")));
    let key = |index: u64, verified: bool| json!({"first_message_index": index, "forwarded_count": 0, "is_verified": verified, "session_data": {"ciphertext": format!("c{index}")}});
    let (s, b) = app
        .call(
            "PUT",
            "/_matrix/client/v3/room_keys/keys?version=1",
            Some(&alice),
            Some(json!({"rooms": {"!r:localhost": {"sessions": {"S1": key(5, false)}}}})),
        )
        .await;
    assert_eq!((s, b["count"].as_u64()), (StatusCode::OK, Some(1)), "{b}");
    let etag1 = b["etag"].as_str().unwrap().to_owned();
    // A worse key does not replace a better one; a better one does.
    let (_, b) = app
        .call("PUT", "/_matrix/client/v3/room_keys/keys/!r:localhost/S1?version=1", Some(&alice), Some(key(9, false)))
        .await;
    let (_, got) =
        app.call("GET", "/_matrix/client/v3/room_keys/keys/!r:localhost/S1?version=1", Some(&alice), None).await;
    assert_eq!(got["first_message_index"], 5, "{b}");
    app.call("PUT", "/_matrix/client/v3/room_keys/keys/!r:localhost/S1?version=1", Some(&alice), Some(key(7, true)))
        .await;
    let (_, got) =
        app.call("GET", "/_matrix/client/v3/room_keys/keys/!r:localhost/S1?version=1", Some(&alice), None).await;
    assert_eq!(
        (got["first_message_index"].as_u64(), got["is_verified"].as_bool()),
        (Some(7), Some(true)),
        "verified beats a lower index"
    );
    let (_, v) = app.call("GET", "/_matrix/client/v3/room_keys/version", Some(&alice), None).await;
    assert_eq!((v["version"].as_str(), v["count"].as_u64()), (Some("1"), Some(1)));
    assert_ne!(v["etag"].as_str(), Some(etag1.as_str()), "the etag changes with the keys");
    let (_, all) = app.call("GET", "/_matrix/client/v3/room_keys/keys?version=1", Some(&alice), None).await;
    assert!(all["rooms"]["!r:localhost"]["sessions"]["S1"].is_object());

    // A new version makes the old one read-only for uploads.
    let (_, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/room_keys/version",
            Some(&alice),
            Some(json!({"algorithm": alg, "auth_data": {}})),
        )
        .await;
    assert_eq!(b["version"], "2");
    let (s, b) = app
        .call("PUT", "/_matrix/client/v3/room_keys/keys/!r:localhost/S2?version=1", Some(&alice), Some(key(0, false)))
        .await;
    assert_eq!(
        (s, b["errcode"].as_str(), b["current_version"].as_str()),
        (StatusCode::FORBIDDEN, Some("M_WRONG_ROOM_KEYS_VERSION"), Some("2"))
    );
    let (s, _) = app
        .call(
            "PUT",
            "/_matrix/client/v3/room_keys/version/2",
            Some(&alice),
            Some(json!({"algorithm": "other", "auth_data": {}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "the algorithm cannot change");
    let (s, _) = app
        .call(
            "PUT",
            "/_matrix/client/v3/room_keys/version/2",
            Some(&alice),
            Some(json!({"algorithm": alg, "auth_data": {"x": 1}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) =
        app.call("DELETE", "/_matrix/client/v3/room_keys/keys/!r:localhost?version=1", Some(&alice), None).await;
    assert_eq!((s, b["count"].as_u64()), (StatusCode::OK, Some(0)));
    let (s, _) = app.call("DELETE", "/_matrix/client/v3/room_keys/version/2", Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = app.call("GET", "/_matrix/client/v3/room_keys/version", Some(&alice), None).await;
    assert_eq!(v["version"], "1", "after deleting 2 the latest is 1");
    let (s, _) = app.call("GET", "/_matrix/client/v3/room_keys/version/2", Some(&alice), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.call("GET", "/_matrix/client/v3/room_keys/keys", Some(&alice), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "version is required");
    // Another user sees nothing of alice's.
    let bob = app.register("bob").await;
    let (s, _) = app.call("GET", "/_matrix/client/v3/room_keys/version/1", Some(&bob), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    app.db.cleanup().await;
}

async fn push_rules_can_be_changed(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let base = "/_matrix/client/v3/pushrules/global";
    let (s, b) = app.call("GET", &format!("{base}/override/.m.rule.master"), Some(&alice), None).await;
    assert_eq!((s, b["enabled"].as_bool()), (StatusCode::OK, Some(false)), "{b}");
    let (s, _) = app
        .call("PUT", &format!("{base}/override/.m.rule.master/enabled"), Some(&alice), Some(json!({"enabled": true})))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) = app.call("GET", &format!("{base}/override/.m.rule.master/enabled"), Some(&alice), None).await;
    assert_eq!(b["enabled"], true);
    let (s, _) = app.call("DELETE", &format!("{base}/override/.m.rule.master"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "server-default rules cannot be deleted");

    let (s, b) = app
        .call(
            "PUT",
            &format!("{base}/content/coffee"),
            Some(&alice),
            Some(json!({"pattern": "coffee", "actions": ["notify"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, b) = app.call("GET", &format!("{base}/content/coffee"), Some(&alice), None).await;
    assert_eq!((b["pattern"].as_str(), b["default"].as_bool()), (Some("coffee"), Some(false)));
    let (s, _) =
        app.call("PUT", &format!("{base}/content/coffee/actions"), Some(&alice), Some(json!({"actions": []}))).await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) = app.call("GET", &format!("{base}/content/coffee/actions"), Some(&alice), None).await;
    assert_eq!(b["actions"], json!([]));
    let (s, _) =
        app.call("PUT", &format!("{base}/content/tea"), Some(&alice), Some(json!({"actions": ["notify"]}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "content rules need a pattern");
    let (s, _) = app
        .call(
            "PUT",
            &format!("{base}/override/x?before=nope"),
            Some(&alice),
            Some(json!({"actions": [], "conditions": []})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.call("PUT", &format!("{base}/bogus/x"), Some(&alice), Some(json!({"actions": []}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, all) = app.call("GET", "/_matrix/client/v3/pushrules/", Some(&alice), None).await;
    assert!(all["global"]["content"].as_array().unwrap().iter().any(|r| r["rule_id"] == "coffee"));
    let (s, _) = app.call("DELETE", &format!("{base}/content/coffee"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.call("GET", &format!("{base}/content/coffee"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    app.db.cleanup().await;
}

async fn password_change_and_deactivation(backend: Backend) {
    let app = app(backend, |_| {}).await;
    app.register("alice").await;
    let phone = login_device(&app, "alice", "PHONE").await;
    let laptop = login_device(&app, "alice", "LAPTOP").await;
    let room = create(&app, &phone, json!({})).await;
    let auth = |pw: &str| json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": pw});
    let (s, b) = app
        .call("POST", "/_matrix/client/v3/account/password", Some(&phone), Some(json!({"new_password": "pw2"})))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    let (s, _) = app
        .call(
            "POST",
            "/_matrix/client/v3/account/password",
            Some(&phone),
            Some(json!({"new_password": "pw2", "auth": auth("pw")})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&laptop), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "other devices are logged out");
    let (s, _) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&phone), None).await;
    assert_eq!(s, StatusCode::OK, "the current device stays");
    let (s, _) = app
        .call(
            "POST",
            "/_matrix/client/v3/login",
            None,
            Some(json!({"type": "m.login.password", "user": "alice", "password": "pw"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "the old password is gone");

    let (s, b) = app.call("GET", "/_matrix/client/v3/account/3pid", Some(&phone), None).await;
    assert_eq!((s, b["threepids"].clone()), (StatusCode::OK, json!([])));
    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/account/3pid/email/requestToken",
            None,
            Some(json!({"email": "a@b.c", "client_secret": "x", "send_attempt": 1})),
        )
        .await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_THREEPID_MEDIUM_NOT_SUPPORTED")));

    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/account/deactivate",
            Some(&phone),
            Some(json!({"auth": auth("pw2"), "erase": true})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["id_server_unbind_result"], "no-support");
    let (s, _) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&phone), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = app
        .call(
            "POST",
            "/_matrix/client/v3/login",
            None,
            Some(json!({"type": "m.login.password", "user": "alice", "password": "pw2"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, b) = app.call("POST", "/_matrix/client/v3/register", None, Some(json!({"username": "alice"}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_USER_IN_USE")), "the ID stays taken");
    let events = ganglion_storage::EventStore::new(app.db.db.clone());
    let rid = ruma::OwnedRoomId::try_from(room.as_str()).unwrap();
    assert_eq!(
        events.membership(&rid, &ruma::owned_user_id!("@alice:localhost")).await.unwrap().as_deref(),
        Some("leave")
    );
    app.db.cleanup().await;
}

async fn public_rooms_and_user_directory(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    app.call(
        "PUT",
        "/_matrix/client/v3/profile/@carol:localhost/displayname",
        Some(&carol),
        Some(json!({"displayname": "Carol Danvers"})),
    )
    .await;
    let lobby = create(
        &app,
        &alice,
        json!({"visibility": "public", "preset": "public_chat", "name": "Lobby", "topic": "say hi"}),
    )
    .await;
    let quiet = create(&app, &alice, json!({"preset": "public_chat", "name": "Quiet"})).await;
    app.call("POST", &format!("/_matrix/client/v3/rooms/{lobby}/join"), Some(&bob), Some(json!({}))).await;
    let (s, b) = app.call("GET", "/_matrix/client/v3/publicRooms", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["chunk"].as_array().unwrap().len(), 1);
    assert_eq!(
        (b["chunk"][0]["name"].as_str(), b["chunk"][0]["num_joined_members"].as_i64()),
        (Some("Lobby"), Some(2))
    );
    assert_eq!(b["chunk"][0]["join_rule"], "public");
    // Publishing needs moderator power.
    let (s, _) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/directory/list/room/{lobby}"),
            Some(&bob),
            Some(json!({"visibility": "private"})),
        )
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/directory/list/room/{quiet}"),
            Some(&alice),
            Some(json!({"visibility": "public"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = app.call("GET", &format!("/_matrix/client/v3/directory/list/room/{quiet}"), None, None).await;
    assert_eq!(v["visibility"], "public");
    let (_, p1) = app.call("GET", "/_matrix/client/v3/publicRooms?limit=1", None, None).await;
    assert_eq!(p1["chunk"][0]["name"], "Lobby", "most members first");
    let next = p1["next_batch"].as_str().unwrap().to_owned();
    let (_, p2) = app.call("GET", &format!("/_matrix/client/v3/publicRooms?limit=1&since={next}"), None, None).await;
    assert_eq!(p2["chunk"][0]["name"], "Quiet");
    assert!(p2.get("next_batch").is_none());
    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/publicRooms",
            Some(&bob),
            Some(json!({"filter": {"generic_search_term": "HI"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["chunk"].as_array().unwrap().len(), 1, "the topic matches: {b}");
    let (s, _) = app.call("GET", "/_matrix/client/v3/publicRooms?since=bogus", None, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Bob shares the lobby with alice; carol shares nothing, and is in no public room.
    let (_, r) = app
        .call("POST", "/_matrix/client/v3/user_directory/search", Some(&bob), Some(json!({"search_term": "ali"})))
        .await;
    assert_eq!(r["results"][0]["user_id"], "@alice:localhost");
    let (_, r) = app
        .call("POST", "/_matrix/client/v3/user_directory/search", Some(&bob), Some(json!({"search_term": "danvers"})))
        .await;
    assert_eq!(r["results"], json!([]), "users sharing nothing stay hidden");
    app.call("POST", &format!("/_matrix/client/v3/rooms/{quiet}/join"), Some(&carol), Some(json!({}))).await;
    let (_, r) = app
        .call("POST", "/_matrix/client/v3/user_directory/search", Some(&bob), Some(json!({"search_term": "danvers"})))
        .await;
    assert_eq!(r["results"][0]["display_name"], "Carol Danvers", "members of public rooms are found: {r}");
    let (s, _) =
        app.call("POST", "/_matrix/client/v3/user_directory/search", None, Some(json!({"search_term": "a"}))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    app.db.cleanup().await;
}

async fn rate_limits_answer_limit_exceeded(backend: Backend) {
    let app = app(backend, |c| {
        c.rate_limits.login = ganglion_config::RateLimit { per_minute: 1, burst: 2 };
        c.rate_limits.messages = ganglion_config::RateLimit { per_minute: 60, burst: 3 };
    })
    .await;
    let alice = app.register("alice").await;
    let login = json!({"type": "m.login.password", "user": "alice", "password": "wrong"});
    for _ in 0..2 {
        let (s, _) = app.call("POST", "/_matrix/client/v3/login", None, Some(login.clone())).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    let req = Request::post("/_matrix/client/v3/login").body(Body::from(login.to_string())).unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED");
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0);
    // Another client address has its own bucket.
    let req = Request::post("/_matrix/client/v3/login")
        .header("x-forwarded-for", "192.0.2.7")
        .body(Body::from(login.to_string()))
        .unwrap();
    assert_eq!(app.router.clone().oneshot(req).await.unwrap().status(), StatusCode::FORBIDDEN);

    let room = create(&app, &alice, json!({})).await;
    let mut statuses = Vec::new();
    for i in 0..4 {
        let (s, _) = app
            .call(
                "PUT",
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/rl{i}"),
                Some(&alice),
                Some(json!({"body": "x"})),
            )
            .await;
        statuses.push(s.as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 429]);
    app.db.cleanup().await;
}

static TXN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Sends a message event and returns its ID.
async fn send_event(app: &App, room: &str, token: &str, ty: &str, content: Value) -> String {
    let txn = TXN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (s, b) = app
        .call("PUT", &format!("/_matrix/client/v3/rooms/{room}/send/{ty}/rel{txn}"), Some(token), Some(content))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["event_id"].as_str().unwrap().to_owned()
}

/// A public room made by the first token and joined by the others.
async fn public_room(app: &App, creator: &str, joiners: &[&str]) -> String {
    let (s, b) =
        app.call("POST", "/_matrix/client/v3/createRoom", Some(creator), Some(json!({"preset": "public_chat"}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let room = b["room_id"].as_str().unwrap().to_owned();
    for t in joiners {
        let (s, b) = app.call("POST", &format!("/_matrix/client/v3/join/{room}"), Some(t), Some(json!({}))).await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    room
}

fn rel(rel_type: &str, parent: &str) -> Value {
    json!({"body": rel_type, "m.relates_to": {"rel_type": rel_type, "event_id": parent}})
}

fn ids(b: &Value) -> Vec<String> {
    b["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect()
}

async fn relations_page_filter_and_recurse(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let dave = app.register("dave").await;
    let room = public_room(&app, &alice, &[&bob]).await;
    let root = send_event(&app, &room, &alice, "m.room.message", json!({"body": "root"})).await;
    let thread = send_event(&app, &room, &bob, "m.room.message", rel("m.thread", &root)).await;
    let reaction = send_event(
        &app,
        &room,
        &alice,
        "m.reaction",
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": thread, "key": "👍"}}),
    )
    .await;
    let edit = send_event(&app, &room, &alice, "m.room.message", rel("m.replace", &root)).await;
    let reference = send_event(&app, &room, &bob, "m.room.message", rel("m.reference", &root)).await;
    // A rich reply is no relation.
    send_event(
        &app,
        &room,
        &bob,
        "m.room.message",
        json!({"body": "re", "m.relates_to": {"m.in_reply_to": {"event_id": root}}}),
    )
    .await;

    let base = format!("/_matrix/client/v1/rooms/{room}/relations/{root}");
    let get = |q: String| {
        let app = &app;
        let alice = alice.clone();
        async move { app.call("GET", &q, Some(&alice), None).await }
    };
    let (s, b) = get(base.clone()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(ids(&b), vec![reference.clone(), edit.clone(), thread.clone()], "newest first");
    assert!(b.get("next_batch").is_none() && b.get("recursion_depth").is_none());
    let (_, b) = get(format!("{base}?dir=f")).await;
    assert_eq!(ids(&b), vec![thread.clone(), edit.clone(), reference.clone()]);
    let (_, p1) = get(format!("{base}?limit=2")).await;
    assert_eq!(ids(&p1), vec![reference.clone(), edit.clone()]);
    let next = p1["next_batch"].as_str().unwrap().to_owned();
    let (_, p2) = get(format!("{base}?limit=2&from={next}")).await;
    assert_eq!(ids(&p2), vec![thread.clone()]);
    assert_eq!(p2["prev_batch"].as_str(), Some(next.as_str()));
    let (_, b) = get(format!("{base}?to={next}")).await;
    assert_eq!(ids(&b), vec![reference.clone(), edit.clone()], "`to` bounds the page");
    let (_, b) = get(format!("{base}/m.thread")).await;
    assert_eq!(ids(&b), vec![thread.clone()]);
    let (_, b) = get(format!("{base}/m.replace/m.room.message")).await;
    assert_eq!(ids(&b), vec![edit.clone()]);
    let (_, b) = get(format!("{base}/m.thread/m.reaction")).await;
    assert_eq!(ids(&b), Vec::<String>::new());
    let (_, b) = get(format!("{base}?recurse=true")).await;
    assert_eq!(ids(&b), vec![reference.clone(), edit.clone(), reaction.clone(), thread.clone()]);
    assert_eq!(b["recursion_depth"], json!(3));
    let (_, b) = get(format!("{base}/m.annotation?recurse=true")).await;
    assert_eq!(ids(&b), vec![reaction.clone()], "filters apply at every depth");

    for (q, status, code) in [
        (format!("{base}?dir=x"), StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
        (format!("{base}?from=garbage"), StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
        (format!("{base}?recurse=maybe"), StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
        (format!("{base}?limit=-1"), StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
        (format!("/_matrix/client/v1/rooms/{room}/relations/$nope"), StatusCode::NOT_FOUND, "M_NOT_FOUND"),
        (format!("/_matrix/client/v1/rooms/not-a-room/relations/{root}"), StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
    ] {
        let (s, b) = get(q.clone()).await;
        assert_eq!((s, b["errcode"].as_str()), (status, Some(code)), "{q}: {b}");
    }
    let (s, b) = app.call("GET", &base, Some(&dave), None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")), "not a member");
    let (s, _) = app.call("GET", &base, None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    app.db.cleanup().await;
}

async fn threads_list_roots_by_latest_activity(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let dave = app.register("dave").await;
    let room = public_room(&app, &alice, &[&bob, &carol]).await;
    let root_a = send_event(&app, &room, &alice, "m.room.message", json!({"body": "a"})).await;
    let root_b = send_event(&app, &room, &bob, "m.room.message", json!({"body": "b"})).await;
    send_event(&app, &room, &alice, "m.room.message", json!({"body": "no thread"})).await;
    let t1 = send_event(&app, &room, &bob, "m.room.message", rel("m.thread", &root_a)).await;
    send_event(&app, &room, &bob, "m.room.message", rel("m.thread", &root_b)).await;
    let threads = format!("/_matrix/client/v1/rooms/{room}/threads");
    let (s, b) = app.call("GET", &threads, Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(ids(&b), vec![root_b.clone(), root_a.clone()], "latest activity first");
    let t3 = send_event(&app, &room, &alice, "m.room.message", rel("m.thread", &root_a)).await;
    let (_, b) = app.call("GET", &threads, Some(&carol), None).await;
    assert_eq!(ids(&b), vec![root_a.clone(), root_b.clone()]);
    let summary = &b["chunk"][0]["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(summary["count"], json!(2));
    assert_eq!(summary["latest_event"]["event_id"].as_str(), Some(t3.as_str()));
    assert_eq!(summary["current_user_participated"], json!(false), "carol took no part");
    let (_, b) = app.call("GET", &format!("{threads}?include=participated"), Some(&alice), None).await;
    assert_eq!(ids(&b), vec![root_a.clone()], "alice started thread a only and replied only there");
    assert_eq!(b["chunk"][0]["unsigned"]["m.relations"]["m.thread"]["current_user_participated"], json!(true));
    let (_, b) = app.call("GET", &format!("{threads}?include=participated"), Some(&bob), None).await;
    assert_eq!(ids(&b), vec![root_a.clone(), root_b.clone()], "bob replied in a and started b");
    let (_, b) = app.call("GET", &format!("{threads}?include=participated"), Some(&carol), None).await;
    assert_eq!(ids(&b), Vec::<String>::new());
    let (_, p1) = app.call("GET", &format!("{threads}?limit=1"), Some(&alice), None).await;
    assert_eq!(ids(&p1), vec![root_a.clone()]);
    let next = p1["next_batch"].as_str().unwrap();
    let (_, p2) = app.call("GET", &format!("{threads}?limit=1&from={next}"), Some(&alice), None).await;
    assert_eq!(ids(&p2), vec![root_b.clone()]);
    let (_, p3) =
        app.call("GET", &format!("{threads}?from={}", p2["next_batch"].as_str().unwrap()), Some(&alice), None).await;
    assert_eq!(ids(&p3), Vec::<String>::new());
    assert_ne!(t1, t3);

    for (q, code) in
        [(format!("{threads}?include=mine"), "M_INVALID_PARAM"), (format!("{threads}?from=x"), "M_INVALID_PARAM")]
    {
        let (s, b) = app.call("GET", &q, Some(&alice), None).await;
        assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some(code)), "{q}");
    }
    let (s, b) = app.call("GET", &threads, Some(&dave), None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")));
    app.db.cleanup().await;
}

async fn bundled_aggregations_on_returned_events(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let room = public_room(&app, &alice, &[&bob, &carol]).await;
    let root = send_event(&app, &room, &alice, "m.room.message", json!({"body": "root"})).await;
    let thread = send_event(&app, &room, &bob, "m.room.message", rel("m.thread", &root)).await;
    let edit = send_event(
        &app,
        &room,
        &alice,
        "m.room.message",
        json!({"body": "* new", "m.new_content": {"body": "new"}, "m.relates_to": {"rel_type": "m.replace", "event_id": root}}),
    )
    .await;
    // An edit by someone else is not the original sender's edit, so it is not bundled.
    send_event(&app, &room, &bob, "m.room.message", rel("m.replace", &root)).await;
    let reference = send_event(&app, &room, &carol, "m.room.message", rel("m.reference", &root)).await;

    let (s, ev) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/event/{root}"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK, "{ev}");
    let rels = &ev["unsigned"]["m.relations"];
    assert_eq!(rels["m.thread"]["count"], json!(1));
    assert_eq!(rels["m.thread"]["latest_event"]["event_id"].as_str(), Some(thread.as_str()));
    assert_eq!(rels["m.thread"]["current_user_participated"], json!(true), "alice sent the root");
    assert_eq!(rels["m.replace"]["event_id"].as_str(), Some(edit.as_str()));
    assert_eq!(rels["m.replace"]["content"]["m.new_content"]["body"], json!("new"), "the whole edit event");
    assert_eq!(rels["m.reference"], json!({"chunk": [{"event_id": reference}]}));

    let (_, ev) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/event/{root}"), Some(&carol), None).await;
    assert_eq!(ev["unsigned"]["m.relations"]["m.thread"]["current_user_participated"], json!(false));

    let (_, msgs) =
        app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=20"), Some(&alice), None).await;
    let in_msgs = msgs["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == json!(root)).unwrap();
    assert_eq!(in_msgs["unsigned"]["m.relations"]["m.replace"]["event_id"].as_str(), Some(edit.as_str()));
    let plain = msgs["chunk"].as_array().unwrap().iter().find(|e| e["event_id"] == json!(reference)).unwrap();
    assert!(plain.get("unsigned").is_none(), "an event without relations has no bundle: {plain}");

    let (_, ctx) =
        app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/context/{thread}?limit=4"), Some(&alice), None).await;
    let before = ctx["events_before"].as_array().unwrap().iter().find(|e| e["event_id"] == json!(root)).unwrap();
    assert_eq!(before["unsigned"]["m.relations"]["m.thread"]["count"], json!(1));
    let (_, ctx) =
        app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/context/{root}?limit=2"), Some(&alice), None).await;
    assert_eq!(ctx["event"]["unsigned"]["m.relations"]["m.reference"]["chunk"][0]["event_id"], json!(reference));

    // Relations chunks carry bundles too: the thread reply's own reference.
    let nested = send_event(&app, &room, &alice, "m.room.message", rel("m.reference", &thread)).await;
    let (_, b) = app
        .call("GET", &format!("/_matrix/client/v1/rooms/{room}/relations/{root}/m.thread"), Some(&alice), None)
        .await;
    assert_eq!(b["chunk"][0]["unsigned"]["m.relations"]["m.reference"]["chunk"][0]["event_id"], json!(nested));

    // Redacting the edit removes it from the bundle.
    let (s, _) = app
        .call("PUT", &format!("/_matrix/client/v3/rooms/{room}/redact/{edit}/r1"), Some(&alice), Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, ev) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/event/{root}"), Some(&alice), None).await;
    assert!(ev["unsigned"]["m.relations"].get("m.replace").is_none(), "{ev}");
    assert_eq!(ev["unsigned"]["m.relations"]["m.thread"]["count"], json!(1));
    app.db.cleanup().await;
}

async fn timestamp_to_event_finds_the_nearest_visible_event(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let carol = app.register("carol").await;
    let dave = app.register("dave").await;
    let room = public_room(&app, &alice, &[&carol]).await;
    let msg = send_event(&app, &room, &alice, "m.room.message", json!({"body": "hi"})).await;
    let base = format!("/_matrix/client/v1/rooms/{room}/timestamp_to_event");
    let (_, first) =
        app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=1"), Some(&alice), None).await;
    let (s, b) = app.call("GET", &format!("{base}?ts=0&dir=f"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["event_id"], first["chunk"][0]["event_id"], "the create event is the first");
    assert_eq!(b["origin_server_ts"], first["chunk"][0]["origin_server_ts"]);
    let far = 32_503_680_000_000_i64; // the year 3000
    let (_, b) = app.call("GET", &format!("{base}?ts={far}&dir=b"), Some(&alice), None).await;
    assert_eq!(b["event_id"].as_str(), Some(msg.as_str()), "the latest event");
    let (_, ev) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/event/{msg}"), Some(&alice), None).await;
    let ts = ev["origin_server_ts"].as_i64().unwrap();
    let (_, b) = app.call("GET", &format!("{base}?ts={ts}&dir=f"), Some(&alice), None).await;
    assert!(b["origin_server_ts"].as_i64().unwrap() >= ts);
    let (s, b) = app.call("GET", &format!("{base}?ts={}&dir=b", ts - 1), Some(&alice), None).await;
    // Everything before may share the message's millisecond; then there is nothing earlier.
    assert!(s == StatusCode::NOT_FOUND || b["origin_server_ts"].as_i64().unwrap() < ts, "{b}");
    let (s, b) = app.call("GET", &format!("{base}?ts={far}&dir=f"), Some(&alice), None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")));
    let (s, b) = app.call("GET", &format!("{base}?ts=0&dir=b"), Some(&alice), None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")));

    // A former member sees up to their departure.
    let (s, _) =
        app.call("POST", &format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&carol), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK);
    let later = send_event(&app, &room, &alice, "m.room.message", json!({"body": "after"})).await;
    let (_, b) = app.call("GET", &format!("{base}?ts={far}&dir=b"), Some(&alice), None).await;
    assert_eq!(b["event_id"].as_str(), Some(later.as_str()));
    let (s, b) = app.call("GET", &format!("{base}?ts={far}&dir=b"), Some(&carol), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_ne!(b["event_id"].as_str(), Some(later.as_str()), "carol left before it");
    let (_, leave) = app
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/@carol:localhost?format=event"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(b["event_id"], leave["event_id"], "her leave is the last event she saw");

    for (q, status, code) in [
        (format!("{base}?dir=f"), StatusCode::BAD_REQUEST, "M_MISSING_PARAM"),
        (format!("{base}?ts=soon&dir=f"), StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
        (format!("{base}?ts=0"), StatusCode::BAD_REQUEST, "M_MISSING_PARAM"),
        (format!("{base}?ts=0&dir=up"), StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
    ] {
        let (s, b) = app.call("GET", &q, Some(&alice), None).await;
        assert_eq!((s, b["errcode"].as_str()), (status, Some(code)), "{q}");
    }
    let (s, b) = app.call("GET", &format!("{base}?ts=0&dir=f"), Some(&dave), None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")));
    app.db.cleanup().await;
}

async fn room_upgrade_tombstones_and_carries_state_over(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let dave = app.register("dave").await;
    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&alice),
            Some(json!({"preset": "public_chat", "visibility": "public", "room_version": "11", "name": "Old", "topic": "t", "room_alias_name": "up"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let old = b["room_id"].as_str().unwrap().to_owned();
    let (s, _) = app.call("POST", &format!("/_matrix/client/v3/join/{old}"), Some(&bob), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK);
    let last = send_event(&app, &old, &bob, "m.room.message", json!({"body": "last words"})).await;
    let upgrade = format!("/_matrix/client/v3/rooms/{old}/upgrade");

    let (s, b) = app.call("POST", &upgrade, Some(&bob), Some(json!({"new_version": "12"}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")), "bob lacks the power");
    let (s, b) = app.call("POST", &upgrade, Some(&dave), Some(json!({"new_version": "12"}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")), "not a member");
    let (s, b) = app.call("POST", &upgrade, Some(&alice), Some(json!({"new_version": "999"}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_UNSUPPORTED_ROOM_VERSION")));
    let (s, b) = app.call("POST", &upgrade, Some(&alice), Some(json!({}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_BAD_JSON")), "{b}");
    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/rooms/!nope:localhost/upgrade",
            Some(&alice),
            Some(json!({"new_version": "12"})),
        )
        .await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")));

    let (s, b) = app.call("POST", &upgrade, Some(&alice), Some(json!({"new_version": "12"}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let new = b["replacement_room"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    let get_state = |room: String, path: &'static str| {
        let app = &app;
        let alice = alice.clone();
        async move { app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/state/{path}"), Some(&alice), None).await.1 }
    };
    let create = get_state(new.clone(), "m.room.create").await;
    assert_eq!(create["room_version"], json!("12"));
    assert_eq!(create["predecessor"], json!({"room_id": old, "event_id": last}));
    assert!(create.get("creator").is_none(), "v12 takes the creator from the sender");
    assert_eq!(get_state(new.clone(), "m.room.name").await["name"], json!("Old"));
    assert_eq!(get_state(new.clone(), "m.room.topic").await["topic"], json!("t"));
    assert_eq!(get_state(new.clone(), "m.room.join_rules").await["join_rule"], json!("public"));
    assert_eq!(get_state(new.clone(), "m.room.history_visibility").await["history_visibility"], json!("shared"));
    let pl = get_state(new.clone(), "m.room.power_levels").await;
    assert!(pl["users"].get("@alice:localhost").is_none(), "a v12 creator is not listed: {pl}");
    assert_eq!(pl["events"]["m.room.tombstone"], json!(100), "the rest is copied");
    assert_eq!(get_state(new.clone(), "m.room.canonical_alias").await["alias"], json!("#up:localhost"));
    let (_, b) = app.call("GET", "/_matrix/client/v3/directory/room/%23up:localhost", None, None).await;
    assert_eq!(b["room_id"].as_str(), Some(new.as_str()), "the alias moved");
    let (_, b) = app.call("GET", &format!("/_matrix/client/v3/directory/list/room/{new}"), None, None).await;
    assert_eq!(b["visibility"], json!("public"), "the directory entry moved");
    let (_, b) = app.call("GET", &format!("/_matrix/client/v3/rooms/{new}/joined_members"), Some(&alice), None).await;
    assert_eq!(b["joined"].as_object().unwrap().keys().collect::<Vec<_>>(), vec!["@alice:localhost"]);

    let tomb = get_state(old.clone(), "m.room.tombstone").await;
    assert_eq!(tomb["replacement_room"].as_str(), Some(new.as_str()));
    let old_pl = get_state(old.clone(), "m.room.power_levels").await;
    assert_eq!((old_pl["events_default"].clone(), old_pl["invite"].clone()), (json!(50), json!(50)));
    assert_eq!(get_state(old.clone(), "m.room.canonical_alias").await, json!({}), "the old room lost its alias");
    let (s, b) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{old}/send/m.room.message/after"),
            Some(&bob),
            Some(json!({"body": "x"})),
        )
        .await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")), "the old room is muted");

    // From v12 back to a version with power-level creators: the v12 creator keeps 100.
    let (s, b) = app
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{new}/upgrade"),
            Some(&alice),
            Some(json!({"new_version": "11"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let newer = b["replacement_room"].as_str().unwrap().to_owned();
    let create = get_state(newer.clone(), "m.room.create").await;
    assert_eq!((create["room_version"].clone(), create["predecessor"]["room_id"].clone()), (json!("11"), json!(new)));
    assert_eq!(get_state(newer.clone(), "m.room.create?format=event").await["sender"], json!("@alice:localhost"));
    assert_eq!(get_state(newer.clone(), "m.room.power_levels").await["users"]["@alice:localhost"], json!(100));
    assert_eq!(get_state(newer.clone(), "m.room.name").await["name"], json!("Old"));
    app.db.cleanup().await;
}

async fn room_upgrade_by_a_moderator_keeps_their_level(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/createRoom",
            Some(&alice),
            Some(json!({"preset": "public_chat", "room_version": "10", "name": "Mods",
                "power_level_content_override": {"users": {"@alice:localhost": 100, "@bob:localhost": 50},
                    "events": {"m.room.tombstone": 50, "m.room.name": 50, "m.room.power_levels": 100}}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let old = b["room_id"].as_str().unwrap().to_owned();
    app.call("POST", &format!("/_matrix/client/v3/join/{old}"), Some(&bob), Some(json!({}))).await;
    let (s, b) = app
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{old}/upgrade"),
            Some(&bob),
            Some(json!({"new_version": "11"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let new = b["replacement_room"].as_str().unwrap().to_owned();
    let get = |room: String, path: &'static str| {
        let app = &app;
        let bob = bob.clone();
        async move { app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/state/{path}"), Some(&bob), None).await.1 }
    };
    assert_eq!(get(new.clone(), "m.room.name").await["name"], json!("Mods"), "sent while raised");
    let pl = get(new.clone(), "m.room.power_levels").await;
    assert_eq!(pl["users"]["@bob:localhost"], json!(50), "raised only while copying: {pl}");
    assert_eq!(pl["users"]["@alice:localhost"], json!(100));
    assert_eq!(get(old.clone(), "m.room.tombstone").await["replacement_room"].as_str(), Some(new.as_str()));
    assert_eq!(get(old.clone(), "m.room.power_levels").await["events_default"], json!(0), "bob may not restrict it");
    app.db.cleanup().await;
}

async fn reports_openid_and_turn(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = create(&app, &alice, json!({})).await;
    let (_, sent) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/r"),
            Some(&alice),
            Some(json!({"body": "spam"})),
        )
        .await;
    let event = sent["event_id"].as_str().unwrap().to_owned();
    let path = format!("/_matrix/client/v3/rooms/{room}/report/{event}");
    let (s, _) = app.call("POST", &path, Some(&alice), Some(json!({"reason": "spam", "score": -100}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = app.call("POST", &path, Some(&alice), Some(json!({"score": 5}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")));
    let (s, b) = app.call("POST", &path, Some(&bob), Some(json!({"reason": "x"}))).await;
    assert_eq!(
        (s, b["errcode"].as_str()),
        (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")),
        "only events the reporter can see"
    );
    let (s, _) = app
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{room}/report"),
            Some(&bob),
            Some(json!({"reason": "bad room"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.call("POST", "/_matrix/client/v3/rooms/!nope:localhost/report", Some(&bob), Some(json!({}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app
        .call("POST", "/_matrix/client/v3/users/@alice:localhost/report", Some(&bob), Some(json!({"reason": "rude"})))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) =
        app.call("POST", "/_matrix/client/v3/users/@ghost:localhost/report", Some(&bob), Some(json!({}))).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let reports = ganglion_storage::ReportStore::new(app.db.db.clone()).all().await.unwrap();
    assert_eq!(reports.len(), 3);
    assert_eq!(reports[2].event_id.as_deref(), Some(event.as_str()));
    assert_eq!(reports[2].score, Some(-100));
    assert_eq!(reports[0].target_user_id.as_deref(), Some("@alice:localhost"));

    let (s, b) = app
        .call("POST", "/_matrix/client/v3/user/@alice:localhost/openid/request_token", Some(&alice), Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (b["token_type"].as_str(), b["matrix_server_name"].as_str(), b["expires_in"].as_i64()),
        (Some("Bearer"), Some("localhost"), Some(3600))
    );
    let token = b["access_token"].as_str().unwrap();
    let who = ganglion_storage::ReportStore::new(app.db.db.clone())
        .openid_user(&ganglion_http::hash_token(token))
        .await
        .unwrap();
    assert_eq!(who.as_deref(), Some("@alice:localhost"));
    let (s, _) = app
        .call("POST", "/_matrix/client/v3/user/@alice:localhost/openid/request_token", Some(&bob), Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, b) = app.call("GET", "/_matrix/client/v3/voip/turnServer", Some(&bob), None).await;
    assert_eq!((s, b), (StatusCode::OK, json!({})));
    app.db.cleanup().await;
}

async fn space_hierarchy_and_room_summary(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let space = create(&app, &alice, json!({"preset": "public_chat", "name": "Space", "creation_content": {"type": "m.space"}, "room_alias_name": "space"})).await;
    let open = create(&app, &alice, json!({"preset": "public_chat", "name": "Open"})).await;
    let closed = create(&app, &alice, json!({"preset": "private_chat", "name": "Closed"})).await;
    for (child, suggested) in [(&open, true), (&closed, false)] {
        let (s, b) = app
            .call(
                "PUT",
                &format!("/_matrix/client/v3/rooms/{space}/state/m.space.child/{child}"),
                Some(&alice),
                Some(json!({"via": ["localhost"], "suggested": suggested})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let names = |b: &Value| -> Vec<String> {
        b["rooms"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap_or("").to_owned()).collect()
    };
    let (s, b) = app.call("GET", &format!("/_matrix/client/v1/rooms/{space}/hierarchy"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(names(&b), vec!["Space", "Open", "Closed"]);
    assert_eq!(b["rooms"][0]["room_type"], "m.space");
    assert_eq!(b["rooms"][0]["children_state"].as_array().unwrap().len(), 2);
    let (_, b) = app.call("GET", &format!("/_matrix/client/v1/rooms/{space}/hierarchy"), Some(&bob), None).await;
    assert_eq!(names(&b), vec!["Space", "Open"], "a private room stays hidden from outsiders");
    let (_, b) =
        app.call("GET", &format!("/_matrix/client/v1/rooms/{space}/hierarchy?max_depth=0"), Some(&alice), None).await;
    assert_eq!(names(&b), vec!["Space"]);
    let (_, b) = app
        .call("GET", &format!("/_matrix/client/v1/rooms/{space}/hierarchy?suggested_only=true"), Some(&alice), None)
        .await;
    assert_eq!(names(&b), vec!["Space", "Open"]);
    let (_, p1) =
        app.call("GET", &format!("/_matrix/client/v1/rooms/{space}/hierarchy?limit=2"), Some(&alice), None).await;
    assert_eq!(names(&p1), vec!["Space", "Open"]);
    let next = p1["next_batch"].as_str().unwrap().to_owned();
    let (_, p2) = app
        .call("GET", &format!("/_matrix/client/v1/rooms/{space}/hierarchy?limit=2&from={next}"), Some(&alice), None)
        .await;
    assert_eq!(names(&p2), vec!["Closed"]);
    let (s, _) = app.call("GET", &format!("/_matrix/client/v1/rooms/{closed}/hierarchy"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let (s, _) =
        app.call("GET", &format!("/_matrix/client/v1/rooms/{space}/hierarchy?from=zzz"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let (s, b) = app.call("GET", "/_matrix/client/v1/room_summary/%23space:localhost", Some(&bob), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(
        (b["room_id"].as_str(), b["name"].as_str(), b["num_joined_members"].as_u64()),
        (Some(space.as_str()), Some("Space"), Some(1))
    );
    assert!(b.get("membership").is_none());
    let (_, b) = app.call("GET", &format!("/_matrix/client/v1/room_summary/{space}"), Some(&alice), None).await;
    assert_eq!(b["membership"], "join");
    let (s, _) = app.call("GET", &format!("/_matrix/client/v1/room_summary/{closed}"), Some(&bob), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    app.db.cleanup().await;
}

async fn registration_tokens_gate_registration(backend: Backend) {
    let app = app(backend, |c| c.registration.require_token = true).await;
    let mut cfg = Config::default();
    cfg.password_hashing.memory_kib = 64;
    cfg.password_hashing.iterations = 1;
    crate::register_user(&cfg, app.db.db.clone(), "admin", "pw", true).await.unwrap();
    crate::register_user(&cfg, app.db.db.clone(), "plain", "pw", false).await.unwrap();
    let admin = login_device(&app, "admin", "A").await;
    let plain = login_device(&app, "plain", "P").await;

    let (s, b) = app
        .call("POST", "/_matrix/client/v3/register", None, Some(json!({"username": "newbie", "password": "pw"})))
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(b["flows"], json!([{"stages": ["m.login.registration_token"]}]));
    let session = b["session"].as_str().unwrap().to_owned();

    let (s, _) = app.call("POST", "/_synapse/admin/v1/registration_tokens/new", Some(&plain), Some(json!({}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "only admins create tokens");
    let (s, b) = app
        .call(
            "POST",
            "/_synapse/admin/v1/registration_tokens/new",
            Some(&admin),
            Some(json!({"token": "welcome", "uses_allowed": 1})),
        )
        .await;
    assert_eq!((s, b["token"].as_str()), (StatusCode::OK, Some("welcome")), "{b}");
    let validity = "/_matrix/client/v1/register/m.login.registration_token/validity?token=welcome";
    let (_, b) = app.call("GET", validity, None, None).await;
    assert_eq!(b["valid"], true);

    let wrong = json!({"username": "newbie", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "nope", "session": session}});
    let (s, b) = app.call("POST", "/_matrix/client/v3/register", None, Some(wrong)).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_FORBIDDEN")));
    let right = json!({"username": "newbie", "password": "pw", "auth": {"type": "m.login.registration_token", "token": "welcome", "session": session}});
    let (s, b) = app.call("POST", "/_matrix/client/v3/register", None, Some(right)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, b) = app.call("GET", validity, None, None).await;
    assert_eq!(b["valid"], false, "the only use is spent");
    let dummy = json!({"username": "other", "password": "pw", "auth": {"type": "m.login.dummy"}});
    let (s, _) = app.call("POST", "/_matrix/client/v3/register", None, Some(dummy)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the dummy stage does not replace the token");
    let (s, _) = app.call("GET", "/_matrix/client/v1/register/m.login.registration_token/validity", None, None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    let (_, b) = app.call("GET", "/_synapse/admin/v1/registration_tokens", Some(&admin), None).await;
    assert_eq!(b["registration_tokens"][0]["completed"], 1);
    let (s, _) = app.call("DELETE", "/_synapse/admin/v1/registration_tokens/welcome", Some(&admin), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.call("DELETE", "/_synapse/admin/v1/registration_tokens/welcome", Some(&admin), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    app.db.cleanup().await;
}

async fn search_finds_messages_in_joined_rooms(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = create(&app, &alice, json!({"name": "Garden talk"})).await;
    for (i, body) in ["tomatoes need sun", "water the tomatoes daily", "basil likes sun too"].iter().enumerate() {
        app.call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/s{i}"),
            Some(&alice),
            Some(json!({"msgtype": "m.text", "body": body})),
        )
        .await;
    }
    let query = |term: &str, extra: Value| {
        let mut c = json!({"search_term": term});
        if let (Some(o), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        json!({"search_categories": {"room_events": c}})
    };
    let (s, b) = app
        .call("POST", "/_matrix/client/v3/search", Some(&alice), Some(query("tomatoes", json!({"order_by": "recent"}))))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let re = &b["search_categories"]["room_events"];
    assert_eq!(re["count"], 2);
    let bodies: Vec<&str> =
        re["results"].as_array().unwrap().iter().filter_map(|r| r["result"]["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["water the tomatoes daily", "tomatoes need sun"]);
    let (_, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/search",
            Some(&alice),
            Some(query("garden", json!({"keys": ["content.name"]}))),
        )
        .await;
    assert_eq!(b["search_categories"]["room_events"]["count"], 1, "room names are searchable");
    let (_, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/search",
            Some(&alice),
            Some(query("sun", json!({"filter": {"limit": 1}, "event_context": {"before_limit": 1, "after_limit": 1}}))),
        )
        .await;
    let re = &b["search_categories"]["room_events"];
    assert_eq!(re["results"].as_array().unwrap().len(), 1);
    assert!(re["results"][0]["context"]["events_before"].is_array());
    let next = re["next_batch"].as_str().unwrap().to_owned();
    let (_, b) = app
        .call(
            "POST",
            &format!("/_matrix/client/v3/search?next_batch={next}"),
            Some(&alice),
            Some(query("sun", json!({"filter": {"limit": 1}}))),
        )
        .await;
    assert_eq!(b["search_categories"]["room_events"]["results"].as_array().unwrap().len(), 1);
    assert!(b["search_categories"]["room_events"].get("next_batch").is_none());
    let (_, b) = app.call("POST", "/_matrix/client/v3/search", Some(&bob), Some(query("tomatoes", json!({})))).await;
    assert_eq!(b["search_categories"]["room_events"]["count"], 0, "other people's rooms stay private");
    let (s, _) = app
        .call("POST", "/_matrix/client/v3/search", Some(&alice), Some(query("x", json!({"order_by": "sideways"}))))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = app
        .call(
            "POST",
            "/_matrix/client/v3/search",
            Some(&alice),
            Some(json!({"search_categories": {"room_events": {}}})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "search_term is required");
    app.db.cleanup().await;
}

async fn notifications_list_what_notified(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = create(&app, &alice, json!({"preset": "public_chat"})).await;
    app.call("POST", &format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob), Some(json!({}))).await;
    let mut ids = Vec::new();
    for (i, content) in [
        json!({"msgtype": "m.text", "body": "one"}),
        json!({"msgtype": "m.text", "body": "two", "m.mentions": {"user_ids": ["@alice:localhost"]}}),
        json!({"msgtype": "m.text", "body": "three"}),
    ]
    .iter()
    .enumerate()
    {
        let (_, b) = app
            .call(
                "PUT",
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/n{i}"),
                Some(&bob),
                Some(content.clone()),
            )
            .await;
        ids.push(b["event_id"].as_str().unwrap().to_owned());
    }
    app.call(
        "POST",
        &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{}", ids[0]),
        Some(&alice),
        Some(json!({})),
    )
    .await;
    let (s, b) = app.call("GET", "/_matrix/client/v3/notifications?limit=2", Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let list = b["notifications"].as_array().unwrap();
    let bodies: Vec<&str> = list.iter().filter_map(|n| n["event"]["content"]["body"].as_str()).collect();
    assert_eq!(bodies, vec!["three", "two"], "newest first");
    let tweaks: Vec<&Value> =
        list[1]["actions"].as_array().unwrap().iter().filter_map(|a| a.get("set_tweak")).collect();
    assert_eq!(tweaks, [&json!("sound"), &json!("highlight")], "the rule's own actions: {}", list[1]["actions"]);
    assert_eq!((list[0]["read"].as_bool(), list[0]["room_id"].as_str()), (Some(false), Some(room.as_str())));
    let next = b["next_token"].as_str().unwrap().to_owned();
    let (_, b) = app.call("GET", &format!("/_matrix/client/v3/notifications?from={next}"), Some(&alice), None).await;
    let rest = b["notifications"].as_array().unwrap();
    assert_eq!(rest.len(), 1);
    assert_eq!((rest[0]["event"]["content"]["body"].as_str(), rest[0]["read"].as_bool()), (Some("one"), Some(true)));
    let (_, b) = app.call("GET", "/_matrix/client/v3/notifications?only=highlight", Some(&alice), None).await;
    assert_eq!(b["notifications"].as_array().unwrap().len(), 1);
    let (s, _) = app.call("GET", "/_matrix/client/v3/notifications?from=abc", Some(&alice), None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, b) = app.call("GET", "/_matrix/client/v3/thirdparty/protocols", Some(&alice), None).await;
    assert_eq!((s, b), (StatusCode::OK, json!({})));
    app.db.cleanup().await;
}

/// An ed25519 key pair whose key ID is its own public key, as cross-signing keys are named.
fn cross_signing_pair() -> (ruma::signatures::Ed25519KeyPair, String) {
    use base64::Engine as _;
    let der = ruma::signatures::Ed25519KeyPair::generate();
    let probe = ruma::signatures::Ed25519KeyPair::from_der(&der, "x".to_owned()).unwrap();
    let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(probe.public_key());
    (ruma::signatures::Ed25519KeyPair::from_der(&der, public.clone()).unwrap(), public)
}

/// `object` with a signature by `signer`'s `pair` added.
fn signed(object: Value, signer: &str, pair: &ruma::signatures::Ed25519KeyPair) -> Value {
    let mut canonical: ruma::CanonicalJsonObject = serde_json::from_value(object).unwrap();
    ruma::signatures::sign_json(signer, pair, &mut canonical).unwrap();
    serde_json::to_value(canonical).unwrap()
}

fn cross_signing_key(user: &str, usage: &str, public: &str) -> Value {
    json!({"user_id": user, "usage": [usage], "keys": {format!("ed25519:{public}"): public}})
}

/// Uploads a full set of cross-signing keys for `user`; returns the (master, self, user) pairs.
async fn bootstrap_cross_signing(
    app: &App,
    user: &str,
    token: &str,
) -> [(ruma::signatures::Ed25519KeyPair, String); 3] {
    let (master, ssk, usk) = (cross_signing_pair(), cross_signing_pair(), cross_signing_pair());
    let body = json!({
        "master_key": cross_signing_key(user, "master", &master.1),
        "self_signing_key": signed(cross_signing_key(user, "self_signing", &ssk.1), user, &master.0),
        "user_signing_key": signed(cross_signing_key(user, "user_signing", &usk.1), user, &master.0),
    });
    let (s, b) = app.call("POST", "/_matrix/client/v3/keys/device_signing/upload", Some(token), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    [master, ssk, usk]
}

async fn query_keys(app: &App, token: &str, user: &str) -> Value {
    let (s, b) =
        app.call("POST", "/_matrix/client/v3/keys/query", Some(token), Some(json!({"device_keys": {user: []}}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

async fn upload_signatures(app: &App, token: &str, body: Value) -> Value {
    let (s, b) = app.call("POST", "/_matrix/client/v3/keys/signatures/upload", Some(token), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

async fn cross_signing_signatures_are_verified(backend: Backend) {
    let app = app(backend, |_| {}).await;
    app.register("alice").await;
    app.register("bob").await;
    let alice = login_device(&app, "alice", "ALICEDEV").await;
    let bob = login_device(&app, "bob", "BOBDEV").await;
    let (alice_keys, alice_device) = device_keys("@alice:localhost", "ALICEDEV");
    let (s, _) = app
        .call("POST", "/_matrix/client/v3/keys/upload", Some(&alice), Some(json!({"device_keys": alice_keys.clone()})))
        .await;
    assert_eq!(s, StatusCode::OK);
    let (bob_keys, _) = device_keys("@bob:localhost", "BOBDEV");
    app.call("POST", "/_matrix/client/v3/keys/upload", Some(&bob), Some(json!({"device_keys": bob_keys}))).await;

    // Sub-keys must be signed by the master key and name their usage.
    let (master, stranger) = (cross_signing_pair(), cross_signing_pair());
    let ssk = cross_signing_pair();
    let bad = json!({
        "master_key": cross_signing_key("@alice:localhost", "master", &master.1),
        "self_signing_key": signed(cross_signing_key("@alice:localhost", "self_signing", &ssk.1), "@alice:localhost", &stranger.0),
    });
    let (s, b) = app.call("POST", "/_matrix/client/v3/keys/device_signing/upload", Some(&alice), Some(bad)).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_SIGNATURE")), "{b}");
    let wrong_usage = json!({"master_key": cross_signing_key("@alice:localhost", "self_signing", &master.1)});
    let (s, b) =
        app.call("POST", "/_matrix/client/v3/keys/device_signing/upload", Some(&alice), Some(wrong_usage)).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")), "{b}");

    let [alice_master, alice_ssk, alice_usk] = bootstrap_cross_signing(&app, "@alice:localhost", &alice).await;
    let [bob_master, _, _] = bootstrap_cross_signing(&app, "@bob:localhost", &bob).await;

    // Alice cross-signs her device; a tampered copy is refused and changes nothing.
    let device_signed = signed(alice_keys.clone(), "@alice:localhost", &alice_ssk.0);
    let mut tampered = alice_keys.clone();
    tampered["algorithms"] = json!(["tampered"]);
    let tampered = signed(tampered, "@alice:localhost", &alice_ssk.0);
    let b = upload_signatures(&app, &alice, json!({"@alice:localhost": {"ALICEDEV": tampered}})).await;
    assert_eq!(b["failures"]["@alice:localhost"]["ALICEDEV"]["errcode"], "M_INVALID_SIGNATURE", "{b}");
    let b = upload_signatures(&app, &alice, json!({"@alice:localhost": {"ALICEDEV": device_signed}})).await;
    assert_eq!(b["failures"], json!({}), "{b}");
    // Her device signs her master key.
    let master_by_device =
        signed(cross_signing_key("@alice:localhost", "master", &alice_master.1), "@alice:localhost", &alice_device);
    let b =
        upload_signatures(&app, &alice, json!({"@alice:localhost": {alice_master.1.clone(): master_by_device}})).await;
    assert_eq!(b["failures"], json!({}), "{b}");

    // Alice verifies bob: her user-signing key signs his master key. Only she sees it.
    let bob_master_signed =
        signed(cross_signing_key("@bob:localhost", "master", &bob_master.1), "@alice:localhost", &alice_usk.0);
    let b = upload_signatures(
        &app,
        &alice,
        json!({"@bob:localhost": {bob_master.1.clone(): bob_master_signed, "BOBDEV": {"signatures": {}}}}),
    )
    .await;
    assert_eq!(b["failures"]["@bob:localhost"]["BOBDEV"]["errcode"], "M_INVALID_SIGNATURE", "{b}");
    assert!(b["failures"]["@bob:localhost"].get(&bob_master.1).is_none(), "{b}");
    let bob_device_by_alice = signed(device_keys("@bob:localhost", "BOBDEV").0, "@alice:localhost", &alice_usk.0);
    let b = upload_signatures(&app, &alice, json!({"@bob:localhost": {"BOBDEV": bob_device_by_alice}})).await;
    assert_eq!(b["failures"]["@bob:localhost"]["BOBDEV"]["errcode"], "M_FORBIDDEN", "{b}");

    let query = json!({"device_keys": {"@alice:localhost": [], "@bob:localhost": []}});
    let (_, seen_by_alice) = app.call("POST", "/_matrix/client/v3/keys/query", Some(&alice), Some(query.clone())).await;
    let (_, seen_by_bob) = app.call("POST", "/_matrix/client/v3/keys/query", Some(&bob), Some(query)).await;
    let ssk_id = format!("ed25519:{}", alice_ssk.1);
    let usk_id = format!("ed25519:{}", alice_usk.1);
    for seen in [&seen_by_alice, &seen_by_bob] {
        assert!(
            seen["device_keys"]["@alice:localhost"]["ALICEDEV"]["signatures"]["@alice:localhost"][&ssk_id].is_string(),
            "alice's device carries her self-signing signature for everyone: {seen}"
        );
        assert!(
            seen["master_keys"]["@alice:localhost"]["signatures"]["@alice:localhost"]["ed25519:ALICEDEV"].is_string(),
            "{seen}"
        );
    }
    assert!(seen_by_alice["master_keys"]["@bob:localhost"]["signatures"]["@alice:localhost"][&usk_id].is_string());
    assert!(seen_by_bob["master_keys"]["@bob:localhost"]["signatures"].get("@alice:localhost").is_none());
    assert!(seen_by_bob["user_signing_keys"].get("@alice:localhost").is_none(), "user-signing keys stay private");
    assert!(seen_by_alice["user_signing_keys"]["@alice:localhost"].is_object());

    // A new master key invalidates others' signatures on the old one (UIA needed to replace).
    let new_master = cross_signing_pair();
    let body = json!({
        "master_key": cross_signing_key("@bob:localhost", "master", &new_master.1),
        "auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "pw"},
    });
    let (s, b) = app.call("POST", "/_matrix/client/v3/keys/device_signing/upload", Some(&bob), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let b = query_keys(&app, &alice, "@bob:localhost").await;
    assert!(b["master_keys"]["@bob:localhost"]["signatures"].get("@alice:localhost").is_none(), "{b}");
    app.db.cleanup().await;
}

async fn dehydrated_device_lifecycle(backend: Backend) {
    const PATH: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";
    let app = app(backend, |_| {}).await;
    app.register("alice").await;
    app.register("bob").await;
    let alice = login_device(&app, "alice", "ALICEDEV").await;
    let bob = login_device(&app, "bob", "BOBDEV").await;
    let (s, b) = app.call("GET", PATH, Some(&alice), None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")), "{b}");
    let (s, _) = app.call("DELETE", PATH, Some(&alice), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let put = |device: &str| {
        json!({
            "device_id": device,
            "device_data": {"algorithm": "m.dehydration.v1.olm", "device_pickle": format!("pickle-{device}"), "nonce": "n"},
            "initial_device_display_name": "Offline device",
            "device_keys": device_keys("@alice:localhost", device).0,
            "one_time_keys": {"signed_curve25519:AAA": {"key": "a"}},
            "fallback_keys": {"signed_curve25519:FFF": {"key": "f", "fallback": true}},
        })
    };
    let (s, b) = app.call("PUT", PATH, Some(&alice), Some(put("DEHYD1"))).await;
    assert_eq!((s, &b), (StatusCode::OK, &json!({"device_id": "DEHYD1"})));
    let (s, b) = app.call("GET", PATH, Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        (b["device_id"].as_str(), b["device_data"]["device_pickle"].as_str()),
        (Some("DEHYD1"), Some("pickle-DEHYD1"))
    );
    let (_, b) = app.call("GET", "/_matrix/client/v3/devices/DEHYD1", Some(&alice), None).await;
    assert_eq!(b["display_name"], "Offline device");

    // Others see it as a device: its keys, a one-time key to claim, to-device messages.
    let b = query_keys(&app, &bob, "@alice:localhost").await;
    assert!(b["device_keys"]["@alice:localhost"]["DEHYD1"].is_object(), "{b}");
    let claim = json!({"one_time_keys": {"@alice:localhost": {"DEHYD1": "signed_curve25519"}}});
    let (_, b) = app.call("POST", "/_matrix/client/v3/keys/claim", Some(&bob), Some(claim)).await;
    assert!(b["one_time_keys"]["@alice:localhost"]["DEHYD1"]["signed_curve25519:AAA"].is_object(), "{b}");
    for (i, txn) in ["t1", "t2", "t3"].iter().enumerate() {
        let msg = json!({"messages": {"@alice:localhost": {"DEHYD1": {"n": i}}}});
        let (s, _) =
            app.call("PUT", &format!("/_matrix/client/v3/sendToDevice/m.test/{txn}"), Some(&bob), Some(msg)).await;
        assert_eq!(s, StatusCode::OK);
    }

    let events = |device: &str| format!("{PATH}/{device}/events");
    let (s, b) = app.call("POST", &events("ALICEDEV"), Some(&alice), Some(json!({}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")), "only the dehydrated device");
    let (s, b) = app.call("POST", &events("DEHYD1"), Some(&alice), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let ns: Vec<i64> = b["events"].as_array().unwrap().iter().map(|e| e["content"]["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, vec![0, 1, 2]);
    assert_eq!(
        (b["events"][0]["sender"].as_str(), b["events"][0]["type"].as_str()),
        (Some("@bob:localhost"), Some("m.test"))
    );
    let next = b["next_batch"].as_str().unwrap().to_owned();
    let (_, b) = app.call("POST", &events("DEHYD1"), Some(&alice), Some(json!({"next_batch": next}))).await;
    assert_eq!(b["events"], json!([]), "nothing after the last batch");
    let (_, again) = app.call("POST", &events("DEHYD1"), Some(&alice), Some(json!({}))).await;
    assert_eq!(again["events"].as_array().unwrap().len(), 3, "kept until the device is replaced: {again}");
    let (s, b) = app.call("POST", &events("DEHYD1"), Some(&alice), Some(json!({"next_batch": "nope"}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")));

    // Malformed keys or a live device's ID are refused and leave the current device alone.
    let mut forged = put("DEHYD2");
    forged["device_keys"]["algorithms"] = json!("not a list");
    let (s, _) = app.call("PUT", PATH, Some(&alice), Some(forged)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, b) = app.call("PUT", PATH, Some(&alice), Some(put("ALICEDEV"))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")));
    let (s, _) = app.call("PUT", PATH, Some(&alice), Some(json!({"device_id": "X"}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (_, b) = app.call("GET", PATH, Some(&alice), None).await;
    assert_eq!(b["device_id"], "DEHYD1");

    // A new dehydrated device replaces the old one, which is deleted with its keys and inbox.
    let (s, _) = app.call("PUT", PATH, Some(&alice), Some(put("DEHYD2"))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.call("GET", "/_matrix/client/v3/devices/DEHYD1", Some(&alice), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.call("POST", &events("DEHYD1"), Some(&alice), Some(json!({}))).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let b = query_keys(&app, &bob, "@alice:localhost").await;
    let devices: Vec<&str> =
        b["device_keys"]["@alice:localhost"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(devices, vec!["DEHYD2"], "only ALICEDEV and DEHYD2 exist, and ALICEDEV has no keys: {b}");
    let (s, b) = app.call("DELETE", PATH, Some(&alice), None).await;
    assert_eq!((s, &b), (StatusCode::OK, &json!({"device_id": "DEHYD2"})));
    let (s, _) = app.call("GET", PATH, Some(&alice), None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = app.call("GET", PATH, None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    app.db.cleanup().await;
}

async fn key_changes_report_users_who_left(backend: Backend) {
    use ganglion_replication::SyncToken;
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = public_room(&app, &alice, &[&bob]).await;
    let events = ganglion_storage::EventStore::new(app.db.db.clone());
    let e2ee = ganglion_storage::E2eeStore::new(app.db.db.clone());
    let now = |events_pos: i64, device_pos: i64| {
        SyncToken { events: events_pos as u64, device_lists: device_pos as u64, ..SyncToken::default() }.to_string()
    };
    let changes = |from: String, to: String| {
        let app = &app;
        let alice = alice.clone();
        async move {
            let (s, b) = app
                .call("GET", &format!("/_matrix/client/v3/keys/changes?from={from}&to={to}"), Some(&alice), None)
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
            b
        }
    };
    let before = now(events.max_stream_ordering().await.unwrap(), e2ee.max_device_list_position().await.unwrap());
    let (keys, _) = device_keys("@bob:localhost", "BOBDEV");
    let bob_dev = login_device(&app, "bob", "BOBDEV").await;
    app.call("POST", "/_matrix/client/v3/keys/upload", Some(&bob_dev), Some(json!({"device_keys": keys}))).await;
    let after_keys = now(events.max_stream_ordering().await.unwrap(), e2ee.max_device_list_position().await.unwrap());
    let b = changes(before.clone(), after_keys.clone()).await;
    assert_eq!((&b["changed"], &b["left"]), (&json!(["@bob:localhost"]), &json!([])), "{b}");

    let (s, _) = app.call("POST", &format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&bob), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK);
    let after_leave = now(events.max_stream_ordering().await.unwrap(), e2ee.max_device_list_position().await.unwrap());
    let b = changes(after_keys.clone(), after_leave.clone()).await;
    assert_eq!((&b["changed"], &b["left"]), (&json!([]), &json!(["@bob:localhost"])), "{b}");

    let (s, _) = app.call("POST", &format!("/_matrix/client/v3/rooms/{room}/join"), Some(&bob), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK);
    let after_join = now(events.max_stream_ordering().await.unwrap(), e2ee.max_device_list_position().await.unwrap());
    let b = changes(after_leave, after_join).await;
    assert_eq!(
        (&b["changed"], &b["left"]),
        (&json!(["@bob:localhost"]), &json!([])),
        "a user who starts sharing a room is changed: {b}"
    );
    app.db.cleanup().await;
}

fn password_login(user: &str, refresh: bool) -> Value {
    json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": "pw", "refresh_token": refresh})
}

async fn refresh_tokens_rotate_and_expire(backend: Backend) {
    let app = app(backend, |_| {}).await;
    app.register("alice").await;
    let (s, b) = app.call("POST", "/_matrix/client/v3/login", None, Some(password_login("alice", false))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(b.get("refresh_token").is_none() && b.get("expires_in_ms").is_none(), "no refresh unless asked: {b}");

    let (s, b) = app.call("POST", "/_matrix/client/v3/login", None, Some(password_login("alice", true))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["expires_in_ms"], 300_000, "the default lifetime: {b}");
    let (a1, r1) = (b["access_token"].as_str().unwrap().to_owned(), b["refresh_token"].as_str().unwrap().to_owned());
    let (s, _) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&a1), None).await;
    assert_eq!(s, StatusCode::OK);

    let refresh = |t: &str| json!({"refresh_token": t});
    let (s, b) = app.call("POST", "/_matrix/client/v3/refresh", None, Some(refresh(&r1))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["expires_in_ms"], 300_000);
    let (a2, r2) = (b["access_token"].as_str().unwrap().to_owned(), b["refresh_token"].as_str().unwrap().to_owned());
    // Until the new tokens are used, the old refresh token still works (a lost response is retried).
    let (s, b) = app.call("POST", "/_matrix/client/v3/refresh", None, Some(refresh(&r1))).await;
    assert_eq!(s, StatusCode::OK, "the old refresh token stays valid until the new access token is used: {b}");
    let (s, b) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&a2), None).await;
    assert_eq!((s, b["device_id"].is_string()), (StatusCode::OK, true), "{b}");
    // Using the new access token retired the old refresh token and its access token.
    let (s, b) = app.call("POST", "/_matrix/client/v3/refresh", None, Some(refresh(&r1))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_UNKNOWN_TOKEN")), "{b}");
    let (s, b) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&a1), None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_UNKNOWN_TOKEN")), "{b}");

    // Using the new refresh token retires the one it replaced too.
    let (s, b) = app.call("POST", "/_matrix/client/v3/refresh", None, Some(refresh(&r2))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (a3, r3) = (b["access_token"].as_str().unwrap().to_owned(), b["refresh_token"].as_str().unwrap().to_owned());
    let (s, b) = app.call("POST", "/_matrix/client/v3/refresh", None, Some(refresh(&r3))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let a4 = b["access_token"].as_str().unwrap().to_owned();
    let (s, _) = app.call("POST", "/_matrix/client/v3/refresh", None, Some(refresh(&r2))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "r2 was retired by the use of r3");
    let (s, _) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&a3), None).await;
    assert_eq!(s, StatusCode::OK, "a3 lives until a4 is used");
    let (s, _) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&a4), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&a3), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "the first use of a4 retired r3 and a3");

    let (s, b) = app.call("POST", "/_matrix/client/v3/refresh", None, Some(refresh("ganr_nope"))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_UNKNOWN_TOKEN")), "{b}");
    let (s, b) = app.call("POST", "/_matrix/client/v3/refresh", None, Some(json!({}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_BAD_JSON")), "{b}");

    // Logging out ends the refresh token with the session.
    let (s, _) = app.call("POST", "/_matrix/client/v3/logout", Some(&a4), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&a4), None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    app.db.cleanup().await;
}

async fn expired_access_tokens_are_a_soft_logout(backend: Backend) {
    // A zero lifetime: every refreshable access token has expired by its first use.
    let app = app(backend, |c| c.sessions.refreshable_access_token_lifetime_secs = 0).await;
    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/register",
            None,
            Some(json!({"username": "alice", "password": "pw", "refresh_token": true, "auth": {"type": "m.login.dummy"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["expires_in_ms"], 0);
    let (token, refresh) =
        (b["access_token"].as_str().unwrap().to_owned(), b["refresh_token"].as_str().unwrap().to_owned());
    let (s, b) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&token), None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_UNKNOWN_TOKEN")), "{b}");
    assert_eq!(b["soft_logout"], true, "{b}");
    let (s, b) = app.call("POST", "/_matrix/client/v3/refresh", None, Some(json!({"refresh_token": refresh}))).await;
    assert_eq!(s, StatusCode::OK, "an expired access token can still be refreshed: {b}");
    // Tokens issued without a refresh token never expire.
    let (s, b) = app.call("POST", "/_matrix/client/v3/login", None, Some(password_login("alice", false))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) =
        app.call("GET", "/_matrix/client/v3/account/whoami", Some(b["access_token"].as_str().unwrap()), None).await;
    assert_eq!(s, StatusCode::OK);
    app.db.cleanup().await;
}

async fn login_tokens_from_get_token_are_single_use(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let (s, b) = app.call("GET", "/_matrix/client/v3/login", None, None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        b["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.token" && f["get_login_token"] == true),
        "{b}"
    );
    const GET_TOKEN: &str = "/_matrix/client/v1/login/get_token";
    let (s, b) = app.call("POST", GET_TOKEN, None, Some(json!({}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_MISSING_TOKEN")));
    let (s, b) = app.call("POST", GET_TOKEN, Some(&alice), Some(json!({}))).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "User-Interactive Auth first: {b}");
    assert_eq!(b["flows"], json!([{"stages": ["m.login.password"]}]));
    let session = b["session"].as_str().unwrap().to_owned();
    let auth = |pw: &str| json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": pw, "session": session}});
    let (s, b) = app.call("POST", GET_TOKEN, Some(&alice), Some(auth("wrong"))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::UNAUTHORIZED, Some("M_FORBIDDEN")), "{b}");
    let (s, b) = app.call("POST", GET_TOKEN, Some(&alice), Some(auth("pw"))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["expires_in_ms"], 120_000);
    let login_token = b["login_token"].as_str().unwrap().to_owned();

    let login = json!({"type": "m.login.token", "token": login_token, "device_id": "TV"});
    let (s, b) = app.call("POST", "/_matrix/client/v3/login", None, Some(login.clone())).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!((b["user_id"].as_str(), b["device_id"].as_str()), (Some("@alice:localhost"), Some("TV")));
    let (s, b) = app.call("POST", "/_matrix/client/v3/login", None, Some(login)).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")), "single use: {b}");
    let (s, b) =
        app.call("POST", "/_matrix/client/v3/login", None, Some(json!({"type": "m.login.token", "token": "x"}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")), "{b}");
    let (s, b) = app.call("POST", "/_matrix/client/v3/login", None, Some(json!({"type": "m.login.token"}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_MISSING_PARAM")), "{b}");
    app.db.cleanup().await;
}

async fn expired_login_tokens_are_refused(backend: Backend) {
    let app = app(backend, |c| {
        c.sessions.login_token_lifetime_secs = 0;
        c.rate_limits.login.burst = 3;
        c.rate_limits.login.per_minute = 1;
    })
    .await;
    let alice = app.register("alice").await;
    let auth = json!({"auth": {"type": "m.login.password", "user": "@alice:localhost", "password": "pw"}});
    let (s, b) = app.call("POST", "/_matrix/client/v1/login/get_token", Some(&alice), Some(auth.clone())).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let login = json!({"type": "m.login.token", "token": b["login_token"]});
    let (s, b) = app.call("POST", "/_matrix/client/v3/login", None, Some(login)).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")), "expired: {b}");
    // get_token shares login's rate limit (burst 3: two calls above, one more, then refused).
    app.call("POST", "/_matrix/client/v1/login/get_token", Some(&alice), Some(auth.clone())).await;
    let (s, b) = app.call("POST", "/_matrix/client/v1/login/get_token", Some(&alice), Some(auth)).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::TOO_MANY_REQUESTS, Some("M_LIMIT_EXCEEDED")), "{b}");
    app.db.cleanup().await;
}

async fn guests_are_limited_to_their_endpoints(backend: Backend) {
    let app = app(backend, |c| c.registration.guest_access = true).await;
    let alice = app.register("alice").await;
    let (s, b) = app.call("POST", "/_matrix/client/v3/register?kind=guest", None, Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let guest = b["access_token"].as_str().unwrap().to_owned();
    let guest_id = b["user_id"].as_str().unwrap().to_owned();
    let (s, b) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&guest), None).await;
    assert_eq!((s, b["is_guest"].as_bool()), (StatusCode::OK, Some(true)), "{b}");
    let (s, b) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&alice), None).await;
    assert_eq!((s, b["is_guest"].as_bool()), (StatusCode::OK, Some(false)), "{b}");

    let (s, b) = app.call("POST", "/_matrix/client/v3/createRoom", Some(&guest), Some(json!({}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_GUEST_ACCESS_FORBIDDEN")), "{b}");
    let search = json!({"search_categories": {"room_events": {"search_term": "x"}}});
    let (s, b) = app.call("POST", "/_matrix/client/v3/search", Some(&guest), Some(search)).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_GUEST_ACCESS_FORBIDDEN")), "{b}");

    let room = create(&app, &alice, json!({"preset": "public_chat"})).await;
    let (s, b) =
        app.call("POST", &format!("/_matrix/client/v3/rooms/{room}/join"), Some(&guest), Some(json!({}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_GUEST_ACCESS_FORBIDDEN")), "{b}");
    let (s, b) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.guest_access"),
            Some(&alice),
            Some(json!({"guest_access": "can_join"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app.call("POST", &format!("/_matrix/client/v3/join/{room}"), Some(&guest), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "guests join rooms whose guest_access is can_join: {b}");
    let (s, b) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/g1"),
            Some(&guest),
            Some(json!({"msgtype": "m.text", "body": "hi from a guest"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app.call("GET", &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"), Some(&guest), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/profile/{guest_id}/displayname"),
            Some(&guest),
            Some(json!({"displayname": "Visitor"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/profile/{guest_id}/avatar_url"),
            Some(&guest),
            Some(json!({"avatar_url": "mxc://localhost/a"})),
        )
        .await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_GUEST_ACCESS_FORBIDDEN")), "{b}");
    let (s, b) =
        app.call("POST", &format!("/_matrix/client/v3/rooms/{room}/leave"), Some(&guest), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) =
        app.call("POST", &format!("/_matrix/client/v3/rooms/{room}/join"), Some(&guest), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    // Closing the room to guests makes its guests leave; members stay.
    let (s, b) = app
        .call(
            "PUT",
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.guest_access"),
            Some(&alice),
            Some(json!({"guest_access": "forbidden"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(membership_of(&app, &alice, &room, &guest_id).await.as_deref(), Some("leave"));
    assert_eq!(membership_of(&app, &alice, &room, "@alice:localhost").await.as_deref(), Some("join"));

    // A guest upgrades to a full account by registering with their token and localpart.
    let localpart = guest_id.trim_start_matches('@').split(':').next().unwrap().to_owned();
    let upgrade = |username: &str| json!({"username": username, "password": "pw2", "guest_access_token": guest, "auth": {"type": "m.login.dummy"}});
    let (s, b) = app.call("POST", "/_matrix/client/v3/register", None, Some(upgrade("someoneelse"))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")), "{b}");
    let (s, b) = app.call("POST", "/_matrix/client/v3/register", None, Some(upgrade(&localpart))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["user_id"].as_str(), Some(guest_id.as_str()));
    let full = b["access_token"].as_str().unwrap().to_owned();
    let (s, b) = app.call("GET", "/_matrix/client/v3/account/whoami", Some(&full), None).await;
    assert_eq!((s, b["is_guest"].as_bool()), (StatusCode::OK, Some(false)), "{b}");
    let (s, b) = app.call("POST", "/_matrix/client/v3/createRoom", Some(&full), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK, "an upgraded guest is a full user: {b}");
    let (s, _) = app
        .call(
            "POST",
            "/_matrix/client/v3/login",
            None,
            Some(json!({"type": "m.login.password", "user": localpart, "password": "pw2"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "and logs in with the new password");
    app.db.cleanup().await;
}

async fn extended_profile_fields(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let field = |key: &str| format!("/_matrix/client/v3/profile/@alice:localhost/{key}");
    let (s, b) = app.call("PUT", &field("m.tz"), Some(&alice), Some(json!({"m.tz": "Europe/Paris"}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) =
        app.call("PUT", &field("com.example.pets"), Some(&alice), Some(json!({"com.example.pets": ["cat", 2]}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = app.call("PUT", &field("displayname"), Some(&alice), Some(json!({"displayname": "Alice"}))).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = app.call("GET", "/_matrix/client/v3/profile/@alice:localhost", None, None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b, json!({"displayname": "Alice", "m.tz": "Europe/Paris", "com.example.pets": ["cat", 2]}));
    let (s, b) = app.call("GET", &field("com.example.pets"), None, None).await;
    assert_eq!((s, b), (StatusCode::OK, json!({"com.example.pets": ["cat", 2]})));

    // Errors: the owner only, valid keys, the body holding the key, m.tz a string, size limits.
    let (s, b) = app.call("PUT", &field("m.tz"), Some(&bob), Some(json!({"m.tz": "UTC"}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")));
    let (s, b) = app.call("DELETE", &field("m.tz"), Some(&bob), None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")));
    let (s, b) = app.call("PUT", &field("m.tz"), Some(&alice), Some(json!({"m.tz": 2}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")));
    let (s, b) = app.call("PUT", &field("Nope"), Some(&alice), Some(json!({"Nope": 1}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")));
    let (s, b) = app.call("PUT", &field("com.example.a"), Some(&alice), Some(json!({"other": 1}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_MISSING_PARAM")));
    let long_key = format!("com.{}", "a".repeat(300));
    let (s, b) = app.call("PUT", &field(&long_key), Some(&alice), Some(json!({ long_key.clone(): 1 }))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_KEY_TOO_LARGE")));
    let big = "x".repeat(40_000);
    let (s, b) = app.call("PUT", &field("com.example.big"), Some(&alice), Some(json!({"com.example.big": big}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, b) =
        app.call("PUT", &field("com.example.more"), Some(&alice), Some(json!({"com.example.more": big}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_PROFILE_TOO_LARGE")), "{b}");

    // DELETE removes custom fields and the standard ones alike.
    for key in ["com.example.big", "com.example.pets", "displayname"] {
        let (s, b) = app.call("DELETE", &field(key), Some(&alice), None).await;
        assert_eq!(s, StatusCode::OK, "{key}: {b}");
    }
    let (s, b) = app.call("GET", &field("com.example.pets"), None, None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")));
    let (_, b) = app.call("GET", "/_matrix/client/v3/profile/@alice:localhost", None, None).await;
    assert_eq!(b, json!({"m.tz": "Europe/Paris"}));
    let (s, b) = app.call("GET", "/_matrix/client/v3/profile/@nobody:localhost", None, None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")));
    app.db.cleanup().await;
}

async fn search_groups_results_and_includes_state(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let first = create(&app, &alice, json!({"name": "First", "preset": "public_chat"})).await;
    let second = create(&app, &alice, json!({"name": "Second"})).await;
    let (s, _) = app.call("POST", &format!("/_matrix/client/v3/rooms/{first}/join"), Some(&bob), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK);
    for (i, (room, token)) in [(&first, &alice), (&first, &bob), (&second, &alice)].into_iter().enumerate() {
        let (s, _) = app
            .call(
                "PUT",
                &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/g{i}"),
                Some(token),
                Some(json!({"msgtype": "m.text", "body": format!("pumpkin soup {i}")})),
            )
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let body = json!({"search_categories": {"room_events": {
        "search_term": "pumpkin",
        "include_state": true,
        "groupings": {"group_by": [{"key": "room_id"}, {"key": "sender"}]},
    }}});
    let (s, b) = app.call("POST", "/_matrix/client/v3/search", Some(&alice), Some(body)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let re = &b["search_categories"]["room_events"];
    assert_eq!(re["count"], 3);
    let by_room = re["groups"]["room_id"].as_object().unwrap();
    assert_eq!(by_room[&first]["results"].as_array().unwrap().len(), 2, "{re}");
    assert_eq!(by_room[&second]["results"].as_array().unwrap().len(), 1, "{re}");
    let by_sender = re["groups"]["sender"].as_object().unwrap();
    assert_eq!(by_sender["@alice:localhost"]["results"].as_array().unwrap().len(), 2, "{re}");
    assert_eq!(by_sender["@bob:localhost"]["results"].as_array().unwrap().len(), 1, "{re}");
    assert!(by_sender["@bob:localhost"]["order"].is_number());
    for room in [&first, &second] {
        let state = re["state"][room.as_str()].as_array().unwrap();
        assert!(state.iter().any(|e| e["type"] == "m.room.create"), "{room}: {state:?}");
    }
    let (s, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/search",
            Some(&alice),
            Some(json!({"search_categories": {"room_events": {"search_term": "pumpkin", "groupings": {"group_by": [{"key": "type"}]}}}})),
        )
        .await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_INVALID_PARAM")), "{b}");
    // Without groupings or include_state the response has neither.
    let (_, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/search",
            Some(&alice),
            Some(json!({"search_categories": {"room_events": {"search_term": "pumpkin"}}})),
        )
        .await;
    let re = &b["search_categories"]["room_events"];
    assert!(re.get("groups").is_none() && re.get("state").is_none(), "{re}");
    app.db.cleanup().await;
}

async fn versions_and_capabilities_advertise_what_is_served(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let (s, b) = app.call("GET", "/_matrix/client/versions", None, None).await;
    assert_eq!(s, StatusCode::OK);
    let versions: Vec<&str> = b["versions"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for v in ["v1.1", "v1.3", "v1.7", "v1.16"] {
        assert!(versions.contains(&v), "{v} in {versions:?}");
    }
    assert_eq!(b["unstable_features"]["org.matrix.simplified_msc3575"], true);
    // v1.15: with no OAuth 2.0 server, auth_metadata answers that the API is not supported.
    let (s, b) = app.call("GET", "/_matrix/client/v1/auth_metadata", None, None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_UNRECOGNIZED")));
    let alice = app.register("alice").await;
    let (s, b) = app.call("GET", "/_matrix/client/v3/capabilities", Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["capabilities"]["m.get_login_token"]["enabled"], true);
    assert_eq!(b["capabilities"]["m.profile_fields"]["enabled"], true);
    app.db.cleanup().await;
}

async fn restricted_rooms_admit_members_of_allowed_rooms(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let space = create(&app, &alice, json!({"preset": "public_chat", "name": "Space"})).await;
    let restricted = |rule: &str| {
        json!({"preset": "private_chat", "initial_state": [{"type": "m.room.join_rules", "state_key": "",
            "content": {"join_rule": rule, "allow": [{"type": "m.room_membership", "room_id": space}]}}]})
    };
    let room = create(&app, &alice, restricted("restricted")).await;
    let join = |token: String, room: String| {
        let app = &app;
        async move {
            app.call("POST", &format!("/_matrix/client/v3/rooms/{room}/join"), Some(&token), Some(json!({}))).await
        }
    };

    // Not in the space: refused.
    let (s, b) = join(bob.clone(), room.clone()).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")), "{b}");
    // In the space: admitted, authorised by a member who may invite.
    assert_eq!(join(bob.clone(), space.clone()).await.0, StatusCode::OK);
    let (s, b) = join(bob.clone(), room.clone()).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let state = state_of(&app, &alice, &room).await;
    let member = state.iter().find(|(t, k, _)| t == "m.room.member" && k == "@bob:localhost").expect("bob's join");
    assert_eq!(member.2["membership"], "join");
    assert_eq!(member.2["join_authorised_via_users_server"], "@alice:localhost");

    // An invite still works without the allowed room; knock_restricted admits the same way.
    let (s, _) = app
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(&alice),
            Some(json!({"user_id": "@carol:localhost"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(join(carol.clone(), room.clone()).await.0, StatusCode::OK);
    let knockable = create(&app, &alice, restricted("knock_restricted")).await;
    assert_eq!(join(bob.clone(), knockable.clone()).await.0, StatusCode::OK, "bob is in the space");
    let (s, _) = join(carol.clone(), knockable).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "carol is not; she may knock instead");
    app.db.cleanup().await;
}

/// Sends race in several rooms at once: each room's events still form one chain (every event
/// follows the one before it, its state built on its predecessor's), and the committer hands out
/// contiguous stream positions across all of them.
async fn concurrent_writes_keep_rooms_linear_and_positions_contiguous(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let mut rooms = Vec::new();
    for _ in 0..4 {
        rooms.push(public_room(&app, &alice, &[]).await);
    }
    let sends = rooms.iter().flat_map(|room| {
        let app = &app;
        let alice = &alice;
        (0..12).map(move |i| async move {
            let (ty, path, content) = if i % 4 == 3 {
                (
                    "m.room.topic",
                    format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic"),
                    json!({"topic": format!("t{i}")}),
                )
            } else {
                (
                    "m.room.message",
                    format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/c{i}"),
                    json!({"msgtype": "m.text", "body": format!("m{i}")}),
                )
            };
            let (s, b) = app.call("PUT", &path, Some(alice), Some(content)).await;
            assert_eq!(s, StatusCode::OK, "{ty}: {b}");
        })
    });
    futures::future::join_all(sends).await;

    let events = ganglion_storage::EventStore::new(app.db.db.clone());
    let max = events.max_stream_ordering().await.unwrap();
    let all = events.events_after(0, 10_000).await.unwrap();
    assert_eq!(all.iter().map(|e| e.stream_ordering).collect::<Vec<_>>(), (1..=max).collect::<Vec<_>>(), "no gaps");
    for room in &rooms {
        let in_room: Vec<_> = all.iter().filter(|e| e.room_id.as_str() == room).collect();
        assert!(in_room.len() >= 12 + 5, "{room}: {} events", in_room.len());
        for pair in in_room.windows(2) {
            let pdu: Value = serde_json::from_str(&pair[1].json).unwrap();
            assert_eq!(pdu["prev_events"], json!([pair[0].event_id.as_str()]), "{room}: a chain, not a fork");
            assert_eq!(pair[1].depth, pair[0].depth + 1);
        }
        let topic = events.state_event(&ruma::RoomId::parse(room).unwrap(), "m.room.topic", "").await.unwrap().unwrap();
        let last_topic = in_room.iter().rev().find(|e| e.event_type == "m.room.topic").unwrap();
        assert_eq!(topic.event_id, last_topic.event_id, "the latest topic in the chain is the current one");
        let extremities = events.forward_extremities(&ruma::RoomId::parse(room).unwrap()).await.unwrap();
        assert_eq!(extremities.len(), 1);
    }
    app.db.cleanup().await;
}

/// Builds an event of `remote.example` on the given state and prev_events, as another server would.
fn remote_event(
    room: &str,
    sender: &str,
    template: ganglion_core::EventTemplate,
    state: &ganglion_core::StateMap,
    prev: &[&ruma::OwnedEventId],
    key: &ganglion_core::ServerSigningKey,
) -> ganglion_core::Pdu {
    let room_id = ruma::OwnedRoomId::try_from(room).unwrap();
    let version = ruma::RoomVersionId::V12;
    let depth = 1_000; // deeper than anything the test room has; depth is advisory
    let ctx = ganglion_core::RoomContext {
        room_id: Some(&room_id),
        version: &version,
        state,
        prev_events: prev.iter().map(|p| (*p).clone()).collect(),
        max_prev_depth: depth,
    };
    let server = ruma::OwnedServerName::try_from("remote.example").unwrap();
    let sender = ruma::OwnedUserId::try_from(sender).unwrap();
    ganglion_core::build_event(&template, &sender, &ctx, &server, key, 1_700_000_000_000).unwrap().0
}

fn member(user: &str, membership: &str) -> ganglion_core::EventTemplate {
    ganglion_core::EventTemplate {
        event_type: "m.room.member".into(),
        state_key: Some(user.into()),
        content: json!({"membership": membership}),
    }
}

/// Events from another server through the receive pipeline: a join extends the room; a message
/// from before its sender's ban is soft-failed; an event whose prev_events put it after the ban is
/// rejected; a join on a fork from before the ban is accepted, the room's state becomes the
/// resolution of both sides (the ban wins over the earlier join) and the next local event merges
/// the fork. Outliers and hidden events stay off the live stream.
async fn received_events_are_accepted_rejected_soft_failed_and_resolved(backend: Backend) {
    use crate::receive::ReceiveError;
    use ganglion_state::Verdict;
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let room = create(&app, &alice, json!({"preset": "public_chat", "room_version": "12"})).await;
    let room_id = ruma::OwnedRoomId::try_from(room.as_str()).unwrap();
    let store = ganglion_storage::EventStore::new(app.db.db.clone());
    let extremity = || async { store.forward_extremities(&room_id).await.unwrap()[0].0.clone() };
    let key = ganglion_core::ServerSigningKey::generate();

    // eve@remote joins: it follows the room's one extremity.
    let s0 = app.writer.room_state(&room_id).await.unwrap();
    let e0 = extremity().await;
    let eve_join = remote_event(&room, "@eve:remote.example", member("@eve:remote.example", "join"), &s0, &[&e0], &key);
    let got = app.writer.receive_pdu(eve_join.clone()).await.unwrap();
    assert_eq!(got.verdict, Verdict::Accepted);
    assert!(got.position > 0);
    assert_eq!(membership_of(&app, &alice, &room, "@eve:remote.example").await.as_deref(), Some("join"));
    let again = app.writer.receive_pdu(eve_join.clone()).await.unwrap();
    assert_eq!(again, got, "receiving an event twice changes nothing");
    let s1 = app.writer.room_state(&room_id).await.unwrap();

    // alice bans eve here; meanwhile eve's server sent a message built before the ban.
    let (s, b) = app
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{room}/ban"),
            Some(&alice),
            Some(json!({"user_id": "@eve:remote.example"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let ban = extremity().await;
    let text = ganglion_core::EventTemplate {
        event_type: "m.room.message".into(),
        state_key: None,
        content: json!({"msgtype": "m.text", "body": "sent before the ban arrived"}),
    };
    let late = remote_event(&room, "@eve:remote.example", text.clone(), &s1, &[&eve_join.event_id], &key);
    let got = app.writer.receive_pdu(late.clone()).await.unwrap();
    assert!(matches!(got.verdict, Verdict::SoftFailed(_)), "{:?}", got.verdict);
    assert!(got.position < 0, "kept off the live stream");
    assert!(store.event(late.event_id.as_str()).await.unwrap().is_none(), "not shown to clients");
    assert_eq!(extremity().await, ban, "a soft-failed event does not extend the room");

    // The same message placed after the ban (prev_events = the ban) fails against the state
    // before it: rejected.
    let after_ban = remote_event(&room, "@eve:remote.example", text, &s1, &[&ban], &key);
    let got = app.writer.receive_pdu(after_ban).await.unwrap();
    assert!(matches!(got.verdict, Verdict::Rejected(_)), "{:?}", got.verdict);

    // frank@remote joins on a fork from before the ban: valid, accepted, and the room now has two
    // extremities whose states are resolved: frank is in, eve stays banned.
    let frank = remote_event(
        &room,
        "@frank:remote.example",
        member("@frank:remote.example", "join"),
        &s1,
        &[&eve_join.event_id],
        &key,
    );
    let got = app.writer.receive_pdu(frank.clone()).await.unwrap();
    assert_eq!(got.verdict, Verdict::Accepted);
    assert_eq!(store.forward_extremities(&room_id).await.unwrap().len(), 2);
    assert_eq!(membership_of(&app, &alice, &room, "@frank:remote.example").await.as_deref(), Some("join"));
    assert_eq!(membership_of(&app, &alice, &room, "@eve:remote.example").await.as_deref(), Some("ban"), "the ban wins");

    // The next local event merges the fork and sees the resolved state.
    let merged = send_event(&app, &room, &alice, "m.room.message", json!({"msgtype": "m.text", "body": "merge"})).await;
    let merged = store.event(&merged).await.unwrap().unwrap();
    let pdu: Value = serde_json::from_str(&merged.json).unwrap();
    let mut prevs: Vec<String> = serde_json::from_value(pdu["prev_events"].clone()).unwrap();
    prevs.sort();
    let mut expected = vec![ban.to_string(), frank.event_id.to_string()];
    expected.sort();
    assert_eq!(prevs, expected);
    assert_eq!(store.forward_extremities(&room_id).await.unwrap().len(), 1);
    let state_after_merge = store.state_ids_after(merged.event_id.as_str()).await.unwrap().unwrap();
    assert_eq!(
        state_after_merge.get(&("m.room.member".to_owned(), "@frank:remote.example".to_owned())),
        Some(&frank.event_id.to_string())
    );
    assert_eq!(
        state_after_merge.get(&("m.room.member".to_owned(), "@eve:remote.example".to_owned())),
        Some(&ban.to_string())
    );

    // An outlier: known only as someone's auth event.
    let s2 = app.writer.room_state(&room_id).await.unwrap();
    let grace = remote_event(
        &room,
        "@grace:remote.example",
        member("@grace:remote.example", "join"),
        &s2,
        &[&merged.event_id],
        &key,
    );
    let got = app.writer.receive_outlier(grace.clone()).await.unwrap();
    assert_eq!(got.verdict, Verdict::Accepted);
    assert!(got.position < 0);
    assert!(store.state_ids_after(grace.event_id.as_str()).await.unwrap().is_none(), "an outlier's state is unknown");
    assert_eq!(membership_of(&app, &alice, &room, "@grace:remote.example").await, None, "an outlier changes no state");

    // Unknown prev_events: the transport must fetch them first.
    let mut orphan_state = (*s2).clone();
    orphan_state.remove(&("m.room.member".to_owned(), "@grace:remote.example".to_owned()));
    let unknown = ruma::OwnedEventId::try_from("$unknownunknownunknownunknownunknownunknown00").unwrap();
    let orphan = remote_event(
        &room,
        "@hal:remote.example",
        member("@hal:remote.example", "join"),
        &orphan_state,
        &[&unknown],
        &key,
    );
    assert!(matches!(app.writer.receive_pdu(orphan).await, Err(ReceiveError::Missing(ids)) if ids == vec![unknown]));

    // The live stream carries the accepted events only, contiguously.
    let live: Vec<String> =
        store.events_after(0, 1000).await.unwrap().into_iter().map(|e| e.event_id.to_string()).collect();
    assert!(live.contains(&eve_join.event_id.to_string()) && live.contains(&frank.event_id.to_string()));
    assert!(!live.contains(&late.event_id.to_string()) && !live.contains(&grace.event_id.to_string()));
    app.db.cleanup().await;
}

/// From room v12 a room's ID is its create event's hash: identical createRoom requests at the
/// same moment still make distinct rooms.
async fn identical_rooms_created_at_once_get_their_own_ids(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let creates = (0..8).map(|_| {
        let (app, alice) = (&app, &alice);
        async move {
            let (s, b) = app
                .call("POST", "/_matrix/client/v3/createRoom", Some(alice), Some(json!({"room_version": "12"})))
                .await;
            assert_eq!(s, StatusCode::OK, "{b}");
            b["room_id"].as_str().unwrap().to_owned()
        }
    });
    let ids: std::collections::HashSet<String> = futures::future::join_all(creates).await.into_iter().collect();
    assert_eq!(ids.len(), 8);
    app.db.cleanup().await;
}

fn http_pusher(pushkey: &str, url: &str) -> Value {
    json!({
        "kind": "http", "app_id": "org.example.app", "pushkey": pushkey,
        "app_display_name": "Example", "device_display_name": "Phone", "lang": "en",
        "data": { "url": url, "format": "event_id_only" },
    })
}

async fn pushers_are_set_listed_replaced_and_removed(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let gateway = "https://push.example.org/_matrix/push/v1/notify";
    let set = |token: &str, body: Value| {
        let token = token.to_owned();
        let app = &app;
        async move { app.call("POST", "/_matrix/client/v3/pushers/set", Some(&token), Some(body)).await }
    };
    let list = |token: &str| {
        let token = token.to_owned();
        let app = &app;
        async move {
            let (s, b) = app.call("GET", "/_matrix/client/v3/pushers", Some(&token), None).await;
            assert_eq!(s, StatusCode::OK, "{b}");
            b["pushers"].as_array().unwrap().clone()
        }
    };
    assert!(list(&alice).await.is_empty());
    let (s, b) = set(&alice, http_pusher("key1", gateway)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let got = list(&alice).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["pushkey"], "key1");
    assert_eq!(got[0]["data"], json!({ "url": gateway, "format": "event_id_only" }));
    assert_eq!((got[0]["kind"].as_str(), got[0]["lang"].as_str()), (Some("http"), Some("en")));

    // Same app and key: an update, not a second pusher.
    let mut renamed = http_pusher("key1", gateway);
    renamed["device_display_name"] = json!("Tablet");
    set(&alice, renamed).await;
    let got = list(&alice).await;
    assert_eq!((got.len(), got[0]["device_display_name"].as_str()), (1, Some("Tablet")));

    // Another user taking the key replaces alice's pusher, unless append.
    let mut appended = http_pusher("key1", gateway);
    appended["append"] = json!(true);
    assert_eq!(set(&bob, appended).await.0, StatusCode::OK);
    assert_eq!(list(&alice).await.len(), 1, "append keeps the other user's pusher");
    set(&bob, http_pusher("key1", gateway)).await;
    assert!(list(&alice).await.is_empty(), "without append the key moves to bob");
    assert_eq!(list(&bob).await.len(), 1);

    // kind: null deletes.
    let (s, _) = set(&bob, json!({ "kind": null, "app_id": "org.example.app", "pushkey": "key1" })).await;
    assert_eq!(s, StatusCode::OK);
    assert!(list(&bob).await.is_empty());

    // Bad input gets the spec's errors and stores nothing.
    let mut no_url = http_pusher("k", gateway);
    no_url["data"] = json!({});
    let mut no_lang = http_pusher("k", gateway);
    no_lang.as_object_mut().unwrap().remove("lang");
    let mut no_kind = http_pusher("k", gateway);
    no_kind.as_object_mut().unwrap().remove("kind");
    let mut unknown_kind = http_pusher("k", gateway);
    unknown_kind["kind"] = json!("carrier-pigeon");
    let mut long_app = http_pusher("k", gateway);
    long_app["app_id"] = json!("a".repeat(65));
    let mut data_string = http_pusher("k", gateway);
    data_string["data"] = json!("https://x");
    for (body, status, errcode) in [
        (no_url, 400, "M_MISSING_PARAM"),
        (no_lang, 400, "M_MISSING_PARAM"),
        (no_kind, 400, "M_MISSING_PARAM"),
        (unknown_kind, 400, "M_INVALID_PARAM"),
        (long_app, 400, "M_INVALID_PARAM"),
        (data_string, 400, "M_INVALID_PARAM"),
        (http_pusher("k", "http://push.example.org/_matrix/push/v1/notify"), 400, "M_INVALID_PARAM"),
        (http_pusher("k", "https://push.example.org/notify"), 400, "M_INVALID_PARAM"),
        (http_pusher("k", "not a url"), 400, "M_INVALID_PARAM"),
        (json!([1, 2]), 400, "M_BAD_JSON"),
    ] {
        let (s, b) = set(&alice, body.clone()).await;
        assert_eq!((s.as_u16(), b["errcode"].as_str()), (status, Some(errcode)), "{body} -> {b}");
    }
    assert!(list(&alice).await.is_empty());
    // Plain http is fine for a gateway on loopback (a gateway beside the server).
    let (s, b) = set(&alice, http_pusher("local", "http://127.0.0.1:9/_matrix/push/v1/notify")).await;
    assert_eq!(s, StatusCode::OK, "{b}");

    // Logging the device out removes its pushers; so does deactivation.
    let (s, _) = app.call("POST", "/_matrix/client/v3/logout", Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
    let alice2 = login_device(&app, "alice", "SECOND").await;
    assert!(list(&alice2).await.is_empty(), "logout removed the pusher");
    set(&bob, http_pusher("bobkey", gateway)).await;
    assert_eq!(list(&bob).await.len(), 1);
    let (s, _) = app.call("POST", "/_matrix/client/v3/logout/all", Some(&bob), None).await;
    assert_eq!(s, StatusCode::OK);
    let bob2 = login_device(&app, "bob", "BOB2").await;
    assert!(list(&bob2).await.is_empty(), "logout/all removed every pusher");
}

async fn room_upgrade_carries_tags_push_rules_direct_flags_and_bans(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let carol = app.register("carol").await;
    let old = create(&app, &alice, json!({"preset": "public_chat", "room_version": "11"})).await;
    for who in [&bob, &carol] {
        let (s, _) =
            app.call("POST", &format!("/_matrix/client/v3/rooms/{old}/join"), Some(who), Some(json!({}))).await;
        assert_eq!(s, StatusCode::OK);
    }
    let (s, _) = app
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{old}/ban"),
            Some(&alice),
            Some(json!({"user_id": "@carol:localhost", "reason": "spam"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    // Bob's own view of the old room: a tag, a DM flag, a muting room rule and a keyword rule there.
    let put = |token: &str, path: String, body: Value| {
        let (app, token) = (&app, token.to_owned());
        async move {
            let (s, b) = app.call("PUT", &path, Some(&token), Some(body)).await;
            assert_eq!(s, StatusCode::OK, "{path}: {b}");
        }
    };
    put(&bob, format!("/_matrix/client/v3/user/@bob:localhost/rooms/{old}/tags/m.favourite"), json!({"order": 0.5}))
        .await;
    put(
        &bob,
        "/_matrix/client/v3/user/@bob:localhost/account_data/m.direct".into(),
        json!({"@alice:localhost": [old]}),
    )
    .await;
    put(&bob, format!("/_matrix/client/v3/pushrules/global/room/{}", old.replace('!', "%21")), json!({"actions": []}))
        .await;
    put(
        &bob,
        "/_matrix/client/v3/pushrules/global/override/quiet-old".into(),
        json!({"actions": [], "conditions": [{"kind": "event_match", "key": "room_id", "pattern": old}]}),
    )
    .await;
    put(&alice, format!("/_matrix/client/v3/user/@alice:localhost/rooms/{old}/tags/u.work"), json!({})).await;

    let (s, b) = app
        .call(
            "POST",
            &format!("/_matrix/client/v3/rooms/{old}/upgrade"),
            Some(&alice),
            Some(json!({"new_version": "12"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let new = b["replacement_room"].as_str().unwrap().to_owned();
    // The upgrader's own tags came along at once.
    let (_, b) = app
        .call("GET", &format!("/_matrix/client/v3/user/@alice:localhost/rooms/{new}/tags"), Some(&alice), None)
        .await;
    assert!(b["tags"].get("u.work").is_some(), "{b}");
    // The ban carried over.
    let (_, b) = app
        .call(
            "GET",
            &format!("/_matrix/client/v3/rooms/{new}/state/m.room.member/@carol:localhost"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!((b["membership"].as_str(), b["reason"].as_str()), (Some("ban"), Some("spam")), "{b}");

    // Bob's follow him when he joins the new room.
    let (s, _) = app.call("POST", &format!("/_matrix/client/v3/join/{new}"), Some(&bob), Some(json!({}))).await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) =
        app.call("GET", &format!("/_matrix/client/v3/user/@bob:localhost/rooms/{new}/tags"), Some(&bob), None).await;
    assert_eq!(b["tags"]["m.favourite"]["order"], 0.5, "{b}");
    let (_, b) =
        app.call("GET", "/_matrix/client/v3/user/@bob:localhost/account_data/m.direct", Some(&bob), None).await;
    assert_eq!(b["@alice:localhost"], json!([old, new]), "{b}");
    let (s, b) = app
        .call("GET", &format!("/_matrix/client/v3/pushrules/global/room/{}", new.replace('!', "%21")), Some(&bob), None)
        .await;
    assert_eq!((s, b["actions"].clone()), (StatusCode::OK, json!([])), "{b}");
    let (_, b) = app.call("GET", "/_matrix/client/v3/pushrules/global/override/quiet-old", Some(&bob), None).await;
    assert_eq!(b["conditions"][0]["pattern"], old.as_str(), "the old rule stays");
    let (_, rules) = app.call("GET", "/_matrix/client/v3/pushrules/", Some(&bob), None).await;
    let copied = rules["global"]["override"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["conditions"][0]["pattern"] == new.as_str())
        .cloned();
    assert!(copied.is_some(), "no copy of the keyword rule for the new room: {rules}");
}

async fn room_and_sender_rules_with_odd_ids_are_kept_as_synapse_does(backend: Backend) {
    let app = app(backend, |_| {}).await;
    let alice = app.register("alice").await;
    let room = create(&app, &alice, json!({"preset": "private_chat"})).await;
    let rule = |kind: &str, id: &str| format!("/_matrix/client/v3/pushrules/global/{kind}/{id}");
    let (s, b) =
        app.call("PUT", &rule("room", "not-a-room-id"), Some(&alice), Some(json!({"actions": ["notify"]}))).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (s, _) = app.call("PUT", &rule("sender", "bob"), Some(&alice), Some(json!({"actions": []}))).await;
    assert_eq!(s, StatusCode::OK);
    // A real room rule beside them still works and is still typed.
    let (s, _) =
        app.call("PUT", &rule("room", &room.replace('!', "%21")), Some(&alice), Some(json!({"actions": []}))).await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) = app.call("GET", &rule("room", "not-a-room-id"), Some(&alice), None).await;
    assert_eq!((b["rule_id"].as_str(), b["actions"].clone()), (Some("not-a-room-id"), json!(["notify"])), "{b}");
    let (s, _) = app
        .call(
            "PUT",
            &format!("{}/enabled", rule("room", "not-a-room-id")),
            Some(&alice),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) = app.call("GET", &format!("{}/enabled", rule("room", "not-a-room-id")), Some(&alice), None).await;
    assert_eq!(b["enabled"], false);
    let (_, all) = app.call("GET", "/_matrix/client/v3/pushrules/", Some(&alice), None).await;
    let ids: Vec<&str> =
        all["global"]["room"].as_array().unwrap().iter().filter_map(|r| r["rule_id"].as_str()).collect();
    assert_eq!(ids, [room.as_str(), "not-a-room-id"], "{all}");
    assert_eq!(all["global"]["sender"][0]["rule_id"], "bob");
    // The default rules are still in effect (the odd rules did not spoil the ruleset).
    assert!(all["global"]["override"].as_array().unwrap().iter().any(|r| r["rule_id"] == ".m.rule.master"));
    let (s, _) = app.call("DELETE", &rule("room", "not-a-room-id"), Some(&alice), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = app.call("GET", &rule("room", "not-a-room-id"), Some(&alice), None).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::NOT_FOUND, Some("M_NOT_FOUND")));
}
