//! Other servers' signing keys, as fetched from them or from a notary, so every process (and
//! a restart) reuses them until they expire, and so this server can act as a notary.

use sqlx::Row;

use crate::{Db, Result, now_ms};

/// One of another server's keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteKey {
    /// `ed25519:<version>`.
    pub key_id: String,
    /// Unpadded base64.
    pub public_key: String,
    /// Until when (ms) the key is valid, the newest validity seen.
    pub valid_until_ts: i64,
    /// When the server retired the key (listed under `old_verify_keys`); `None` while current.
    pub expired_ts: Option<i64>,
}

/// Other servers' keys and key documents.
#[derive(Debug, Clone)]
pub struct RemoteKeyStore {
    db: Db,
}

impl RemoteKeyStore {
    /// A store on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Every stored key of `server`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn keys_of(&self, server: &str) -> Result<Vec<RemoteKey>> {
        let rows = sqlx::query(
            "SELECT key_id, public_key, valid_until_ts, expired_ts FROM remote_server_keys
             WHERE server_name = $1 ORDER BY key_id",
        )
        .bind(server)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RemoteKey {
                    key_id: r.try_get("key_id")?,
                    public_key: r.try_get("public_key")?,
                    valid_until_ts: r.try_get("valid_until_ts")?,
                    expired_ts: r.try_get("expired_ts")?,
                })
            })
            .collect()
    }

    /// Stores a verified key document of `server` and the keys it lists. A key keeps the
    /// longest validity ever seen for it and, once retired, stays retired; the document is
    /// replaced only by one valid at least as long.
    ///
    /// # Errors
    /// On database failure.
    pub async fn store(&self, server: &str, valid_until_ts: i64, document: &str, keys: &[RemoteKey]) -> Result<()> {
        let now = now_ms();
        let mut tx = self.db.begin_write().await?;
        for k in keys {
            sqlx::query(
                "INSERT INTO remote_server_keys
                     (server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_ts)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (server_name, key_id) DO UPDATE SET
                     public_key = excluded.public_key,
                     valid_until_ts = CASE WHEN excluded.valid_until_ts > remote_server_keys.valid_until_ts
                         THEN excluded.valid_until_ts ELSE remote_server_keys.valid_until_ts END,
                     expired_ts = COALESCE(remote_server_keys.expired_ts, excluded.expired_ts),
                     fetched_ts = excluded.fetched_ts",
            )
            .bind(server)
            .bind(&k.key_id)
            .bind(&k.public_key)
            .bind(k.valid_until_ts)
            .bind(k.expired_ts)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "INSERT INTO remote_server_key_documents (server_name, valid_until_ts, document, fetched_ts)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (server_name) DO UPDATE SET
                 valid_until_ts = excluded.valid_until_ts, document = excluded.document, fetched_ts = excluded.fetched_ts
             WHERE excluded.valid_until_ts >= remote_server_key_documents.valid_until_ts",
        )
        .bind(server)
        .bind(valid_until_ts)
        .bind(document)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The stored key document of `server` (as it signed it) and until when it is valid.
    ///
    /// # Errors
    /// On database failure.
    pub async fn document(&self, server: &str) -> Result<Option<(i64, String)>> {
        let row =
            sqlx::query("SELECT valid_until_ts, document FROM remote_server_key_documents WHERE server_name = $1")
                .bind(server)
                .fetch_optional(self.db.pool())
                .await?;
        row.map(|r| Ok((r.try_get("valid_until_ts")?, r.try_get("document")?))).transpose()
    }
}
