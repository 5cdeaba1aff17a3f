//! Unread counts without recounting: per `(user, room)`, the user's read receipts (kept until the
//! `receipts` stream shows a new one of theirs in that room) and the counts up to the position
//! last asked for. A later sync adds only the notifying events since then, so the cost no longer
//! grows with the number of unread messages, and the receipts are not read again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ganglion_replication::{StreamRow, UserRow};
use ganglion_storage::{EventStore, ReadReceipts, UnreadCounts};
use ruma::{RoomId, UserId};

/// `(user, room)` pairs whose counts are kept; starts over when full.
const ENTRIES: usize = 100_000;
/// Receipt changes remembered; when full they are forgotten and everything older is stale.
const CHANGES: usize = 100_000;

type Key = (String, String);

/// The kept counts, checked against the `receipts` stream.
#[derive(Debug, Default)]
pub(crate) struct UnreadCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Entries whose receipts were read before this position are stale (changes were forgotten).
    floor: i64,
    /// The latest `receipts` position of each `(user, room)` seen on the stream.
    changed: HashMap<Key, i64>,
    entries: HashMap<Key, Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    /// The `receipts` position the receipts were read at (or before).
    receipts_as_of: i64,
    receipts: Arc<ReadReceipts>,
    /// The `events` position the counts are for.
    upto: i64,
    counts: Vec<(String, UnreadCounts)>,
}

impl UnreadCache {
    /// Takes in one `receipts` stream row (the user, and the room in `device_id`).
    pub(crate) fn push(&self, row: &StreamRow) {
        let Ok(r) = UserRow::decode_bytes(&row.payload) else {
            // Unreadable: treat every kept receipt as stale.
            if let Ok(mut i) = self.inner.lock() {
                i.floor = row.position.0 as i64;
                i.changed.clear();
            }
            return;
        };
        let Ok(mut i) = self.inner.lock() else { return };
        if i.changed.len() >= CHANGES {
            i.changed.clear();
            i.floor = row.position.0 as i64;
        }
        i.changed.insert((r.user_id, r.device_id), row.position.0 as i64);
    }

    /// The user's unread counts per thread in the room at `upto` on the `events` stream, as
    /// [`EventStore::unread_counts_by_thread`] answers; `receipts_position` is where this worker
    /// stands on the `receipts` stream.
    pub(crate) async fn counts(
        &self,
        events: &EventStore,
        user: &UserId,
        room: &RoomId,
        upto: i64,
        receipts_position: i64,
    ) -> Result<Vec<(String, UnreadCounts)>, ganglion_storage::Error> {
        let key = (user.to_string(), room.to_string());
        let kept = self.inner.lock().ok().and_then(|i| {
            let entry = i.entries.get(&key)?;
            let changed = i.changed.get(&key).copied().unwrap_or(i64::MIN);
            (entry.receipts_as_of >= i.floor && entry.receipts_as_of >= changed).then(|| entry.clone())
        });
        let (receipts_as_of, receipts, counts) = match kept {
            Some(e) if e.upto == upto => return Ok(e.counts),
            Some(e) if e.upto < upto => {
                let more = events.unread_counts_between(user, room, &e.receipts, e.upto, upto).await?;
                (e.receipts_as_of, e.receipts, add(e.counts, more))
            }
            _ => {
                // Read at `receipts_position` or later: a receipt after it shows up as a change.
                let receipts = Arc::new(events.read_receipts(user, room).await?);
                let counts = events.unread_counts_between(user, room, &receipts, 0, upto).await?;
                (receipts_position, receipts, counts)
            }
        };
        if let Ok(mut i) = self.inner.lock() {
            if i.entries.len() >= ENTRIES {
                i.entries.clear();
            }
            let newer = i.entries.get(&key).is_some_and(|e| e.upto > upto && e.receipts_as_of >= receipts_as_of);
            if !newer {
                i.entries.insert(key, Entry { receipts_as_of, receipts, upto, counts: counts.clone() });
            }
        }
        Ok(counts)
    }
}

/// Per-thread counts plus more of them, sorted by thread as the database returns them.
fn add(mut counts: Vec<(String, UnreadCounts)>, more: Vec<(String, UnreadCounts)>) -> Vec<(String, UnreadCounts)> {
    for (thread, c) in more {
        match counts.iter_mut().find(|(t, _)| *t == thread) {
            Some((_, have)) => {
                have.notifications += c.notifications;
                have.highlights += c.highlights;
            }
            None => counts.push((thread, c)),
        }
    }
    counts.sort_by(|a, b| a.0.cmp(&b.0));
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(n: i64, h: i64) -> UnreadCounts {
        UnreadCounts { notifications: n, highlights: h }
    }

    #[test]
    fn counts_add_per_thread() {
        let sum = add(
            vec![(String::new(), c(2, 1)), ("$t".into(), c(1, 0))],
            vec![(String::new(), c(1, 1)), ("$a".into(), c(4, 0))],
        );
        assert_eq!(sum, vec![(String::new(), c(3, 2)), ("$a".into(), c(4, 0)), ("$t".into(), c(1, 0))]);
    }
}
