//! The replication stream: how rows committed by `main` reach every other process.
//!
//! `main` is the only writer. For each named stream ([`StreamName`]) it allocates contiguous
//! positions ([`StreamPosition`], from 1), commits rows to the database, and only then
//! publishes them on a [`Bus`]. Consumers (sync workers, the federation sender, cache
//! invalidation …) read through a [`Follower`], which delivers every row after a start
//! position exactly once and in order, filling whatever the bus lost from a
//! [`CatchUpSource`] (the database). A bus is therefore only a fast path: losing it entirely
//! costs latency, never rows.
//!
//! # Map
//! - [`StreamName`], [`StreamPosition`], [`StreamRow`]: what a row is and where it sits.
//! - [`EventRow`]: the protobuf payloads, hand-written `prost` messages with pinned encodings.
//! - [`Bus`] and [`CatchUpSource`]: the seams for transports and for the database.
//! - [`InProcessBus`]: broadcast channels, for a single process and for tests.
//! - [`RedisBus`]: one Redis Stream per stream name, for deployments with workers.
//! - [`Follower`]: the gap-filling, de-duplicating consumer loop every consumer uses.
//! - [`ShardRing`]: live instances of a scaled role (Redis heartbeats), key ownership by
//!   rendezvous hashing, and [`Lease`]s so a key changing hands is worked once.
//! - [`ReplicationError`]: the crate's error type.
//! - `test_util` (feature `test-util`): `MemorySource`, an in-memory [`CatchUpSource`].
//!
//! # Dependencies
//! - May depend on: external crates only (tokio, redis, prost, futures, tracing). Its settings
//!   arrive as plain values, so it needs no Ganglion crate, `config` included.
//! - Depended on by: `storage` (implements [`CatchUpSource`]), `main` (publishes), every
//!   worker (follows), and `config` if it composes a replication section.
//! - Must never depend on it: `core`, which is pure Matrix logic without I/O. In turn this
//!   crate never depends on `storage`, `rpc`, `http`, `config` or a worker, which all sit
//!   above it.

#![warn(missing_docs)]

mod backoff;
mod bus;
mod error;
mod follower;
mod in_process;
mod redis_bus;
mod rows;
mod shards;
mod stream;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
#[cfg(test)]
mod testing;
mod token;

pub use bus::{Bus, CatchUpSource};
pub use error::ReplicationError;
pub use follower::{Follower, FollowerConfig};
pub use in_process::InProcessBus;
pub use redis_bus::RedisBus;
pub use rows::{AccountDataRow, EventRow, UserRow};
pub use shards::{Lease, ShardRing, ShardTiming, rendezvous_owner};
pub use stream::{StreamName, StreamPosition, StreamRow};
pub use token::{InvalidToken, SyncToken};
