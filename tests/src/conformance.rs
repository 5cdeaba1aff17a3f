//! Client-Server behaviours checked the same way on every deployment and on Synapse: one
//! scenario of plain requests, reduced to what the spec fixes (which events, in which order,
//! which error codes), so the answers of two servers can be compared for equality.
//!
//! Covered: `/messages` paging in both directions from every kind of token, `RoomEventFilter`
//! on `/messages` and `/context`, `unsigned.redacted_because` wherever a redacted event is
//! served, `M_BAD_JSON` for JSON bodies that are not objects, and whom the user directory finds.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::RawClient;

/// Percent-encodes a query parameter value.
pub fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn bodies(events: &Value) -> Vec<Value> {
    events
        .as_array()
        .map(|a| a.iter().filter(|e| e["type"] == "m.room.message").map(|e| e["content"]["body"].clone()).collect())
        .unwrap_or_default()
}

fn types(events: &Value) -> Vec<Value> {
    events.as_array().map(|a| a.iter().map(|e| e["type"].clone()).collect()).unwrap_or_default()
}

async fn ok(client: &RawClient, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
    let r = client.call(method, path, body).await?;
    if r.status != 200 {
        bail!("{method} {path}: {r:?}");
    }
    Ok(r.body)
}

async fn send(client: &RawClient, room: &str, event_type: &str, txn: &str, content: Value) -> Result<String> {
    let b =
        ok(client, "PUT", &format!("/_matrix/client/v3/rooms/{room}/send/{event_type}/{txn}"), Some(&content)).await?;
    Ok(b["event_id"].as_str().context("event_id")?.to_owned())
}

/// What `redacted_because` says of an event: the redaction's type, reason, and whether it names
/// the redaction that was sent.
fn because(event: &Value, redaction_id: &str) -> Value {
    let b = &event["unsigned"]["redacted_because"];
    json!({
        "type": b["type"],
        "reason": b["content"]["reason"],
        "is_the_redaction": b["event_id"] == redaction_id,
        "content_gone": event["content"].as_object().is_some_and(|c| c.is_empty()),
    })
}

/// A raw body to `path` (so it can be JSON that is not an object, or not JSON), and the errcode.
async fn raw_errcode(client: &RawClient, method: &str, path: &str, body: &'static str) -> Result<Value> {
    let resp = reqwest::Client::new()
        .request(reqwest::Method::from_bytes(method.as_bytes())?, format!("{}{path}", client.url))
        .bearer_auth(&client.token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    Ok(json!([status, body["errcode"]]))
}

/// Runs the scenario on the server at `url` with fresh users named after `tag` (lowercase), and
/// returns what it saw.
///
/// # Errors
/// When a request that must succeed does not.
pub async fn observe(url: &str, tag: &str) -> Result<Value> {
    let alice = RawClient::register(url, &format!("{tag}alice")).await?;
    let bob = RawClient::register(url, &format!("{tag}bob")).await?;
    let carol = RawClient::register(url, &format!("{tag}carol")).await?;
    let mut seen = serde_json::Map::new();

    // A private room: a note, then six messages.
    let created = ok(&alice, "POST", "/_matrix/client/v3/createRoom", Some(&json!({"preset": "private_chat"}))).await?;
    let room = created["room_id"].as_str().context("room_id")?.to_owned();
    send(&alice, &room, "org.example.note", "n", json!({"text": "a note"})).await?;
    for i in 0..5 {
        send(&alice, &room, "m.room.message", &format!("m{i}"), json!({"msgtype": "m.text", "body": format!("m{i}")}))
            .await?;
    }
    let messages = |q: String| format!("/_matrix/client/v3/rooms/{room}/messages?{q}");

    // Paging back twice, then forwards from where the second page stopped.
    let p1 = ok(&alice, "GET", &messages("dir=b&limit=2".into()), None).await?;
    let end1 = p1["end"].as_str().context("end of page 1")?.to_owned();
    let p2 = ok(&alice, "GET", &messages(format!("dir=b&limit=2&from={end1}")), None).await?;
    let end2 = p2["end"].as_str().context("end of page 2")?.to_owned();
    let fwd = ok(&alice, "GET", &messages(format!("dir=f&limit=10&from={end2}")), None).await?;
    let fwd_short = ok(&alice, "GET", &messages(format!("dir=f&limit=1&from={end1}")), None).await?;
    seen.insert(
        "paging".into(),
        json!({
            "back_1": bodies(&p1["chunk"]),
            "back_2": bodies(&p2["chunk"]),
            "forward_from_back_2": bodies(&fwd["chunk"]),
            "forward_from_back_1": bodies(&fwd_short["chunk"]),
        }),
    );

    // A sync token: back over what it has seen, forwards over what came after it.
    let sync = alice.sync(None, 0).await?;
    let next_batch = sync["next_batch"].as_str().context("next_batch")?.to_owned();
    let prev_batch = sync["rooms"]["join"][&room]["timeline"]["prev_batch"].as_str().map(str::to_owned);
    let m5 = send(&alice, &room, "m.room.message", "m5", json!({"msgtype": "m.text", "body": "m5"})).await?;
    let after_sync = ok(&alice, "GET", &messages(format!("dir=f&from={next_batch}")), None).await?;
    let before_sync = ok(&alice, "GET", &messages(format!("dir=b&limit=1&from={next_batch}")), None).await?;
    let timeline_bodies = bodies(&sync["rooms"]["join"][&room]["timeline"]["events"]);
    let before_timeline = match &prev_batch {
        Some(pb) => bodies(&ok(&alice, "GET", &messages(format!("dir=b&limit=50&from={pb}")), None).await?["chunk"]),
        None => Vec::new(),
    };
    seen.insert(
        "sync_tokens".into(),
        json!({
            "forward_from_next_batch": bodies(&after_sync["chunk"]),
            "back_from_next_batch": bodies(&before_sync["chunk"]),
            // Paging back from prev_batch continues exactly where the timeline starts.
            "timeline_then_back_from_prev_batch_covers_each_message_once":
                before_timeline.iter().rev().chain(&timeline_bodies).cloned().collect::<Vec<_>>(),
        }),
    );

    // Filters on /messages and /context.
    let only_messages = query_escape(&json!({"types": ["m.room.message"]}).to_string());
    let no_messages = query_escape(&json!({"not_types": ["m.room.message", "m.room.member"]}).to_string());
    let wildcard = query_escape(&json!({"types": ["org.example.*"]}).to_string());
    let other_sender = query_escape(&json!({"senders": [bob.user_id]}).to_string());
    let f1 = ok(&alice, "GET", &messages(format!("dir=b&limit=3&filter={only_messages}")), None).await?;
    let f2 = ok(&alice, "GET", &messages(format!("dir=b&limit=1&filter={no_messages}")), None).await?;
    let f3 = ok(&alice, "GET", &messages(format!("dir=f&limit=5&filter={wildcard}")), None).await?;
    let f4 = ok(&alice, "GET", &messages(format!("dir=b&filter={other_sender}")), None).await?;
    let ctx = ok(
        &alice,
        "GET",
        &format!("/_matrix/client/v3/rooms/{room}/context/{m5}?limit=4&filter={only_messages}"),
        None,
    )
    .await?;
    seen.insert(
        "filters".into(),
        json!({
            "types": types(&f1["chunk"]),
            "type_bodies": bodies(&f1["chunk"]),
            "not_types": types(&f2["chunk"]),
            "wildcard": types(&f3["chunk"]),
            "senders": types(&f4["chunk"]),
            "context_before": types(&ctx["events_before"]),
            "context_before_bodies": bodies(&ctx["events_before"]),
        }),
    );

    // A redaction, and the redacted event wherever it is served.
    let redaction =
        ok(&alice, "PUT", &format!("/_matrix/client/v3/rooms/{room}/redact/{m5}/r1"), Some(&json!({"reason": "typo"})))
            .await?;
    let redaction_id = redaction["event_id"].as_str().context("redaction event_id")?.to_owned();
    let event = ok(&alice, "GET", &format!("/_matrix/client/v3/rooms/{room}/event/{m5}"), None).await?;
    let page = ok(&alice, "GET", &messages("dir=b&limit=5".into()), None).await?;
    let in_page = page["chunk"].as_array().and_then(|a| a.iter().find(|e| e["event_id"] == m5.as_str())).cloned();
    let context = ok(&alice, "GET", &format!("/_matrix/client/v3/rooms/{room}/context/{m5}?limit=2"), None).await?;
    // Incremental from before m5 (Synapse answers a repeated initial sync from a cache).
    let fresh = alice.sync(Some(&next_batch), 0).await?;
    let in_sync = fresh["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["event_id"] == m5.as_str()))
        .cloned();
    seen.insert(
        "redacted_because".into(),
        json!({
            "event": because(&event, &redaction_id),
            "messages": in_page.map(|e| because(&e, &redaction_id)),
            "context": because(&context["event"], &redaction_id),
            "sync": in_sync.map(|e| because(&e, &redaction_id)),
        }),
    );

    // JSON bodies that are not objects, and one that is not JSON.
    let filter_path = format!("/_matrix/client/v3/user/{}/filter", alice.user_id);
    seen.insert(
        "json_bodies".into(),
        json!({
            "create_room_array": raw_errcode(&alice, "POST", "/_matrix/client/v3/createRoom", "[]").await?,
            "create_room_string": raw_errcode(&alice, "POST", "/_matrix/client/v3/createRoom", "\"room\"").await?,
            "send_array": raw_errcode(&alice, "PUT", &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/j"), "[1]").await?,
            "filter_array": raw_errcode(&alice, "POST", &filter_path, "[]").await?,
            "not_json": raw_errcode(&alice, "POST", "/_matrix/client/v3/createRoom", "{not json").await?,
        }),
    );

    // The user directory: Carol sits in a public room, Alice only in a private one; Bob shares
    // no room with either.
    ok(&carol, "POST", "/_matrix/client/v3/createRoom", Some(&json!({"preset": "public_chat"}))).await?;
    let search = |term: String| {
        let bob = bob.clone();
        async move {
            let b = ok(&bob, "POST", "/_matrix/client/v3/user_directory/search", Some(&json!({"search_term": term})))
                .await?;
            let ids: Vec<Value> = b["results"].as_array().into_iter().flatten().map(|r| r["user_id"].clone()).collect();
            anyhow::Ok(ids)
        }
    };
    // Synapse fills its directory in the background: wait a little for Carol to show up.
    let mut carol_found = search(format!("{tag}carol")).await?;
    for _ in 0..50 {
        if !carol_found.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        carol_found = search(format!("{tag}carol")).await?;
    }
    seen.insert(
        "user_directory".into(),
        json!({
            "in_a_public_room": carol_found,
            "only_in_a_private_room": search(format!("{tag}alice")).await?,
        }),
    );
    Ok(Value::Object(seen))
}

/// What the spec asks of [`observe`] with `tag`.
pub fn expected(tag: &str) -> Value {
    let carol = format!("@{tag}carol:localhost");
    let because = json!({"type": "m.room.redaction", "reason": "typo", "is_the_redaction": true, "content_gone": true});
    json!({
        "paging": {
            "back_1": ["m4", "m3"],
            "back_2": ["m2", "m1"],
            "forward_from_back_2": ["m1", "m2", "m3", "m4"],
            "forward_from_back_1": ["m3"],
        },
        "sync_tokens": {
            "forward_from_next_batch": ["m5"],
            "back_from_next_batch": ["m4"],
            "timeline_then_back_from_prev_batch_covers_each_message_once": ["m0", "m1", "m2", "m3", "m4"],
        },
        "filters": {
            "types": ["m.room.message", "m.room.message", "m.room.message"],
            "type_bodies": ["m5", "m4", "m3"],
            "not_types": ["org.example.note"],
            "wildcard": ["org.example.note"],
            "senders": [],
            "context_before": ["m.room.message", "m.room.message"],
            "context_before_bodies": ["m4", "m3"],
        },
        "redacted_because": { "event": because, "messages": because, "context": because, "sync": because },
        "json_bodies": {
            "create_room_array": [400, "M_BAD_JSON"],
            "create_room_string": [400, "M_BAD_JSON"],
            "send_array": [400, "M_BAD_JSON"],
            "filter_array": [400, "M_BAD_JSON"],
            "not_json": [400, "M_NOT_JSON"],
        },
        "user_directory": { "in_a_public_room": [carol], "only_in_a_private_room": [] },
    })
}
