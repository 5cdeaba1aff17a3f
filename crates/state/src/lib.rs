//! Room state for federated events: state resolution and the auth checks on receipt of a PDU.
//!
//! - [`resolve`] (module `resolve`) merges the states of a DAG's forks, synchronously, over events
//!   already in memory. It wraps ruma's state resolution v2 (and v2.1 from room v12) and adds
//!   the room v1 algorithm, which ruma does not implement.
//! - [`resolve_from`] (module `load`) is what the server calls: it loads the events a resolution
//!   needs through an [`EventSource`], one batch per level of the auth DAG, and then runs
//!   [`resolve`] on tokio's blocking pool.
//! - [`check_incoming`] (module `auth`) runs the three checks the server-server API asks of an
//!   incoming PDU and says whether it is accepted, rejected or soft-failed.
//!
//! Pure logic over `ganglion-core`'s [`Pdu`](ganglion_core::Pdu): callers own storage and hand
//! events in.

mod auth;
mod load;
mod resolve;
mod sha1;
mod v1;

pub use auth::{Verdict, check_against_state, check_auth_events, check_incoming, create_event_id};
pub use load::{EventSource, resolve_from};
pub use resolve::{ResolveError, StateIds, resolve, state_map};
