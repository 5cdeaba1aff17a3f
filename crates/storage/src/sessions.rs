//! Refresh tokens (spec v1.3) and single-use login tokens (`/login/get_token`, spec v1.7), on
//! [`UserStore`]. Like access tokens, both are stored only as SHA-256 hashes.
//!
//! Rotation: a refresh issues a new access token and a new refresh token, each remembering the
//! refresh token they replace. The old refresh token stays valid until the new access token or the
//! new refresh token is first used; that use revokes it and the access token issued with it.

use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use sqlx::Row;

use crate::{Error, Result, UserStore, now_ms};

/// The refresh half of a new session: the hash of its refresh token and when its access token expires.
#[derive(Debug, Clone, Copy)]
pub struct NewRefresh<'a> {
    /// SHA-256 of the refresh token.
    pub refresh_hash: &'a str,
    /// When the access token issued with it expires (ms since the epoch).
    pub expires_ts: i64,
}

impl UserStore {
    /// Exchanges refresh token `old_hash` for a new access token (`access_hash`) and a new refresh
    /// token. Returns the session's user and device, or `None` when the refresh token is unknown,
    /// revoked, or its account deactivated.
    ///
    /// # Errors
    /// On database failure or an undecodable stored ID.
    pub async fn refresh_session(
        &self,
        old_hash: &str,
        access_hash: &str,
        new: NewRefresh<'_>,
    ) -> Result<Option<(OwnedUserId, OwnedDeviceId)>> {
        let mut tx = self.db.begin_write().await?;
        let row = sqlx::query(
            "SELECT r.user_id, r.device_id, r.prev_hash FROM refresh_tokens r JOIN users u ON u.user_id = r.user_id
             WHERE r.token_hash = $1 AND u.deactivated = 0",
        )
        .bind(old_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let user: String = row.try_get(0)?;
        let device: String = row.try_get(1)?;
        let prev: Option<String> = row.try_get(2)?;
        // Using this refresh token retires the one it replaced.
        if let Some(prev) = prev {
            for sql in [
                "DELETE FROM refresh_tokens WHERE token_hash = $1",
                "DELETE FROM access_tokens WHERE refresh_hash = $1",
            ] {
                sqlx::query(sql).bind(&prev).execute(&mut *tx).await?;
            }
            sqlx::query("UPDATE refresh_tokens SET prev_hash = NULL WHERE token_hash = $1")
                .bind(old_hash)
                .execute(&mut *tx)
                .await?;
            sqlx::query("UPDATE access_tokens SET prev_refresh_hash = NULL WHERE prev_refresh_hash = $1")
                .bind(&prev)
                .execute(&mut *tx)
                .await?;
        }
        let now = now_ms();
        sqlx::query(
            "INSERT INTO access_tokens
               (token_hash, user_id, device_id, created_ts, expires_ts, refresh_hash, prev_refresh_hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(access_hash)
        .bind(&user)
        .bind(&device)
        .bind(now)
        .bind(new.expires_ts)
        .bind(new.refresh_hash)
        .bind(old_hash)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, user_id, device_id, prev_hash, created_ts)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(new.refresh_hash)
        .bind(&user)
        .bind(&device)
        .bind(old_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let user_id =
            OwnedUserId::try_from(user.as_str()).map_err(|e| Error::Decode(format!("user id {user}: {e}")))?;
        Ok(Some((user_id, device.into())))
    }

    /// The first use of access token `token_hash`, issued by refreshing `prev`: revokes `prev` and
    /// the access token issued with it.
    pub(crate) async fn retire_replaced_refresh_token(&self, token_hash: &str, prev: &str) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        for sql in [
            "DELETE FROM refresh_tokens WHERE token_hash = $1",
            "DELETE FROM access_tokens WHERE refresh_hash = $1",
            "UPDATE refresh_tokens SET prev_hash = NULL WHERE prev_hash = $1",
        ] {
            sqlx::query(sql).bind(prev).execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE access_tokens SET prev_refresh_hash = NULL WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores a single-use login token for `user_id`, valid until `expires_ts`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn create_login_token(&self, token_hash: &str, user_id: &UserId, expires_ts: i64) -> Result<()> {
        // Spent and expired tokens are dropped here, so the table stays small without a timer.
        sqlx::query("DELETE FROM login_tokens WHERE expires_ts <= $1").bind(now_ms()).execute(self.db.pool()).await?;
        sqlx::query("INSERT INTO login_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)")
            .bind(token_hash)
            .bind(user_id.as_str())
            .bind(expires_ts)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Spends a login token: its user when it exists and has not expired. A second use finds nothing.
    ///
    /// # Errors
    /// On database failure or an undecodable stored ID.
    pub async fn take_login_token(&self, token_hash: &str) -> Result<Option<OwnedUserId>> {
        let mut tx = self.db.begin_write().await?;
        let user: Option<String> =
            sqlx::query_scalar("SELECT user_id FROM login_tokens WHERE token_hash = $1 AND expires_ts > $2")
                .bind(token_hash)
                .bind(now_ms())
                .fetch_optional(&mut *tx)
                .await?;
        // The delete decides: of two concurrent uses only one removes the row.
        let res =
            sqlx::query("DELETE FROM login_tokens WHERE token_hash = $1").bind(token_hash).execute(&mut *tx).await?;
        tx.commit().await?;
        match user {
            Some(u) if res.rows_affected() == 1 => {
                Ok(Some(OwnedUserId::try_from(u.as_str()).map_err(|e| Error::Decode(format!("user id {u}: {e}")))?))
            }
            _ => Ok(None),
        }
    }

    /// Creates a guest account (no password; limited to the endpoints the spec allows guests).
    ///
    /// # Errors
    /// [`Error::Conflict`] when the user ID is taken.
    pub async fn create_guest(&self, user_id: &UserId) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO users (user_id, password_hash, is_admin, deactivated, created_ts, is_guest)
             VALUES ($1, NULL, 0, 0, $2, 1) ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id.as_str())
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        if res.rows_affected() == 0 {
            return Err(Error::Conflict(format!("user {user_id} exists")));
        }
        Ok(())
    }

    /// Turns a guest account into a full one with `password_hash`. Returns false when the user is
    /// not a guest (any more).
    ///
    /// # Errors
    /// On database failure.
    pub async fn upgrade_guest(&self, user_id: &UserId, password_hash: Option<&str>) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE users SET is_guest = 0, password_hash = $1 WHERE user_id = $2 AND is_guest <> 0 AND deactivated = 0",
        )
        .bind(password_hash)
        .bind(user_id.as_str())
        .execute(self.db.pool())
        .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Whether a user is a guest (unknown users are not).
    ///
    /// # Errors
    /// On database failure.
    pub async fn is_guest(&self, user_id: &UserId) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE user_id = $1 AND is_guest <> 0")
            .bind(user_id.as_str())
            .fetch_one(self.db.pool())
            .await?;
        Ok(n > 0)
    }

    /// A user's profile fields other than `displayname` and `avatar_url`, by key.
    ///
    /// # Errors
    /// On database failure or undecodable stored JSON.
    pub async fn profile_fields(&self, user_id: &UserId) -> Result<Vec<(String, serde_json::Value)>> {
        let rows =
            sqlx::query("SELECT field_key, value_json FROM profile_fields WHERE user_id = $1 ORDER BY field_key")
                .bind(user_id.as_str())
                .fetch_all(self.db.pool())
                .await?;
        rows.iter()
            .map(|r| {
                let key: String = r.try_get(0)?;
                let json: String = r.try_get(1)?;
                let value =
                    serde_json::from_str(&json).map_err(|e| Error::Decode(format!("profile field {key}: {e}")))?;
                Ok((key, value))
            })
            .collect()
    }

    /// Sets a custom profile field.
    ///
    /// # Errors
    /// On database failure.
    pub async fn set_profile_custom_field(&self, user_id: &UserId, key: &str, value: &serde_json::Value) -> Result<()> {
        sqlx::query(
            "INSERT INTO profile_fields (user_id, field_key, value_json) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, field_key) DO UPDATE SET value_json = excluded.value_json",
        )
        .bind(user_id.as_str())
        .bind(key)
        .bind(value.to_string())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Removes a custom profile field. Returns whether it existed.
    ///
    /// # Errors
    /// On database failure.
    pub async fn delete_profile_custom_field(&self, user_id: &UserId, key: &str) -> Result<bool> {
        let res = sqlx::query("DELETE FROM profile_fields WHERE user_id = $1 AND field_key = $2")
            .bind(user_id.as_str())
            .bind(key)
            .execute(self.db.pool())
            .await?;
        Ok(res.rows_affected() > 0)
    }
}
