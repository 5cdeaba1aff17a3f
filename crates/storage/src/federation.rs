//! What the federation roles read and keep: which servers are in a room, the events owed to a
//! destination, auth chains and the state at an event (for `/state_ids`, `/event_auth` and
//! `send_join`), walks back through the DAG (`/backfill`, `/get_missing_events`), and where the
//! federation sender stands with each destination.

use std::collections::{BTreeSet, HashSet};

use sqlx::Row;

use crate::events::{EVENT_COLUMNS, decode_all, placeholders};
use crate::{Db, EventStatus, EventStore, PersistedEvent, Result, StateIds};

/// The server part of a user ID (`@a:b.c:8448` → `b.c:8448`).
fn server_of(user_id: &str) -> Option<&str> {
    user_id.split_once(':').map(|(_, s)| s)
}

/// Where the sender stands with one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationState {
    /// The other server.
    pub destination: String,
    /// Every event owed to it up to this stream position has been accepted by it.
    pub last_position: i64,
    /// Not before this time (ms) after a failure.
    pub retry_at_ms: i64,
    /// The back-off interval after the last failure (0 while it answers).
    pub retry_interval_ms: i64,
}

/// Federation reads over the event tables, and the sender's per-destination positions.
#[derive(Debug, Clone)]
pub struct FederationStore {
    db: Db,
    events: EventStore,
}

impl FederationStore {
    /// A store on `db`.
    pub fn new(db: Db) -> Self {
        Self { events: EventStore::new(db.clone()), db }
    }

    /// The servers with a joined member in a room now, sorted.
    ///
    /// # Errors
    /// On database failure.
    pub async fn joined_servers(&self, room_id: &str) -> Result<BTreeSet<String>> {
        let members: Vec<String> = sqlx::query_scalar(
            "SELECT state_key FROM current_state
             WHERE room_id = $1 AND event_type = 'm.room.member' AND membership = 'join'",
        )
        .bind(room_id)
        .fetch_all(self.db.pool())
        .await?;
        Ok(members.iter().filter_map(|m| server_of(m)).map(str::to_owned).collect())
    }

    /// Whether `server` has a joined member in the room now.
    ///
    /// # Errors
    /// On database failure.
    pub async fn server_in_room(&self, room_id: &str, server: &str) -> Result<bool> {
        Ok(self.joined_servers(room_id).await?.contains(server))
    }

    /// Up to `limit` events after `after` that `destination` is owed, in stream order: events
    /// sent by users of `origin` (this server) into rooms where `destination` has a joined
    /// member now, plus membership events about its users (a kick or ban must reach the server
    /// it removes).
    ///
    /// # Errors
    /// On database failure.
    pub async fn events_owed(
        &self,
        destination: &str,
        origin: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<PersistedEvent>> {
        let ours = format!("%:{}", like_escape(origin));
        let theirs = format!("%:{}", like_escape(destination));
        let sql = format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE stream_ordering > $1 AND status IS NULL AND sender LIKE $2 ESCAPE '\\'
               AND (room_id IN (SELECT room_id FROM current_state
                                WHERE event_type = 'm.room.member' AND membership = 'join'
                                  AND state_key LIKE $3 ESCAPE '\\')
                    OR (event_type = 'm.room.member' AND state_key LIKE $3 ESCAPE '\\'))
             ORDER BY stream_ordering LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(after)
            .bind(&ours)
            .bind(&theirs)
            .bind(limit as i64)
            .fetch_all(self.db.pool())
            .await?;
        // LIKE matched a suffix (`:` then the name); only the sender's exact server counts.
        Ok(decode_all(rows)?.into_iter().filter(|e| server_of(e.sender.as_str()) == Some(origin)).collect())
    }

    /// The rooms users of `origin` wrote events into in positions `(after, upto]`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn rooms_written(&self, after: i64, upto: i64, origin: &str) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT room_id, sender FROM events
             WHERE stream_ordering > $1 AND stream_ordering <= $2 AND status IS NULL AND sender LIKE $3 ESCAPE '\\'",
        )
        .bind(after)
        .bind(upto)
        .bind(format!("%:{}", like_escape(origin)))
        .fetch_all(self.db.pool())
        .await?;
        let mut rooms = BTreeSet::new();
        for r in rows {
            let (room, sender): (String, String) = (r.try_get(0)?, r.try_get(1)?);
            if server_of(&sender) == Some(origin) {
                rooms.insert(room);
            }
        }
        Ok(rooms.into_iter().collect())
    }

    /// The auth chain of `event_ids`: their auth events, theirs, and so on (not the events
    /// themselves unless one is another's auth event). Any status; sorted by depth.
    ///
    /// # Errors
    /// On database failure.
    pub async fn auth_chain(&self, event_ids: &[String]) -> Result<Vec<PersistedEvent>> {
        let mut seen: HashSet<String> = HashSet::new();
        let mut level: Vec<String> = event_ids.to_vec();
        while !level.is_empty() {
            let mut next = Vec::new();
            for chunk in level.chunks(500) {
                let sql =
                    format!("SELECT auth_event_id FROM event_auth WHERE event_id IN {}", placeholders(1, chunk.len()));
                let mut q = sqlx::query_scalar::<_, String>(&sql);
                for id in chunk {
                    q = q.bind(id);
                }
                for id in q.fetch_all(self.db.pool()).await? {
                    if seen.insert(id.clone()) {
                        next.push(id);
                    }
                }
            }
            level = next;
        }
        let ids: Vec<&str> = seen.iter().map(String::as_str).collect();
        let mut events: Vec<PersistedEvent> = self
            .events
            .pdus(&ids)
            .await?
            .into_iter()
            .filter(|(_, status)| !matches!(status, EventStatus::Rejected(_)))
            .map(|(e, _)| e)
            .collect();
        events.sort_by_key(|e| (e.depth, e.stream_ordering));
        Ok(events)
    }

    /// The room's state before `event_id` (not counting the event itself), or `None` when its
    /// state is unknown here (an outlier, or not stored).
    ///
    /// # Errors
    /// On database failure.
    pub async fn state_ids_before(&self, event_id: &str) -> Result<Option<StateIds>> {
        let Some(mut after) = self.events.state_ids_after(event_id).await? else {
            return Ok(None);
        };
        let found = self.events.pdus(&[event_id]).await?;
        let Some((event, status)) = found.into_iter().next() else {
            return Ok(None);
        };
        let Some(key) = event.state_key.clone() else {
            return Ok(Some(after));
        };
        if matches!(status, EventStatus::Rejected(_)) {
            return Ok(Some(after));
        }
        // A state event's own entry: what its predecessors held under that key, if anything.
        let key = (event.event_type.clone(), key);
        let prevs: Vec<String> = sqlx::query_scalar("SELECT prev_event_id FROM event_edges WHERE event_id = $1")
            .bind(event_id)
            .fetch_all(self.db.pool())
            .await?;
        let mut before_value = None;
        for prev in prevs {
            if let Some(state) = self.events.state_ids_after(&prev).await?
                && let Some(v) = state.get(&key)
            {
                before_value = Some(v.clone());
                break;
            }
        }
        match before_value {
            Some(v) => after.insert(key, v),
            None => after.remove(&key),
        };
        Ok(Some(after))
    }

    /// Walks back from `from` through `prev_events`, deepest first, for `/backfill`: up to
    /// `limit` events of `room_id`, the starting events included.
    ///
    /// # Errors
    /// On database failure.
    pub async fn backfill(&self, room_id: &str, from: &[String], limit: usize) -> Result<Vec<PersistedEvent>> {
        self.walk_back(room_id, from, &HashSet::new(), limit, 0).await
    }

    /// `/get_missing_events`: events before `latest` (not `latest` themselves) and not before
    /// `earliest`, at depth `min_depth` or more, up to `limit`, oldest first.
    ///
    /// # Errors
    /// On database failure.
    pub async fn missing_events(
        &self,
        room_id: &str,
        earliest: &[String],
        latest: &[String],
        limit: usize,
        min_depth: i64,
    ) -> Result<Vec<PersistedEvent>> {
        let stop: HashSet<String> = earliest.iter().cloned().collect();
        let starts = self.prev_events_of(latest).await?;
        let mut events = self.walk_back(room_id, &starts, &stop, limit, min_depth).await?;
        events.reverse();
        Ok(events)
    }

    async fn prev_events_of(&self, ids: &[String]) -> Result<Vec<String>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT prev_event_id FROM event_edges WHERE event_id IN {}", placeholders(1, ids.len()));
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for id in ids {
            q = q.bind(id);
        }
        Ok(q.fetch_all(self.db.pool()).await?)
    }

    /// Breadth-first back through the DAG, deepest first, skipping `stop`, events of other
    /// rooms, outliers and rejected events.
    async fn walk_back(
        &self,
        room_id: &str,
        from: &[String],
        stop: &HashSet<String>,
        limit: usize,
        min_depth: i64,
    ) -> Result<Vec<PersistedEvent>> {
        let mut seen: HashSet<String> = stop.clone();
        let mut frontier: Vec<String> = from.iter().filter(|id| seen.insert((*id).clone())).cloned().collect();
        let mut out: Vec<PersistedEvent> = Vec::new();
        while !frontier.is_empty() && out.len() < limit {
            let ids: Vec<&str> = frontier.iter().map(String::as_str).collect();
            let mut found: Vec<PersistedEvent> = self
                .events
                .pdus(&ids)
                .await?
                .into_iter()
                .filter(|(e, status)| {
                    e.room_id.as_str() == room_id
                        && matches!(status, EventStatus::Ordinary | EventStatus::SoftFailed(_))
                        && e.depth >= min_depth
                })
                .map(|(e, _)| e)
                .collect();
            found.sort_by_key(|e| std::cmp::Reverse(e.depth));
            let mut next_ids = Vec::new();
            for e in found {
                if out.len() >= limit {
                    break;
                }
                next_ids.push(e.event_id.to_string());
                out.push(e);
            }
            frontier = self.prev_events_of(&next_ids).await?.into_iter().filter(|id| seen.insert(id.clone())).collect();
        }
        Ok(out)
    }

    /// Every destination's state.
    ///
    /// # Errors
    /// On database failure.
    pub async fn destinations(&self) -> Result<Vec<DestinationState>> {
        let rows = sqlx::query(
            "SELECT destination, last_position, retry_at_ms, retry_interval_ms FROM federation_destinations
             ORDER BY destination",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(destination_row).collect()
    }

    /// One destination's state.
    ///
    /// # Errors
    /// On database failure.
    pub async fn destination(&self, destination: &str) -> Result<Option<DestinationState>> {
        let row = sqlx::query(
            "SELECT destination, last_position, retry_at_ms, retry_interval_ms FROM federation_destinations
             WHERE destination = $1",
        )
        .bind(destination)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(destination_row).transpose()
    }

    /// Starts tracking a destination from `position` (owed nothing up to it); a destination
    /// already tracked keeps its state. Returns its state.
    ///
    /// # Errors
    /// On database failure.
    pub async fn track_destination(&self, destination: &str, position: i64) -> Result<DestinationState> {
        sqlx::query(
            "INSERT INTO federation_destinations (destination, last_position) VALUES ($1, $2)
             ON CONFLICT (destination) DO NOTHING",
        )
        .bind(destination)
        .bind(position)
        .execute(self.db.pool())
        .await?;
        self.destination(destination).await?.ok_or_else(|| crate::Error::Decode("destination row vanished".into()))
    }

    /// The destination accepted everything up to `position`: it answers again.
    ///
    /// # Errors
    /// On database failure.
    pub async fn destination_caught_up(&self, destination: &str, position: i64) -> Result<()> {
        sqlx::query(
            "UPDATE federation_destinations SET last_position = $2, retry_at_ms = 0, retry_interval_ms = 0
             WHERE destination = $1 AND last_position <= $2",
        )
        .bind(destination)
        .bind(position)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The destination failed: not before `retry_at_ms`, and the interval grown to `interval_ms`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn destination_failed(&self, destination: &str, retry_at_ms: i64, interval_ms: i64) -> Result<()> {
        sqlx::query(
            "UPDATE federation_destinations SET retry_at_ms = $2, retry_interval_ms = $3 WHERE destination = $1",
        )
        .bind(destination)
        .bind(retry_at_ms)
        .bind(interval_ms)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }
}

fn destination_row(r: &sqlx::any::AnyRow) -> Result<DestinationState> {
    Ok(DestinationState {
        destination: r.try_get(0)?,
        last_position: r.try_get(1)?,
        retry_at_ms: r.try_get(2)?,
        retry_interval_ms: r.try_get(3)?,
    })
}

/// Escapes `%`, `_` and `\` for a `LIKE ... ESCAPE '\'` pattern.
fn like_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
