//! The server's signing keys. The newest unexpired key signs; old keys stay for verification.

use sqlx::Row;

use crate::{Db, Result, now_ms};

/// A stored ed25519 signing key.
#[derive(Debug, Clone)]
pub struct StoredSigningKey {
    /// The key's version, the part after `ed25519:`.
    pub version: String,
    /// The PKCS#8 DER document, base64.
    pub pkcs8_base64: String,
}

/// Signing keys.
#[derive(Debug, Clone)]
pub struct KeyStore {
    db: Db,
}

impl KeyStore {
    /// A store on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The newest unexpired signing key.
    ///
    /// # Errors
    /// On database failure.
    pub async fn active_key(&self) -> Result<Option<StoredSigningKey>> {
        let row = sqlx::query(
            "SELECT key_id, pkcs8_base64 FROM server_signing_keys WHERE expired_ts IS NULL
             ORDER BY created_ts DESC, key_id DESC LIMIT 1",
        )
        .fetch_optional(self.db.pool())
        .await?;
        row.map(|r| Ok(StoredSigningKey { version: r.try_get(0)?, pkcs8_base64: r.try_get(1)? })).transpose()
    }

    /// Stores a key unless one of that version exists. Returns whether it was inserted, so two
    /// processes racing at first start agree on one key.
    ///
    /// # Errors
    /// On database failure.
    pub async fn insert_key(&self, key: &StoredSigningKey) -> Result<bool> {
        let res = sqlx::query(
            "INSERT INTO server_signing_keys (key_id, pkcs8_base64, created_ts) VALUES ($1, $2, $3)
             ON CONFLICT (key_id) DO NOTHING",
        )
        .bind(&key.version)
        .bind(&key.pkcs8_base64)
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Makes `key` the active key: every unexpired key is marked expired now, kept for
    /// verifying what it signed.
    ///
    /// # Errors
    /// On database failure, or when a key of that version exists.
    pub async fn rotate_to(&self, key: &StoredSigningKey) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        let now = now_ms();
        sqlx::query("UPDATE server_signing_keys SET expired_ts = $1 WHERE expired_ts IS NULL")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO server_signing_keys (key_id, pkcs8_base64, created_ts) VALUES ($1, $2, $3)")
            .bind(&key.version)
            .bind(&key.pkcs8_base64)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Keys no longer used for signing, with when they expired (ms since the epoch), newest first.
    ///
    /// # Errors
    /// On database failure.
    pub async fn expired_keys(&self) -> Result<Vec<(StoredSigningKey, i64)>> {
        let rows = sqlx::query(
            "SELECT key_id, pkcs8_base64, expired_ts FROM server_signing_keys WHERE expired_ts IS NOT NULL
             ORDER BY expired_ts DESC, key_id",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((StoredSigningKey { version: r.try_get(0)?, pkcs8_base64: r.try_get(1)? }, r.try_get(2)?)))
            .collect()
    }
}
