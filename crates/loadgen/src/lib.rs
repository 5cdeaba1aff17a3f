//! `ganglion-loadgen`: a load generator for any Matrix homeserver. It speaks only the
//! Client-Server API, so one run measures Ganglion and Synapse alike (`docs/benchmarks.md`).
//!
//! - [`client`]: the few endpoints it needs: register (`m.login.dummy` UIA), `createRoom`, join,
//!   send, `/sync`; every request has a timeout.
//! - [`stats`]: percentiles and summaries of latency samples.
//! - [`procstat`]: CPU time of server processes, from `/proc/<pid>/stat`.
//! - [`delivery`]: N receivers long-polling `/sync` in one room while senders send M messages at a
//!   fixed rate; send→arrival latency per (message, receiver), lost and duplicated messages,
//!   server CPU-seconds per delivered event.
//! - [`sync_cost`]: incremental `/sync` with nothing new and with one new event; initial `/sync`
//!   of a user in many rooms with a lazy-loading filter.
//! - [`big_room`]: one room with many members and messages, for bytes-on-disk figures.
//!
//! Depends on no Ganglion crate, and nothing in the server depends on it.

#![warn(missing_docs)]

pub mod big_room;
pub mod client;
pub mod delivery;
pub mod procstat;
pub mod stats;
pub mod sync_cost;

use std::future::Future;
use std::sync::Arc;

use anyhow::Result;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Runs `f(0)` … `f(n - 1)` with at most `limit` at once; the results in index order.
///
/// # Errors
/// The first error any call returned (the others still run to completion).
pub async fn bounded<T, F, Fut>(n: usize, limit: usize, f: F) -> Result<Vec<T>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limit.max(1)));
    let mut set = JoinSet::new();
    for i in 0..n {
        let permits = permits.clone();
        let fut = f(i);
        set.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            fut.await.map(|v| (i, v))
        });
    }
    let mut out: Vec<Option<T>> = (0..n).map(|_| None).collect();
    let mut first_err = None;
    while let Some(joined) = set.join_next().await {
        match joined? {
            Ok((i, v)) => out[i] = Some(v),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(out.into_iter().flatten().collect())
}

/// A random tag for this run: user names, transaction IDs and message markers carry it, so
/// runs against the same server never collide.
pub fn run_tag() -> String {
    format!("{:08x}", rand::random::<u32>())
}
