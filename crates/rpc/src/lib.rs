//! The internal gRPC write API (tonic/prost): `main` serves it, workers call it for every write.
//!
//! Depends on tonic and prost only. Worker crates and `main` depend on it; it never depends on them.
//! The request id of the client request travels in the `x-request-id` metadata key.

#![allow(unreachable_pub, missing_docs, clippy::all)]

/// Generated messages and service stubs for `ganglion.rpc.v1`.
pub mod v1 {
    tonic::include_proto!("ganglion.rpc.v1");
}

pub mod client;

pub use client::{MainClient, REQUEST_ID_METADATA, RpcError};
pub use v1::write_api_server::{WriteApi, WriteApiServer};
