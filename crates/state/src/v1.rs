//! State resolution for room version 1, which ruma leaves out.
//!
//! The spec's algorithm, in passes over a growing state R:
//! 1. R starts as the union of the state sets without the conflicted keys (a key is conflicted when
//!    the sets hold different events for it; a key some sets lack is not a conflict).
//! 2. For conflicted power levels, then join rules, then each conflicted member key: sort the
//!    candidates by ascending depth then descending SHA-1 of the event ID, put the first in R, and
//!    take each next one while it passes the auth rules against R; stop at the first that fails.
//! 3. For every other conflicted key, take the deepest candidate (lowest SHA-1 on ties) that passes
//!    the auth rules against R. When none does, the key is left out.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use ganglion_core::Pdu;
use ruma::OwnedEventId;
use ruma::room_version_rules::AuthorizationRules;

use crate::StateIds;
use crate::sha1::sha1;

pub(crate) fn resolve(
    rules: &AuthorizationRules,
    state_sets: &[StateIds],
    events: &HashMap<OwnedEventId, Pdu>,
) -> StateIds {
    let mut candidates: BTreeMap<&(String, String), Vec<&OwnedEventId>> = BTreeMap::new();
    for (key, id) in state_sets.iter().flatten() {
        let ids = candidates.entry(key).or_default();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    let mut resolved = StateIds::new();
    let mut conflicts: Vec<(&(String, String), Vec<&Pdu>)> = Vec::new();
    for (key, ids) in candidates {
        if let [only] = ids.as_slice() {
            resolved.insert(key.clone(), (*only).clone());
        } else {
            // `resolve` has checked every state event is present.
            conflicts.push((key, ids.iter().filter_map(|id| events.get(*id)).collect()));
        }
    }

    let key_of = |(ty, sk): &(String, String)| (ty.clone(), sk.clone());
    let is = |ty: &str, key: &(String, String)| key.0 == ty && (ty == "m.room.member" || key.1.is_empty());
    for pass in ["m.room.power_levels", "m.room.join_rules", "m.room.member"] {
        for (key, pdus) in conflicts.iter_mut().filter(|(k, _)| is(pass, k)) {
            pdus.sort_by_key(|p| (p.depth, Reverse(sha1(p.event_id.as_bytes()))));
            let mut pdus = pdus.iter();
            if let Some(first) = pdus.next() {
                resolved.insert(key_of(key), first.event_id.clone());
            }
            for pdu in pdus {
                if !allowed(rules, pdu, &resolved, events) {
                    break;
                }
                resolved.insert(key_of(key), pdu.event_id.clone());
            }
        }
    }
    let power =
        |k: &(String, String)| ["m.room.power_levels", "m.room.join_rules", "m.room.member"].iter().any(|t| is(t, k));
    for (key, pdus) in conflicts.iter_mut().filter(|(k, _)| !power(k)) {
        pdus.sort_by_key(|p| (Reverse(p.depth), sha1(p.event_id.as_bytes())));
        if let Some(pdu) = pdus.iter().find(|p| allowed(rules, p, &resolved, events)) {
            resolved.insert(key_of(key), pdu.event_id.clone());
        }
    }
    resolved
}

fn allowed(rules: &AuthorizationRules, pdu: &Pdu, state: &StateIds, events: &HashMap<OwnedEventId, Pdu>) -> bool {
    ruma::state_res::check_state_dependent_auth_rules(rules, pdu, |ty, key| {
        state.get(&(ty.to_string(), key.to_owned())).and_then(|id| events.get(id))
    })
    .is_ok()
}
