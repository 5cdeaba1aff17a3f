//! [`RedisBus`]: the bus between processes, one Redis Stream per replication stream.
//!
//! Layout: key `{prefix}:stream:{name}`, entry id `{position}-0`, one field `r` holding the
//! payload. Entries are trimmed with `MAXLEN ~ max_len`, so Redis holds only the recent tail;
//! a consumer further behind than that sees a gap and its [`Follower`](crate::Follower) reads
//! the rest from the database. Redis therefore never holds anything the database cannot
//! rebuild, and losing it (restart, `FLUSHALL`) costs latency, not rows.
//!
//! Publishing shares one multiplexed, self-reconnecting connection. Each subscription opens a
//! connection of its own, because `XREAD BLOCK` holds the connection for the whole wait and
//! would stall every publish queued behind it.

use std::{collections::VecDeque, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, stream::BoxStream};
use redis::{
    AsyncConnectionConfig, Client, RedisError, Value,
    aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection},
    streams::StreamReadReply,
};
use tracing::instrument;

use crate::{Bus, ReplicationError, StreamName, StreamPosition, StreamRow, backoff::Backoff};

/// How long one `XREAD` waits for new entries before asking again.
const BLOCK: Duration = Duration::from_secs(5);
/// How many entries one `XREAD` returns at most.
const READ_COUNT: usize = 512;
/// Timeout for commands other than the blocking read, and for connecting.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff bounds for subscriptions.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// The payload field of every entry.
const PAYLOAD_FIELD: &str = "r";

/// A [`Bus`] over Redis Streams. Cheap to share behind an `Arc`.
#[derive(Clone)]
pub struct RedisBus {
    client: Client,
    publisher: ConnectionManager,
    key_prefix: String,
    max_len: usize,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client's connection info may hold a password; show only what is safe.
        f.debug_struct("RedisBus")
            .field("key_prefix", &self.key_prefix)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// Connects the publishing connection to `url` (`redis://host:port/db`).
    ///
    /// `key_prefix` namespaces every key (several deployments can share one Redis);
    /// `max_len` is roughly how many recent rows each Redis stream keeps.
    ///
    /// # Errors
    /// [`ReplicationError::Redis`] if the URL is invalid or Redis cannot be reached now. Once
    /// connected, the bus reconnects by itself.
    pub async fn connect(url: &str, key_prefix: &str, max_len: usize) -> Result<Self, ReplicationError> {
        let client = Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(Some(COMMAND_TIMEOUT))
            // Publishing sits on main's write path: fail fast and let consumers catch up
            // from the database rather than hold writes while Redis is away.
            .set_number_of_retries(2)
            .set_max_delay(RECONNECT_MAX);
        let publisher = ConnectionManager::new_with_config(client.clone(), config).await?;
        tracing::info!(key_prefix, max_len, "connected to redis replication bus");
        Ok(Self { client, publisher, key_prefix: key_prefix.to_owned(), max_len })
    }

    /// A clone of the shared, self-reconnecting connection, for other short commands (the shard
    /// ring's heartbeats and leases).
    #[must_use]
    pub fn connection(&self) -> ConnectionManager {
        self.publisher.clone()
    }

    /// The prefix of every key this deployment uses.
    #[must_use]
    pub fn key_prefix(&self) -> &str {
        &self.key_prefix
    }

    /// The Redis key holding `stream`: `{prefix}:stream:{name}`.
    #[must_use]
    pub fn stream_key(&self, stream: StreamName) -> String {
        format!("{}:stream:{}", self.key_prefix, stream.as_str())
    }

    /// Deletes the Redis stream if it holds positions beyond `max_position`, returning whether
    /// it did.
    ///
    /// Such a stream is left over from a database that has since been reset or restored; it
    /// would make every publish fail with [`ReplicationError::StaleStream`]. `main` calls this
    /// at startup with the database's [`CatchUpSource::max_position`](crate::CatchUpSource),
    /// before it publishes anything (it is not atomic with concurrent publishes).
    ///
    /// # Errors
    /// [`ReplicationError::Redis`] if Redis fails.
    #[instrument(skip_all, fields(stream = %stream, position = %max_position))]
    pub async fn reset_if_ahead(
        &self,
        stream: StreamName,
        max_position: StreamPosition,
    ) -> Result<bool, ReplicationError> {
        let key = self.stream_key(stream);
        let mut conn = self.publisher.clone();
        let top: Vec<(String, Value)> =
            redis::cmd("XREVRANGE").arg(&key).arg("+").arg("-").arg("COUNT").arg(1).query_async(&mut conn).await?;
        let Some((top_id, _)) = top.first() else {
            return Ok(false);
        };
        // An id this crate did not write also means the stream cannot be trusted.
        let ahead = parse_entry_id(top_id).is_none_or(|top| top > max_position);
        if ahead {
            let () = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
            tracing::warn!(top_id, "deleted redis stream that was ahead of the database");
        }
        Ok(ahead)
    }
}

#[async_trait]
impl Bus for RedisBus {
    #[instrument(level = "debug", skip_all, fields(stream = %row.stream, position = %row.position))]
    async fn publish(&self, row: StreamRow) -> Result<(), ReplicationError> {
        let mut conn = self.publisher.clone();
        let result: Result<Value, RedisError> = redis::cmd("XADD")
            .arg(self.stream_key(row.stream))
            .arg("MAXLEN")
            .arg("~")
            .arg(self.max_len)
            .arg(format!("{}-0", row.position))
            .arg(PAYLOAD_FIELD)
            .arg(row.payload.as_ref())
            .query_async(&mut conn)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_id_not_increasing(&e) => {
                // Must not wedge publishing: the writer ignores this, consumers catch up from
                // the database, and `reset_if_ahead` at startup clears a stale stream.
                tracing::warn!(
                    stream = %row.stream,
                    position = %row.position,
                    "redis stream already holds this position or later; row not published"
                );
                Err(ReplicationError::StaleStream { stream: row.stream, position: row.position })
            }
            Err(e) => {
                tracing::warn!(
                    stream = %row.stream,
                    position = %row.position,
                    error = %e,
                    "publishing to redis failed; consumers will catch up from the database"
                );
                Err(e.into())
            }
        }
    }

    #[instrument(level = "debug", skip_all, fields(stream = %stream, position = %after))]
    async fn subscribe(
        &self,
        stream: StreamName,
        after: StreamPosition,
    ) -> Result<BoxStream<'static, Result<StreamRow, ReplicationError>>, ReplicationError> {
        let mut reader = Reader {
            client: self.client.clone(),
            key: self.stream_key(stream),
            connection_name: connection_name(&self.key_prefix, stream),
            stream,
            cursor: format!("{after}-0"),
            conn: None,
            buffered: VecDeque::new(),
            backoff: Backoff::new(RECONNECT_MIN, RECONNECT_MAX),
        };
        // The first connection must succeed, so a misconfigured bus shows up at once; later
        // failures are retried inside the stream.
        reader.connect().await?;
        let rows = futures::stream::unfold(reader, |mut reader| async move {
            let item = reader.next_item().await;
            Some((item, reader))
        });
        Ok(rows.boxed())
    }
}

/// One subscription: a dedicated connection and a cursor that survives reconnects.
struct Reader {
    client: Client,
    key: String,
    connection_name: String,
    stream: StreamName,
    /// The id of the last entry read (`{after}-0` before the first), where `XREAD` resumes.
    cursor: String,
    conn: Option<MultiplexedConnection>,
    buffered: VecDeque<Result<StreamRow, ReplicationError>>,
    backoff: Backoff,
}

impl Reader {
    async fn connect(&mut self) -> Result<(), ReplicationError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            // Longer than the block time, or every quiet read would time out.
            .set_response_timeout(Some(BLOCK + COMMAND_TIMEOUT));
        let mut conn = self.client.get_multiplexed_async_connection_with_config(&config).await?;
        // A name makes the connection recognisable in `CLIENT LIST`; it is optional.
        if let Err(error) = redis::cmd("CLIENT").arg("SETNAME").arg(&self.connection_name).exec_async(&mut conn).await {
            tracing::debug!(stream = %self.stream, %error, "cannot name redis connection");
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// The next row, reading and reconnecting as long as it takes.
    ///
    /// # Cancel safety
    /// Cancel safe: the cursor advances only as entries are buffered in `self`, so a read
    /// cancelled mid-flight is simply repeated.
    async fn next_item(&mut self) -> Result<StreamRow, ReplicationError> {
        loop {
            if let Some(item) = self.buffered.pop_front() {
                return item;
            }
            // A fresh connection does not reset the backoff, only a read that works: a
            // command that keeps failing on new connections must still back off.
            let Some(conn) = self.conn.as_mut() else {
                if let Err(error) = self.connect().await {
                    self.retry_later(error).await;
                }
                continue;
            };
            match read(conn, &self.key, &self.cursor).await {
                Ok(reply) => {
                    self.backoff.reset();
                    if let Some(reply) = reply {
                        self.buffer(reply);
                    }
                }
                Err(error) => self.retry_later(error).await,
            }
        }
    }

    /// Drops the connection and waits out the backoff before the next attempt.
    async fn retry_later(&mut self, error: ReplicationError) {
        self.conn = None;
        let delay = self.backoff.next_delay();
        tracing::warn!(
            stream = %self.stream,
            cursor = %self.cursor,
            %error,
            ?delay,
            "redis subscription interrupted; reconnecting"
        );
        tokio::time::sleep(delay).await;
    }

    fn buffer(&mut self, reply: StreamReadReply) {
        for entry in reply.keys.into_iter().flat_map(|key| key.ids) {
            self.cursor.clone_from(&entry.id);
            let mut map = entry.map;
            let row = match (parse_entry_id(&entry.id), map.remove(PAYLOAD_FIELD)) {
                (Some(position), Some(Value::BulkString(payload))) => {
                    Ok(StreamRow { stream: self.stream, position, payload: Bytes::from(payload) })
                }
                (None, _) => Err(ReplicationError::MalformedEntry {
                    stream: self.stream,
                    id: entry.id,
                    reason: "entry id is not `{position}-0`",
                }),
                (Some(_), _) => Err(ReplicationError::MalformedEntry {
                    stream: self.stream,
                    id: entry.id,
                    reason: "field `r` is missing or not a byte string",
                }),
            };
            self.buffered.push_back(row);
        }
    }
}

/// One blocking `XREAD` after `cursor`; `None` when nothing arrived within [`BLOCK`].
async fn read(
    conn: &mut MultiplexedConnection,
    key: &str,
    cursor: &str,
) -> Result<Option<StreamReadReply>, ReplicationError> {
    let reply = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(READ_COUNT)
        .arg("BLOCK")
        .arg(u64::try_from(BLOCK.as_millis()).unwrap_or(u64::MAX))
        .arg("STREAMS")
        .arg(key)
        .arg(cursor)
        .query_async(conn)
        .await?;
    Ok(reply)
}

/// The position in an entry id `{position}-0`, or `None` for ids this crate does not write.
fn parse_entry_id(id: &str) -> Option<StreamPosition> {
    match id.split_once('-') {
        Some((position, "0")) => position.parse().ok().map(StreamPosition),
        _ => None,
    }
}

/// `XADD` refused the id because the stream's top entry is equal or greater.
fn is_id_not_increasing(error: &RedisError) -> bool {
    error.detail().is_some_and(|detail| detail.contains("equal or smaller than the target stream top item"))
}

/// `{prefix}:sub:{stream}`, with anything Redis does not allow in a client name replaced.
fn connection_name(key_prefix: &str, stream: StreamName) -> String {
    format!("{key_prefix}:sub:{}", stream.as_str())
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests;
