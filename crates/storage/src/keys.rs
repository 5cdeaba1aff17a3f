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
}
