//! Receipts and typing notifications: each an append-only log (its replication stream) plus,
//! for receipts, the latest receipt per (room, user, type, thread).

use ruma::{RoomId, UserId};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::{Db, Result};

/// A read receipt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// Position on the `receipts` stream.
    pub position: i64,
    /// The room.
    pub room_id: String,
    /// The reader.
    pub user_id: String,
    /// `m.read` or `m.read.private`.
    pub receipt_type: String,
    /// `main`, a thread root's event ID, or empty for an unthreaded receipt.
    pub thread_id: String,
    /// The event read up to.
    pub event_id: String,
    /// When, in milliseconds since the epoch.
    pub ts: i64,
}

fn receipt(r: &AnyRow) -> Result<Receipt> {
    Ok(Receipt {
        position: r.try_get(0)?,
        room_id: r.try_get(1)?,
        user_id: r.try_get(2)?,
        receipt_type: r.try_get(3)?,
        thread_id: r.try_get(4)?,
        event_id: r.try_get(5)?,
        ts: r.try_get(6)?,
    })
}

const RECEIPT_COLUMNS: &str = "stream_id, room_id, user_id, receipt_type, thread_id, event_id, ts";

/// Receipts and typing.
#[derive(Debug, Clone)]
pub struct EphemeralStore {
    db: Db,
}

/// `($k, …)` placeholders for an `IN` list.
fn placeholders(first: usize, n: usize) -> String {
    let list: Vec<String> = (first..first + n).map(|i| format!("${i}")).collect();
    format!("({})", list.join(", "))
}

impl EphemeralStore {
    /// A store on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Highest position of the `receipts` stream.
    ///
    /// # Errors
    /// On database failure.
    pub async fn max_receipt_position(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(stream_id), 0) FROM receipts_log").fetch_one(self.db.pool()).await?)
    }

    /// Stores a receipt (position allocated by the single writer).
    ///
    /// # Errors
    /// On database failure.
    pub async fn put_receipt(&self, r: &Receipt) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query(&format!("INSERT INTO receipts_log ({RECEIPT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"))
            .bind(r.position)
            .bind(&r.room_id)
            .bind(&r.user_id)
            .bind(&r.receipt_type)
            .bind(&r.thread_id)
            .bind(&r.event_id)
            .bind(r.ts)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, stream_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (room_id, user_id, receipt_type, thread_id) DO UPDATE SET
               event_id = excluded.event_id, ts = excluded.ts, stream_id = excluded.stream_id",
        )
        .bind(&r.room_id)
        .bind(&r.user_id)
        .bind(&r.receipt_type)
        .bind(&r.thread_id)
        .bind(&r.event_id)
        .bind(r.ts)
        .bind(r.position)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The latest receipts in `rooms` with position in `(after, upto]`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn receipts_in_rooms(&self, rooms: &[String], after: i64, upto: i64) -> Result<Vec<Receipt>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT {RECEIPT_COLUMNS} FROM receipts WHERE stream_id > $1 AND stream_id <= $2 AND room_id IN {}
             ORDER BY stream_id",
            placeholders(3, rooms.len())
        );
        let mut q = sqlx::query(&sql).bind(after).bind(upto);
        for r in rooms {
            q = q.bind(r);
        }
        q.fetch_all(self.db.pool()).await?.iter().map(receipt).collect()
    }

    /// Receipt log rows after `after`: the database side of the `receipts` stream.
    ///
    /// # Errors
    /// On database failure.
    pub async fn receipts_after(&self, after: i64, limit: i64) -> Result<Vec<Receipt>> {
        sqlx::query(&format!(
            "SELECT {RECEIPT_COLUMNS} FROM receipts_log WHERE stream_id > $1 ORDER BY stream_id LIMIT $2"
        ))
        .bind(after)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?
        .iter()
        .map(receipt)
        .collect()
    }

    /// Highest position of the `typing` stream.
    ///
    /// # Errors
    /// On database failure.
    pub async fn max_typing_position(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(stream_id), 0) FROM typing_log").fetch_one(self.db.pool()).await?)
    }

    /// Records who is typing in a room from `position` on.
    ///
    /// # Errors
    /// On database failure.
    pub async fn put_typing(&self, position: i64, room_id: &RoomId, user_ids: &[String]) -> Result<()> {
        let json = serde_json::to_string(user_ids).map_err(|e| crate::Error::Decode(e.to_string()))?;
        sqlx::query("INSERT INTO typing_log (stream_id, room_id, user_ids) VALUES ($1, $2, $3)")
            .bind(position)
            .bind(room_id.as_str())
            .bind(json)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// For each of `rooms` whose typing set changed in `(after, upto]`, the set as of `upto`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn typing_in_rooms(&self, rooms: &[String], after: i64, upto: i64) -> Result<Vec<(String, Vec<String>)>> {
        if rooms.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT t.room_id, t.user_ids FROM typing_log t WHERE t.room_id IN {}
             AND t.stream_id = (SELECT MAX(t2.stream_id) FROM typing_log t2 WHERE t2.room_id = t.room_id AND t2.stream_id <= $2)
             AND t.stream_id > $1",
            placeholders(3, rooms.len())
        );
        let mut q = sqlx::query(&sql).bind(after).bind(upto);
        for r in rooms {
            q = q.bind(r);
        }
        let rows = q.fetch_all(self.db.pool()).await?;
        rows.iter()
            .map(|r| {
                let users: String = r.try_get(1)?;
                Ok((r.try_get(0)?, serde_json::from_str(&users).map_err(|e| crate::Error::Decode(e.to_string()))?))
            })
            .collect()
    }

    /// Typing log rows after `after`: `(position, room_id)`, the database side of the stream.
    ///
    /// # Errors
    /// On database failure.
    pub async fn typing_after(&self, after: i64, limit: i64) -> Result<Vec<(i64, String)>> {
        let rows =
            sqlx::query("SELECT stream_id, room_id FROM typing_log WHERE stream_id > $1 ORDER BY stream_id LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(self.db.pool())
                .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// A user's private receipts are theirs alone: checks whether `user_id` may see `r`.
    pub fn visible_to(r: &Receipt, user_id: &UserId) -> bool {
        r.receipt_type != "m.read.private" || r.user_id == user_id.as_str()
    }
}
