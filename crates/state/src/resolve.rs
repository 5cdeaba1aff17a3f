//! Synchronous state resolution over events already in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use ganglion_core::{Pdu, StateMap};
use ruma::events::StateEventType;
use ruma::room_version_rules::{AuthorizationRules, StateResolutionV2Rules, StateResolutionVersion};
use ruma::state_res::utils::event_id_set::EventIdSet;
use ruma::{EventId, OwnedEventId, RoomVersionId};

/// A room state by reference: (event type, state key) → event ID.
pub type StateIds = BTreeMap<(String, String), OwnedEventId>;

/// Why state could not be resolved.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// The room version is unknown or has no state resolution algorithm here.
    #[error("unsupported room version {0}")]
    UnsupportedRoomVersion(String),
    /// Events the resolution needs (state events or their auth events) are not available.
    #[error("missing events: {}", list(.0))]
    MissingEvents(Vec<OwnedEventId>),
    /// The event source failed.
    #[error("event source: {0}")]
    Source(String),
    /// The algorithm itself failed, such as on a malformed auth event.
    #[error("state resolution: {0}")]
    Algorithm(String),
    /// The blocking task running the resolution panicked or was cancelled.
    #[error("state resolution task: {0}")]
    Task(String),
}

fn list(ids: &[OwnedEventId]) -> String {
    ids.iter().map(|id| id.as_str()).collect::<Vec<_>>().join(", ")
}

/// Resolves the states of a room's forks into one, by the algorithm of `version`.
///
/// `events` must hold every event named in `state_sets` and, for room versions 2 and later, every
/// event in their auth chains. One state set, or several equal ones, come back as they are without
/// running the algorithm.
///
/// # Errors
/// [`ResolveError::MissingEvents`] when `events` lacks one of those events,
/// [`ResolveError::UnsupportedRoomVersion`] for an unknown version, [`ResolveError::Algorithm`]
/// when ruma fails on malformed events.
pub fn resolve(
    version: &RoomVersionId,
    state_sets: &[StateIds],
    events: &HashMap<OwnedEventId, Pdu>,
) -> Result<StateIds, ResolveError> {
    let rules = version.rules().ok_or_else(|| ResolveError::UnsupportedRoomVersion(version.to_string()))?;
    if let Some(state) = trivial(state_sets) {
        return Ok(state);
    }
    let missing: BTreeSet<&OwnedEventId> =
        state_sets.iter().flat_map(|s| s.values()).filter(|id| !events.contains_key(*id)).collect();
    if !missing.is_empty() {
        return Err(ResolveError::MissingEvents(missing.into_iter().cloned().collect()));
    }
    match &rules.state_res {
        StateResolutionVersion::V1 => Ok(crate::v1::resolve(&rules.authorization, state_sets, events)),
        StateResolutionVersion::V2(v2) => resolve_v2(&rules.authorization, v2, state_sets, events),
        _ => Err(ResolveError::UnsupportedRoomVersion(version.to_string())),
    }
}

/// The answer when there is nothing to resolve: no state sets, one, or all equal.
pub(crate) fn trivial(state_sets: &[StateIds]) -> Option<StateIds> {
    match state_sets.split_first() {
        None => Some(StateIds::new()),
        Some((first, rest)) if rest.iter().all(|s| s == first) => Some(first.clone()),
        Some(_) => None,
    }
}

/// Looks up the events of a resolved state, for the auth checks that take full events.
///
/// # Errors
/// [`ResolveError::MissingEvents`] when `events` lacks one of them.
pub fn state_map(state: &StateIds, events: &HashMap<OwnedEventId, Pdu>) -> Result<StateMap, ResolveError> {
    let mut missing = Vec::new();
    let mut map = StateMap::with_capacity(state.len());
    for (key, id) in state {
        match events.get(id) {
            Some(pdu) => {
                map.insert(key.clone(), pdu.clone());
            }
            None => missing.push(id.clone()),
        }
    }
    if missing.is_empty() { Ok(map) } else { Err(ResolveError::MissingEvents(missing)) }
}

fn resolve_v2(
    auth_rules: &AuthorizationRules,
    v2: &StateResolutionV2Rules,
    state_sets: &[StateIds],
    events: &HashMap<OwnedEventId, Pdu>,
) -> Result<StateIds, ResolveError> {
    let auth_chains = auth_chains(state_sets, events)?;
    let maps: Vec<ruma::state_res::StateMap<OwnedEventId>> = state_sets
        .iter()
        .map(|set| {
            set.iter().map(|((ty, key), id)| ((StateEventType::from(ty.as_str()), key.clone()), id.clone())).collect()
        })
        .collect();
    let resolved = ruma::state_res::resolve(
        auth_rules,
        v2,
        &maps,
        auth_chains,
        |id: &EventId| events.get(id),
        |conflicted| Some(conflicted_subgraph(conflicted.values().flatten(), events)),
    )
    .map_err(|e| match e {
        ruma::state_res::Error::NotFound(id) => ResolveError::MissingEvents(vec![id]),
        other => ResolveError::Algorithm(other.to_string()),
    })?;
    Ok(resolved.into_iter().map(|((ty, key), id)| ((ty.to_string(), key), id)).collect())
}

/// The full auth chain of each state set, less the part they all share.
///
/// The spec's auth difference is the union of the chains minus their intersection. An event in
/// every state set contributes the same chain to each, so that shared chain U is never part of the
/// difference, and removing it from every chain leaves the difference unchanged. Walking U once,
/// then each set's own events down to where they meet U, touches each event about once instead
/// of once per state set; on a large room with few conflicts that is most of the work.
fn auth_chains(
    state_sets: &[StateIds],
    events: &HashMap<OwnedEventId, Pdu>,
) -> Result<Vec<EventIdSet<OwnedEventId>>, ResolveError> {
    let Some((first, rest)) = state_sets.split_first() else { return Ok(Vec::new()) };
    let in_all = |key: &(String, String), id: &OwnedEventId| rest.iter().all(|s| s.get(key) == Some(id));
    let shared_events = first.iter().filter(|(k, id)| in_all(k, id)).map(|(_, id)| id);
    let shared = full_auth_chain(shared_events, events, &EventIdSet::new())?;
    state_sets
        .iter()
        .map(|set| full_auth_chain(set.iter().filter(|(k, id)| !in_all(k, id)).map(|(_, id)| id), events, &shared))
        .collect()
}

/// The union of the auth chains of `ids` (every event reachable through `auth_events`, without
/// the starting events unless another one cites them), not entering `known`, which must be
/// closed under `auth_events`.
fn full_auth_chain<'a>(
    ids: impl IntoIterator<Item = &'a OwnedEventId>,
    events: &HashMap<OwnedEventId, Pdu>,
    known: &EventIdSet<OwnedEventId>,
) -> Result<EventIdSet<OwnedEventId>, ResolveError> {
    let mut chain = EventIdSet::new();
    let mut missing = BTreeSet::new();
    let mut stack: Vec<&OwnedEventId> = Vec::new();
    for id in ids {
        match events.get(id) {
            Some(pdu) => stack.extend(&pdu.auth_events),
            None => {
                missing.insert(id.clone());
            }
        }
    }
    while let Some(id) = stack.pop() {
        if chain.contains(id) || known.contains(id) {
            continue;
        }
        match events.get(id) {
            Some(pdu) => {
                chain.insert(id.clone());
                stack.extend(pdu.auth_events.iter().filter(|a| !chain.contains(a) && !known.contains(a)));
            }
            None => {
                missing.insert(id.clone());
            }
        }
    }
    if missing.is_empty() { Ok(chain) } else { Err(ResolveError::MissingEvents(missing.into_iter().collect())) }
}

/// The conflicted state subgraph of state resolution v2.1 (room v12): the events lying on some
/// `auth_events` path from one conflicted state event to another.
///
/// Found in two passes: the ancestors of the conflicted events (walking `auth_events` down), then,
/// among those, the ones from which a conflicted event can be reached (walking the same edges
/// back up from the conflicted events). Conflicted events themselves are returned too; they are in
/// the full conflicted set anyway. Events not in `events` are skipped: [`resolve`] has already
/// checked the auth chains are complete.
fn conflicted_subgraph<'a>(
    conflicted: impl Iterator<Item = &'a OwnedEventId>,
    events: &HashMap<OwnedEventId, Pdu>,
) -> EventIdSet<OwnedEventId> {
    let conflicted: Vec<&OwnedEventId> = conflicted.collect();
    // Ancestors, and for each of them the events (among the ancestors) that cite it.
    let mut ancestors: HashSet<&OwnedEventId> = conflicted.iter().copied().collect();
    let mut cited_by: HashMap<&OwnedEventId, Vec<&OwnedEventId>> = HashMap::new();
    let mut stack = conflicted.clone();
    while let Some(id) = stack.pop() {
        let Some(pdu) = events.get(id) else { continue };
        for auth in &pdu.auth_events {
            cited_by.entry(auth).or_default().push(id);
            if ancestors.insert(auth) {
                stack.push(auth);
            }
        }
    }
    // Walk back up from the conflicted events: whatever is reached leads down to one of them.
    let mut subgraph = EventIdSet::new();
    let mut stack = conflicted;
    while let Some(id) = stack.pop() {
        if !subgraph.insert(id.clone()) {
            continue;
        }
        if let Some(citers) = cited_by.get(id) {
            stack.extend(citers.iter().copied().filter(|c| !subgraph.contains(c)));
        }
    }
    subgraph
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use ganglion_core::Pdu;
    use ruma::OwnedEventId;

    use super::conflicted_subgraph;

    fn id(s: &str) -> OwnedEventId {
        OwnedEventId::try_from(format!("${s}")).expect("event ID")
    }

    /// Bare state events citing `auth`; enough for walking the auth DAG.
    fn dag(edges: &[(&str, &[&str])]) -> HashMap<OwnedEventId, Pdu> {
        edges
            .iter()
            .map(|(name, auth)| {
                let json = serde_json::json!({
                    "room_id": "!r:example.org", "sender": "@a:example.org", "origin_server_ts": 0,
                    "type": "m.room.topic", "state_key": "", "content": {}, "depth": 1,
                    "prev_events": [], "auth_events": auth.iter().map(|a| format!("${a}")).collect::<Vec<_>>(),
                });
                (id(name), Pdu::from_json(id(name), &json.to_string()).expect("parses"))
            })
            .collect()
    }

    fn names(set: &ruma::state_res::utils::event_id_set::EventIdSet<OwnedEventId>) -> Vec<String> {
        let mut v: Vec<String> = set.iter().map(|i| i.as_str()[1..].to_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn conflicted_subgraph_is_the_events_between_conflicted_ones() {
        // a ← b ← c, a ← d ← e, and f off to the side of a.
        let events = dag(&[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("d", &["a"]), ("e", &["d"]), ("f", &["a"])]);
        // c reaches a through b; d and e are not between them, nor is f.
        let got = conflicted_subgraph([id("c"), id("a")].iter(), &events);
        assert_eq!(names(&got), ["a", "b", "c"]);
        // c and e share only a, which is no conflicted event: nothing lies between them.
        let got = conflicted_subgraph([id("c"), id("e")].iter(), &events);
        assert_eq!(names(&got), ["c", "e"]);
        // Both paths down to a count.
        let got = conflicted_subgraph([id("c"), id("e"), id("a")].iter(), &events);
        assert_eq!(names(&got), ["a", "b", "c", "d", "e"]);
    }
}
