//! One user's pushes: under the user's lease, each of their pushers sends what follows its
//! position, in order, and moves the position on once the gateway accepted. A failing gateway is
//! retried with doubling waits (it holds up only that pusher); a pushkey the gateway rejects loses
//! its pusher; a notification refused past `give_up_after` is dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ganglion_replication::Lease;
use ganglion_rpc::v1::RemovePusherRequest;
use ganglion_storage::{PendingPush, Pusher};
use ruma::RoomId;
use serde_json::{Value, json};

use crate::dispatch::{Shared, Slot};

/// How long an idle user's task waits for more before it ends.
const IDLE: Duration = Duration::from_secs(30);
/// How many notifications one read of a pusher's backlog takes.
const BATCH: i64 = 50;
/// The first retry's wait.
const FIRST_RETRY: Duration = Duration::from_secs(1);

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Runs while the user has something to push, then idles a while and ends. See
/// [`Shared::wake`] for how it is started; `running` and `dirty` make sure a wake that arrives
/// while it ends starts it again.
pub(crate) async fn user_task(shared: Arc<Shared>, user: String, slot: Arc<Slot>) {
    loop {
        slot.dirty.store(false, Ordering::SeqCst);
        if shared.ring.owns(&user) {
            match shared.ring.try_lease(&user).await {
                Ok(Some(lease)) => {
                    run_user(&shared, &user, &slot, &lease).await;
                    lease.release().await;
                }
                // Another instance still holds the user (a hand-over in progress, or a dead
                // instance's lease running out): try again shortly.
                Ok(None) => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    slot.dirty.store(true, Ordering::SeqCst);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, user, "taking a user's lease failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    slot.dirty.store(true, Ordering::SeqCst);
                    continue;
                }
            }
        }
        if slot.dirty.load(Ordering::SeqCst) {
            continue;
        }
        tokio::select! {
            () = slot.wake.notified() => continue,
            () = tokio::time::sleep(IDLE) => {}
        }
        slot.running.store(false, Ordering::SeqCst);
        if slot.dirty.load(Ordering::SeqCst) && !slot.running.swap(true, Ordering::SeqCst) {
            continue;
        }
        return;
    }
}

async fn run_user(shared: &Arc<Shared>, user: &str, slot: &Arc<Slot>, lease: &Lease) {
    let pushers = match shared.store.for_user(user).await {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, user, "reading pushers failed");
            slot.dirty.store(true, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        }
    };
    let badge = slot.badge.swap(false, Ordering::SeqCst);
    let (http, email): (Vec<Pusher>, Vec<Pusher>) = pushers.into_iter().partition(|p| p.kind == "http");
    // Concurrently, so one dead gateway does not hold up the user's other devices.
    let http = futures::future::join_all(http.into_iter().map(|p| run_pusher(shared, p, lease, badge)));
    let email = futures::future::join_all(email.into_iter().map(|p| crate::email::run(shared, p, lease, slot)));
    futures::future::join(http, email).await;
}

/// Whether this instance may still push for the pusher's user.
pub(crate) fn still_ours(shared: &Shared, lease: &Lease, user: &str) -> bool {
    lease.held() && shared.ring.owns(user)
}

async fn run_pusher(shared: &Arc<Shared>, mut p: Pusher, lease: &Lease, badge_requested: bool) {
    let by_room = shared.settings.group_unread_count_by_room;
    loop {
        let pending = match shared.store.pending(&p.user_id, p.last_stream_ordering, BATCH).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, user = p.user_id, "reading pending pushes failed");
                return;
            }
        };
        if pending.is_empty() {
            break;
        }
        for item in pending {
            if !still_ours(shared, lease, &p.user_id) {
                return;
            }
            // Read on another device before it could be pushed (after an outage, say): the
            // phone need not ring for it, as Synapse pushes only unread notifications.
            if item.read {
                if let Err(e) = shared.store.advance(&p, item.event.stream_ordering).await {
                    tracing::warn!(error = %e, user = p.user_id, "recording a pusher's position failed");
                    return;
                }
                p.last_stream_ordering = item.event.stream_ordering;
                continue;
            }
            let badge = shared.store.badge_count(&p.user_id, by_room).await.unwrap_or(0);
            let body = notification(shared, &p, &item, badge).await;
            match send(shared, &mut p, &body, lease).await {
                Sent::Accepted { rejected: true } => {
                    shared.metrics.push("http", "rejected");
                    remove_rejected(shared, &p).await;
                    return;
                }
                Sent::Accepted { rejected: false } => shared.metrics.push("http", "accepted"),
                Sent::Dropped => shared.metrics.push("http", "dropped"),
                Sent::Stopped => return,
            }
            let position = item.event.stream_ordering;
            if let Err(e) = shared.store.advance(&p, position).await {
                // Not recorded: the next run pushes it again rather than lose it.
                tracing::warn!(error = %e, user = p.user_id, "recording a pusher's position failed");
                return;
            }
            p.last_stream_ordering = position;
            record_badge(shared, &mut p, badge).await;
        }
    }
    if badge_requested && still_ours(shared, lease, &p.user_id) {
        let Ok(badge) = shared.store.badge_count(&p.user_id, by_room).await else { return };
        if p.last_badge != Some(badge) {
            let body = json!({ "notification": {
                "id": "",
                "type": null,
                "sender": "",
                "counts": { "unread": badge },
                "devices": [device(&p, None)],
            }});
            match send(shared, &mut p, &body, lease).await {
                Sent::Accepted { rejected: true } => {
                    shared.metrics.push("badge", "rejected");
                    remove_rejected(shared, &p).await;
                }
                Sent::Accepted { rejected: false } => {
                    shared.metrics.push("badge", "accepted");
                    record_badge(shared, &mut p, badge).await;
                }
                Sent::Dropped => shared.metrics.push("badge", "dropped"),
                Sent::Stopped => {}
            }
        }
    }
}

async fn record_badge(shared: &Shared, p: &mut Pusher, badge: i64) {
    if p.last_badge != Some(badge) {
        if let Err(e) = shared.store.set_last_badge(p, badge).await {
            tracing::warn!(error = %e, user = p.user_id, "recording a pusher's badge failed");
        }
        p.last_badge = Some(badge);
    }
}

async fn remove_rejected(shared: &Shared, p: &Pusher) {
    tracing::info!(user = p.user_id, app_id = p.app_id, "the gateway rejected the pushkey; removing the pusher");
    let req = RemovePusherRequest { user_id: p.user_id.clone(), app_id: p.app_id.clone(), pushkey: p.pushkey.clone() };
    if let Err(e) = shared.main.remove_pusher(req, "").await {
        tracing::warn!(error = %e, user = p.user_id, "asking main to remove a rejected pusher failed");
    }
}

/// The `devices` entry for the pusher: `data` without `url` (the gateway's own address).
fn device(p: &Pusher, tweaks: Option<Value>) -> Value {
    let mut data: Value = serde_json::from_str(&p.data).unwrap_or_else(|_| json!({}));
    if let Some(d) = data.as_object_mut() {
        d.remove("url");
    }
    let mut out = json!({
        "app_id": p.app_id,
        "pushkey": p.pushkey,
        "pushkey_ts": p.pushkey_ts / 1000,
        "data": data,
    });
    if let Some(t) = tweaks {
        out["tweaks"] = t;
    }
    out
}

/// The tweaks of a rule's actions: `{"sound": "default", "highlight": true}`.
fn tweaks(actions: &str) -> serde_json::Map<String, Value> {
    let mut out = serde_json::Map::new();
    let actions: Vec<Value> = serde_json::from_str(actions).unwrap_or_default();
    for a in actions {
        if let Some(name) = a.get("set_tweak").and_then(Value::as_str) {
            let value = a.get("value").cloned().unwrap_or(if name == "highlight" { json!(true) } else { Value::Null });
            out.insert(name.to_owned(), value);
        }
    }
    out
}

/// The content of a piece of the room's current state (`null` when there is none).
pub(crate) async fn state_content(shared: &Shared, room: &RoomId, ty: &str, key: &str) -> Value {
    shared
        .events
        .state_event(room, ty, key)
        .await
        .ok()
        .flatten()
        .and_then(|e| serde_json::from_str::<Value>(&e.json).ok())
        .map(|v| v["content"].clone())
        .unwrap_or(Value::Null)
}

/// The Push Gateway API body for one notification.
async fn notification(shared: &Shared, p: &Pusher, item: &PendingPush, badge: i64) -> Value {
    let ev = &item.event;
    let tweaks = tweaks(&item.actions);
    let loud = tweaks.get("highlight").is_some_and(|h| h != &json!(false)) || tweaks.contains_key("sound");
    let prio = if loud || ev.event_type == "m.room.encrypted" { "high" } else { "low" };
    let event_id_only = serde_json::from_str::<Value>(&p.data)
        .ok()
        .and_then(|d| d.get("format").and_then(Value::as_str).map(|f| f == "event_id_only"))
        .unwrap_or(false);
    let mut n = json!({
        "event_id": ev.event_id,
        "room_id": ev.room_id,
        "prio": prio,
        "counts": { "unread": badge },
        "devices": [device(p, Some(Value::Object(tweaks)))],
    });
    if event_id_only {
        return json!({ "notification": n });
    }
    let event: Value = serde_json::from_str(&ev.json).unwrap_or_default();
    n["id"] = json!(ev.event_id);
    n["type"] = json!(ev.event_type);
    n["sender"] = json!(ev.sender);
    if ev.event_type == "m.room.member"
        && let Some(key) = &ev.state_key
    {
        n["user_is_target"] = json!(key == &p.user_id);
        if let Some(m) = &ev.membership {
            n["membership"] = json!(m);
        }
    }
    if shared.settings.include_content
        && let Some(content) = event.get("content").filter(|c| c.as_object().is_some_and(|o| !o.is_empty()))
    {
        n["content"] = content.clone();
    }
    if let Some(name) = state_content(shared, &ev.room_id, "m.room.member", ev.sender.as_str())
        .await
        .get("displayname")
        .and_then(Value::as_str)
    {
        n["sender_display_name"] = json!(name);
    }
    if let Some(name) = state_content(shared, &ev.room_id, "m.room.name", "").await.get("name").and_then(Value::as_str)
        && !name.is_empty()
    {
        n["room_name"] = json!(name);
    }
    if let Some(alias) =
        state_content(shared, &ev.room_id, "m.room.canonical_alias", "").await.get("alias").and_then(Value::as_str)
    {
        n["room_alias"] = json!(alias);
    }
    json!({ "notification": n })
}

enum Sent {
    /// The gateway took it; `rejected` when it named this pushkey as rejected.
    Accepted { rejected: bool },
    /// The gateway will never take it (a 4xx other than 429), or it failed for too long.
    Dropped,
    /// This instance lost the user while retrying.
    Stopped,
}

/// POSTs `body` to the pusher's gateway, retrying failures with doubling waits.
async fn send(shared: &Shared, p: &mut Pusher, body: &Value, lease: &Lease) -> Sent {
    let Some(url) = serde_json::from_str::<Value>(&p.data).ok().and_then(|d| d["url"].as_str().map(str::to_owned))
    else {
        return Sent::Dropped;
    };
    let mut wait = FIRST_RETRY;
    loop {
        let outcome = shared.http.post(&url).json(body).send().await;
        let failure = match outcome {
            Ok(resp) if resp.status().is_success() => {
                let answer: Value = resp.json().await.unwrap_or_default();
                let rejected = answer["rejected"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|k| k.as_str() == Some(p.pushkey.as_str())));
                if p.failing_since.take().is_some()
                    && let Err(e) = shared.store.set_failing(p, None).await
                {
                    tracing::warn!(error = %e, "clearing a pusher's failure failed");
                }
                return Sent::Accepted { rejected };
            }
            Ok(resp) if resp.status().is_client_error() && resp.status().as_u16() != 429 => {
                tracing::warn!(status = %resp.status(), url, user = p.user_id, "the push gateway refused a push; dropping it");
                return Sent::Dropped;
            }
            Ok(resp) => format!("status {}", resp.status()),
            Err(e) => e.to_string(),
        };
        let since = match p.failing_since {
            Some(s) => s,
            None => {
                let now = now_ms();
                p.failing_since = Some(now);
                if let Err(e) = shared.store.set_failing(p, Some(now)).await {
                    tracing::warn!(error = %e, "recording a pusher's failure failed");
                }
                now
            }
        };
        let failing_for = Duration::from_millis(u64::try_from(now_ms() - since).unwrap_or(0));
        if failing_for >= shared.settings.give_up_after {
            tracing::warn!(url, user = p.user_id, "the push gateway kept failing; dropping a push");
            return Sent::Dropped;
        }
        shared.metrics.retry();
        tracing::info!(url, user = p.user_id, failure, retry_in_ms = wait.as_millis() as u64, "push failed; retrying");
        // Wait in slices, so a hand-over is not held up by a long backoff.
        let deadline = tokio::time::Instant::now() + wait;
        while tokio::time::Instant::now() < deadline {
            if !still_ours(shared, lease, &p.user_id) {
                return Sent::Stopped;
            }
            tokio::time::sleep(Duration::from_millis(250).min(deadline - tokio::time::Instant::now())).await;
        }
        wait = (wait * 2).min(shared.settings.max_retry_interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tweaks_come_from_set_tweak_actions() {
        let t = tweaks(r#"["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"}]"#);
        assert_eq!(Value::Object(t), json!({ "sound": "default", "highlight": true }));
        assert!(tweaks(r#"["notify"]"#).is_empty());
        assert!(tweaks("not json").is_empty());
    }

    #[test]
    fn devices_carry_data_without_the_url_and_seconds() {
        let p = Pusher {
            user_id: "@a:x".into(),
            app_id: "app".into(),
            pushkey: "key".into(),
            device_id: "D".into(),
            kind: "http".into(),
            app_display_name: "A".into(),
            device_display_name: "P".into(),
            profile_tag: None,
            lang: "en".into(),
            data: r#"{"url":"https://g/_matrix/push/v1/notify","format":"event_id_only","extra":1}"#.into(),
            pushkey_ts: 1_700_000_000_123,
            last_stream_ordering: 0,
            last_badge: None,
            failing_since: None,
        };
        let d = device(&p, Some(json!({ "sound": "default" })));
        assert_eq!(d["data"], json!({ "format": "event_id_only", "extra": 1 }));
        assert_eq!(d["pushkey_ts"], 1_700_000_000);
        assert_eq!(d["tweaks"]["sound"], "default");
        assert!(device(&p, None).get("tweaks").is_none());
    }
}
