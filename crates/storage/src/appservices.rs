//! Application service delivery state: per service, how far each stream has gone into
//! transactions and the one transaction staged but not yet acknowledged. Written only by the
//! instance of the pusher role that holds the service's lease.

use sqlx::Row;

use crate::{Db, Result};

/// Where one service's delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppserviceState {
    /// Events up to here are in a transaction (sent or staged).
    pub events_pos: i64,
    /// Receipts up to here.
    pub receipts_pos: i64,
    /// Typing changes up to here.
    pub typing_pos: i64,
    /// Presence changes up to here.
    pub presence_pos: i64,
    /// The ID the next staged transaction gets.
    pub next_txn_id: i64,
    /// The staged transaction, `(id, body)`, to send (again) before anything new.
    pub pending: Option<(i64, String)>,
    /// Since when the service has been failing, if it is.
    pub failing_since: Option<i64>,
}

/// The positions a staged transaction moves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppservicePositions {
    /// `events`.
    pub events: i64,
    /// `receipts`.
    pub receipts: i64,
    /// `typing`.
    pub typing: i64,
    /// `presence`.
    pub presence: i64,
}

/// The `appservice_state` table.
#[derive(Debug, Clone)]
pub struct AppserviceStore {
    db: Db,
}

impl AppserviceStore {
    /// The store on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The service's state; a service seen for the first time starts at `start` (it receives
    /// what happens from its registration on, as with Synapse).
    ///
    /// # Errors
    /// On database failure.
    pub async fn state_or_start(&self, id: &str, start: AppservicePositions) -> Result<AppserviceState> {
        // Insert-if-absent, so two instances racing at a hand-over agree on one row.
        sqlx::query(
            "INSERT INTO appservice_state (appservice_id, events_pos, receipts_pos, typing_pos, presence_pos, next_txn_id)
             VALUES ($1, $2, $3, $4, $5, 1) ON CONFLICT (appservice_id) DO NOTHING",
        )
        .bind(id)
        .bind(start.events)
        .bind(start.receipts)
        .bind(start.typing)
        .bind(start.presence)
        .execute(self.db.pool())
        .await?;
        let r = sqlx::query(
            "SELECT events_pos, receipts_pos, typing_pos, presence_pos, next_txn_id, pending_txn_id, pending_body,
                    failing_since
             FROM appservice_state WHERE appservice_id = $1",
        )
        .bind(id)
        .fetch_one(self.db.pool())
        .await?;
        let pending_id: Option<i64> = r.try_get(5)?;
        let pending_body: Option<String> = r.try_get(6)?;
        Ok(AppserviceState {
            events_pos: r.try_get(0)?,
            receipts_pos: r.try_get(1)?,
            typing_pos: r.try_get(2)?,
            presence_pos: r.try_get(3)?,
            next_txn_id: r.try_get(4)?,
            pending: pending_id.zip(pending_body),
            failing_since: r.try_get(7)?,
        })
    }

    /// Stages transaction `txn_id` with `body` and moves the positions to `to`, in one write;
    /// only when nothing is staged and `txn_id` is the next ID (a stale owner stages nothing).
    /// Returns whether it was staged.
    ///
    /// # Errors
    /// On database failure.
    pub async fn stage(&self, id: &str, txn_id: i64, body: &str, to: AppservicePositions) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE appservice_state SET pending_txn_id = $2, pending_body = $3, next_txn_id = $2 + 1,
                 events_pos = $4, receipts_pos = $5, typing_pos = $6, presence_pos = $7
             WHERE appservice_id = $1 AND pending_txn_id IS NULL AND next_txn_id = $2",
        )
        .bind(id)
        .bind(txn_id)
        .bind(body)
        .bind(to.events)
        .bind(to.receipts)
        .bind(to.typing)
        .bind(to.presence)
        .execute(self.db.pool())
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves the positions without a transaction (a range the service has no interest in).
    ///
    /// # Errors
    /// On database failure.
    pub async fn skip_to(&self, id: &str, to: AppservicePositions) -> Result<()> {
        sqlx::query(
            "UPDATE appservice_state SET events_pos = $2, receipts_pos = $3, typing_pos = $4, presence_pos = $5
             WHERE appservice_id = $1 AND pending_txn_id IS NULL",
        )
        .bind(id)
        .bind(to.events)
        .bind(to.receipts)
        .bind(to.typing)
        .bind(to.presence)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The service acknowledged transaction `txn_id`: nothing is staged any more.
    ///
    /// # Errors
    /// On database failure.
    pub async fn acknowledged(&self, id: &str, txn_id: i64) -> Result<()> {
        sqlx::query(
            "UPDATE appservice_state SET pending_txn_id = NULL, pending_body = NULL, failing_since = NULL
             WHERE appservice_id = $1 AND pending_txn_id = $2",
        )
        .bind(id)
        .bind(txn_id)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Records since when the service has been failing.
    ///
    /// # Errors
    /// On database failure.
    pub async fn set_failing(&self, id: &str, since: Option<i64>) -> Result<()> {
        sqlx::query("UPDATE appservice_state SET failing_since = $2 WHERE appservice_id = $1")
            .bind(id)
            .bind(since)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }
}
