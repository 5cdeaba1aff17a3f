//! Server-side key backup: versions (algorithm, auth data, an etag that changes with the keys)
//! and the backed-up session keys of each.

use ruma::UserId;
use sqlx::Row;

use crate::{Db, Result};

/// A backup version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupVersion {
    /// The version number.
    pub version: i64,
    /// `algorithm`.
    pub algorithm: String,
    /// `auth_data`, JSON.
    pub auth_data: String,
    /// Changes whenever the keys change.
    pub etag: i64,
    /// How many keys it holds.
    pub count: i64,
}

/// One backed-up session key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackedUpKey {
    /// The room.
    pub room_id: String,
    /// The Megolm session.
    pub session_id: String,
    /// The `KeyBackupData`, JSON.
    pub key_json: String,
}

/// Key backups.
#[derive(Debug, Clone)]
pub struct KeyBackupStore {
    db: Db,
}

impl KeyBackupStore {
    /// A store on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Creates a new version (one higher than any the user ever had). Returns it.
    ///
    /// # Errors
    /// On database failure.
    pub async fn create_version(&self, user: &UserId, algorithm: &str, auth_data: &str) -> Result<i64> {
        let mut tx = self.db.begin_write().await?;
        let next: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM room_key_backups WHERE user_id = $1")
                .bind(user.as_str())
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO room_key_backups (user_id, version, algorithm, auth_data, etag, deleted) VALUES ($1, $2, $3, $4, 0, 0)",
        )
        .bind(user.as_str())
        .bind(next)
        .bind(algorithm)
        .bind(auth_data)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(next)
    }

    /// A version that was not deleted; `None` asks for the latest.
    ///
    /// # Errors
    /// On database failure.
    pub async fn version(&self, user: &UserId, version: Option<i64>) -> Result<Option<BackupVersion>> {
        let row = sqlx::query(
            "SELECT b.version, b.algorithm, b.auth_data, b.etag,
                    (SELECT COUNT(*) FROM room_keys k WHERE k.user_id = b.user_id AND k.version = b.version)
             FROM room_key_backups b WHERE b.user_id = $1 AND b.deleted = 0 AND ($2 < 0 OR b.version = $2)
             ORDER BY b.version DESC LIMIT 1",
        )
        .bind(user.as_str())
        .bind(version.unwrap_or(-1))
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|r| {
            Ok(BackupVersion {
                version: r.try_get(0)?,
                algorithm: r.try_get(1)?,
                auth_data: r.try_get(2)?,
                etag: r.try_get(3)?,
                count: r.try_get(4)?,
            })
        })
        .transpose()
    }

    /// Replaces a version's auth data. Returns whether it exists.
    ///
    /// # Errors
    /// On database failure.
    pub async fn update_version(&self, user: &UserId, version: i64, auth_data: &str) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE room_key_backups SET auth_data = $1 WHERE user_id = $2 AND version = $3 AND deleted = 0",
        )
        .bind(auth_data)
        .bind(user.as_str())
        .bind(version)
        .execute(self.db.pool())
        .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Deletes a version and its keys. Returns whether it existed.
    ///
    /// # Errors
    /// On database failure.
    pub async fn delete_version(&self, user: &UserId, version: i64) -> Result<bool> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query("DELETE FROM room_keys WHERE user_id = $1 AND version = $2")
            .bind(user.as_str())
            .bind(version)
            .execute(&mut *tx)
            .await?;
        // Kept as deleted, so a new version never reuses the number.
        let res =
            sqlx::query("UPDATE room_key_backups SET deleted = 1 WHERE user_id = $1 AND version = $2 AND deleted = 0")
                .bind(user.as_str())
                .bind(version)
                .execute(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(res.rows_affected() > 0)
    }

    /// Keys of a version, optionally of one room or one session.
    ///
    /// # Errors
    /// On database failure.
    pub async fn keys(
        &self,
        user: &UserId,
        version: i64,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<Vec<BackedUpKey>> {
        let rows = sqlx::query(
            "SELECT room_id, session_id, key_json FROM room_keys WHERE user_id = $1 AND version = $2
             AND ($3 = '' OR room_id = $3) AND ($4 = '' OR session_id = $4) ORDER BY room_id, session_id",
        )
        .bind(user.as_str())
        .bind(version)
        .bind(room.unwrap_or_default())
        .bind(session.unwrap_or_default())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| Ok(BackedUpKey { room_id: r.try_get(0)?, session_id: r.try_get(1)?, key_json: r.try_get(2)? }))
            .collect()
    }

    /// Stores keys (the caller has already kept the better of old and new) and bumps the etag.
    ///
    /// # Errors
    /// On database failure.
    pub async fn put_keys(&self, user: &UserId, version: i64, keys: &[BackedUpKey]) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        for k in keys {
            sqlx::query(
                "INSERT INTO room_keys (user_id, version, room_id, session_id, key_json) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET key_json = excluded.key_json",
            )
            .bind(user.as_str())
            .bind(version)
            .bind(&k.room_id)
            .bind(&k.session_id)
            .bind(&k.key_json)
            .execute(&mut *tx)
            .await?;
        }
        if !keys.is_empty() {
            sqlx::query("UPDATE room_key_backups SET etag = etag + 1 WHERE user_id = $1 AND version = $2")
                .bind(user.as_str())
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Deletes keys of a version (all, one room's, or one session) and bumps the etag.
    ///
    /// # Errors
    /// On database failure.
    pub async fn delete_keys(
        &self,
        user: &UserId,
        version: i64,
        room: Option<&str>,
        session: Option<&str>,
    ) -> Result<u64> {
        let mut tx = self.db.begin_write().await?;
        let res = sqlx::query(
            "DELETE FROM room_keys WHERE user_id = $1 AND version = $2 AND ($3 = '' OR room_id = $3) AND ($4 = '' OR session_id = $4)",
        )
        .bind(user.as_str())
        .bind(version)
        .bind(room.unwrap_or_default())
        .bind(session.unwrap_or_default())
        .execute(&mut *tx)
        .await?;
        if res.rows_affected() > 0 {
            sqlx::query("UPDATE room_key_backups SET etag = etag + 1 WHERE user_id = $1 AND version = $2")
                .bind(user.as_str())
                .bind(version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(res.rows_affected())
    }
}
