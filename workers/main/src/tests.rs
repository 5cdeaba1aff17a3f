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
}

async fn app(backend: Backend, tweak: impl FnOnce(&mut Config)) -> App {
    let db = TestDb::new(backend).await;
    let mut cfg = Config::default();
    cfg.password_hashing.memory_kib = 64;
    cfg.password_hashing.iterations = 1;
    tweak(&mut cfg);
    let state = MainState::new(&cfg, db.db.clone(), Arc::new(InProcessBus::new(64))).await.expect("state");
    App { router: ganglion_http::matrix_fallbacks(router(state)), db }
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
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::FORBIDDEN, Some("M_FORBIDDEN")));
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
        app.call("POST", "/_matrix/client/v3/login", None, Some(json!({"type": "m.login.token", "token": "x"}))).await;
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
            Some(json!({"preset": "public_chat", "name": "Lobby", "topic": "hi", "room_alias_name": "lobby", "invite": ["@bob:localhost"]})),
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
    assert_eq!(body(&fwd), vec!["m2", "m3", "m4"], "forward from a token resumes after it");
    assert!(fwd.get("end").is_none(), "no end when the room is exhausted");
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
    assert_eq!((s, b), (StatusCode::OK, json!({})));
    let (s, _) = app.call("GET", "/_matrix/client/v3/profile/@alice:localhost/displayname", None, None).await;
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
        "device_keys": keys,
        "one_time_keys": { "signed_curve25519:AAA": {"key": "a"}, "signed_curve25519:AAB": {"key": "b"} },
        "fallback_keys": { "signed_curve25519:FFF": {"key": "f", "fallback": true} },
    });
    let (s, b) = app.call("POST", "/_matrix/client/v3/keys/upload", Some(&alice), Some(upload)).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert_eq!(b["one_time_key_counts"]["signed_curve25519"], 2);

    // A bad signature, or keys for another device, are refused.
    let (mut forged, _) = device_keys("@alice:localhost", "ALICEDEV");
    forged["algorithms"] = json!(["tampered"]);
    let (s, b) =
        app.call("POST", "/_matrix/client/v3/keys/upload", Some(&alice), Some(json!({"device_keys": forged}))).await;
    assert_eq!((s, b["errcode"].as_str()), (StatusCode::BAD_REQUEST, Some("M_BAD_JSON")), "{b}");
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
    let (_, b) = app
        .call(
            "POST",
            "/_matrix/client/v3/keys/query",
            Some(&bob),
            Some(json!({"device_keys": {"@alice:localhost": []}})),
        )
        .await;
    assert_eq!(b["master_keys"]["@alice:localhost"]["keys"]["ed25519:master1"], "bWFzdGVy");
    let sigs = json!({"@alice:localhost": {"ALICEDEV": {"signatures": {"@alice:localhost": {"ed25519:master1": "c2ln"}}}, "NOPE": {}}});
    let (s, b) = app.call("POST", "/_matrix/client/v3/keys/signatures/upload", Some(&alice), Some(sigs)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(b["failures"]["@alice:localhost"]["NOPE"]["errcode"], "M_NOT_FOUND");

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
