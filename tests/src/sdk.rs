//! Helpers for tests that drive Ganglion with the `matrix-sdk` crate, a real client.

use matrix_sdk::ruma::api::client::account::register::v3::Request as RegistrationRequest;
use matrix_sdk::ruma::api::client::uiaa;
use serde_json::Value;

/// Registers `username` with matrix-sdk through the User-Interactive Auth dance (`m.login.dummy`)
/// and returns the logged-in client.
///
/// # Panics
/// When the server does not offer the dummy stage or registration fails: the test's failure.
pub async fn sdk_register(url: &str, username: &str) -> matrix_sdk::Client {
    let client = matrix_sdk::Client::builder().homeserver_url(url).build().await.expect("client");
    let mut req = RegistrationRequest::new();
    req.username = Some(username.to_owned());
    req.password = Some("secret".to_owned());
    let err = client.matrix_auth().register(req.clone()).await.expect_err("first call is a UIA challenge");
    let info = err.as_uiaa_response().expect("UIA response");
    assert!(info.flows.iter().any(|f| f.stages.iter().any(|s| s.as_str() == "m.login.dummy")));
    let mut dummy = uiaa::Dummy::new();
    dummy.session = info.session.clone();
    req.auth = Some(uiaa::AuthData::Dummy(dummy));
    client.matrix_auth().register(req).await.expect("registration");
    assert!(client.user_id().is_some(), "registering logs the client in");
    client
}

/// The message bodies in a matrix-sdk sync response for one room, in order.
pub fn sdk_bodies(resp: &matrix_sdk::sync::SyncResponse, room_id: &matrix_sdk::ruma::RoomId) -> Vec<String> {
    let Some(update) = resp.rooms.joined.get(room_id) else { return Vec::new() };
    update
        .timeline
        .events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e.raw().json().get()).ok())
        .filter(|v| v["type"] == "m.room.message")
        .filter_map(|v| v["content"]["body"].as_str().map(str::to_owned))
        .collect()
}
