//! Helpers shared by this crate's tests.

use std::{future::Future, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::{sync::mpsc, time::timeout};

use crate::{
    Bus, CatchUpSource, EventRow, Follower, FollowerConfig, StreamName, StreamPosition, StreamRow,
    test_util::MemorySource,
};

pub(crate) const EVENTS: StreamName = StreamName::Events;
/// Upper bound for every wait; generous because the machine is shared.
pub(crate) const WAIT: Duration = Duration::from_secs(20);
/// A poll interval no test lives long enough to reach: rows must come by the bus or gap-fill.
pub(crate) const NEVER: Duration = Duration::from_secs(3600);

/// The payload the test writer stores at `position`: a realistic, ~200-byte event row.
pub(crate) fn payload(position: u64) -> Bytes {
    EventRow {
        version: EventRow::CURRENT_VERSION,
        position,
        room_id: "!room:test".to_owned(),
        event_id: format!("$event{position}"),
        sender: "@alice:test".to_owned(),
        event_type: "m.room.message".to_owned(),
        state_key: None,
        membership: None,
        event_json: format!(r#"{{"body":"{}"}}"#, "x".repeat(128)),
        request_id: format!("req{position}"),
    }
    .encode_to_bytes()
}

pub(crate) fn config(poll_interval: Duration) -> FollowerConfig {
    FollowerConfig { poll_interval, ..FollowerConfig::default() }
}

pub(crate) async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    timeout(WAIT, future).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Receives the next `count` rows and checks they are exactly `first..first+count`, in order,
/// with the payloads the writer gave them.
pub(crate) async fn expect_rows(rx: &mut mpsc::Receiver<StreamRow>, first: u64, count: u64) {
    for expected in first..first + count {
        let row = within(&format!("row {expected}"), rx.recv()).await.expect("follower stopped early");
        assert_eq!(row.stream, EVENTS);
        assert_eq!(row.position, StreamPosition(expected), "rows out of order or duplicated");
        assert_eq!(row.payload, payload(expected));
    }
}

/// Commits a row to `source` and publishes it on `bus`, as `main` does.
pub(crate) async fn commit(source: &MemorySource, bus: &dyn Bus) -> StreamRow {
    let next = source.max_position(EVENTS).await.unwrap().next();
    source.commit_and_publish(bus, EVENTS, payload(next.0)).await.unwrap()
}

/// Proves nothing is pending before `after + 1`: the next row received must be that one.
/// A duplicate or stray row would be in the channel first.
pub(crate) async fn expect_nothing_more(
    rx: &mut mpsc::Receiver<StreamRow>,
    source: &MemorySource,
    bus: &dyn Bus,
    after: u64,
) {
    let sentinel = commit(source, bus).await;
    assert_eq!(sentinel.position, StreamPosition(after + 1));
    expect_rows(rx, after + 1, 1).await;
}

pub(crate) async fn wait_for_position(follower: &Follower, position: u64) {
    let mut watch = follower.position();
    within(&format!("position {position}"), watch.wait_for(|p| *p >= StreamPosition(position)))
        .await
        .expect("follower stopped");
}

/// Starts a follower and waits until it has subscribed: the first source row only reaches the
/// position watch through the catch-up that follows the subscription.
pub(crate) async fn start_subscribed(
    bus: Arc<dyn Bus>,
    source: Arc<MemorySource>,
    config: FollowerConfig,
) -> (Follower, mpsc::Receiver<StreamRow>) {
    source.append(EVENTS, payload(1));
    let (follower, mut rx) = Follower::spawn_with_config(bus, source, EVENTS, StreamPosition(0), config);
    wait_for_position(&follower, 1).await;
    expect_rows(&mut rx, 1, 1).await;
    (follower, rx)
}
