//! Moderation reports and OpenID tokens.

use ruma::UserId;
use sqlx::Row;

use crate::{Db, Result, now_ms};

/// A report as received.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Report {
    /// Who reported.
    pub reporter: String,
    /// The room concerned, if any.
    pub room_id: Option<String>,
    /// The event concerned, if any.
    pub event_id: Option<String>,
    /// The user concerned, if any.
    pub target_user_id: Option<String>,
    /// The reporter's reason.
    pub reason: Option<String>,
    /// The event report's score (-100 to 0).
    pub score: Option<i64>,
}

/// Reports and OpenID tokens.
#[derive(Debug, Clone)]
pub struct ReportStore {
    db: Db,
}

impl ReportStore {
    /// A store on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Records a report; returns its id.
    ///
    /// # Errors
    /// On database failure.
    pub async fn add(&self, r: &Report) -> Result<i64> {
        // Reports are rare: taking the next id inside the transaction is simple and safe enough.
        let mut tx = self.db.begin_write().await?;
        let id: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) + 1 FROM reports").fetch_one(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO reports (id, reporter, room_id, event_id, target_user_id, reason, score, received_ts)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(id)
        .bind(&r.reporter)
        .bind(r.room_id.as_deref())
        .bind(r.event_id.as_deref())
        .bind(r.target_user_id.as_deref())
        .bind(r.reason.as_deref())
        .bind(r.score)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Every report, newest first.
    ///
    /// # Errors
    /// On database failure.
    pub async fn all(&self) -> Result<Vec<Report>> {
        let rows = sqlx::query(
            "SELECT reporter, room_id, event_id, target_user_id, reason, score FROM reports ORDER BY id DESC",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Report {
                    reporter: r.try_get(0)?,
                    room_id: r.try_get(1)?,
                    event_id: r.try_get(2)?,
                    target_user_id: r.try_get(3)?,
                    reason: r.try_get(4)?,
                    score: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Stores an OpenID token's hash for `user` until `expires_ts`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn add_openid_token(&self, token_hash: &str, user: &UserId, expires_ts: i64) -> Result<()> {
        sqlx::query("INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)")
            .bind(token_hash)
            .bind(user.as_str())
            .bind(expires_ts)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// The user of an unexpired OpenID token.
    ///
    /// # Errors
    /// On database failure.
    pub async fn openid_user(&self, token_hash: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT user_id FROM openid_tokens WHERE token_hash = $1 AND expires_ts > $2")
            .bind(token_hash)
            .bind(now_ms())
            .fetch_optional(self.db.pool())
            .await?)
    }
}
