//! Tests on hand-built room DAGs: state resolution, the loader-driven resolver, room v12 creator
//! power, and the auth checks on receipt of a PDU.

mod auth;
mod creators;
mod dag;
mod load;
mod resolve;
