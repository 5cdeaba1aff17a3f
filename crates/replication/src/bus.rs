//! The two seams every transport and every database plugs into.

use async_trait::async_trait;
use futures::stream::BoxStream;

use crate::{ReplicationError, StreamName, StreamPosition, StreamRow};

/// A transport that carries committed rows from the writer to consumers.
///
/// A bus is a fast path, not a record: it may lose rows (a lagging in-process receiver, Redis
/// trimming or restarting, a publish that failed). Consumers use a [`Follower`](crate::Follower),
/// which repairs every gap from a [`CatchUpSource`].
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes one committed row.
    ///
    /// Call this only after the row's transaction committed, and in position order per stream.
    ///
    /// # Errors
    /// Transport failures; [`ReplicationError::StaleStream`] when the transport already holds
    /// this position or a later one. The writer may log and ignore any of them: consumers
    /// catch up from the database.
    async fn publish(&self, row: StreamRow) -> Result<(), ReplicationError>;

    /// Subscribes to rows with position greater than `after`: first those the transport still
    /// holds, then live ones.
    ///
    /// The returned stream may skip rows (the consumer sees a jump in positions) and may yield
    /// `Err` items for individual bad entries; it keeps going after both. Transports reconnect
    /// on their own and end the stream only when the bus itself shuts down.
    ///
    /// # Errors
    /// When the subscription cannot be set up at all (for example Redis is unreachable).
    async fn subscribe(
        &self,
        stream: StreamName,
        after: StreamPosition,
    ) -> Result<BoxStream<'static, Result<StreamRow, ReplicationError>>, ReplicationError>;
}

/// The authoritative record of stream rows, read to fill gaps the bus left.
///
/// Implemented by the storage crate against the database, where rows are committed before
/// they are published. [`test_util::MemorySource`](crate::test_util::MemorySource) is an
/// in-memory fake (feature `test-util`).
#[async_trait]
pub trait CatchUpSource: Send + Sync + 'static {
    /// Returns up to `limit` rows with position greater than `after`, in ascending order.
    ///
    /// # Errors
    /// [`ReplicationError::Source`] when the database fails.
    async fn rows_after(
        &self,
        stream: StreamName,
        after: StreamPosition,
        limit: usize,
    ) -> Result<Vec<StreamRow>, ReplicationError>;

    /// The highest committed position on `stream` (`0` when the stream is empty).
    ///
    /// # Errors
    /// [`ReplicationError::Source`] when the database fails.
    async fn max_position(&self, stream: StreamName) -> Result<StreamPosition, ReplicationError>;
}
