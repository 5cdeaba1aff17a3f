//! The loader-driven resolver gives the synchronous resolver's answer, loads each event once,
//! and reports what its source lacks.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use ganglion_core::Pdu;
use ganglion_state::{EventSource, ResolveError, StateIds, resolve, resolve_from};
use ruma::{OwnedEventId, RoomVersionId};
use serde_json::json;

use crate::dag::{Dag, user};

/// An in-memory source that records each call.
struct Recording {
    events: HashMap<OwnedEventId, Pdu>,
    calls: Mutex<Vec<Vec<OwnedEventId>>>,
}

impl Recording {
    fn new(events: HashMap<OwnedEventId, Pdu>) -> Self {
        Self { events, calls: Mutex::new(Vec::new()) }
    }

    fn calls(&self) -> Vec<Vec<OwnedEventId>> {
        self.calls.lock().expect("not poisoned").clone()
    }
}

impl EventSource for Recording {
    async fn events(&self, ids: Vec<OwnedEventId>) -> Result<Vec<Pdu>, ResolveError> {
        self.calls.lock().expect("not poisoned").push(ids.clone());
        self.events.events(ids).await
    }
}

/// A forked room: a ban racing a join, and two concurrent power-level changes.
fn forked(version: RoomVersionId) -> (Dag, Vec<StateIds>) {
    let mut dag = Dag::new(version);
    let (alice, bob, carol, eve) = (user("alice"), user("bob"), user("carol"), user("eve"));
    let mut trunk = dag.create_room(&alice, &[], &[(&bob, 100), (&carol, 100)], json!({}));
    dag.join(&mut trunk, &bob);
    dag.join(&mut trunk, &carol);
    let (mut a, mut b) = (trunk.clone(), trunk);
    dag.state(&mut a, &bob, "m.room.member", eve.as_str(), json!({ "membership": "ban" }));
    let pl = dag.pl(&[(&bob, 100), (&carol, 100)], json!({ "state_default": 30 }));
    dag.state(&mut a, &bob, "m.room.power_levels", "", pl);
    dag.join(&mut b, &eve);
    let pl = dag.pl(&[(&bob, 100), (&carol, 100)], json!({ "state_default": 40 }));
    dag.state(&mut b, &carol, "m.room.power_levels", "", pl);
    let sets = vec![a.ids(), b.ids()];
    (dag, sets)
}

#[tokio::test]
async fn resolve_from_matches_resolve_and_loads_each_event_once() {
    for version in [RoomVersionId::V1, RoomVersionId::V6, RoomVersionId::V11, RoomVersionId::V12] {
        let (dag, sets) = forked(version.clone());
        let expected = resolve(&version, &sets, &dag.events).expect("resolves");
        let source = Recording::new(dag.events.clone());
        let got = resolve_from(&version, sets, &source).await.expect("resolves");
        assert_eq!(got, expected, "room v{version}");

        let calls = source.calls();
        let mut seen = HashSet::new();
        for id in calls.iter().flatten() {
            assert!(seen.insert(id.clone()), "room v{version}: {id} requested twice");
        }
        if version == RoomVersionId::V1 {
            assert_eq!(calls.len(), 1, "room v1 needs only the state events");
        } else {
            // The state events, then at least their auth events.
            assert!(calls.len() >= 2, "room v{version}: {} calls", calls.len());
        }
    }
}

#[tokio::test]
async fn resolve_from_skips_loading_when_there_is_nothing_to_resolve() {
    let (dag, sets) = forked(RoomVersionId::V11);
    let source = Recording::new(dag.events.clone());
    let got = resolve_from(&dag.version, vec![sets[0].clone(), sets[0].clone()], &source).await.expect("resolves");
    assert_eq!(got, sets[0]);
    assert!(source.calls().is_empty());
}

#[tokio::test]
async fn resolve_from_reports_events_missing_from_the_source() {
    let (dag, sets) = forked(RoomVersionId::V12);
    // The room's first power levels are replaced on both branches: only an auth event now.
    let first_pl = dag
        .events
        .values()
        .filter(|p| p.event_type.to_string() == "m.room.power_levels")
        .min_by_key(|p| p.depth)
        .map(|p| p.event_id.clone())
        .expect("a power levels event");
    assert!(sets.iter().all(|s| !s.values().any(|id| *id == first_pl)));
    let mut events = dag.events.clone();
    events.remove(&first_pl);
    match resolve_from(&dag.version, sets, &events).await {
        Err(ResolveError::MissingEvents(ids)) => assert_eq!(ids, vec![first_pl]),
        other => panic!("{other:?}"),
    }
}
