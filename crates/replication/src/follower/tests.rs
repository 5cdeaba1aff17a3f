use std::{sync::Arc, time::Duration};

use tokio::time::timeout;

use super::*;
use crate::{InProcessBus, test_util::MemorySource, testing::*};

#[tokio::test]
async fn thousand_rows_arrive_in_order_exactly_once() {
    let bus = Arc::new(InProcessBus::new(2048));
    let source = Arc::new(MemorySource::new());
    let (_follower, mut rx) = start_subscribed(bus.clone(), source.clone(), config(NEVER)).await;
    let calls_after_start = source.rows_after_calls();

    let writer = {
        let (bus, source) = (bus.clone(), source.clone());
        tokio::spawn(async move {
            for _ in 2..=1000 {
                commit(&source, bus.as_ref()).await;
            }
        })
    };
    expect_rows(&mut rx, 2, 999).await;
    within("writer", writer).await.unwrap();
    expect_nothing_more(&mut rx, &source, bus.as_ref(), 1000).await;
    // The bus never lagged, so all of it came the fast way.
    assert_eq!(source.rows_after_calls(), calls_after_start);
}

#[tokio::test]
async fn slow_consumer_on_tiny_bus_gets_everything_via_catch_up() {
    let bus = Arc::new(InProcessBus::new(4));
    let source = Arc::new(MemorySource::new());
    let config = FollowerConfig { channel_capacity: 1, batch_size: 64, ..config(NEVER) };
    let (_follower, mut rx) = start_subscribed(bus.clone(), source.clone(), config).await;
    let calls_after_start = source.rows_after_calls();

    // The consumer reads nothing until all 500 rows are published, so the follower is stuck
    // on the full channel and its broadcast receiver must lag.
    for _ in 2..=500 {
        commit(&source, bus.as_ref()).await;
    }
    expect_rows(&mut rx, 2, 499).await;
    expect_nothing_more(&mut rx, &source, bus.as_ref(), 500).await;
    assert!(
        source.rows_after_calls() > calls_after_start + 1,
        "the gap must have been filled from the source in several batches"
    );
}

#[tokio::test]
async fn starts_after_the_given_position_with_catch_up() {
    let bus = Arc::new(InProcessBus::new(16));
    let source = Arc::new(MemorySource::new());
    for p in 1..=30 {
        source.append(EVENTS, payload(p));
    }
    let config = FollowerConfig { batch_size: 7, ..config(NEVER) };
    let (follower, mut rx) =
        Follower::spawn_with_config(bus.clone(), source.clone(), EVENTS, StreamPosition(10), config);
    assert_eq!(*follower.position().borrow(), StreamPosition(10));
    expect_rows(&mut rx, 11, 20).await;
    wait_for_position(&follower, 30).await;
    expect_nothing_more(&mut rx, &source, bus.as_ref(), 30).await;
}

#[tokio::test]
async fn duplicates_and_other_streams_are_dropped() {
    let bus = Arc::new(InProcessBus::new(64));
    let source = Arc::new(MemorySource::new());
    let (_follower, mut rx) = start_subscribed(bus.clone(), source.clone(), config(NEVER)).await;
    let row2 = commit(&source, bus.as_ref()).await;
    let row3 = commit(&source, bus.as_ref()).await;
    for row in [row2.clone(), row3.clone(), row2] {
        bus.publish(row).await.unwrap();
    }
    bus.publish(StreamRow { stream: StreamName::Caches, ..row3 }).await.unwrap();
    expect_rows(&mut rx, 2, 2).await;
    expect_nothing_more(&mut rx, &source, bus.as_ref(), 3).await;
}

#[tokio::test]
async fn quiet_poll_delivers_rows_never_published() {
    let bus = Arc::new(InProcessBus::new(16));
    let source = Arc::new(MemorySource::new());
    let (_follower, mut rx) = start_subscribed(bus.clone(), source.clone(), config(Duration::from_millis(50))).await;
    // Committed but never published, as when main crashes between commit and publish.
    for p in 2..=20 {
        source.append(EVENTS, payload(p));
    }
    expect_rows(&mut rx, 2, 19).await;
    expect_nothing_more(&mut rx, &source, bus.as_ref(), 20).await;
}

#[tokio::test]
async fn source_failures_are_retried() {
    let bus = Arc::new(InProcessBus::new(16));
    let source = Arc::new(MemorySource::new());
    let (_follower, mut rx) = start_subscribed(bus.clone(), source.clone(), config(NEVER)).await;
    source.fail_next(3);
    // Row 2 is lost on the bus; row 3 reveals the gap while the source is failing.
    source.append(EVENTS, payload(2));
    commit(&source, bus.as_ref()).await;
    // Each later publish is a new chance to retry, once the backoff allows it.
    let mut published = 3;
    let retried = within("retry after source failures", async {
        loop {
            if let Ok(Some(row)) = timeout(Duration::from_millis(100), rx.recv()).await {
                break row;
            }
            published += 1;
            commit(&source, bus.as_ref()).await;
        }
    })
    .await;
    assert_eq!(retried.position, StreamPosition(2));
    expect_rows(&mut rx, 3, published - 2).await;
    expect_nothing_more(&mut rx, &source, bus.as_ref(), published).await;
    assert!(source.rows_after_calls() >= 4, "three failures, then a success");
}

#[tokio::test]
async fn waits_for_a_hole_in_the_source_instead_of_skipping_it() {
    let bus = Arc::new(InProcessBus::new(16));
    let source = Arc::new(MemorySource::new());
    let (follower, mut rx) = start_subscribed(bus.clone(), source.clone(), config(Duration::from_millis(50))).await;
    // Position 2 is still in flight (its transaction not yet visible); 3 is committed.
    let row3 = StreamRow { stream: EVENTS, position: StreamPosition(3), payload: payload(3) };
    source.insert(row3.clone());
    bus.publish(row3).await.unwrap();
    // Several polls pass over the hole without delivering anything.
    let calls = source.rows_after_calls();
    within("polls over the hole", async {
        while source.rows_after_calls() < calls + 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(rx.try_recv().is_err(), "nothing may be delivered past the hole");
    assert_eq!(*follower.position().borrow(), StreamPosition(1));
    // The missing row becomes visible: both arrive, in order.
    source.insert(StreamRow { stream: EVENTS, position: StreamPosition(2), payload: payload(2) });
    expect_rows(&mut rx, 2, 2).await;
    expect_nothing_more(&mut rx, &source, bus.as_ref(), 3).await;
}

#[tokio::test]
async fn stops_when_the_receiver_is_dropped() {
    let bus = Arc::new(InProcessBus::new(16));
    let source = Arc::new(MemorySource::new());
    let (follower, rx) = start_subscribed(bus.clone(), source, config(NEVER)).await;
    let mut position = follower.position();
    drop(rx);
    // The watch's sender lives in the task, so `changed` errors once the task has ended.
    within("follower to stop", async { while position.changed().await.is_ok() {} }).await;
}

#[tokio::test]
async fn stops_when_the_follower_is_dropped() {
    let bus = Arc::new(InProcessBus::new(16));
    let source = Arc::new(MemorySource::new());
    let (follower, mut rx) = start_subscribed(bus.clone(), source, config(NEVER)).await;
    drop(follower);
    // The task owned the sender; once it is aborted the channel closes.
    assert!(within("follower to stop", rx.recv()).await.is_none());
}
