//! The auth checks on receipt of a PDU (server-server API, "Checks performed on receipt of a
//! PDU"), after its format, hashes and signatures have been checked:
//!
//! 1. it passes the auth rules given its own `auth_events`, or it is rejected;
//! 2. it passes them against the state before it (the resolution of its `prev_events`' states),
//!    or it is rejected;
//! 3. it passes them against the room's current state, or it is soft-failed: stored and part of
//!    the DAG, but not sent to clients nor used as a forward extremity.

use std::collections::HashMap;

use ganglion_core::{Pdu, StateMap};
use ruma::events::TimelineEventType;
use ruma::room_version_rules::AuthorizationRules;
use ruma::{EventId, OwnedEventId};

/// What happens to an incoming PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It passes every check.
    Accepted,
    /// It fails the auth rules against its auth events or the state before it; the reason.
    Rejected(String),
    /// It is valid where it sits in the DAG but not against the current state; the reason.
    SoftFailed(String),
}

/// Checks `pdu` against its own auth events: the state-independent rules (the right auth event
/// types, no duplicates, none rejected, same room) and then the state-dependent rules with the
/// auth events standing in for the state.
///
/// `auth_events` must hold the events `pdu` cites and, from room v12 where the create event is
/// not cited, the room's create event; it may hold others, which are ignored.
///
/// # Errors
/// The reason the event is rejected.
pub fn check_auth_events(
    rules: &AuthorizationRules,
    pdu: &Pdu,
    auth_events: &HashMap<OwnedEventId, Pdu>,
) -> Result<(), String> {
    ruma::state_res::check_state_independent_auth_rules(rules, pdu, |id: &EventId| auth_events.get(id))?;
    if pdu.event_type == TimelineEventType::RoomCreate {
        return Ok(());
    }
    let mut state: HashMap<(String, String), &Pdu> = HashMap::new();
    let cited = pdu.auth_events.iter().filter_map(|id| auth_events.get(id));
    let create = rules
        .room_create_event_id_as_room_id
        .then(|| pdu.room_id.as_ref().and_then(|r| create_event_id(r)).and_then(|id| auth_events.get(&id)))
        .flatten();
    for auth in cited.chain(create) {
        let key = auth.state_key.clone().ok_or_else(|| format!("auth event {} has no state_key", auth.event_id))?;
        state.insert((auth.event_type.to_string(), key), auth);
    }
    ruma::state_res::check_state_dependent_auth_rules(rules, pdu, |ty, key| {
        state.get(&(ty.to_string(), key.to_owned())).copied()
    })
}

/// Checks `pdu` against the state-dependent auth rules in `state`: the state before the event
/// (failure means rejected) or the room's current state (failure means soft-failed).
///
/// # Errors
/// The reason the event fails.
pub fn check_against_state(rules: &AuthorizationRules, pdu: &Pdu, state: &StateMap) -> Result<(), String> {
    ruma::state_res::check_state_dependent_auth_rules(rules, pdu, |ty, key| {
        state.get(&(ty.to_string(), key.to_owned()))
    })
}

/// Runs the three checks on an incoming PDU in order and gives the verdict: see the module docs.
///
/// `state_before` is the state before the event (from resolving its `prev_events`' states);
/// `current_state` the room's state now.
pub fn check_incoming(
    rules: &AuthorizationRules,
    pdu: &Pdu,
    auth_events: &HashMap<OwnedEventId, Pdu>,
    state_before: &StateMap,
    current_state: &StateMap,
) -> Verdict {
    if let Err(reason) = check_auth_events(rules, pdu, auth_events) {
        return Verdict::Rejected(format!("auth events: {reason}"));
    }
    if let Err(reason) = check_against_state(rules, pdu, state_before) {
        return Verdict::Rejected(format!("state before the event: {reason}"));
    }
    if let Err(reason) = check_against_state(rules, pdu, current_state) {
        return Verdict::SoftFailed(format!("current state: {reason}"));
    }
    Verdict::Accepted
}

/// From room v12 a room's ID is its create event's ID with another sigil.
pub fn create_event_id(room_id: &ruma::RoomId) -> Option<OwnedEventId> {
    OwnedEventId::try_from(format!("${}", &room_id.as_str()[1..])).ok()
}
