//! Loader-driven state resolution for the server.
//!
//! ruma's resolution takes synchronous lookups (`Fn(&EventId) -> Option<E>`), so it cannot await
//! storage while it runs, and on a large room it is CPU work measured in milliseconds or more.
//! So the work is split: first every event the algorithm may look at (the state sets' events and
//! their auth chains) is loaded asynchronously, one batch per level of the auth DAG; then
//! [`resolve`](crate::resolve) runs over that in-memory map on tokio's blocking pool, leaving the
//! async workers free for requests.

use std::collections::{HashMap, HashSet};
use std::future::Future;

use ganglion_core::Pdu;
use ruma::room_version_rules::StateResolutionVersion;
use ruma::{OwnedEventId, RoomVersionId};

use crate::resolve::{ResolveError, StateIds, resolve, trivial};

/// Where [`resolve_from`] loads events from: storage, a cache, or a federation fetch behind them.
pub trait EventSource: Send + Sync {
    /// The events with these IDs. Events the source does not have are left out of the answer
    /// (the caller reports them); `Err` is for a failure of the source itself.
    fn events(&self, ids: Vec<OwnedEventId>) -> impl Future<Output = Result<Vec<Pdu>, ResolveError>> + Send;
}

/// An in-memory source, for tests and for callers that already hold the events.
impl EventSource for HashMap<OwnedEventId, Pdu> {
    fn events(&self, ids: Vec<OwnedEventId>) -> impl Future<Output = Result<Vec<Pdu>, ResolveError>> + Send {
        let found = ids.iter().filter_map(|id| self.get(id).cloned()).collect();
        std::future::ready(Ok(found))
    }
}

/// Resolves `state_sets` like [`resolve`], loading the events it needs from `source` first.
///
/// The state sets' events are loaded in one call, then their auth events in the next, and so on
/// down the auth DAG: one [`EventSource::events`] call per level, no event asked for twice. Room
/// v1 needs only the state sets' events. One state set, or several equal ones, are returned
/// without loading anything.
///
/// # Errors
/// [`ResolveError::MissingEvents`] when the source lacks a needed event,
/// [`ResolveError::Source`] when it fails, and the errors of [`resolve`].
pub async fn resolve_from(
    version: &RoomVersionId,
    state_sets: Vec<StateIds>,
    source: &impl EventSource,
) -> Result<StateIds, ResolveError> {
    let rules = version.rules().ok_or_else(|| ResolveError::UnsupportedRoomVersion(version.to_string()))?;
    if let Some(state) = trivial(&state_sets) {
        return Ok(state);
    }
    let with_auth_chains = !matches!(rules.state_res, StateResolutionVersion::V1);

    let mut events: HashMap<OwnedEventId, Pdu> = HashMap::new();
    let mut requested: HashSet<OwnedEventId> = state_sets.iter().flat_map(|s| s.values()).cloned().collect();
    let mut level: Vec<OwnedEventId> = requested.iter().cloned().collect();
    let mut levels = 0_usize;
    while !level.is_empty() {
        levels += 1;
        let loaded = source.events(level.clone()).await?;
        let mut next = Vec::new();
        for pdu in loaded {
            if !requested.contains(&pdu.event_id) || events.contains_key(&pdu.event_id) {
                continue;
            }
            if with_auth_chains {
                for auth in &pdu.auth_events {
                    if requested.insert(auth.clone()) {
                        next.push(auth.clone());
                    }
                }
            }
            events.insert(pdu.event_id.clone(), pdu);
        }
        let mut missing: Vec<OwnedEventId> = level.into_iter().filter(|id| !events.contains_key(id)).collect();
        if !missing.is_empty() {
            missing.sort();
            return Err(ResolveError::MissingEvents(missing));
        }
        level = next;
    }
    tracing::debug!(events = events.len(), levels, "loaded events for state resolution");

    let version = version.clone();
    tokio::task::spawn_blocking(move || resolve(&version, &state_sets, &events))
        .await
        .map_err(|e| ResolveError::Task(e.to_string()))?
}
