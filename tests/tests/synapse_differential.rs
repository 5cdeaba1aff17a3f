//! Differential tests against a real Synapse: the same requests to both servers must leave the
//! same room state (types, state keys, contents), up to IDs and timestamps.

use std::collections::BTreeMap;

use ganglion_e2e::{OneProcess, RawClient, Synapse};
use serde_json::{Value, json};

/// A room's state as `(type, state_key) → content`.
async fn room_state(client: &RawClient, room_id: &str) -> BTreeMap<(String, String), Value> {
    let r = client.call("GET", &format!("/_matrix/client/v3/rooms/{room_id}/state"), None).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    r.body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let key = (e["type"].as_str().unwrap().to_owned(), e["state_key"].as_str().unwrap().to_owned());
            (key, e["content"].clone())
        })
        .collect()
}

/// Creates a room with `body` on a server: `alice{n}` creates, `bob{n}` exists to be invited.
async fn created_state(url: &str, n: usize, body: &Value) -> BTreeMap<(String, String), Value> {
    let alice = RawClient::register(url, &format!("alice{n}")).await.unwrap();
    RawClient::register(url, &format!("bob{n}")).await.unwrap();
    let r = alice.call("POST", "/_matrix/client/v3/createRoom", Some(body)).await.unwrap();
    assert_eq!(r.status, 200, "{url}: {r:?}");
    room_state(&alice, r.body["room_id"].as_str().unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_room_presets_leave_the_state_synapse_leaves() {
    let Some(synapse) = Synapse::start().await.expect("Synapse starts") else {
        eprintln!("TEST_SYNAPSE_PYTHON is not set (tests/run.sh sets it): skipping the Synapse comparison");
        return;
    };
    let bodies = [
        json!({"preset": "private_chat", "name": "Private", "topic": "t", "room_version": "11"}),
        json!({"preset": "public_chat", "name": "Public", "room_version": "11", "room_alias_name": "pub"}),
        json!({"preset": "trusted_private_chat", "invite": ["@bob2:localhost"], "is_direct": true, "room_version": "11"}),
        json!({"preset": "private_chat", "room_version": "12"}),
        json!({"preset": "public_chat", "room_version": "10", "power_level_content_override": {"kick": 75},
               "initial_state": [{"type": "m.room.encryption", "state_key": "",
                                  "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]}),
    ];
    let ganglion = OneProcess::start_with(json!({"rate_limits": {"enabled": false}})).await.expect("ganglion starts");
    let mut differences = Vec::new();
    for (n, body) in bodies.iter().enumerate() {
        // Both servers are `localhost` with the same user names, so user IDs match.
        let ours = created_state(&ganglion.url, n, body).await;
        let theirs = created_state(&synapse.url, n, body).await;
        for key in ours.keys().chain(theirs.keys()).collect::<std::collections::BTreeSet<_>>() {
            if ours.get(key) != theirs.get(key) {
                differences.push(format!(
                    "{body}\n  {key:?}\n  ganglion: {}\n  synapse:  {}",
                    ours.get(key).map_or("(none)".into(), Value::to_string),
                    theirs.get(key).map_or("(none)".into(), Value::to_string)
                ));
            }
        }
    }
    assert!(differences.is_empty(), "{} differences:\n{}", differences.len(), differences.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_filters_redactions_and_the_directory_answer_as_synapse_does() {
    let Some(synapse) = Synapse::start().await.expect("Synapse starts") else {
        eprintln!("TEST_SYNAPSE_PYTHON is not set (tests/run.sh sets it): skipping the Synapse comparison");
        return;
    };
    let ganglion = OneProcess::start_with(json!({"rate_limits": {"enabled": false}})).await.expect("ganglion starts");
    let theirs = ganglion_e2e::conformance::observe(&synapse.url, "diff")
        .await
        .unwrap_or_else(|e| panic!("synapse: {e:#}\n{}", synapse.log()));
    let ours = ganglion_e2e::conformance::observe(&ganglion.url, "diff")
        .await
        .unwrap_or_else(|e| panic!("ganglion: {e:#}\n{}", ganglion.proc.log()));
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap();
    assert_eq!(ours, theirs, "\nganglion: {}\nsynapse: {}", pretty(&ours), pretty(&theirs));
    // And both are what the spec asks, so agreeing is not agreeing on a mistake.
    assert_eq!(theirs, ganglion_e2e::conformance::expected("diff"), "\nsynapse: {}", pretty(&theirs));
}
