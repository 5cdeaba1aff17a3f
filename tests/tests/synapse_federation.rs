//! Ganglion and a real Synapse federating on loopback (TLS from the test CA on both sides):
//! each fetches the other's keys to check signed requests, and profiles are asked across.

use ganglion_e2e::{OneProcess, RawClient, Synapse};
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
