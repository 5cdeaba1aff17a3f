//! Device keys, one-time and fallback keys, cross-signing keys, the to-device inbox and the
//! device-list change log.

use std::collections::BTreeMap;

use ruma::UserId;
use sqlx::Row;

use crate::{Db, Result};

/// A to-device message waiting for its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToDeviceMessage {
    /// Position on the `to_device` stream.
    pub position: i64,
    /// Recipient user.
    pub user_id: String,
    /// Recipient device.
    pub device_id: String,
    /// Sender.
    pub sender: String,
    /// Event type.
    pub event_type: String,
    /// Content, JSON.
    pub content: String,
}

/// One device's key stock, as [`E2eeStore::key_counts_of_users`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKeyCounts {
    /// Unclaimed one-time keys per algorithm (`signed_curve25519` always present).
    pub one_time_keys: BTreeMap<String, i64>,
    /// Algorithms of the fallback keys not used yet.
    pub unused_fallback: Vec<String>,
}

/// End-to-end encryption keys and the streams that go with them.
#[derive(Debug, Clone)]
pub struct E2eeStore {
    db: Db,
}

impl E2eeStore {
    /// A store on `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Stores a device's identity keys. Returns whether they changed.
    ///
    /// # Errors
    /// On database failure.
    pub async fn set_device_keys(&self, user_id: &UserId, device_id: &str, keys_json: &str) -> Result<bool> {
        let current: Option<String> =
            sqlx::query_scalar("SELECT keys_json FROM device_keys WHERE user_id = $1 AND device_id = $2")
                .bind(user_id.as_str())
                .bind(device_id)
                .fetch_optional(self.db.pool())
                .await?;
        if current.as_deref() == Some(keys_json) {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO device_keys (user_id, device_id, keys_json) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, device_id) DO UPDATE SET keys_json = excluded.keys_json",
        )
        .bind(user_id.as_str())
        .bind(device_id)
        .bind(keys_json)
        .execute(self.db.pool())
        .await?;
        Ok(true)
    }

    /// The identity keys of a user's devices: `(device_id, keys_json)`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn device_keys(&self, user_id: &UserId) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT device_id, keys_json FROM device_keys WHERE user_id = $1 ORDER BY device_id")
            .bind(user_id.as_str())
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Adds one-time keys (`key_id` is `algorithm:id`); keys already present are kept as they are.
    ///
    /// # Errors
    /// On database failure.
    pub async fn add_one_time_keys(&self, user_id: &UserId, device_id: &str, keys: &[(String, String)]) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        for (key_id, json) in keys {
            let algorithm = key_id.split(':').next().unwrap_or_default();
            sqlx::query(
                "INSERT INTO one_time_keys (user_id, device_id, key_id, algorithm, key_json) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (user_id, device_id, key_id) DO NOTHING",
            )
            .bind(user_id.as_str())
            .bind(device_id)
            .bind(key_id)
            .bind(algorithm)
            .bind(json)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Unclaimed one-time keys per algorithm.
    ///
    /// # Errors
    /// On database failure.
    pub async fn one_time_key_counts(&self, user_id: &UserId, device_id: &str) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT algorithm, COUNT(*) FROM one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm",
        )
        .bind(user_id.as_str())
        .bind(device_id)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Claims (removes and returns) one one-time key of `algorithm`, else the fallback key, which is
    /// marked used but kept. Returns `(key_id, key_json)`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn claim_key(
        &self,
        user_id: &UserId,
        device_id: &str,
        algorithm: &str,
    ) -> Result<Option<(String, String)>> {
        // Select then delete by primary key: two claimers racing for one key both see it, only one
        // deletes it, and the other tries the next key.
        for _ in 0..8 {
            let row = sqlx::query(
                "SELECT key_id, key_json FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
                 ORDER BY key_id LIMIT 1",
            )
            .bind(user_id.as_str())
            .bind(device_id)
            .bind(algorithm)
            .fetch_optional(self.db.pool())
            .await?;
            let Some(row) = row else { break };
            let key_id: String = row.try_get(0)?;
            let json: String = row.try_get(1)?;
            let deleted =
                sqlx::query("DELETE FROM one_time_keys WHERE user_id = $1 AND device_id = $2 AND key_id = $3")
                    .bind(user_id.as_str())
                    .bind(device_id)
                    .bind(&key_id)
                    .execute(self.db.pool())
                    .await?;
            if deleted.rows_affected() == 1 {
                return Ok(Some((key_id, json)));
            }
        }
        let fallback = sqlx::query(
            "SELECT key_id, key_json FROM fallback_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3",
        )
        .bind(user_id.as_str())
        .bind(device_id)
        .bind(algorithm)
        .fetch_optional(self.db.pool())
        .await?;
        let Some(row) = fallback else { return Ok(None) };
        sqlx::query("UPDATE fallback_keys SET used = 1 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3")
            .bind(user_id.as_str())
            .bind(device_id)
            .bind(algorithm)
            .execute(self.db.pool())
            .await?;
        Ok(Some((row.try_get(0)?, row.try_get(1)?)))
    }

    /// Sets a device's fallback key for an algorithm (replacing the previous one, unused again).
    ///
    /// # Errors
    /// On database failure.
    pub async fn set_fallback_key(&self, user_id: &UserId, device_id: &str, key_id: &str, json: &str) -> Result<()> {
        let algorithm = key_id.split(':').next().unwrap_or_default();
        sqlx::query(
            "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, key_json, used) VALUES ($1, $2, $3, $4, $5, 0)
             ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET
               key_id = excluded.key_id, key_json = excluded.key_json, used = 0",
        )
        .bind(user_id.as_str())
        .bind(device_id)
        .bind(algorithm)
        .bind(key_id)
        .bind(json)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// A device's one-time key counts per algorithm and its unused fallback key algorithms, in one
    /// round trip (every sync response carries both).
    ///
    /// # Errors
    /// On database failure.
    pub async fn key_counts(&self, user_id: &UserId, device_id: &str) -> Result<(Vec<(String, i64)>, Vec<String>)> {
        let rows = sqlx::query(
            "SELECT 'otk', algorithm, COUNT(*) FROM one_time_keys WHERE user_id = $1 AND device_id = $2
             GROUP BY algorithm
             UNION ALL
             SELECT 'fallback', algorithm, 0 FROM fallback_keys WHERE user_id = $1 AND device_id = $2 AND used = 0",
        )
        .bind(user_id.as_str())
        .bind(device_id)
        .fetch_all(self.db.pool())
        .await?;
        let (mut counts, mut fallback) = (Vec::new(), Vec::new());
        for r in &rows {
            let kind: String = r.try_get(0)?;
            let algorithm: String = r.try_get(1)?;
            if kind == "otk" {
                counts.push((algorithm, r.try_get::<i64, _>(2)?));
            } else {
                fallback.push(algorithm);
            }
        }
        counts.sort();
        fallback.sort();
        Ok((counts, fallback))
    }

    /// One-time key counts and unused fallback key algorithms of every device with identity
    /// keys of each of `users`, keyed by user then device: what an application service needs
    /// to keep its users' devices stocked (MSC3202). A device with no one-time keys left
    /// reports `signed_curve25519: 0`, so the service knows to upload more.
    ///
    /// # Errors
    /// On database failure.
    pub async fn key_counts_of_users(
        &self,
        users: &[String],
    ) -> Result<BTreeMap<String, BTreeMap<String, DeviceKeyCounts>>> {
        let mut out: BTreeMap<String, BTreeMap<String, DeviceKeyCounts>> = BTreeMap::new();
        // A few hundred users per statement keeps within every backend's parameter limit.
        for chunk in users.chunks(200) {
            let params = (1..=chunk.len()).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT 'device', user_id, device_id, '', 0 FROM device_keys WHERE user_id IN ({params})
                 UNION ALL
                 SELECT 'otk', user_id, device_id, algorithm, COUNT(*) FROM one_time_keys WHERE user_id IN ({params})
                 GROUP BY user_id, device_id, algorithm
                 UNION ALL
                 SELECT 'fallback', user_id, device_id, algorithm, 0 FROM fallback_keys
                 WHERE user_id IN ({params}) AND used = 0"
            );
            let mut query = sqlx::query(&sql);
            for u in chunk {
                query = query.bind(u);
            }
            for r in &query.fetch_all(self.db.pool()).await? {
                let kind: String = r.try_get(0)?;
                let user_id: String = r.try_get(1)?;
                let device_id: String = r.try_get(2)?;
                let algorithm: String = r.try_get(3)?;
                let entry = out.entry(user_id).or_default().entry(device_id).or_insert_with(|| DeviceKeyCounts {
                    one_time_keys: BTreeMap::from([("signed_curve25519".to_owned(), 0)]),
                    unused_fallback: Vec::new(),
                });
                match kind.as_str() {
                    "otk" => {
                        entry.one_time_keys.insert(algorithm, r.try_get(4)?);
                    }
                    "fallback" => entry.unused_fallback.push(algorithm),
                    _ => {}
                }
            }
        }
        for devices in out.values_mut() {
            devices.values_mut().for_each(|d| d.unused_fallback.sort());
        }
        Ok(out)
    }

    /// Removes everything a deleted device had: keys and its to-device inbox.
    ///
    /// # Errors
    /// On database failure.
    pub async fn delete_device(&self, user_id: &UserId, device_id: &str) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        for table in ["device_keys", "one_time_keys", "fallback_keys", "to_device_log", "dehydrated_devices"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE user_id = $1 AND device_id = $2"))
                .bind(user_id.as_str())
                .bind(device_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Stores a cross-signing key (`master`, `self_signing` or `user_signing`).
    ///
    /// # Errors
    /// On database failure.
    pub async fn set_cross_signing_key(&self, user_id: &UserId, key_type: &str, json: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO cross_signing_keys (user_id, key_type, key_json) VALUES ($1, $2, $3)
             ON CONFLICT (user_id, key_type) DO UPDATE SET key_json = excluded.key_json",
        )
        .bind(user_id.as_str())
        .bind(key_type)
        .bind(json)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// A user's cross-signing keys: `(key_type, key_json)`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn cross_signing_keys(&self, user_id: &UserId) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT key_type, key_json FROM cross_signing_keys WHERE user_id = $1")
            .bind(user_id.as_str())
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Highest position of the `to_device` stream.
    ///
    /// # Errors
    /// On database failure.
    pub async fn max_to_device_position(&self) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COALESCE(MAX(position), 0) FROM stream_positions WHERE stream_name = 'to_device'",
        )
        .fetch_one(self.db.pool())
        .await?)
    }

    /// Queues to-device messages, positions allocated by the single writer.
    ///
    /// # Errors
    /// On database failure.
    pub async fn queue_to_device(&self, messages: &[ToDeviceMessage]) -> Result<()> {
        let mut tx = self.db.begin_write().await?;
        for m in messages {
            sqlx::query(
                "INSERT INTO to_device_log (stream_id, user_id, device_id, sender, event_type, content)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(m.position)
            .bind(&m.user_id)
            .bind(&m.device_id)
            .bind(&m.sender)
            .bind(&m.event_type)
            .bind(&m.content)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(top) = messages.iter().map(|m| m.position).max() {
            sqlx::query(
                "INSERT INTO stream_positions (stream_name, position) VALUES ('to_device', $1)
                 ON CONFLICT (stream_name) DO UPDATE SET position = excluded.position",
            )
            .bind(top)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A device's messages at or below `upto`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn to_device_for(
        &self,
        user_id: &UserId,
        device_id: &str,
        upto: i64,
        limit: i64,
    ) -> Result<Vec<ToDeviceMessage>> {
        let rows = sqlx::query(
            "SELECT stream_id, user_id, device_id, sender, event_type, content FROM to_device_log
             WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3 ORDER BY stream_id LIMIT $4",
        )
        .bind(user_id.as_str())
        .bind(device_id)
        .bind(upto)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(to_device_row).collect()
    }

    /// Messages after `after` for any device: the database side of the `to_device` stream.
    ///
    /// # Errors
    /// On database failure.
    pub async fn to_device_after(&self, after: i64, limit: i64) -> Result<Vec<ToDeviceMessage>> {
        let rows = sqlx::query(
            "SELECT stream_id, user_id, device_id, sender, event_type, content FROM to_device_log
             WHERE stream_id > $1 ORDER BY stream_id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(to_device_row).collect()
    }

    /// Deletes a device's messages at or below `upto` (its sync acknowledged them).
    ///
    /// # Errors
    /// On database failure.
    pub async fn ack_to_device(&self, user_id: &UserId, device_id: &str, upto: i64) -> Result<u64> {
        let res = sqlx::query("DELETE FROM to_device_log WHERE user_id = $1 AND device_id = $2 AND stream_id <= $3")
            .bind(user_id.as_str())
            .bind(device_id)
            .bind(upto)
            .execute(self.db.pool())
            .await?;
        Ok(res.rows_affected())
    }

    /// Records a sendToDevice transaction. Returns false when it was seen before.
    ///
    /// # Errors
    /// On database failure.
    pub async fn record_to_device_txn(&self, user_id: &UserId, device_id: &str, txn_id: &str) -> Result<bool> {
        let res = sqlx::query(
            "INSERT INTO to_device_txns (user_id, device_id, txn_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(user_id.as_str())
        .bind(device_id)
        .bind(txn_id)
        .execute(self.db.pool())
        .await?;
        Ok(res.rows_affected() > 0)
    }

    /// The user's dehydrated device, if any: `(device_id, device_data_json)`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn dehydrated_device(&self, user_id: &UserId) -> Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT device_id, device_data FROM dehydrated_devices WHERE user_id = $1")
            .bind(user_id.as_str())
            .fetch_optional(self.db.pool())
            .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    /// Records `device_id` as the user's dehydrated device, replacing any earlier one. Returns the
    /// device it replaced, which the caller deletes.
    ///
    /// # Errors
    /// On database failure.
    pub async fn set_dehydrated_device(
        &self,
        user_id: &UserId,
        device_id: &str,
        device_data: &str,
    ) -> Result<Option<String>> {
        let mut tx = self.db.begin_write().await?;
        let previous: Option<String> =
            sqlx::query_scalar("SELECT device_id FROM dehydrated_devices WHERE user_id = $1")
                .bind(user_id.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO dehydrated_devices (user_id, device_id, device_data) VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE SET device_id = excluded.device_id, device_data = excluded.device_data",
        )
        .bind(user_id.as_str())
        .bind(device_id)
        .bind(device_data)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(previous.filter(|p| p != device_id))
    }

    /// Forgets the user's dehydrated device. Returns its ID, if there was one.
    ///
    /// # Errors
    /// On database failure.
    pub async fn remove_dehydrated_device(&self, user_id: &UserId) -> Result<Option<String>> {
        let Some((device_id, _)) = self.dehydrated_device(user_id).await? else { return Ok(None) };
        sqlx::query("DELETE FROM dehydrated_devices WHERE user_id = $1 AND device_id = $2")
            .bind(user_id.as_str())
            .bind(&device_id)
            .execute(self.db.pool())
            .await?;
        Ok(Some(device_id))
    }

    /// A device's messages after `after`, oldest first, at most `limit`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn to_device_after_for(
        &self,
        user_id: &UserId,
        device_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<ToDeviceMessage>> {
        let rows = sqlx::query(
            "SELECT stream_id, user_id, device_id, sender, event_type, content FROM to_device_log
             WHERE user_id = $1 AND device_id = $2 AND stream_id > $3 ORDER BY stream_id LIMIT $4",
        )
        .bind(user_id.as_str())
        .bind(device_id)
        .bind(after)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(to_device_row).collect()
    }

    /// Records `signer`'s signature (with their user-signing key `signing_key_id`) on `target`'s
    /// master key.
    ///
    /// # Errors
    /// On database failure.
    pub async fn put_cross_user_signature(
        &self,
        signer: &UserId,
        signing_key_id: &str,
        target: &UserId,
        signature: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO cross_user_signatures (signer_user_id, signing_key_id, target_user_id, signature)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (signer_user_id, target_user_id, signing_key_id) DO UPDATE SET signature = excluded.signature",
        )
        .bind(signer.as_str())
        .bind(signing_key_id)
        .bind(target.as_str())
        .bind(signature)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// `signer`'s signatures on `target`'s master key: `(signing_key_id, signature)`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn cross_user_signatures(&self, signer: &UserId, target: &UserId) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT signing_key_id, signature FROM cross_user_signatures
             WHERE signer_user_id = $1 AND target_user_id = $2 ORDER BY signing_key_id",
        )
        .bind(signer.as_str())
        .bind(target.as_str())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Drops signatures that no longer hold: those on `user`'s master key (`as_target`) or those
    /// made with `user`'s user-signing key (otherwise).
    ///
    /// # Errors
    /// On database failure.
    pub async fn drop_cross_user_signatures(&self, user: &UserId, as_target: bool) -> Result<()> {
        let column = if as_target { "target_user_id" } else { "signer_user_id" };
        sqlx::query(&format!("DELETE FROM cross_user_signatures WHERE {column} = $1"))
            .bind(user.as_str())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Highest position of the `device_lists` stream.
    ///
    /// # Errors
    /// On database failure.
    pub async fn max_device_list_position(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT COALESCE(MAX(stream_id), 0) FROM device_list_log")
            .fetch_one(self.db.pool())
            .await?)
    }

    /// Records that a user's devices or keys changed, at `position`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn log_device_change(&self, position: i64, user_id: &UserId) -> Result<()> {
        sqlx::query("INSERT INTO device_list_log (stream_id, user_id) VALUES ($1, $2)")
            .bind(position)
            .bind(user_id.as_str())
            .execute(self.db.pool())
            .await?;
        Ok(())
    }

    /// Device-list changes after `after`, oldest first: `(position, user_id)`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn device_changes_after(&self, after: i64, limit: i64) -> Result<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT stream_id, user_id FROM device_list_log WHERE stream_id > $1 ORDER BY stream_id LIMIT $2",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Users whose devices changed in `(after, upto]`.
    ///
    /// # Errors
    /// On database failure.
    pub async fn users_with_device_changes(&self, after: i64, upto: i64) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT user_id FROM device_list_log WHERE stream_id > $1 AND stream_id <= $2 ORDER BY user_id",
        )
        .bind(after)
        .bind(upto)
        .fetch_all(self.db.pool())
        .await?)
    }
}

fn to_device_row(r: &sqlx::any::AnyRow) -> Result<ToDeviceMessage> {
    Ok(ToDeviceMessage {
        position: r.try_get(0)?,
        user_id: r.try_get(1)?,
        device_id: r.try_get(2)?,
        sender: r.try_get(3)?,
        event_type: r.try_get(4)?,
        content: r.try_get(5)?,
    })
}
