//! Long-polls waiting for events that concern them, instead of for any event: a waiting sync
//! registers under its user's rooms and its user ID, and an `events` row wakes only those
//! registered under its room (and, for a member event, under the user it is about). Without
//! this, every event woke every long-poll on the worker, and each then checked that nothing
//! concerned it: work that grows with users × events.
//!
//! The row's waiters are woken after its position is published, and a long-poll registers
//! before it checks whether the position moved past what it last looked at; so an event either
//! is seen by that check or wakes the registration.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ganglion_replication::{EventRow, StreamRow};
use tokio::sync::Notify;

/// Waiting long-polls by room ID and by user ID (the sigils keep the two apart).
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    by_key: Mutex<HashMap<String, HashMap<u64, Arc<Notify>>>>,
    next_id: AtomicU64,
}

/// One long-poll's registration; dropping it removes it.
#[derive(Debug)]
pub(crate) struct Registration<'a> {
    waiters: &'a Waiters,
    id: u64,
    keys: Vec<String>,
    notify: Arc<Notify>,
}

impl Waiters {
    /// Registers a long-poll under `keys` (its user's rooms and user ID).
    pub(crate) fn register(&self, keys: Vec<String>) -> Registration<'_> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        if let Ok(mut by_key) = self.by_key.lock() {
            for k in &keys {
                by_key.entry(k.clone()).or_default().insert(id, notify.clone());
            }
        }
        Registration { waiters: self, id, keys, notify }
    }

    /// Wakes the long-polls an `events` row concerns (all of them when it cannot be read).
    pub(crate) fn wake(&self, row: &StreamRow) {
        let Ok(by_key) = self.by_key.lock() else { return };
        let Ok(r) = EventRow::decode_bytes(&row.payload) else {
            by_key.values().flat_map(HashMap::values).for_each(|n| n.notify_one());
            return;
        };
        let about = r.state_key.as_deref().filter(|_| r.event_type == "m.room.member");
        for key in std::iter::once(r.room_id.as_str()).chain(about) {
            if let Some(waiting) = by_key.get(key) {
                // `notify_one` keeps a permit when the long-poll is not waiting yet.
                waiting.values().for_each(|n| n.notify_one());
            }
        }
    }

    #[cfg(test)]
    fn registered(&self) -> usize {
        self.by_key.lock().map(|m| m.values().map(HashMap::len).sum()).unwrap_or(0)
    }
}

impl Registration<'_> {
    /// Resolves when an event concerning this long-poll arrived since it registered.
    pub(crate) async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Ok(mut by_key) = self.waiters.by_key.lock() {
            for k in &self.keys {
                if let Some(waiting) = by_key.get_mut(k) {
                    waiting.remove(&self.id);
                    if waiting.is_empty() {
                        by_key.remove(k);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn row(room: &str, event_type: &str, state_key: Option<&str>) -> StreamRow {
        EventRow {
            version: 1,
            position: 1,
            room_id: room.into(),
            event_id: "$e".into(),
            sender: "@s:x".into(),
            event_type: event_type.into(),
            state_key: state_key.map(str::to_owned),
            membership: None,
            event_json: "{}".into(),
            request_id: String::new(),
        }
        .to_stream_row()
    }

    async fn woken(r: &Registration<'_>) -> bool {
        tokio::time::timeout(Duration::from_millis(50), r.notified()).await.is_ok()
    }

    #[tokio::test]
    async fn only_rows_of_the_rooms_or_about_the_user_wake() {
        let w = Waiters::default();
        let a = w.register(vec!["!a:x".into(), "@alice:x".into()]);
        let b = w.register(vec!["!b:x".into(), "@bob:x".into()]);
        w.wake(&row("!c:x", "m.room.message", None));
        assert!(!woken(&a).await && !woken(&b).await);
        // A row that arrives before the long-poll waits is kept for it.
        w.wake(&row("!a:x", "m.room.message", None));
        assert!(woken(&a).await);
        assert!(!woken(&b).await);
        // An invite to a room bob is not in yet.
        w.wake(&row("!c:x", "m.room.member", Some("@bob:x")));
        assert!(woken(&b).await);
        assert!(!woken(&a).await);
        // An unreadable row wakes everyone.
        w.wake(&StreamRow { payload: vec![0xff, 0xff].into(), ..row("!c:x", "x", None) });
        assert!(woken(&a).await && woken(&b).await);
        drop(a);
        drop(b);
        assert_eq!(w.registered(), 0, "registrations are removed");
    }
}
