//! Email addresses on accounts (third-party IDs), the validation sessions that prove them, and
//! the email pushers' per-room throttle.

use ruma::UserId;
use sqlx::Row;

use crate::{Db, Result, now_ms};

/// A validated address on an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Threepid {
    /// `email` (the only medium served).
    pub medium: String,
    /// The address, lower-cased.
    pub address: String,
    /// When it was validated, milliseconds since the epoch.
    pub validated_ts: i64,
    /// When it was added to the account.
    pub added_ts: i64,
}

/// A `requestToken` session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThreepidSession {
    /// The session ID given to the client.
    pub sid: String,
    /// The client's secret.
    pub client_secret: String,
    /// `email`.
    pub medium: String,
    /// The address being validated.
    pub address: String,
    /// The latest `send_attempt`.
    pub send_attempt: i64,
    /// When the session started.
    pub created_ts: i64,
    /// When the mailed link was followed.
    pub validated_ts: Option<i64>,
}

/// Third-party ID storage.
#[derive(Debug, Clone)]
pub struct ThreepidStore {
    db: Db,
}

fn session(r: &sqlx::any::AnyRow) -> Result<ThreepidSession> {
    Ok(ThreepidSession {
        sid: r.try_get(0)?,
        client_secret: r.try_get(1)?,
        medium: r.try_get(2)?,
        address: r.try_get(3)?,
        send_attempt: r.try_get(4)?,
        created_ts: r.try_get(5)?,
        validated_ts: r.try_get(6)?,
    })
}

const SESSION_COLUMNS: &str = "sid, client_secret, medium, address, send_attempt, created_ts, validated_ts";

impl ThreepidStore {
    /// A store on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The account an address belongs to.
    ///
    /// # Errors
    /// On database failure.
    pub async fn owner(&self, medium: &str, address: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar("SELECT user_id FROM user_threepids WHERE medium = $1 AND address = $2")
            .bind(medium)
            .bind(address)
            .fetch_optional(self.db.pool())
            .await?)
    }

    /// A user's addresses, by address.
    ///
    /// # Errors
    /// On database failure.
    pub async fn for_user(&self, user: &UserId) -> Result<Vec<Threepid>> {
        let rows = sqlx::query(
            "SELECT medium, address, validated_ts, added_ts FROM user_threepids WHERE user_id = $1 ORDER BY address",
        )
        .bind(user.as_str())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Threepid {
                    medium: r.try_get(0)?,
                    address: r.try_get(1)?,
                    validated_ts: r.try_get(2)?,
                    added_ts: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Adds a validated address to an account; `false` when it belongs to someone already.
    ///
    /// # Errors
    /// On database failure.
    pub async fn add(&self, user: &UserId, medium: &str, address: &str, validated_ts: i64) -> Result<bool> {
        let res = sqlx::query(
            "INSERT INTO user_threepids (medium, address, user_id, validated_ts, added_ts) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (medium, address) DO NOTHING",
        )
        .bind(medium)
        .bind(address)
        .bind(user.as_str())
        .bind(validated_ts)
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        Ok(res.rows_affected() == 1 || self.owner(medium, address).await?.as_deref() == Some(user.as_str()))
    }

    /// Removes an address from an account; returns whether it was there.
    ///
    /// # Errors
    /// On database failure.
    pub async fn remove(&self, user: &UserId, medium: &str, address: &str) -> Result<bool> {
        let res = sqlx::query("DELETE FROM user_threepids WHERE user_id = $1 AND medium = $2 AND address = $3")
            .bind(user.as_str())
            .bind(medium)
            .bind(address)
            .execute(self.db.pool())
            .await?;
        Ok(res.rows_affected() > 0)
    }

    /// Removes every address of an account (deactivation).
    ///
    /// # Errors
    /// On database failure.
    pub async fn remove_all(&self, user: &UserId) -> Result<()> {
        sqlx::query("DELETE FROM user_threepids WHERE user_id = $1")
            .bind(user.as_str())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// The session for `(client_secret, address)`, if one was started.
    ///
    /// # Errors
    /// On database failure.
    pub async fn session_for(&self, client_secret: &str, address: &str) -> Result<Option<ThreepidSession>> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM threepid_sessions WHERE client_secret = $1 AND address = $2"
        ))
        .bind(client_secret)
        .bind(address)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(session).transpose()
    }

    /// The session `sid` with its secret.
    ///
    /// # Errors
    /// On database failure.
    pub async fn session(&self, sid: &str, client_secret: &str) -> Result<Option<ThreepidSession>> {
        let row = sqlx::query(&format!(
            "SELECT {SESSION_COLUMNS} FROM threepid_sessions WHERE sid = $1 AND client_secret = $2"
        ))
        .bind(sid)
        .bind(client_secret)
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(session).transpose()
    }

    /// Starts a session, or records a new send attempt (and token) on an existing one.
    ///
    /// # Errors
    /// On database failure.
    pub async fn put_session(&self, s: &ThreepidSession, token_hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO threepid_sessions (sid, client_secret, medium, address, token_hash, send_attempt, created_ts, validated_ts)
             VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)
             ON CONFLICT (sid) DO UPDATE SET token_hash = excluded.token_hash, send_attempt = excluded.send_attempt",
        )
        .bind(&s.sid)
        .bind(&s.client_secret)
        .bind(&s.medium)
        .bind(&s.address)
        .bind(token_hash)
        .bind(s.send_attempt)
        .bind(s.created_ts)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Marks the session validated if the token is its latest one and it started after
    /// `not_before`; returns whether it is now validated.
    ///
    /// # Errors
    /// On database failure.
    pub async fn validate(&self, sid: &str, client_secret: &str, token_hash: &str, not_before: i64) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE threepid_sessions SET validated_ts = $5
             WHERE sid = $1 AND client_secret = $2 AND token_hash = $3 AND created_ts >= $4",
        )
        .bind(sid)
        .bind(client_secret)
        .bind(token_hash)
        .bind(not_before)
        .bind(now_ms())
        .execute(self.db.pool())
        .await?;
        Ok(res.rows_affected() > 0)
    }

    /// When an email pusher last mailed about each room, and the last notification it covered:
    /// `(room_id, last_sent_ts, last_stream_ordering)`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn email_throttle(&self, user: &str, pushkey: &str) -> Result<Vec<(String, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT room_id, last_sent_ts, last_stream_ordering FROM email_throttle WHERE user_id = $1 AND pushkey = $2",
        )
        .bind(user)
        .bind(pushkey)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?))).collect()
    }

    /// Records that an email pusher mailed about a room at `ts`, covering notifications up to
    /// `upto`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn set_email_throttle(&self, user: &str, pushkey: &str, room: &str, ts: i64, upto: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO email_throttle (user_id, pushkey, room_id, last_sent_ts, last_stream_ordering)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id, pushkey, room_id) DO UPDATE SET last_sent_ts = excluded.last_sent_ts,
               last_stream_ordering = excluded.last_stream_ordering",
        )
        .bind(user)
        .bind(pushkey)
        .bind(room)
        .bind(ts)
        .bind(upto)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }
}
