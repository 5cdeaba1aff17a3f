//! Accounts, devices, access tokens and User-Interactive Auth sessions.

use ruma::{OwnedDeviceId, OwnedUserId, UserId};
use sqlx::Row;

use crate::{Db, Error, Result, now_ms};

/// Whom a user-directory search may find.
#[derive(Debug, Clone, Copy)]
pub enum DirectoryScope<'a> {
    /// Every active local user (`user_directory.search_all_users`).
    AllUsers,
    /// Those who share a joined room with this user or sit in a public room.
    VisibleTo(&'a UserId),
}

/// Who an access token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whoami {
    /// The token's user.
    pub user_id: OwnedUserId,
    /// The token's device.
    pub device_id: OwnedDeviceId,
    /// Whether the user is a server admin.
    pub is_admin: bool,
    /// Whether the account is a guest account (`register?kind=guest`).
    pub is_guest: bool,
    /// When the token expires (ms since the epoch); `None` for tokens without a refresh token.
    pub expires_ts: Option<i64>,
}

/// A device as listed to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// The device ID.
    pub device_id: OwnedDeviceId,
    /// Its human-readable name.
    pub display_name: Option<String>,
}

/// Users, devices, tokens and UIA sessions.
#[derive(Debug, Clone)]
pub struct UserStore {
    pub(crate) db: Db,
}

impl UserStore {
    /// A store on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Creates a user.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the user ID is taken.
    pub async fn create_user(&self, user_id: &UserId, password_hash: Option<&str>, admin: bool) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO users (user_id, password_hash, is_admin, deactivated, created_ts)
             VALUES ($1, $2, $3, 0, $4) ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id.as_str())
        .bind(password_hash)
        .bind(i64::from(admin))
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        if res.rows_affected() == 0 {
            return Err(Error::Conflict(format!("user {user_id} exists")));
        }
        Ok(())
    }

    /// Whether a user ID is taken (deactivated accounts keep theirs).
    ///
    /// # Errors
    /// On database failure.
    pub async fn user_exists(&self, user_id: &UserId) -> Result<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE user_id = $1")
            .bind(user_id.as_str())
            .fetch_one(self.db.pool())
            .await?;
        Ok(n > 0)
    }

    /// The stored password hash of an active account, if it has one.
    ///
    /// # Errors
    /// On database failure.
    pub async fn password_hash(&self, user_id: &UserId) -> Result<Option<String>> {
        let row = sqlx::query("SELECT password_hash FROM users WHERE user_id = $1 AND deactivated = 0")
            .bind(user_id.as_str())
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.and_then(|r| r.try_get::<Option<String>, _>(0).ok().flatten()))
    }

    /// Creates a device, or keeps an existing one of the same ID (a login may reuse its device ID).
    ///
    /// # Errors
    /// On database failure.
    pub async fn upsert_device(&self, user_id: &UserId, device_id: &str, display_name: Option<&str>) -> Result<()> {
        sqlx::query(
            "INSERT INTO devices (user_id, device_id, display_name, created_ts) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, device_id) DO UPDATE SET
               display_name = COALESCE(excluded.display_name, devices.display_name)",
        )
        .bind(user_id.as_str())
        .bind(device_id)
        .bind(display_name)
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// A user's devices.
    ///
    /// # Errors
    /// On database failure or an undecodable device ID.
    pub async fn devices(&self, user_id: &UserId) -> Result<Vec<DeviceInfo>> {
        let rows = sqlx::query("SELECT device_id, display_name FROM devices WHERE user_id = $1 ORDER BY device_id")
            .bind(user_id.as_str())
            .fetch_all(self.db.pool())
            .await?;
        rows.into_iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                Ok(DeviceInfo { device_id: id.into(), display_name: r.try_get(1)? })
            })
            .collect()
    }

    /// Stores the hash of a new access token for a device.
    ///
    /// # Errors
    /// On database failure.
    pub async fn add_access_token(&self, token_hash: &str, user_id: &UserId, device_id: &str) -> Result<()> {
        sqlx::query("INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts) VALUES ($1, $2, $3, $4)")
            .bind(token_hash)
            .bind(user_id.as_str())
            .bind(device_id)
            .bind(now_ms())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Replaces a device's access tokens with one new token (a login that reuses a device ID).
    ///
    /// # Errors
    /// On database failure.
    pub async fn replace_device_tokens(&self, token_hash: &str, user_id: &UserId, device_id: &str) -> Result<()> {
        self.start_session(token_hash, user_id, device_id, None).await
    }

    /// Replaces a device's tokens (access and refresh) with a new access token, which expires at
    /// `refresh.expires_ts` and comes with refresh token `refresh.refresh_hash` when given.
    ///
    /// # Errors
    /// On database failure.
    pub async fn start_session(
        &self,
        token_hash: &str,
        user_id: &UserId,
        device_id: &str,
        refresh: Option<crate::NewRefresh<'_>>,
    ) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        for table in ["access_tokens", "refresh_tokens"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1 AND device_id = $2"))
                .bind(user_id.as_str())
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO access_tokens (token_hash, user_id, device_id, created_ts, expires_ts, refresh_hash)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token_hash)
        .bind(user_id.as_str())
        .bind(device_id)
        .bind(now_ms())
        .bind(refresh.map(|r| r.expires_ts))
        .bind(refresh.map(|r| r.refresh_hash))
        .execute(&mut *tx)
        .await?;
        if let Some(r) = refresh {
            sqlx::query(
                "INSERT INTO refresh_tokens (token_hash, user_id, device_id, prev_hash, created_ts)
                 VALUES ($1, $2, $3, NULL, $4)",
            )
            .bind(r.refresh_hash)
            .bind(user_id.as_str())
            .bind(device_id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Resolves a token hash to its user and device. The first use of an access token issued by a
    /// refresh revokes the refresh token it replaced (and that token's access token), as the spec
    /// asks; expiry is left to the caller, which answers with a soft logout.
    ///
    /// # Errors
    /// On database failure or an undecodable stored ID.
    pub async fn whoami(&self, token_hash: &str) -> Result<Option<Whoami>> {
        let row = sqlx::query(
            "SELECT t.user_id, t.device_id, u.is_admin, u.is_guest, t.expires_ts, t.prev_refresh_hash
             FROM access_tokens t JOIN users u ON u.user_id = t.user_id
             WHERE t.token_hash = $1 AND u.deactivated = 0",
        )
        .bind(token_hash)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let user: String = row.try_get(0)?;
        let device: String = row.try_get(1)?;
        let admin: i64 = row.try_get(2)?;
        let guest: i64 = row.try_get(3)?;
        let expires_ts: Option<i64> = row.try_get(4)?;
        let prev: Option<String> = row.try_get(5)?;
        if let Some(prev) = prev {
            self.retire_replaced_refresh_token(token_hash, &prev).await?;
        }
        let user_id =
            OwnedUserId::try_from(user.as_str()).map_err(|e| Error::Decode(format!("user id {user}: {e}")))?;
        Ok(Some(Whoami { user_id, device_id: device.into(), is_admin: admin != 0, is_guest: guest != 0, expires_ts }))
    }

    /// Deletes one access token (logout).
    ///
    /// # Errors
    /// On database failure.
    pub async fn delete_access_token(&self, token_hash: &str) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        // The refresh token issued with it, and one it replaced and has not retired yet, go too.
        sqlx::query(
            "DELETE FROM refresh_tokens WHERE token_hash IN
               (SELECT refresh_hash FROM access_tokens WHERE token_hash = $1 AND refresh_hash IS NOT NULL
                UNION SELECT prev_refresh_hash FROM access_tokens WHERE token_hash = $1 AND prev_refresh_hash IS NOT NULL)",
        )
        .bind(token_hash)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM access_tokens WHERE token_hash = $1").bind(token_hash).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes every access token of a user (logout/all).
    ///
    /// # Errors
    /// On database failure.
    pub async fn delete_all_access_tokens(&self, user_id: &UserId) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query("DELETE FROM refresh_tokens WHERE user_id = $1").bind(user_id.as_str()).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM access_tokens WHERE user_id = $1").bind(user_id.as_str()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Starts a UIA session.
    ///
    /// # Errors
    /// On database failure.
    pub async fn create_uia_session(&self, session_id: &str) -> Result<()> {
        sqlx::query("INSERT INTO uia_sessions (session_id, completed_stages, created_ts) VALUES ($1, '[]', $2)")
            .bind(session_id)
            .bind(now_ms())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// The stages completed in a UIA session, or `None` when the session is unknown.
    ///
    /// # Errors
    /// On database failure or undecodable stored stages.
    pub async fn uia_session(&self, session_id: &str) -> Result<Option<Vec<String>>> {
        let stages: Option<String> =
            sqlx::query_scalar("SELECT completed_stages FROM uia_sessions WHERE session_id = $1")
                .bind(session_id)
                .fetch_optional(self.db.pool())
                .await?;
        stages.map(|s| serde_json::from_str(&s).map_err(|e| Error::Decode(format!("uia stages: {e}")))).transpose()
    }

    /// Records the stages completed in a UIA session.
    ///
    /// # Errors
    /// On database failure.
    pub async fn set_uia_stages(&self, session_id: &str, stages: &[String]) -> Result<()> {
        let json = serde_json::to_string(stages).map_err(|e| Error::Decode(e.to_string()))?;
        sqlx::query("UPDATE uia_sessions SET completed_stages = $1 WHERE session_id = $2")
            .bind(json)
            .bind(session_id)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Ends a UIA session once its operation has been carried out.
    ///
    /// # Errors
    /// On database failure.
    pub async fn delete_uia_session(&self, session_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM uia_sessions WHERE session_id = $1").bind(session_id).execute(self.db.pool()).await?;
        Ok(())
    }

    /// Stores a filter under a new ID.
    ///
    /// # Errors
    /// On database failure ([`Error::Conflict`] if the ID is taken).
    pub async fn create_filter(&self, user_id: &UserId, filter_id: &str, json: &str) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO user_filters (user_id, filter_id, filter_json) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(user_id.as_str())
        .bind(filter_id)
        .bind(json)
        .execute(self.db.pool())
        .await?;
        if res.rows_affected() == 0 {
            return Err(Error::Conflict(format!("filter {filter_id} exists")));
        }
        Ok(())
    }

    /// A stored filter's JSON.
    ///
    /// # Errors
    /// On database failure.
    pub async fn filter(&self, user_id: &UserId, filter_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT filter_json FROM user_filters WHERE user_id = $1 AND filter_id = $2")
            .bind(user_id.as_str())
            .bind(filter_id)
            .fetch_optional(self.db.pool())
            .await?)
    }

    /// A user's global profile: `(displayname, avatar_url)`, `None` when the user is unknown.
    ///
    /// # Errors
    /// On database failure.
    pub async fn profile(&self, user_id: &UserId) -> Result<Option<(Option<String>, Option<String>)>> {
        if !self.user_exists(user_id).await? {
            return Ok(None);
        }
        let row = sqlx::query("SELECT displayname, avatar_url FROM profiles WHERE user_id = $1")
            .bind(user_id.as_str())
            .fetch_optional(self.db.pool())
            .await?;
        Ok(Some(match row {
            Some(r) => (r.try_get(0)?, r.try_get(1)?),
            None => (None, None),
        }))
    }

    /// Sets one profile field (`displayname` or `avatar_url`); `None` clears it.
    ///
    /// # Errors
    /// On database failure; an unknown field is a programming error reported as [`Error::Decode`].
    pub async fn set_profile_field(&self, user_id: &UserId, field: &str, value: Option<&str>) -> Result<()> {
        let sql = match field {
            "displayname" => {
                "INSERT INTO profiles (user_id, displayname) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO UPDATE SET displayname = excluded.displayname"
            }
            "avatar_url" => {
                "INSERT INTO profiles (user_id, avatar_url) VALUES ($1, $2)
                 ON CONFLICT (user_id) DO UPDATE SET avatar_url = excluded.avatar_url"
            }
            other => return Err(Error::Decode(format!("unknown profile field {other}"))),
        };
        sqlx::query(sql).bind(user_id.as_str()).bind(value).execute(self.db.pool()).await?;
        Ok(())
    }

    /// One device of a user.
    ///
    /// # Errors
    /// On database failure.
    pub async fn device(&self, user_id: &UserId, device_id: &str) -> Result<Option<DeviceInfo>> {
        Ok(self.devices(user_id).await?.into_iter().find(|d| d.device_id.as_str() == device_id))
    }

    /// Renames a device. Returns whether it exists.
    ///
    /// # Errors
    /// On database failure.
    pub async fn rename_device(&self, user_id: &UserId, device_id: &str, display_name: Option<&str>) -> Result<bool> {
        let res = sqlx::query("UPDATE devices SET display_name = $1 WHERE user_id = $2 AND device_id = $3")
            .bind(display_name)
            .bind(user_id.as_str())
            .bind(device_id)
            .execute(self.db.pool())
            .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Deletes a device and logs its access tokens out. Returns whether it existed.
    ///
    /// # Errors
    /// On database failure.
    pub async fn delete_device(&self, user_id: &UserId, device_id: &str) -> Result<bool> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query("DELETE FROM refresh_tokens WHERE user_id = $1 AND device_id = $2")
            .bind(user_id.as_str())
            .bind(device_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2")
            .bind(user_id.as_str())
            .bind(device_id)
            .execute(&mut *tx)
            .await?;
        let res = sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id = $2")
            .bind(user_id.as_str())
            .bind(device_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(res.rows_affected() > 0)
    }

    /// Replaces a user's password hash.
    ///
    /// # Errors
    /// On database failure.
    pub async fn set_password_hash(&self, user_id: &UserId, hash: &str) -> Result<()> {
        sqlx::query("UPDATE users SET password_hash = $1 WHERE user_id = $2")
            .bind(hash)
            .bind(user_id.as_str())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Logs out every device of a user except `keep` (its tokens and device rows go).
    ///
    /// # Errors
    /// On database failure.
    pub async fn delete_other_devices(&self, user_id: &UserId, keep: &str) -> Result<Vec<String>> {
        let others: Vec<String> =
            sqlx::query_scalar("SELECT device_id FROM devices WHERE user_id = $1 AND device_id <> $2")
                .bind(user_id.as_str())
                .bind(keep)
                .fetch_all(self.db.pool())
                .await?;
        for d in &others {
            self.delete_device(user_id, d).await?;
        }
        Ok(others)
    }

    /// Deactivates an account: it can no longer log in, its tokens go; its ID stays taken.
    ///
    /// # Errors
    /// On database failure.
    pub async fn deactivate(&self, user_id: &UserId) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query("UPDATE users SET deactivated = 1, password_hash = NULL WHERE user_id = $1")
            .bind(user_id.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM access_tokens WHERE user_id = $1").bind(user_id.as_str()).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM refresh_tokens WHERE user_id = $1").bind(user_id.as_str()).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM devices WHERE user_id = $1").bind(user_id.as_str()).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Active local users whose ID or display name contains `term` (case-insensitive), with their
    /// profile: `(user_id, displayname, avatar_url)`, at most `limit`, by user ID. With
    /// [`DirectoryScope::VisibleTo`], only those who share a joined room with the searcher or are
    /// joined to a public room (join rule `public`, or history visibility `world_readable`), as
    /// Synapse's user directory counts them.
    ///
    /// # Errors
    /// On database failure.
    pub async fn search_user_directory(
        &self,
        term: &str,
        limit: i64,
        scope: DirectoryScope<'_>,
    ) -> Result<Vec<(String, Option<String>, Option<String>)>> {
        let pattern =
            format!("%{}%", term.to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        let (join_rule, visibility) = match self.db.backend() {
            crate::Backend::Postgres => (
                "CAST(e.json AS jsonb) -> 'content' ->> 'join_rule'",
                "CAST(e.json AS jsonb) -> 'content' ->> 'history_visibility'",
            ),
            crate::Backend::Sqlite => {
                ("json_extract(e.json, '$.content.join_rule')", "json_extract(e.json, '$.content.history_visibility')")
            }
        };
        let visible = match scope {
            DirectoryScope::AllUsers => String::new(),
            DirectoryScope::VisibleTo(_) => format!(
                "AND u.user_id IN (
                   SELECT m.state_key FROM current_state m
                   WHERE m.event_type = 'm.room.member' AND m.membership = 'join' AND (
                     m.room_id IN (
                       SELECT c.room_id FROM current_state c JOIN events e ON e.event_id = c.event_id
                       WHERE c.state_key = '' AND (
                         (c.event_type = 'm.room.join_rules' AND {join_rule} = 'public')
                         OR (c.event_type = 'm.room.history_visibility' AND {visibility} = 'world_readable')))
                     OR m.room_id IN (
                       SELECT s.room_id FROM current_state s
                       WHERE s.event_type = 'm.room.member' AND s.state_key = $3 AND s.membership = 'join')))"
            ),
        };
        let sql = format!(
            "SELECT u.user_id, p.displayname, p.avatar_url FROM users u LEFT JOIN profiles p ON p.user_id = u.user_id
             WHERE u.deactivated = 0
               AND (LOWER(u.user_id) LIKE $1 ESCAPE '\\' OR LOWER(COALESCE(p.displayname, '')) LIKE $1 ESCAPE '\\')
               {visible}
             ORDER BY u.user_id LIMIT $2"
        );
        let mut query = sqlx::query(&sql).bind(pattern).bind(limit);
        if let DirectoryScope::VisibleTo(searcher) = scope {
            query = query.bind(searcher.as_str());
        }
        let rows = query.fetch_all(self.db.pool()).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
    }

    /// Creates a registration token. Returns false when the token exists.
    ///
    /// # Errors
    /// On database failure.
    pub async fn create_registration_token(
        &self,
        token: &str,
        uses_allowed: Option<i64>,
        expiry_time: Option<i64>,
    ) -> Result<bool> {
        let res = sqlx::query(
            "INSERT INTO registration_tokens (token, uses_allowed, completed, expiry_time) VALUES ($1, $2, 0, $3)
             ON CONFLICT (token) DO NOTHING",
        )
        .bind(token)
        .bind(uses_allowed)
        .bind(expiry_time)
        .execute(self.db.pool())
        .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Whether a token can still be used now.
    ///
    /// # Errors
    /// On database failure.
    pub async fn registration_token_valid(&self, token: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM registration_tokens WHERE token = $1
             AND (uses_allowed IS NULL OR completed < uses_allowed) AND (expiry_time IS NULL OR expiry_time > $2)",
        )
        .bind(token)
        .bind(now_ms())
        .fetch_one(self.db.pool())
        .await?;
        Ok(n > 0)
    }

    /// Uses a token once, if it still can be. Returns whether it was used.
    ///
    /// # Errors
    /// On database failure.
    pub async fn use_registration_token(&self, token: &str) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE registration_tokens SET completed = completed + 1 WHERE token = $1
             AND (uses_allowed IS NULL OR completed < uses_allowed) AND (expiry_time IS NULL OR expiry_time > $2)",
        )
        .bind(token)
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Every registration token: `(token, uses_allowed, completed, expiry_time)`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn registration_tokens(&self) -> Result<Vec<(String, Option<i64>, i64, Option<i64>)>> {
        let rows =
            sqlx::query("SELECT token, uses_allowed, completed, expiry_time FROM registration_tokens ORDER BY token")
                .fetch_all(self.db.pool())
                .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?))).collect()
    }

    /// Deletes a registration token. Returns whether it existed.
    ///
    /// # Errors
    /// On database failure.
    pub async fn delete_registration_token(&self, token: &str) -> Result<bool> {
        let res =
            sqlx::query("DELETE FROM registration_tokens WHERE token = $1").bind(token).execute(self.db.pool()).await?;
        Ok(res.rows_affected() > 0)
    }
}
