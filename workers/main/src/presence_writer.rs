//! The writer of the `presence` stream: explicit status changes, activity reported by sync, and
//! the idle timers (online → unavailable after 5 minutes without activity, → offline after 30).

use std::sync::Arc;
use std::time::Duration;

use ganglion_replication::{Bus, StreamName};
use ganglion_storage::{Presence, PresenceStore, user_row};
use ruma::UserId;
use tokio::sync::Mutex;

/// Without activity for this long, an online user becomes unavailable.
const IDLE_AFTER_MS: i64 = 5 * 60 * 1000;
/// Without activity for this long, a user becomes offline.
const OFFLINE_AFTER_MS: i64 = 30 * 60 * 1000;
/// Activity refreshes `last_active_ts` at most this often, so busy clients do not flood the stream.
const ACTIVITY_GRANULARITY_MS: i64 = 60 * 1000;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Records presence changes.
pub(crate) struct PresenceWriter {
    store: PresenceStore,
    bus: Arc<dyn Bus>,
    last: Mutex<i64>,
    /// `(state, last_active_ts)` of users as last written or read here. This writer is the only
    /// one, so an entry is what the database holds; it spares a read on every sync's report.
    known: std::sync::Mutex<std::collections::HashMap<String, (String, i64)>>,
}

/// Users [`PresenceWriter`] remembers at most; past that it starts over.
const KNOWN_USERS: usize = 100_000;

impl std::fmt::Debug for PresenceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceWriter").finish_non_exhaustive()
    }
}

impl PresenceWriter {
    /// A writer continuing the stream, with its idle timer running.
    pub(crate) async fn start(store: PresenceStore, bus: Arc<dyn Bus>) -> Result<Arc<Self>, ganglion_storage::Error> {
        let last = store.max_position().await?;
        let this = Arc::new(Self { store, bus, last: Mutex::new(last), known: Default::default() });
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(30));
            loop {
                tick.tick().await;
                let Some(writer) = weak.upgrade() else { break };
                if let Err(e) = writer.expire_idle().await {
                    tracing::warn!(error = %e, "presence idle check failed");
                }
            }
        });
        Ok(this)
    }

    /// The stored presence of a user.
    pub(crate) async fn get(&self, user: &UserId) -> Result<Option<Presence>, ganglion_storage::Error> {
        self.store.get(user).await
    }

    async fn write(&self, mut p: Presence) -> Result<(), ganglion_storage::Error> {
        let mut last = self.last.lock().await;
        p.position = *last + 1;
        self.store.put(&p).await?;
        *last = p.position;
        self.remember(&p.user_id, &p.state, p.last_active_ts);
        if let Err(e) = self.bus.publish(user_row(StreamName::Presence, p.position, &p.user_id, "")).await {
            tracing::warn!(error = %e, "publishing a presence row failed; consumers will catch up");
        }
        Ok(())
    }

    fn remember(&self, user: &str, state: &str, last_active_ts: i64) {
        let mut known = self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if known.len() >= KNOWN_USERS {
            known.clear();
        }
        known.insert(user.to_owned(), (state.to_owned(), last_active_ts));
    }

    /// An explicit status change (`PUT /presence/{userId}/status`).
    pub(crate) async fn set_status(
        &self,
        user: &UserId,
        state: &str,
        status_msg: Option<String>,
    ) -> Result<(), ganglion_storage::Error> {
        let now = now_ms();
        let previous = self.store.get(user).await?;
        let last_active_ts = if state == "online" { now } else { previous.as_ref().map_or(now, |p| p.last_active_ts) };
        self.write(Presence {
            user_id: user.to_string(),
            state: state.to_owned(),
            status_msg,
            last_active_ts,
            position: 0,
        })
        .await
    }

    /// Presence as a user's sync reports it: records a state change, and activity at most once a
    /// minute; the status message is kept.
    pub(crate) async fn sync_activity(&self, user: &UserId, state: &str) -> Result<(), ganglion_storage::Error> {
        let now = now_ms();
        let fresh = |(known_state, active): &(String, i64)| {
            known_state == state && (state != "online" || now - active < ACTIVITY_GRANULARITY_MS)
        };
        let remembered =
            self.known.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(user.as_str()).cloned();
        if remembered.as_ref().is_some_and(fresh) {
            return Ok(());
        }
        let previous = self.store.get(user).await?;
        if let Some(p) = &previous {
            self.remember(&p.user_id, &p.state, p.last_active_ts);
        }
        let unchanged = previous.as_ref().is_some_and(|p| {
            p.state == state && (state != "online" || now - p.last_active_ts < ACTIVITY_GRANULARITY_MS)
        });
        if unchanged {
            return Ok(());
        }
        let status_msg = previous.as_ref().and_then(|p| p.status_msg.clone());
        let last_active_ts = if state == "online" { now } else { previous.as_ref().map_or(now, |p| p.last_active_ts) };
        self.write(Presence {
            user_id: user.to_string(),
            state: state.to_owned(),
            status_msg,
            last_active_ts,
            position: 0,
        })
        .await
    }

    async fn expire_idle(&self) -> Result<(), ganglion_storage::Error> {
        let now = now_ms();
        for (from, to, after) in
            [("online", "unavailable", IDLE_AFTER_MS), ("unavailable", "offline", OFFLINE_AFTER_MS)]
        {
            for mut p in self.store.idle(from, now - after).await? {
                p.state = to.to_owned();
                self.write(p).await?;
            }
        }
        Ok(())
    }
}

/// The client form of a presence: `last_active_ago` and `currently_active` computed now.
pub(crate) fn presence_content(p: &Presence) -> serde_json::Value {
    let ago = (now_ms() - p.last_active_ts).max(0);
    let mut content = serde_json::json!({
        "presence": p.state,
        "last_active_ago": ago,
        "currently_active": p.state == "online" && ago < ACTIVITY_GRANULARITY_MS * 2,
    });
    if let Some(m) = &p.status_msg {
        content["status_msg"] = serde_json::json!(m);
    }
    content
}
