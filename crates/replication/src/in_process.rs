//! [`InProcessBus`]: the bus for a single-process deployment and for tests.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use futures::{StreamExt, stream::BoxStream};
use tokio::sync::broadcast;
use tokio_stream::wrappers::{BroadcastStream, errors::BroadcastStreamRecvError};

use crate::{Bus, ReplicationError, StreamName, StreamPosition, StreamRow};

/// A bus inside one process, one `tokio::sync::broadcast` channel per stream.
///
/// It keeps no history: a subscriber sees only rows published after it subscribed, and a
/// receiver that falls more than `capacity` rows behind silently skips the oldest ones. A
/// [`Follower`](crate::Follower) repairs both from its [`CatchUpSource`](crate::CatchUpSource).
#[derive(Debug, Clone)]
pub struct InProcessBus {
    capacity: usize,
    // A std mutex: held only to look up or insert a sender, never across an await.
    channels: Arc<Mutex<HashMap<StreamName, broadcast::Sender<StreamRow>>>>,
}

impl InProcessBus {
    /// Creates a bus whose receivers may fall `capacity` rows behind before they skip rows.
    ///
    /// # Panics
    /// If `capacity` is 0 (a broadcast channel needs room for one row).
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        assert!(capacity > 0, "InProcessBus capacity must be at least 1");
        Self { capacity, channels: Arc::default() }
    }

    fn sender(&self, stream: StreamName) -> broadcast::Sender<StreamRow> {
        let mut channels = self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        channels.entry(stream).or_insert_with(|| broadcast::channel(self.capacity).0).clone()
    }
}

#[async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, row: StreamRow) -> Result<(), ReplicationError> {
        // No receivers is not an error: nobody is listening yet, and anyone who starts later
        // catches up from the source.
        let _ = self.sender(row.stream).send(row);
        Ok(())
    }

    async fn subscribe(
        &self,
        stream: StreamName,
        after: StreamPosition,
    ) -> Result<BoxStream<'static, Result<StreamRow, ReplicationError>>, ReplicationError> {
        let rx = self.sender(stream).subscribe();
        let rows = BroadcastStream::new(rx).filter_map(move |item| async move {
            match item {
                Ok(row) if row.position > after => Some(Ok(row)),
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(skipped)) => {
                    // The next row shows up as a gap, which the follower fills.
                    tracing::debug!(%stream, skipped, "in-process subscriber lagged");
                    None
                }
            }
        });
        Ok(rows.boxed())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use tokio::time::timeout;

    use super::*;

    fn row(stream: StreamName, position: u64) -> StreamRow {
        StreamRow { stream, position: StreamPosition(position), payload: Bytes::from(position.to_string()) }
    }

    #[tokio::test]
    async fn delivers_live_rows_per_stream_after_the_start() {
        let bus = InProcessBus::new(16);
        bus.publish(row(StreamName::Events, 1)).await.unwrap(); // before subscribing: not kept
        let mut sub = bus.subscribe(StreamName::Events, StreamPosition(2)).await.unwrap();
        for p in 2..=4 {
            bus.publish(row(StreamName::Events, p)).await.unwrap();
            bus.publish(row(StreamName::Caches, p)).await.unwrap();
        }
        let got = timeout(Duration::from_secs(5), sub.by_ref().take(2).collect::<Vec<_>>()).await.unwrap();
        let got: Vec<_> = got.into_iter().map(Result::unwrap).collect();
        assert_eq!(got, vec![row(StreamName::Events, 3), row(StreamName::Events, 4)]);
    }

    #[tokio::test]
    async fn lagging_subscriber_skips_instead_of_failing() {
        let bus = InProcessBus::new(2);
        let mut sub = bus.subscribe(StreamName::Events, StreamPosition(0)).await.unwrap();
        for p in 1..=10 {
            bus.publish(row(StreamName::Events, p)).await.unwrap();
        }
        let first = timeout(Duration::from_secs(5), sub.next()).await.unwrap().unwrap().unwrap();
        // Only the newest `capacity` rows survive; the jump is the follower's cue to catch up.
        assert_eq!(first.position, StreamPosition(9));
    }
}
