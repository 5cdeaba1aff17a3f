//! Server-server plumbing shared by the roles that speak federation: the server's signing keys
//! and `/_matrix/key/v2/server` (`keys`), finding where another server listens (`resolve`),
//! signing outbound requests with `X-Matrix` (`client`) and checking inbound ones (`auth`).
//!
//! Server discovery follows the spec's order except SRV records (not looked up yet): an IP
//! literal or an explicit port is used as is; otherwise `/.well-known/matrix/server` delegation;
//! otherwise port 8448.

mod auth;
mod client;
mod keys;
mod pdu;
mod resolve;

pub use auth::InboundAuth;
pub use client::{FederationClient, FederationError};
pub use keys::{KeyFetcher, load_expired_keys, load_signing_key, notarise, server_keys_document};
pub use pdu::{
    CheckedPdu, MAX_PDU_BYTES, PduCheckError, check_pdu, check_pdu_signed_by, event_id_of, outgoing_pdu,
    room_state_json,
};
pub use resolve::{Destination, resolve_destination};
