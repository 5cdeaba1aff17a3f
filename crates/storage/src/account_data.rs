//! Account data (global and per room), as an append-only log, which is the `account_data`
//! stream, plus the latest content per (user, room, type).

use ruma::UserId;
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Db, Result};

/// One account-data write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountDataEntry {
    /// Position on the `account_data` stream.
    pub position: i64,
    /// Whose.
    pub user_id: String,
    /// The room; empty for global account data.
    pub room_id: String,
    /// The type, e.g. `m.push_rules`.
    pub data_type: String,
    /// The content, JSON.
    pub content: String,
}

fn decode(row: &AnyRow) -> Result<AccountDataEntry> {
    Ok(AccountDataEntry {
        position: row.try_get(0)?,
        user_id: row.try_get(1)?,
        room_id: row.try_get(2)?,
        data_type: row.try_get(3)?,
        content: row.try_get(4)?,
    })
}

/// Account data.
#[derive(Debug, Clone)]
pub struct AccountDataStore {
    db: Db,
}

impl AccountDataStore {
    /// A store on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The highest position written, 0 when none.
    ///
    /// # Errors
    /// On database failure.
    pub async fn max_position(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(stream_id), 0) FROM account_data_log")
            .fetch_one(self.db.pool())
            .await?)
    }

    /// Writes `entry` (its position allocated by the single writer) to the log and the current
    /// table, in one transaction.
    ///
    /// # Errors
    /// On database failure.
    pub async fn write(&self, entry: &AccountDataEntry) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO account_data_log (stream_id, user_id, room_id, data_type, content) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(entry.position)
        .bind(&entry.user_id)
        .bind(&entry.room_id)
        .bind(&entry.data_type)
        .bind(&entry.content)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO account_data (user_id, room_id, data_type, content, stream_id) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id, room_id, data_type) DO UPDATE SET
               content = excluded.content, stream_id = excluded.stream_id",
        )
        .bind(&entry.user_id)
        .bind(&entry.room_id)
        .bind(&entry.data_type)
        .bind(&entry.content)
        .bind(entry.position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The current content of one entry.
    ///
    /// # Errors
    /// On database failure.
    pub async fn get(&self, user_id: &UserId, room_id: &str, data_type: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND data_type = $3",
        )
        .bind(user_id.as_str())
        .bind(room_id)
        .bind(data_type)
        .fetch_optional(self.db.pool())
        .await?)
    }

    /// One global entry type for many users at once: `(user, content)` for those who have it.
    ///
    /// # Errors
    /// On database failure.
    pub async fn global_for_users(&self, users: &[&str], data_type: &str) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for chunk in users.chunks(500) {
            let sql = format!(
                "SELECT user_id, content FROM account_data WHERE room_id = '' AND data_type = $1 AND user_id IN {}",
                crate::events::placeholders(2, chunk.len())
            );
            let mut q = sqlx::query_as::<_, (String, String)>(&sql).bind(data_type);
            for u in chunk {
                q = q.bind(*u);
            }
            out.extend(q.fetch_all(self.db.pool()).await?);
        }
        Ok(out)
    }

    /// A user's entries whose latest write is in `(after, upto]`, for sync.
    ///
    /// # Errors
    /// On database failure.
    pub async fn changed_for_user(&self, user_id: &UserId, after: i64, upto: i64) -> Result<Vec<AccountDataEntry>> {
        let rows = sqlx::query(
            "SELECT stream_id, user_id, room_id, data_type, content FROM account_data
             WHERE user_id = $1 AND stream_id > $2 AND stream_id <= $3 ORDER BY stream_id",
        )
        .bind(user_id.as_str())
        .bind(after)
        .bind(upto)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(decode).collect()
    }

    /// Log entries after `after`, oldest first: the database side of the `account_data` stream.
    ///
    /// # Errors
    /// On database failure.
    pub async fn log_after(&self, after: i64, limit: i64) -> Result<Vec<AccountDataEntry>> {
        let rows = sqlx::query(
            "SELECT stream_id, user_id, room_id, data_type, content FROM account_data_log
             WHERE stream_id > $1 ORDER BY stream_id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(decode).collect()
    }
}
