//! Pushers (`/pushers/set`), the `pushers` stream that announces their changes, and the reads the
//! pusher role makes: which users an event range notified, a user's pending notifications after a
//! pusher's position, and the badge count.
//!
//! `main` is the only writer of pushers and of the log; the pusher role writes only each pusher's
//! delivery bookkeeping (position, failure time, last badge).

use ruma::{OwnedUserId, UserId};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::events::{EVENT_COLUMNS, decode_event};
use crate::{Db, PersistedEvent, Result};

/// What one user's push rules said about one event, stored with the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushAction {
    /// The local member notified.
    pub user_id: OwnedUserId,
    /// Whether the rules set the `highlight` tweak.
    pub highlight: bool,
    /// The thread root the event belongs to, `""` for the main timeline.
    pub thread_id: String,
    /// The rule's actions as a JSON array (`["notify", {"set_tweak": "sound", ...}]`).
    pub actions: String,
}

/// A stored pusher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pusher {
    /// Whose it is.
    pub user_id: String,
    /// `app_id`; with `pushkey` and the user, its identity.
    pub app_id: String,
    /// `pushkey`.
    pub pushkey: String,
    /// The device whose access token set it.
    pub device_id: String,
    /// `http` or `email`.
    pub kind: String,
    /// `app_display_name`.
    pub app_display_name: String,
    /// `device_display_name`.
    pub device_display_name: String,
    /// `profile_tag`.
    pub profile_tag: Option<String>,
    /// `lang`.
    pub lang: String,
    /// `data`, a JSON object.
    pub data: String,
    /// When the pushkey was last set, milliseconds since the epoch.
    pub pushkey_ts: i64,
    /// Every push action at or below this stream position has been handled.
    pub last_stream_ordering: i64,
    /// The badge count last sent to the gateway.
    pub last_badge: Option<i64>,
    /// Since when the gateway has been failing, if it is.
    pub failing_since: Option<i64>,
}

/// A notification a pusher has yet to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingPush {
    /// The event that notified.
    pub event: PersistedEvent,
    /// Whether it highlights.
    pub highlight: bool,
    /// The rule's actions, a JSON array.
    pub actions: String,
    /// Whether a read receipt (unthreaded, or of its thread) has passed it since.
    pub read: bool,
}

const PUSHER_COLUMNS: &str = "user_id, app_id, pushkey, device_id, kind, app_display_name, device_display_name, \
     profile_tag, lang, data, pushkey_ts, last_stream_ordering, last_badge, failing_since";

fn decode(r: &AnyRow) -> Result<Pusher> {
    Ok(Pusher {
        user_id: r.try_get(0)?,
        app_id: r.try_get(1)?,
        pushkey: r.try_get(2)?,
        device_id: r.try_get(3)?,
        kind: r.try_get(4)?,
        app_display_name: r.try_get(5)?,
        device_display_name: r.try_get(6)?,
        profile_tag: r.try_get(7)?,
        lang: r.try_get(8)?,
        data: r.try_get(9)?,
        pushkey_ts: r.try_get(10)?,
        last_stream_ordering: r.try_get(11)?,
        last_badge: r.try_get(12)?,
        failing_since: r.try_get(13)?,
    })
}

/// Pusher storage.
#[derive(Debug, Clone)]
pub struct PusherStore {
    db: Db,
}

type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Whether the push action `p` has been read: an unthreaded receipt, or one for its thread
/// (`main` for the main timeline), at or after it.
const READ: &str = "EXISTS (SELECT 1 FROM receipts r JOIN events e2 ON e2.event_id = r.event_id
     WHERE r.room_id = p.room_id AND r.user_id = p.user_id AND r.receipt_type IN ('m.read', 'm.read.private')
     AND (r.thread_id = '' OR r.thread_id = CASE WHEN p.thread_id = '' THEN 'main' ELSE p.thread_id END)
     AND e2.stream_ordering >= p.stream_ordering)";

/// Appends a `pushers` stream row for `user` at the next position after `*last`.
async fn log(tx: &mut Tx, last: &mut i64, user: &str, logged: &mut Vec<(i64, String)>) -> Result<()> {
    *last += 1;
    sqlx::query("INSERT INTO pusher_log (stream_id, user_id) VALUES ($1, $2)")
        .bind(*last)
        .bind(user)
        .execute(&mut **tx)
        .await?;
    logged.push((*last, user.to_owned()));
    Ok(())
}

impl PusherStore {
    /// A store on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Highest position of the `pushers` stream.
    ///
    /// # Errors
    /// On database failure.
    pub async fn max_position(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(stream_id), 0) FROM pusher_log").fetch_one(self.db.pool()).await?)
    }

    /// `pushers` stream rows after `after`: `(position, user_id)`, at most `limit`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn log_after(&self, after: i64, limit: i64) -> Result<Vec<(i64, String)>> {
        let rows =
            sqlx::query("SELECT stream_id, user_id FROM pusher_log WHERE stream_id > $1 ORDER BY stream_id LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(self.db.pool())
                .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Creates or updates a pusher (keyed by user, `app_id` and `pushkey`; an update keeps its
    /// position). Unless `append`, other users' pushers with the same `app_id` and `pushkey` go,
    /// as the spec says. Positions for the `pushers` stream are allocated after `*last`; returns
    /// the rows logged, to publish.
    ///
    /// # Errors
    /// On database failure.
    pub async fn set(&self, p: &Pusher, append: bool, last: &mut i64) -> Result<Vec<(i64, String)>> {
        let mut tx = self.db.begin_write().await?;
        let mut logged = Vec::new();
        if !append {
            let others: Vec<String> = sqlx::query_scalar(
                "SELECT DISTINCT user_id FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3",
            )
            .bind(&p.app_id)
            .bind(&p.pushkey)
            .bind(&p.user_id)
            .fetch_all(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3")
                .bind(&p.app_id)
                .bind(&p.pushkey)
                .bind(&p.user_id)
                .execute(&mut *tx)
                .await?;
            for other in &others {
                log(&mut tx, last, other, &mut logged).await?;
            }
        }
        sqlx::query(&format!(
            "INSERT INTO pushers ({PUSHER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL, NULL)
             ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET device_id = excluded.device_id,
               kind = excluded.kind, app_display_name = excluded.app_display_name,
               device_display_name = excluded.device_display_name, profile_tag = excluded.profile_tag,
               lang = excluded.lang, data = excluded.data, pushkey_ts = excluded.pushkey_ts"
        ))
        .bind(&p.user_id)
        .bind(&p.app_id)
        .bind(&p.pushkey)
        .bind(&p.device_id)
        .bind(&p.kind)
        .bind(&p.app_display_name)
        .bind(&p.device_display_name)
        .bind(p.profile_tag.as_deref())
        .bind(&p.lang)
        .bind(&p.data)
        .bind(p.pushkey_ts)
        .bind(p.last_stream_ordering)
        .execute(&mut *tx)
        .await?;
        log(&mut tx, last, &p.user_id, &mut logged).await?;
        tx.commit().await?;
        Ok(logged)
    }

    /// Deletes the pushers matching `filter` (an SQL condition on `$1`… bound to `binds`) and logs the
    /// change for each user concerned.
    async fn remove_where(&self, filter: &str, binds: &[&str], last: &mut i64) -> Result<Vec<(i64, String)>> {
        let mut tx = self.db.begin_write().await?;
        let select = format!("SELECT DISTINCT user_id FROM pushers WHERE {filter}");
        let users: Vec<String> =
            binds.iter().fold(sqlx::query_scalar(&select), |q, b| q.bind(*b)).fetch_all(&mut *tx).await?;
        let mut logged = Vec::new();
        if users.is_empty() {
            return Ok(logged);
        }
        let delete = format!("DELETE FROM pushers WHERE {filter}");
        binds.iter().fold(sqlx::query(&delete), |q, b| q.bind(*b)).execute(&mut *tx).await?;
        for u in &users {
            log(&mut tx, last, u, &mut logged).await?;
        }
        tx.commit().await?;
        Ok(logged)
    }

    /// Deletes one pusher (`kind: null`, or a gateway that rejected its pushkey).
    ///
    /// # Errors
    /// On database failure.
    pub async fn remove(
        &self,
        user: &UserId,
        app_id: &str,
        pushkey: &str,
        last: &mut i64,
    ) -> Result<Vec<(i64, String)>> {
        self.remove_where("user_id = $1 AND app_id = $2 AND pushkey = $3", &[user.as_str(), app_id, pushkey], last)
            .await
    }

    /// Deletes the pushers a device set (the device was deleted or logged out).
    ///
    /// # Errors
    /// On database failure.
    pub async fn remove_for_device(
        &self,
        user: &UserId,
        device_id: &str,
        last: &mut i64,
    ) -> Result<Vec<(i64, String)>> {
        self.remove_where("user_id = $1 AND device_id = $2", &[user.as_str(), device_id], last).await
    }

    /// Deletes every pusher of a user (deactivation, logout of all devices).
    ///
    /// # Errors
    /// On database failure.
    pub async fn remove_for_user(&self, user: &UserId, last: &mut i64) -> Result<Vec<(i64, String)>> {
        self.remove_where("user_id = $1", &[user.as_str()], last).await
    }

    /// A user's pushers, by `app_id` and `pushkey`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn for_user(&self, user: &str) -> Result<Vec<Pusher>> {
        let rows =
            sqlx::query(&format!("SELECT {PUSHER_COLUMNS} FROM pushers WHERE user_id = $1 ORDER BY app_id, pushkey"))
                .bind(user)
                .fetch_all(self.db.pool())
                .await?;
        rows.iter().map(decode).collect()
    }

    /// Every user with at least one pusher.
    ///
    /// # Errors
    /// On database failure.
    pub async fn users_with_pushers(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar("SELECT DISTINCT user_id FROM pushers ORDER BY user_id")
            .fetch_all(self.db.pool())
            .await?)
    }

    /// Moves a pusher's position forward to `position` (never back).
    ///
    /// # Errors
    /// On database failure.
    pub async fn advance(&self, p: &Pusher, position: i64) -> Result<()> {
        sqlx::query(
            "UPDATE pushers SET last_stream_ordering = $4, failing_since = NULL
             WHERE user_id = $1 AND app_id = $2 AND pushkey = $3 AND last_stream_ordering < $4",
        )
        .bind(&p.user_id)
        .bind(&p.app_id)
        .bind(&p.pushkey)
        .bind(position)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Records since when the pusher's gateway has been failing (`None`: it works again).
    ///
    /// # Errors
    /// On database failure.
    pub async fn set_failing(&self, p: &Pusher, since: Option<i64>) -> Result<()> {
        sqlx::query("UPDATE pushers SET failing_since = $4 WHERE user_id = $1 AND app_id = $2 AND pushkey = $3")
            .bind(&p.user_id)
            .bind(&p.app_id)
            .bind(&p.pushkey)
            .bind(since)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Records the badge count last sent.
    ///
    /// # Errors
    /// On database failure.
    pub async fn set_last_badge(&self, p: &Pusher, badge: i64) -> Result<()> {
        sqlx::query("UPDATE pushers SET last_badge = $4 WHERE user_id = $1 AND app_id = $2 AND pushkey = $3")
            .bind(&p.user_id)
            .bind(&p.app_id)
            .bind(&p.pushkey)
            .bind(badge)
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// The users some event in `(after, upto]` notified.
    ///
    /// # Errors
    /// On database failure.
    pub async fn notified_users(&self, after: i64, upto: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT user_id FROM event_push_actions WHERE stream_ordering > $1 AND stream_ordering <= $2",
        )
        .bind(after)
        .bind(upto)
        .fetch_all(self.db.pool())
        .await?)
    }

    /// The user's notifications after `after`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn pending(&self, user: &str, after: i64, limit: i64) -> Result<Vec<PendingPush>> {
        let cols = EVENT_COLUMNS.split(", ").map(|c| format!("e.{c}")).collect::<Vec<_>>().join(", ");
        let rows = sqlx::query(&format!(
            "SELECT {cols}, p.highlight, p.actions, CAST(CASE WHEN {READ} THEN 1 ELSE 0 END AS BIGINT)
             FROM event_push_actions p
             JOIN events e ON e.stream_ordering = p.stream_ordering
             WHERE p.user_id = $1 AND p.stream_ordering > $2 ORDER BY p.stream_ordering LIMIT $3"
        ))
        .bind(user)
        .bind(after)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let highlight: i64 = r.try_get(11)?;
                let read: i64 = r.try_get(13)?;
                Ok(PendingPush {
                    event: decode_event(r)?,
                    highlight: highlight != 0,
                    actions: r.try_get(12)?,
                    read: read != 0,
                })
            })
            .collect()
    }

    /// The badge count: how many of the user's joined rooms hold a notification no read receipt
    /// (unthreaded, or of the notification's own thread) has passed; with `by_room` false, how
    /// many such notifications there are.
    ///
    /// # Errors
    /// On database failure.
    pub async fn badge_count(&self, user: &str, by_room: bool) -> Result<i64> {
        let count = if by_room { "COUNT(DISTINCT p.room_id)" } else { "COUNT(*)" };
        Ok(sqlx::query_scalar(&format!(
            "SELECT {count} FROM event_push_actions p
             WHERE p.user_id = $1
             AND EXISTS (SELECT 1 FROM current_state c WHERE c.room_id = p.room_id
                         AND c.event_type = 'm.room.member' AND c.state_key = p.user_id AND c.membership = 'join')
             AND NOT {READ}"
        ))
        .bind(user)
        .fetch_one(self.db.pool())
        .await?)
    }
}
