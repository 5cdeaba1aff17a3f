//! The Client-Server conformance scenario of `ganglion_e2e::conformance` (paging, filters,
//! redactions, JSON bodies, the user directory) on the embedded default and on the split
//! deployment behind nginx; `synapse_differential.rs` runs it on Synapse too.

use ganglion_e2e::conformance::{expected, observe};
use ganglion_e2e::{OneProcess, RawClient, Split};
use serde_json::{Value, json};

/// A body that is JSON but not an object, to an endpoint of the sync role.
async fn sliding_sync_array_errcode(url: &str) -> Value {
    let alice = RawClient::register(url, "slider").await.unwrap();
    let resp = reqwest::Client::new()
        .post(format!("{url}/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"))
        .bearer_auth(&alice.token)
        .body("[]")
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    json!([status, resp.json::<Value>().await.unwrap()["errcode"]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_default_pages_filters_and_redacts_as_the_spec_says() {
    let server = OneProcess::start_with(json!({"rate_limits": {"enabled": false}})).await.expect("server starts");
    let seen = observe(&server.url, "conf").await.unwrap_or_else(|e| panic!("{e:#}\n{}", server.proc.log()));
    assert_eq!(seen, expected("conf"), "\n{}", serde_json::to_string_pretty(&seen).unwrap());
    assert_eq!(sliding_sync_array_errcode(&server.url).await, json!([400, "M_BAD_JSON"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_split_deployment_pages_filters_and_redacts_as_the_spec_says() {
    let split = Split::start(1).await.expect("deployment starts");
    let seen = match observe(&split.url, "conf").await {
        Ok(seen) => seen,
        Err(e) => panic!("{e:#}\n{}", split.logs()),
    };
    assert_eq!(seen, expected("conf"), "\n{}", serde_json::to_string_pretty(&seen).unwrap());
    assert_eq!(sliding_sync_array_errcode(&split.url).await, json!([400, "M_BAD_JSON"]));
    split.stop().await;
}
