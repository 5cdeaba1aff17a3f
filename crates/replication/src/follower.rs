//! [`Follower`]: turns a lossy [`Bus`] plus an authoritative [`CatchUpSource`] into a gap-free,
//! duplicate-free, ordered feed of rows for one consumer.
//!
//! The follower task owns a cursor, `last`: the position of the last row handed to the
//! consumer. Every row it hands over is exactly `last + 1`, so the invariants hold by
//! construction; the rest is deciding where the next row comes from:
//! - a bus row at `last + 1` goes straight through (the fast path);
//! - a bus row at or below `last` is a duplicate and is dropped;
//! - a bus row above `last + 1` reveals a gap: the follower reads the source from `last`
//!   until it has nothing newer, then re-examines the bus row;
//! - when no row has arrived for `poll_interval`, the follower reads the source anyway: a lost
//!   publish at the tail of the stream leaves no later row to reveal the gap;
//! - when the subscription cannot be made or ends, it resubscribes with backoff and catches up
//!   from the source each time.
//!
//! The source is trusted to hold every committed position (the writer allocates positions
//! without holes). If it returns a row beyond `last + 1`, the row in between is taken to be not
//! yet visible, and the follower waits for it rather than skip it; a hole that persists is
//! logged at `warn`, because it stalls this stream for every consumer.

use std::{sync::Arc, time::Duration};

use futures::{StreamExt, stream::BoxStream};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::{Instant, sleep_until},
};
use tracing::instrument;

use crate::{Bus, CatchUpSource, ReplicationError, StreamName, StreamPosition, StreamRow, backoff::Backoff};

/// How long a hole in the source may persist before it is logged at `warn`.
const HOLE_WARN_AFTER: Duration = Duration::from_secs(30);
/// Backoff bounds for resubscribing and for retrying a failing source.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// First retry after the source shows a hole; later retries back off up to `poll_interval`.
const HOLE_RETRY_MIN: Duration = Duration::from_millis(50);

/// Tuning for a [`Follower`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerConfig {
    /// How long the feed may go without a new row before the follower asks the source for
    /// newer rows (rows whose publish was lost). Default: 2 s.
    pub poll_interval: Duration,
    /// How many rows one catch-up query asks for. Default: 500.
    pub batch_size: usize,
    /// How many rows may wait in the channel to the consumer. Default: 1024.
    pub channel_capacity: usize,
}

impl Default for FollowerConfig {
    fn default() -> Self {
        Self { poll_interval: Duration::from_secs(2), batch_size: 500, channel_capacity: 1024 }
    }
}

/// A background task that feeds one consumer every row of one stream after a start position,
/// exactly once, in order, with no gaps.
///
/// Rows arrive on the [`mpsc::Receiver`] returned by [`Follower::spawn`]. The task stops when
/// the `Follower` is dropped or when that receiver is dropped.
#[derive(Debug)]
pub struct Follower {
    stream: StreamName,
    position: watch::Receiver<StreamPosition>,
    task: JoinHandle<()>,
}

impl Follower {
    /// Starts following `stream` after `start_after` with the default [`FollowerConfig`].
    ///
    /// # Panics
    /// If called outside a Tokio runtime.
    pub fn spawn(
        bus: Arc<dyn Bus>,
        source: Arc<dyn CatchUpSource>,
        stream: StreamName,
        start_after: StreamPosition,
    ) -> (Self, mpsc::Receiver<StreamRow>) {
        Self::spawn_with_config(bus, source, stream, start_after, FollowerConfig::default())
    }

    /// Starts following `stream` after `start_after`.
    ///
    /// # Panics
    /// If called outside a Tokio runtime, or if `config.batch_size` or
    /// `config.channel_capacity` is 0.
    pub fn spawn_with_config(
        bus: Arc<dyn Bus>,
        source: Arc<dyn CatchUpSource>,
        stream: StreamName,
        start_after: StreamPosition,
        config: FollowerConfig,
    ) -> (Self, mpsc::Receiver<StreamRow>) {
        assert!(config.batch_size > 0, "FollowerConfig::batch_size must be > 0");
        let (tx, rx) = mpsc::channel(config.channel_capacity);
        let (position_tx, position) = watch::channel(start_after);
        let worker = Worker {
            bus,
            source,
            stream,
            last: start_after,
            tx,
            position: position_tx,
            subscription: None,
            resubscribe_at: Instant::now(),
            resubscribe_backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
            source_ready_at: Instant::now(),
            source_backoff: Backoff::new(RETRY_MIN, RETRY_MAX),
            poll_at: Instant::now() + config.poll_interval,
            hole: None,
            config,
        };
        let task = tokio::spawn(worker.run());
        (Self { stream, position, task }, rx)
    }

    /// The stream this follower follows.
    #[must_use]
    pub fn stream(&self) -> StreamName {
        self.stream
    }

    /// The position of the last row handed to the channel (the start position before any).
    ///
    /// "Handed to the channel" is not "processed by the consumer": a consumer that must
    /// announce what it has *applied* (a sync notifier waking long-polls, say) should keep its
    /// own watch and advance it after applying each row. The sender side closes when the
    /// follower stops, so `changed()` then returns an error.
    #[must_use]
    pub fn position(&self) -> watch::Receiver<StreamPosition> {
        self.position.clone()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        // The task holds nothing that needs an orderly shutdown: its subscription and
        // connections close when dropped, and nothing half-delivered can be lost because
        // `last` only moves after a row is in the channel.
        self.task.abort();
    }
}

/// The consumer has gone: the follower stops.
#[derive(Debug)]
struct Stopped;

/// What woke the follower up.
enum Wake {
    Bus(Option<Result<StreamRow, ReplicationError>>),
    Resubscribe,
    Poll,
    Stopped,
}

/// A hole in the source: position `at` is missing though later rows exist.
struct Hole {
    at: StreamPosition,
    since: Instant,
    warned: bool,
    backoff: Backoff,
}

struct Worker {
    bus: Arc<dyn Bus>,
    source: Arc<dyn CatchUpSource>,
    stream: StreamName,
    config: FollowerConfig,
    /// The last position handed to the consumer.
    last: StreamPosition,
    tx: mpsc::Sender<StreamRow>,
    position: watch::Sender<StreamPosition>,
    subscription: Option<BoxStream<'static, Result<StreamRow, ReplicationError>>>,
    resubscribe_at: Instant,
    resubscribe_backoff: Backoff,
    /// The source is not asked again before this (after an error or a hole).
    source_ready_at: Instant,
    source_backoff: Backoff,
    /// When the feed will have been quiet for `poll_interval`.
    poll_at: Instant,
    hole: Option<Hole>,
}

impl Worker {
    #[instrument(name = "follower", skip_all, fields(stream = %self.stream))]
    async fn run(mut self) {
        tracing::info!(position = %self.last, "follower started");
        while self.step().await.is_ok() {}
        tracing::info!(position = %self.last, "follower stopped: the consumer has gone");
    }

    async fn step(&mut self) -> Result<(), Stopped> {
        if self.subscription.is_none() && Instant::now() >= self.resubscribe_at {
            self.subscribe().await;
            // The bus only replays what it still holds; the source has the rest.
            self.catch_up().await?;
        }
        let wake = tokio::select! {
            () = self.tx.closed() => Wake::Stopped,
            item = next_item(&mut self.subscription) => Wake::Bus(item),
            () = sleep_until(self.resubscribe_at), if self.subscription.is_none() => {
                Wake::Resubscribe
            }
            () = sleep_until(self.poll_at) => Wake::Poll,
        };
        match wake {
            Wake::Stopped => return Err(Stopped),
            Wake::Bus(Some(Ok(row))) => {
                self.resubscribe_backoff.reset();
                self.on_bus_row(row).await?;
            }
            Wake::Bus(Some(Err(error))) => {
                tracing::warn!(position = %self.last, %error, "bad row on the bus; skipped");
            }
            Wake::Bus(None) => {
                let delay = self.resubscribe_backoff.next_delay();
                tracing::warn!(position = %self.last, ?delay, "bus subscription ended; resubscribing");
                self.subscription = None;
                self.resubscribe_at = Instant::now() + delay;
            }
            // Handled at the top of the next step.
            Wake::Resubscribe => {}
            Wake::Poll => {
                tracing::trace!(position = %self.last, "feed quiet; polling the source");
                // Whether or not the source is ready, wait a full interval for the next poll.
                self.poll_at = Instant::now() + self.config.poll_interval;
                self.catch_up().await?;
            }
        }
        Ok(())
    }

    async fn subscribe(&mut self) {
        match self.bus.subscribe(self.stream, self.last).await {
            Ok(subscription) => {
                tracing::debug!(position = %self.last, "subscribed to the bus");
                self.subscription = Some(subscription);
            }
            Err(error) => {
                let delay = self.resubscribe_backoff.next_delay();
                tracing::warn!(
                    position = %self.last,
                    %error,
                    ?delay,
                    "cannot subscribe to the bus; polling the source meanwhile"
                );
                self.resubscribe_at = Instant::now() + delay;
            }
        }
    }

    async fn on_bus_row(&mut self, row: StreamRow) -> Result<(), Stopped> {
        if row.stream != self.stream {
            tracing::debug!(other = %row.stream, "row for another stream on the bus; dropped");
            return Ok(());
        }
        if row.position > self.last.next() {
            tracing::debug!(
                position = %self.last,
                bus_position = %row.position,
                "gap on the bus; catching up from the source"
            );
            self.catch_up().await?;
        }
        if row.position <= self.last {
            // A duplicate, or a row the catch-up already delivered.
            return Ok(());
        }
        if row.position > self.last.next() {
            // The source could not close the gap yet. Dropping the row loses nothing: the
            // next catch-up reads it from the source.
            tracing::debug!(
                position = %self.last,
                bus_position = %row.position,
                "gap not closed yet; dropping bus row until the source has it"
            );
            return Ok(());
        }
        self.deliver(row).await
    }

    /// Hands the source's rows after `last` to the consumer until the source has no more.
    ///
    /// Source failures are logged and retried later (with backoff), never returned: the only
    /// error is that the consumer has gone.
    async fn catch_up(&mut self) -> Result<(), Stopped> {
        if Instant::now() < self.source_ready_at {
            return Ok(());
        }
        loop {
            let rows = match self.source.rows_after(self.stream, self.last, self.config.batch_size).await {
                Ok(rows) => {
                    self.source_backoff.reset();
                    rows
                }
                Err(error) => {
                    let delay = self.source_backoff.next_delay();
                    tracing::warn!(position = %self.last, %error, ?delay, "catch-up from the source failed");
                    self.source_ready_at = Instant::now() + delay;
                    return Ok(());
                }
            };
            let full_batch = rows.len() >= self.config.batch_size;
            for row in rows {
                if row.position <= self.last {
                    continue;
                }
                if row.position > self.last.next() {
                    self.on_hole(row.position);
                    return Ok(());
                }
                self.deliver(row).await?;
            }
            if !full_batch {
                return Ok(());
            }
        }
    }

    /// The source skipped position `last + 1`: retry soon, then less and less often.
    fn on_hole(&mut self, found: StreamPosition) {
        let at = self.last.next();
        let poll_interval = self.config.poll_interval;
        let hole = match &mut self.hole {
            Some(hole) if hole.at == at => hole,
            _ => {
                tracing::debug!(missing = %at, %found, "source has a hole; waiting for it to fill");
                self.hole.insert(Hole {
                    at,
                    since: Instant::now(),
                    warned: false,
                    backoff: Backoff::new(HOLE_RETRY_MIN, poll_interval.max(HOLE_RETRY_MIN)),
                })
            }
        };
        if !hole.warned && hole.since.elapsed() >= HOLE_WARN_AFTER {
            hole.warned = true;
            tracing::warn!(
                missing = %at,
                %found,
                "source is missing a position for a long time; this stream is stalled"
            );
        }
        // Gapped bus rows in the meantime are dropped without a query each, and the next poll
        // comes early: the missing row is most likely a transaction about to become visible.
        let retry_at = Instant::now() + hole.backoff.next_delay();
        self.source_ready_at = retry_at;
        self.poll_at = retry_at;
    }

    async fn deliver(&mut self, row: StreamRow) -> Result<(), Stopped> {
        debug_assert_eq!(row.position, self.last.next());
        let position = row.position;
        self.tx.send(row).await.map_err(|_| Stopped)?;
        self.last = position;
        self.position.send_replace(position);
        self.poll_at = Instant::now() + self.config.poll_interval;
        if let Some(hole) = self.hole.take_if(|hole| hole.at <= position)
            && hole.warned
        {
            tracing::info!(%position, "source hole filled; stream moving again");
        }
        Ok(())
    }
}

/// The subscription's next item, or never if there is no subscription.
async fn next_item(
    subscription: &mut Option<BoxStream<'static, Result<StreamRow, ReplicationError>>>,
) -> Option<Result<StreamRow, ReplicationError>> {
    match subscription {
        Some(subscription) => subscription.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
