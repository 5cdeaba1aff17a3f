//! Ganglion's Matrix core: room versions, PDUs, hashing and signing, auth rules, client formats.
//!
//! Pure logic over ruma, with no I/O: callers load the state they need and hand it in. Depends on
//! ruma only; storage, workers and HTTP depend on it, never the other way round.

mod builder;
mod client_format;
mod filter;
mod pagination;
mod pdu;
mod power;
pub mod push_rules;
mod server_acl;
mod signing;
mod stripped;

pub use builder::{BuildError, EventTemplate, RoomContext, build_event, proto_event, room_version_rules, sign_event};
pub use client_format::{client_event, strip_to_sync_format};
pub use filter::{FilteredEvent, glob_matches, room_event_matches};
pub use pagination::PageToken;
pub use pdu::{Pdu, PduError, StateMap};
pub use power::{CREATOR_POWER, required_level, state_event_level, user_power_level};
pub use server_acl::server_acl_allows;
pub use signing::{ServerSigningKey, SigningKeyError};
pub use stripped::{STRIPPED_STATE_TYPES, stripped_state_event};
