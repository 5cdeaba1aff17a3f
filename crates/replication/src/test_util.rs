//! Test fakes for code that consumes replication (feature `test-util`).

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    sync::Mutex,
};

use async_trait::async_trait;
use bytes::Bytes;

use crate::{Bus, CatchUpSource, ReplicationError, StreamName, StreamPosition, StreamRow};

/// An in-memory [`CatchUpSource`] standing in for the database.
///
/// [`MemorySource::append`] plays `main`'s commit (allocate the next position, persist);
/// [`MemorySource::commit_and_publish`] adds the publish after it.
#[derive(Debug, Default)]
pub struct MemorySource {
    // A std mutex: every critical section is a few map operations, never an await.
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    rows: HashMap<StreamName, BTreeMap<StreamPosition, StreamRow>>,
    rows_after_calls: usize,
    failures_left: usize,
}

impl MemorySource {
    /// An empty source.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Stores `payload` at the stream's next position and returns the row.
    pub fn append(&self, stream: StreamName, payload: Bytes) -> StreamRow {
        let mut inner = self.inner();
        let rows = inner.rows.entry(stream).or_default();
        let last = rows.keys().next_back().copied().unwrap_or_default();
        let row = StreamRow { stream, position: last.next(), payload };
        rows.insert(row.position, row.clone());
        row
    }

    /// Stores a row at its own position, replacing any row there (to build holes).
    pub fn insert(&self, row: StreamRow) {
        self.inner().rows.entry(row.stream).or_default().insert(row.position, row);
    }

    /// [`append`](Self::append)s, then publishes the row on `bus`, as `main` does after commit.
    ///
    /// # Errors
    /// Whatever the publish returns; the row is stored either way.
    pub async fn commit_and_publish(
        &self,
        bus: &dyn Bus,
        stream: StreamName,
        payload: Bytes,
    ) -> Result<StreamRow, ReplicationError> {
        let row = self.append(stream, payload);
        bus.publish(row.clone()).await?;
        Ok(row)
    }

    /// How many times [`CatchUpSource::rows_after`] has been called (failed calls included).
    #[must_use]
    pub fn rows_after_calls(&self) -> usize {
        self.inner().rows_after_calls
    }

    /// Makes the next `count` calls fail with [`ReplicationError::Source`].
    pub fn fail_next(&self, count: usize) {
        self.inner().failures_left = count;
    }
}

#[async_trait]
impl CatchUpSource for MemorySource {
    async fn rows_after(
        &self,
        stream: StreamName,
        after: StreamPosition,
        limit: usize,
    ) -> Result<Vec<StreamRow>, ReplicationError> {
        let mut inner = self.inner();
        inner.rows_after_calls += 1;
        if inner.failures_left > 0 {
            inner.failures_left -= 1;
            return Err(ReplicationError::Source("injected failure".to_owned()));
        }
        Ok(inner
            .rows
            .get(&stream)
            .map(|rows| {
                rows.range((Bound::Excluded(after), Bound::Unbounded)).take(limit).map(|(_, row)| row.clone()).collect()
            })
            .unwrap_or_default())
    }

    async fn max_position(&self, stream: StreamName) -> Result<StreamPosition, ReplicationError> {
        Ok(self.inner().rows.get(&stream).and_then(|rows| rows.keys().next_back().copied()).unwrap_or_default())
    }
}
