//! The crate's error type.

use crate::{StreamName, StreamPosition};

/// Everything that can go wrong while publishing, transporting or catching up on stream rows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// Redis refused a command or the connection failed.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),

    /// A row payload is not a valid protobuf message of the expected type.
    #[error("cannot decode row: {0}")]
    Decode(#[from] prost::DecodeError),

    /// A transport entry does not look like one this crate wrote (bad entry id, missing field).
    #[error("malformed entry {id:?} on stream {stream}: {reason}")]
    MalformedEntry {
        /// The stream the entry was read from.
        stream: StreamName,
        /// The transport's id of the entry.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The catch-up source (the database) failed; the message is the source's own.
    #[error("catch-up source: {0}")]
    Source(String),

    /// The bus or the receiving side has shut down.
    #[error("replication bus closed")]
    Closed,

    /// The transport already holds a row at or after this position, so it refused the row.
    ///
    /// This happens when a publish is retried after it had in fact succeeded, or when Redis
    /// still holds a stream from before the database was reset. Publishers may ignore it:
    /// consumers catch up from the database anyway.
    #[error("stream {stream} already holds position {position} or later")]
    StaleStream {
        /// The stream that was published to.
        stream: StreamName,
        /// The position that was refused.
        position: StreamPosition,
    },

    /// A stream name that this build does not know.
    #[error("unknown stream name {0:?}")]
    UnknownStream(String),
}
