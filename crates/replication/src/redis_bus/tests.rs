//! Against a real Redis (`TEST_REDIS_URL`, default `redis://127.0.0.1:6379`). Each test
//! uses its own random key prefix and deletes its keys when it ends, even on failure.

use std::{sync::Arc, time::Duration};

use futures::StreamExt;

use super::*;
use crate::{EventRow, Follower, FollowerConfig, test_util::MemorySource, testing::*};

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A [`RedisBus`] under a fresh key prefix, whose keys are deleted on drop.
struct TestRedis {
    bus: Arc<RedisBus>,
    /// A separate connection for poking at Redis behind the bus's back.
    admin: MultiplexedConnection,
}

impl TestRedis {
    async fn new(max_len: usize) -> Self {
        let prefix = format!("ganglion-test-{:016x}", rand::random::<u64>());
        let bus = RedisBus::connect(&redis_url(), &prefix, max_len).await.expect("redis must run for these tests");
        let admin = bus.client.get_multiplexed_async_connection().await.unwrap();
        Self { bus: Arc::new(bus), admin }
    }

    fn key(&self) -> String {
        self.bus.stream_key(EVENTS)
    }

    /// Entry ids currently in the events stream.
    async fn entry_ids(&mut self) -> Vec<String> {
        let entries: Vec<(String, Value)> =
            redis::cmd("XRANGE").arg(self.key()).arg("-").arg("+").query_async(&mut self.admin).await.unwrap();
        entries.into_iter().map(|(id, _)| id).collect()
    }

    async fn delete_stream(&mut self) {
        redis::cmd("DEL").arg(self.key()).exec_async(&mut self.admin).await.unwrap();
    }

    /// Kills the subscription connection the bus opened for `stream`, as a network failure or
    /// a Redis restart would.
    async fn kill_subscriber(&mut self, stream: StreamName) {
        let name = connection_name(&self.bus.key_prefix, stream);
        let clients: String = redis::cmd("CLIENT").arg("LIST").query_async(&mut self.admin).await.unwrap();
        let id = clients
            .lines()
            .find(|line| line.split(' ').any(|field| field == format!("name={name}")))
            .and_then(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
            .unwrap_or_else(|| panic!("no connection named {name}"))
            .to_owned();
        let killed: u64 =
            redis::cmd("CLIENT").arg("KILL").arg("ID").arg(&id).query_async(&mut self.admin).await.unwrap();
        assert_eq!(killed, 1);
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        // Synchronous, so it also runs when a test panics; a quick local round trip.
        let keys: Vec<String> = StreamName::ALL.iter().map(|s| self.bus.stream_key(*s)).collect();
        let deleted =
            self.bus.client.get_connection().and_then(|mut conn| redis::cmd("DEL").arg(&keys).exec(&mut conn));
        if let Err(error) = deleted {
            eprintln!("could not delete test keys {keys:?}: {error}");
        }
    }
}

fn row(position: u64) -> StreamRow {
    StreamRow { stream: EVENTS, position: StreamPosition(position), payload: payload(position) }
}

#[tokio::test]
async fn publish_subscribe_round_trip() {
    let mut redis = TestRedis::new(1000).await;
    for p in 1..=5 {
        redis.bus.publish(row(p)).await.unwrap();
    }
    // The layout other tools (and older builds) rely on.
    assert_eq!(redis.entry_ids().await, ["1-0", "2-0", "3-0", "4-0", "5-0"]);

    let mut rows = redis.bus.subscribe(EVENTS, StreamPosition(2)).await.unwrap();
    for p in 3..=5 {
        let got = within("stored row", rows.next()).await.unwrap().unwrap();
        assert_eq!(got, row(p));
        assert_eq!(EventRow::decode_bytes(&got.payload).unwrap().position, p);
    }
    // Live rows follow once the stored ones are read.
    redis.bus.publish(row(6)).await.unwrap();
    let got = within("live row", rows.next()).await.unwrap().unwrap();
    assert_eq!(got, row(6));
}

#[tokio::test]
async fn malformed_entries_are_reported_and_skipped() {
    let mut redis = TestRedis::new(1000).await;
    let mut rows = redis.bus.subscribe(EVENTS, StreamPosition(0)).await.unwrap();
    let key = redis.key();
    redis::cmd("XADD").arg(&key).arg("1-7").arg("r").arg("x").exec_async(&mut redis.admin).await.unwrap();
    redis::cmd("XADD").arg(&key).arg("2-0").arg("other").arg("x").exec_async(&mut redis.admin).await.unwrap();
    redis.bus.publish(row(3)).await.unwrap();
    let first = within("first entry", rows.next()).await.unwrap();
    assert!(matches!(&first, Err(ReplicationError::MalformedEntry { id, .. }) if id == "1-7"), "{first:?}");
    let second = within("second entry", rows.next()).await.unwrap();
    assert!(matches!(&second, Err(ReplicationError::MalformedEntry { id, .. }) if id == "2-0"), "{second:?}");
    assert_eq!(within("third entry", rows.next()).await.unwrap().unwrap(), row(3));
}

#[tokio::test]
async fn stale_stream_is_reported_and_does_not_wedge_publishing() {
    let mut redis = TestRedis::new(1000).await;
    for p in 1..=10 {
        redis.bus.publish(row(p)).await.unwrap();
    }
    for p in [5, 10] {
        let error = redis.bus.publish(row(p)).await.unwrap_err();
        assert!(
            matches!(
                error,
                ReplicationError::StaleStream { stream: StreamName::Events, position }
                    if position == StreamPosition(p)
            ),
            "{error:?}"
        );
    }
    redis.bus.publish(row(11)).await.unwrap();

    // The database was reset to position 3: startup clears the stream that is ahead of it.
    assert!(!redis.bus.reset_if_ahead(EVENTS, StreamPosition(11)).await.unwrap());
    assert!(redis.bus.reset_if_ahead(EVENTS, StreamPosition(3)).await.unwrap());
    assert!(redis.entry_ids().await.is_empty());
    redis.bus.publish(row(4)).await.unwrap();
    assert_eq!(redis.entry_ids().await, ["4-0"]);
    // A stream that does not exist is never ahead.
    assert!(!redis.bus.reset_if_ahead(StreamName::Caches, StreamPosition(0)).await.unwrap());
}

#[tokio::test]
async fn follower_catches_up_past_trimmed_rows() {
    let mut redis = TestRedis::new(10).await;
    let source = Arc::new(MemorySource::new());
    for _ in 1..=100 {
        commit(&source, redis.bus.as_ref()).await;
    }
    let ids = redis.entry_ids().await;
    assert!(ids.len() < 100 && ids[0] != "1-0", "redis should have trimmed: {ids:?}");

    // Started late: rows 1..=100 mostly exist only in the source.
    let config = FollowerConfig { batch_size: 16, channel_capacity: 1, ..config(NEVER) };
    let (follower, mut rx) =
        Follower::spawn_with_config(redis.bus.clone(), source.clone(), EVENTS, StreamPosition(0), config);
    expect_rows(&mut rx, 1, 100).await;
    wait_for_position(&follower, 100).await;

    // Falls behind while running: the consumer reads nothing while 200 more rows are
    // published, so Redis trims rows the subscription has not read yet.
    let calls = source.rows_after_calls();
    for _ in 101..=300 {
        commit(&source, redis.bus.as_ref()).await;
    }
    assert_ne!(redis.entry_ids().await[0], "101-0");
    expect_rows(&mut rx, 101, 200).await;
    expect_nothing_more(&mut rx, &source, redis.bus.as_ref(), 300).await;
    assert!(source.rows_after_calls() > calls, "the trimmed rows came from the source");
}

#[tokio::test]
async fn follower_survives_stream_deletion_like_a_redis_restart() {
    let mut redis = TestRedis::new(1000).await;
    let source = Arc::new(MemorySource::new());
    let (follower, mut rx) = start_subscribed(redis.bus.clone(), source.clone(), config(NEVER)).await;
    for _ in 2..=20 {
        commit(&source, redis.bus.as_ref()).await;
    }
    expect_rows(&mut rx, 2, 19).await;
    wait_for_position(&follower, 20).await;

    // Redis restarts empty; while it is away, main's publishes fail, so 21..=30 exist only in
    // the database. Publishing resumes with 31.
    redis.delete_stream().await;
    for p in 21..=30 {
        source.append(EVENTS, payload(p));
    }
    for _ in 31..=60 {
        commit(&source, redis.bus.as_ref()).await;
    }
    expect_rows(&mut rx, 21, 40).await;

    // And mid-stream, with the consumer reading concurrently: delete while publishing.
    let writer = {
        let (bus, source) = (redis.bus.clone(), source.clone());
        let mut admin = redis.admin.clone();
        let key = redis.key();
        tokio::spawn(async move {
            for p in 61..=200 {
                commit(&source, bus.as_ref()).await;
                if p % 50 == 0 {
                    redis::cmd("DEL").arg(&key).exec_async(&mut admin).await.unwrap();
                }
            }
        })
    };
    expect_rows(&mut rx, 61, 140).await;
    within("writer", writer).await.unwrap();
    expect_nothing_more(&mut rx, &source, redis.bus.as_ref(), 200).await;
}

#[tokio::test]
async fn follower_reconnects_after_losing_its_connection() {
    let mut redis = TestRedis::new(1000).await;
    let source = Arc::new(MemorySource::new());
    let (_follower, mut rx) = start_subscribed(redis.bus.clone(), source.clone(), config(NEVER)).await;
    for _ in 2..=10 {
        commit(&source, redis.bus.as_ref()).await;
    }
    expect_rows(&mut rx, 2, 9).await;

    redis.kill_subscriber(EVENTS).await;
    for _ in 11..=20 {
        commit(&source, redis.bus.as_ref()).await;
    }
    // The poll interval is an hour and no gap exists, so only a reconnected subscription
    // can deliver these.
    let calls = source.rows_after_calls();
    expect_rows(&mut rx, 11, 10).await;
    assert_eq!(source.rows_after_calls(), calls);
    expect_nothing_more(&mut rx, &source, redis.bus.as_ref(), 20).await;
}

#[tokio::test]
async fn quiet_poll_delivers_rows_never_published_to_redis() {
    let redis = TestRedis::new(1000).await;
    let source = Arc::new(MemorySource::new());
    let (_follower, mut rx) =
        start_subscribed(redis.bus.clone(), source.clone(), config(Duration::from_millis(100))).await;
    for p in 2..=25 {
        source.append(EVENTS, payload(p));
    }
    expect_rows(&mut rx, 2, 24).await;
    expect_nothing_more(&mut rx, &source, redis.bus.as_ref(), 25).await;
}

mod shard_ring {
    use super::*;
    use crate::{ShardRing, ShardTiming};

    const FAST: ShardTiming = ShardTiming { heartbeat: Duration::from_millis(100), lease: Duration::from_millis(600) };

    async fn until(what: &str, mut ok: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !ok() {
            assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn members_split_keys_and_a_leaving_members_keys_move() {
        let t = TestRedis::new(100).await;
        let a = ShardRing::join(&t.bus, "pusher", "a", FAST).await.unwrap();
        let b = ShardRing::join(&t.bus, "pusher", "b", FAST).await.unwrap();
        until("both see two members", || a.members().borrow().len() == 2 && b.members().borrow().len() == 2).await;
        let keys: Vec<String> = (0..200).map(|i| format!("@u{i}:x")).collect();
        for k in &keys {
            assert!(a.owns(k) ^ b.owns(k), "exactly one owner for {k}");
        }
        assert!(keys.iter().any(|k| a.owns(k)) && keys.iter().any(|k| b.owns(k)));

        // A lease is exclusive until released.
        let lease = a.try_lease("@u1:x").await.unwrap().expect("free lease");
        assert!(b.try_lease("@u1:x").await.unwrap().is_none(), "held by a");
        lease.release().await;
        let taken = b.try_lease("@u1:x").await.unwrap().expect("released lease");
        // Held past its TTL while renewed in the background.
        tokio::time::sleep(FAST.lease * 2).await;
        assert!(taken.held());
        assert!(a.try_lease("@u1:x").await.unwrap().is_none(), "renewed by b");

        // b leaves: its keys move to a, and its lease is freed.
        let b_keys: Vec<String> = keys.iter().filter(|k| b.owns(k)).cloned().collect();
        drop(taken);
        drop(b);
        until("a alone", || a.members().borrow().as_slice() == ["a"]).await;
        assert!(b_keys.iter().all(|k| a.owns(k)));
        let mut freed = None;
        for _ in 0..50 {
            freed = a.try_lease("@u1:x").await.unwrap();
            if freed.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(freed.is_some(), "a dropped lease is released");
    }
}
