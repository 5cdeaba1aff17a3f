//! Application service delivery state: per service, how far each stream has gone into
//! transactions and the one transaction staged but not yet acknowledged. Written only by the
//! instance of the pusher role that holds the service's lease.

use sqlx::Row;

use crate::{Db, Result};

/// Where one service's delivery stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppserviceState {
    /// How far each stream is in a transaction (sent or staged).
    pub positions: AppservicePositions,
    /// The ID the next staged transaction gets.
    pub next_txn_id: i64,
    /// The staged transaction, `(id, body)`, to send (again) before anything new.
    pub pending: Option<(i64, String)>,
    /// Since when the service has been failing, if it is.
    pub failing_since: Option<i64>,
}

/// How far each stream has gone into a service's transactions.
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
    /// `to_device`.
    pub to_device: i64,
    /// `device_lists`.
    pub device_lists: i64,
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
    /// what happens from its registration on, as with Synapse), and so does a stream it has
    /// no position on yet (one added by an upgrade).
    ///
    /// # Errors
    /// On database failure.
    pub async fn state_or_start(&self, id: &str, start: AppservicePositions) -> Result<AppserviceState> {
        // Insert-if-absent, so two instances racing at a hand-over agree on one row.
        sqlx::query(
            "INSERT INTO appservice_state (appservice_id, events_pos, receipts_pos, typing_pos, presence_pos,
                 to_device_pos, device_lists_pos, next_txn_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 1) ON CONFLICT (appservice_id) DO NOTHING",
        )
        .bind(id)
        .bind(start.events)
        .bind(start.receipts)
        .bind(start.typing)
        .bind(start.presence)
        .bind(start.to_device)
        .bind(start.device_lists)
        .execute(self.db.pool())
        .await?;
        for (column, position) in [("to_device_pos", start.to_device), ("device_lists_pos", start.device_lists)] {
            sqlx::query(&format!(
                "UPDATE appservice_state SET {column} = $2 WHERE appservice_id = $1 AND {column} < 0"
            ))
            .bind(id)
            .bind(position)
            .execute(self.db.pool())
            .await?;
        }
        let r = sqlx::query(
            "SELECT events_pos, receipts_pos, typing_pos, presence_pos, to_device_pos, device_lists_pos,
                    next_txn_id, pending_txn_id, pending_body, failing_since
             FROM appservice_state WHERE appservice_id = $1",
        )
        .bind(id)
        .fetch_one(self.db.pool())
        .await?;
        let pending_id: Option<i64> = r.try_get(7)?;
        let pending_body: Option<String> = r.try_get(8)?;
        Ok(AppserviceState {
            positions: AppservicePositions {
                events: r.try_get(0)?,
                receipts: r.try_get(1)?,
                typing: r.try_get(2)?,
                presence: r.try_get(3)?,
                to_device: r.try_get(4)?,
                device_lists: r.try_get(5)?,
            },
            next_txn_id: r.try_get(6)?,
            pending: pending_id.zip(pending_body),
            failing_since: r.try_get(9)?,
        })
    }

    /// Stages transaction `txn_id` with `body` and moves the positions to `to`, in one write;
    /// only when nothing is staged and `txn_id` is the next ID (a stale owner stages nothing).
    /// `consumed_to_device` are the to-device messages in it that leave the inbox once it is
    /// acknowledged. Returns whether it was staged.
    ///
    /// # Errors
    /// On database failure.
    pub async fn stage(
        &self,
        id: &str,
        txn_id: i64,
        body: &str,
        to: AppservicePositions,
        consumed_to_device: &[i64],
    ) -> Result<bool> {
        let consumed = (!consumed_to_device.is_empty())
            .then(|| consumed_to_device.iter().map(i64::to_string).collect::<Vec<_>>().join(","));
        let done = sqlx::query(
            "UPDATE appservice_state SET pending_txn_id = $2, pending_body = $3, next_txn_id = $2 + 1,
                 events_pos = $4, receipts_pos = $5, typing_pos = $6, presence_pos = $7, to_device_pos = $8,
                 device_lists_pos = $9, pending_to_device = $10
             WHERE appservice_id = $1 AND pending_txn_id IS NULL AND next_txn_id = $2",
        )
        .bind(id)
        .bind(txn_id)
        .bind(body)
        .bind(to.events)
        .bind(to.receipts)
        .bind(to.typing)
        .bind(to.presence)
        .bind(to.to_device)
        .bind(to.device_lists)
        .bind(consumed)
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
            "UPDATE appservice_state SET events_pos = $2, receipts_pos = $3, typing_pos = $4, presence_pos = $5,
                 to_device_pos = $6, device_lists_pos = $7
             WHERE appservice_id = $1 AND pending_txn_id IS NULL",
        )
        .bind(id)
        .bind(to.events)
        .bind(to.receipts)
        .bind(to.typing)
        .bind(to.presence)
        .bind(to.to_device)
        .bind(to.device_lists)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// The service acknowledged transaction `txn_id`: nothing is staged any more, and the
    /// to-device messages it consumed leave the inbox, in the same write.
    ///
    /// # Errors
    /// On database failure.
    pub async fn acknowledged(&self, id: &str, txn_id: i64) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        let consumed: Option<Option<String>> = sqlx::query_scalar(
            "SELECT pending_to_device FROM appservice_state WHERE appservice_id = $1 AND pending_txn_id = $2",
        )
        .bind(id)
        .bind(txn_id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(consumed) = consumed else { return Ok(()) };
        let positions: Vec<i64> =
            consumed.as_deref().unwrap_or("").split(',').filter_map(|p| p.trim().parse().ok()).collect();
        for chunk in positions.chunks(500) {
            let list = chunk.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
            // Integers parsed above, so the list is safe to inline.
            sqlx::query(&format!("DELETE FROM to_device_log WHERE stream_id IN ({list})")).execute(&mut *tx).await?;
        }
        sqlx::query(
            "UPDATE appservice_state SET pending_txn_id = NULL, pending_body = NULL, pending_to_device = NULL,
                 failing_since = NULL
             WHERE appservice_id = $1 AND pending_txn_id = $2",
        )
        .bind(id)
        .bind(txn_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
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
