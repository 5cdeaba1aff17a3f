//! Email pushers: a summary email of unread notifications, per room at most once per
//! `throttle`, and only for notifications still unread `notif_delay` after they arrived (so a
//! message read on another device is not mailed).
//!
//! A room is due when its oldest unmailed unread notification is older than `notif_delay` and
//! its last email older than `throttle`; a due room's email covers every unread notification of
//! the room so far. The pusher's position moves past what is mailed or read, never past a room
//! still waiting; the per-room throttle row records what each room's last email covered, so a
//! notification is mailed once even though the position waits for other rooms. A timer wakes
//! the user when the next room falls due.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ganglion_mail::Notification;
use ganglion_replication::Lease;
use ganglion_storage::{PendingPush, Pusher};
use serde_json::Value;

use crate::deliver::{now_ms, state_content, still_ours};
use crate::dispatch::{Shared, Slot};

/// How many notifications one run looks at.
const SCAN: i64 = 500;
/// After a failed send, try again this much later.
const RETRY_MS: i64 = 60_000;

/// One line for a notification in an email.
fn describe(ev: &Value, event_type: &str, sender: &str) -> String {
    let content = &ev["content"];
    match event_type {
        "m.room.encrypted" => "(an encrypted message)".to_owned(),
        "m.room.member" if content["membership"] == "invite" => format!("{sender} invited you"),
        _ => match content["body"].as_str() {
            Some(body) if content["msgtype"] == "m.emote" => format!("* {sender} {body}"),
            Some(body) => body.chars().take(500).collect(),
            None => format!("({event_type})"),
        },
    }
}

async fn room_name(shared: &Shared, room: &ruma::RoomId) -> String {
    if let Some(n) = state_content(shared, room, "m.room.name", "").await["name"].as_str().filter(|n| !n.is_empty()) {
        return n.to_owned();
    }
    if let Some(a) = state_content(shared, room, "m.room.canonical_alias", "").await["alias"].as_str() {
        return a.to_owned();
    }
    room.to_string()
}

/// Arms the user's wake-up timer for `due` (ms since the epoch) unless one fires earlier.
fn wake_at(shared: &Arc<Shared>, slot: &Arc<Slot>, user: &str, due: i64) {
    let armed = slot.email_timer.load(Ordering::SeqCst);
    if armed != 0 && armed <= due {
        return;
    }
    slot.email_timer.store(due, Ordering::SeqCst);
    let (shared, slot, user) = (shared.clone(), slot.clone(), user.to_owned());
    tokio::spawn(async move {
        let wait = u64::try_from(due - now_ms()).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if slot.email_timer.compare_exchange(due, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            shared.wake(&user, false);
        }
    });
}

/// Mails what is due for one email pusher.
pub(crate) async fn run(shared: &Arc<Shared>, p: Pusher, lease: &Lease, slot: &Arc<Slot>) {
    let Some(settings) = &shared.settings.email else { return };
    let user = p.user_id.clone();
    let pending = match shared.store.pending(&user, p.last_stream_ordering, SCAN).await {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, user, "reading pending notifications failed");
            return;
        }
    };
    let Some(last_scanned) = pending.last().map(|i| i.event.stream_ordering) else { return };
    let throttle: HashMap<String, (i64, i64)> = match shared.threepids.email_throttle(&user, &p.pushkey).await {
        Ok(rows) => rows.into_iter().map(|(room, ts, upto)| (room, (ts, upto))).collect(),
        Err(e) => {
            tracing::warn!(error = %e, user, "reading the email throttle failed");
            return;
        }
    };
    let now = now_ms();
    let delay = settings.notif_delay.as_millis() as i64;
    let throttle_ms = settings.throttle.as_millis() as i64;
    // Unread, unmailed notifications per room, oldest first.
    let mut rooms: BTreeMap<String, Vec<&PendingPush>> = BTreeMap::new();
    for item in pending.iter().filter(|i| !i.read) {
        let room = item.event.room_id.to_string();
        let mailed_upto = throttle.get(&room).map_or(0, |t| t.1);
        if item.event.stream_ordering > mailed_upto {
            rooms.entry(room).or_default().push(item);
        }
    }
    let mut due_rooms = Vec::new();
    let mut next_due: Option<i64> = None;
    for (room, items) in &rooms {
        let oldest = items[0].event.origin_server_ts.min(now);
        let due = (oldest + delay).max(throttle.get(room).map_or(0, |t| t.0 + throttle_ms));
        if due <= now {
            due_rooms.push(room.clone());
        } else {
            next_due = Some(next_due.map_or(due, |d: i64| d.min(due)));
        }
    }
    if !due_rooms.is_empty() {
        if !still_ours(shared, lease, &user) {
            return;
        }
        let mut mail = Notification { user_id: user.clone(), ..Notification::default() };
        let mut count = 0;
        for room in &due_rooms {
            let items = &rooms[room];
            let Some(first) = items.first() else { continue };
            let name = room_name(shared, &first.event.room_id).await;
            let mut lines = Vec::new();
            for item in items {
                let sender_content =
                    state_content(shared, &item.event.room_id, "m.room.member", item.event.sender.as_str()).await;
                let sender =
                    sender_content["displayname"].as_str().map_or_else(|| item.event.sender.to_string(), str::to_owned);
                let ev: Value = serde_json::from_str(&item.event.json).unwrap_or_default();
                lines.push((sender.clone(), describe(&ev, &item.event.event_type, &sender)));
            }
            count += lines.len();
            mail.rooms.push((name, lines));
        }
        let first_room = due_rooms.first().cloned().unwrap_or_default();
        mail.link = settings.mailer.room_link(&first_room);
        let app = settings.mailer.app_name();
        let (subject, summary) = match mail.rooms.as_slice() {
            [(name, _)] => (
                format!("[{app}] New messages in {name}"),
                format!("You have {count} unread message{} in {name}.", if count == 1 { "" } else { "s" }),
            ),
            many => (
                format!("[{app}] New messages in {} rooms", many.len()),
                format!("You have {count} unread messages in {} rooms.", many.len()),
            ),
        };
        mail.summary = summary;
        let (text, html) = settings.mailer.notification(&mail);
        if let Err(e) = settings.mailer.send(&p.pushkey, &subject, text, html).await {
            shared.metrics.push("email", "failed");
            tracing::warn!(error = %e, user, "sending a notification email failed; trying again later");
            wake_at(shared, slot, &user, now + RETRY_MS);
            return;
        }
        shared.metrics.push("email", "accepted");
        tracing::info!(user, rooms = due_rooms.len(), messages = count, "mailed unread notifications");
        for room in &due_rooms {
            let upto = rooms[room].last().map_or(0, |i| i.event.stream_ordering);
            if let Err(e) = shared.threepids.set_email_throttle(&user, &p.pushkey, room, now, upto).await {
                tracing::warn!(error = %e, user, "recording the email throttle failed");
            }
            rooms.remove(room);
        }
    }
    // The position moves past everything read or mailed, up to the first room still waiting.
    let position = rooms
        .values()
        .filter_map(|items| items.first().map(|i| i.event.stream_ordering - 1))
        .min()
        .unwrap_or(last_scanned);
    if position > p.last_stream_ordering
        && let Err(e) = shared.store.advance(&p, position).await
    {
        tracing::warn!(error = %e, user, "recording an email pusher's position failed");
    }
    if let Some(due) = next_due {
        wake_at(shared, slot, &user, due);
    } else if pending.len() as i64 == SCAN {
        // More than one scan's worth: look again at once.
        slot.dirty.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn lines_say_what_happened() {
        let msg = json!({ "content": { "msgtype": "m.text", "body": "hello" } });
        assert_eq!(describe(&msg, "m.room.message", "Bob"), "hello");
        let emote = json!({ "content": { "msgtype": "m.emote", "body": "waves" } });
        assert_eq!(describe(&emote, "m.room.message", "Bob"), "* Bob waves");
        assert_eq!(describe(&json!({}), "m.room.encrypted", "Bob"), "(an encrypted message)");
        let invite = json!({ "content": { "membership": "invite" } });
        assert_eq!(describe(&invite, "m.room.member", "Bob"), "Bob invited you");
    }
}
