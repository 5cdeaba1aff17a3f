//! Presence: each user's latest state, and a change log that is the `presence` stream.

use ruma::UserId;
use sqlx::Row;

use crate::{Db, Result};

/// A user's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The user.
    pub user_id: String,
    /// `online`, `unavailable` or `offline`.
    pub state: String,
    /// Their status message.
    pub status_msg: Option<String>,
    /// Last activity, milliseconds since the epoch.
    pub last_active_ts: i64,
    /// Position of the change on the `presence` stream.
    pub position: i64,
}

/// Presence storage.
#[derive(Debug, Clone)]
pub struct PresenceStore {
    db: Db,
}

fn decode(r: &sqlx::any::AnyRow) -> Result<Presence> {
    Ok(Presence {
        user_id: r.try_get(0)?,
        state: r.try_get(1)?,
        status_msg: r.try_get(2)?,
        last_active_ts: r.try_get(3)?,
        position: r.try_get(4)?,
    })
}

impl PresenceStore {
    /// A store on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Highest position of the `presence` stream.
    ///
    /// # Errors
    /// On database failure.
    pub async fn max_position(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(stream_id), 0) FROM presence_log").fetch_one(self.db.pool()).await?)
    }

    /// A user's presence, if ever set.
    ///
    /// # Errors
    /// On database failure.
    pub async fn get(&self, user_id: &UserId) -> Result<Option<Presence>> {
        let row = sqlx::query(
            "SELECT user_id, state, status_msg, last_active_ts, stream_id FROM presence WHERE user_id = $1",
        )
        .bind(user_id.as_str())
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(decode).transpose()
    }

    /// Stores a change at `p.position` (allocated by the single writer).
    ///
    /// # Errors
    /// On database failure.
    pub async fn put(&self, p: &Presence) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query("INSERT INTO presence_log (stream_id, user_id) VALUES ($1, $2)")
            .bind(p.position)
            .bind(&p.user_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO presence (user_id, state, status_msg, last_active_ts, stream_id) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg,
               last_active_ts = excluded.last_active_ts, stream_id = excluded.stream_id",
        )
        .bind(&p.user_id)
        .bind(&p.state)
        .bind(p.status_msg.as_deref())
        .bind(p.last_active_ts)
        .bind(p.position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Presence of `users` whose latest change is in `(after, upto]`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn changed_among(&self, users: &[String], after: i64, upto: i64) -> Result<Vec<Presence>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = (3..3 + users.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT user_id, state, status_msg, last_active_ts, stream_id FROM presence
             WHERE stream_id > $1 AND stream_id <= $2 AND user_id IN ({}) ORDER BY stream_id",
            list.join(", ")
        );
        let mut q = sqlx::query(&sql).bind(after).bind(upto);
        for u in users {
            q = q.bind(u);
        }
        q.fetch_all(self.db.pool()).await?.iter().map(decode).collect()
    }

    /// Users marked `state` whose last activity is older than `before_ts`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn idle(&self, state: &str, before_ts: i64) -> Result<Vec<Presence>> {
        sqlx::query(
            "SELECT user_id, state, status_msg, last_active_ts, stream_id FROM presence WHERE state = $1 AND last_active_ts < $2",
        )
        .bind(state)
        .bind(before_ts)
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .map(decode)
        .collect()
    }

    /// Log rows after `after`: `(position, user_id)`, the database side of the stream.
    ///
    /// # Errors
    /// On database failure.
    pub async fn log_after(&self, after: i64, limit: i64) -> Result<Vec<(i64, String)>> {
        let rows =
            sqlx::query("SELECT stream_id, user_id FROM presence_log WHERE stream_id > $1 ORDER BY stream_id LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(self.db.pool())
                .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }
}
