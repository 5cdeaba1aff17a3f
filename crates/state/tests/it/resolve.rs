//! The synchronous resolver on forks built by hand.

use ganglion_state::{ResolveError, StateIds, Verdict, check_against_state, check_incoming, resolve, state_map};
use ruma::RoomVersionId;
use serde_json::json;

use crate::dag::{Branch, Dag, user};

fn pl_key() -> (String, String) {
    ("m.room.power_levels".to_owned(), String::new())
}

fn member_key(u: &ruma::UserId) -> (String, String) {
    ("m.room.member".to_owned(), u.to_string())
}

/// A room with admins bob and carol (both joined), forked in two.
fn two_admins(version: RoomVersionId, carol_level: i64) -> (Dag, Branch) {
    let mut dag = Dag::new(version);
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let pl_extra = json!({ "events": { "m.room.power_levels": 50 } });
    let mut trunk = dag.create_room(&alice, &[], &[(&bob, 100), (&carol, carol_level)], pl_extra);
    dag.join(&mut trunk, &bob);
    dag.join(&mut trunk, &carol);
    (dag, trunk)
}

#[test]
fn concurrent_power_levels_at_equal_power_the_later_one_wins() {
    // Both senders have 100 in the auth events of their change, so the reverse topological power
    // ordering falls back to origin_server_ts: bob's (earlier) is applied first, carol's (later)
    // passes the auth rules on top of it and replaces it.
    for version in [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12] {
        let (mut dag, trunk) = two_admins(version.clone(), 100);
        let (bob, carol, dave, erin) = (user("bob"), user("carol"), user("dave"), user("erin"));
        let (mut a, mut b) = (trunk.clone(), trunk.clone());
        let extra = json!({ "events": { "m.room.power_levels": 50 } });
        let by_bob = dag.pl(&[(&bob, 100), (&carol, 100), (&dave, 10)], extra.clone());
        let by_bob = dag.state(&mut a, &bob, "m.room.power_levels", "", by_bob);
        let by_carol = dag.pl(&[(&bob, 100), (&carol, 100), (&erin, 20)], extra);
        let by_carol = dag.state(&mut b, &carol, "m.room.power_levels", "", by_carol);
        assert!(by_bob.origin_server_ts < by_carol.origin_server_ts);

        for sets in [[a.ids(), b.ids()], [b.ids(), a.ids()]] {
            let resolved = resolve(&version, &sets, &dag.events).expect("resolves");
            assert_eq!(resolved[&pl_key()], by_carol.event_id, "room v{version}");
        }
    }
}

#[test]
fn concurrent_power_levels_higher_power_goes_first_and_can_lock_out_the_other() {
    // Bob (100) demotes carol (50) on one branch; later, carol (still 50 there) promotes erin on
    // the other. Bob's change sorts first because of his power, so carol's is then checked against
    // a state where she has 0 and is dropped, although it is the later of the two.
    for version in [RoomVersionId::V10, RoomVersionId::V11, RoomVersionId::V12] {
        let (mut dag, trunk) = two_admins(version.clone(), 50);
        let (bob, carol, erin) = (user("bob"), user("carol"), user("erin"));
        let (mut a, mut b) = (trunk.clone(), trunk.clone());
        let extra = json!({ "events": { "m.room.power_levels": 50 } });
        let demote = dag.pl(&[(&bob, 100), (&carol, 0)], extra.clone());
        let demote = dag.state(&mut a, &bob, "m.room.power_levels", "", demote);
        let promote = dag.pl(&[(&bob, 100), (&carol, 50), (&erin, 50)], extra);
        let promote = dag.state(&mut b, &carol, "m.room.power_levels", "", promote);
        assert!(demote.origin_server_ts < promote.origin_server_ts);

        let resolved = resolve(&version, &[a.ids(), b.ids()], &dag.events).expect("resolves");
        assert_eq!(resolved[&pl_key()], demote.event_id, "room v{version}");
    }
}

#[test]
fn a_ban_beats_a_concurrent_join_in_every_room_version() {
    let versions = [
        RoomVersionId::V1,
        RoomVersionId::V2,
        RoomVersionId::V3,
        RoomVersionId::V4,
        RoomVersionId::V5,
        RoomVersionId::V6,
        RoomVersionId::V7,
        RoomVersionId::V8,
        RoomVersionId::V9,
        RoomVersionId::V10,
        RoomVersionId::V11,
        RoomVersionId::V12,
    ];
    for version in versions {
        let mut dag = Dag::new(version.clone());
        let (alice, bob, eve) = (user("alice"), user("bob"), user("eve"));
        let mut trunk = dag.create_room(&alice, &[], &[(&bob, 100)], json!({}));
        dag.join(&mut trunk, &bob);
        let (mut a, mut b) = (trunk.clone(), trunk.clone());
        let ban = dag.state(&mut a, &bob, "m.room.member", eve.as_str(), json!({ "membership": "ban" }));
        dag.join(&mut b, &eve);

        let resolved = resolve(&version, &[a.ids(), b.ids()], &dag.events).expect("resolves");
        assert_eq!(resolved[&member_key(&eve)], ban.event_id, "room v{version}");

        // Eve speaks after both branches, from her own (joined) view: valid on her branch, but
        // the state before her event is the resolved one, where she is banned.
        let mut eve_view = dag.merge(&[&a, &b], &b.ids());
        let msg = dag
            .try_send(&mut eve_view, &eve, "m.room.message", None, json!({ "msgtype": "m.text", "body": "hi" }))
            .expect("valid against eve's branch");
        let state_before = state_map(&resolved, &dag.events).expect("events present");
        let rules = &dag.rules.authorization;
        assert!(check_against_state(rules, &msg, &state_before).is_err(), "room v{version}");
        let verdict = check_incoming(rules, &msg, &dag.events, &state_before, &state_before);
        assert!(matches!(verdict, Verdict::Rejected(_)), "room v{version}: {verdict:?}");
    }
}

#[test]
fn unconflicted_state_passes_through() {
    for version in [RoomVersionId::V1, RoomVersionId::V11, RoomVersionId::V12] {
        let mut dag = Dag::new(version.clone());
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        let mut trunk = dag.create_room(&alice, &[], &[(&bob, 100)], json!({}));
        dag.join(&mut trunk, &bob);
        dag.join(&mut trunk, &carol);
        let (mut a, mut b) = (trunk.clone(), trunk.clone());
        let topic = dag.state(&mut a, &bob, "m.room.topic", "", json!({ "topic": "a" }));
        let name = dag.state(&mut b, &alice, "m.room.name", "", json!({ "name": "b" }));

        let (sa, sb) = (a.ids(), b.ids());
        let resolved = resolve(&version, &[sa.clone(), sb.clone()], &dag.events).expect("resolves");
        let common: StateIds =
            sa.iter().filter(|(k, v)| sb.get(*k) == Some(*v)).map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(common.len(), trunk.state.len(), "room v{version}");
        for (k, v) in &common {
            assert_eq!(resolved.get(k), Some(v), "room v{version}: {k:?}");
        }
        assert_eq!(resolved[&("m.room.topic".to_owned(), String::new())], topic.event_id);
        assert_eq!(resolved[&("m.room.name".to_owned(), String::new())], name.event_id);
        assert_eq!(resolved.len(), common.len() + 2);
    }
}

#[test]
fn one_or_equal_state_sets_come_back_without_lookups() {
    let (dag, trunk) = two_admins(RoomVersionId::V11, 100);
    let s = trunk.ids();
    let nothing = Default::default();
    assert_eq!(resolve(&dag.version, std::slice::from_ref(&s), &nothing).expect("one set"), s);
    assert_eq!(resolve(&dag.version, &[s.clone(), s.clone(), s.clone()], &nothing).expect("equal sets"), s);
    assert!(resolve(&dag.version, &[], &nothing).expect("no sets").is_empty());
}

#[test]
fn missing_events_are_an_error_not_a_panic() {
    for version in [RoomVersionId::V1, RoomVersionId::V11, RoomVersionId::V12] {
        let (mut dag, trunk) = two_admins(version.clone(), 100);
        let (bob, carol) = (user("bob"), user("carol"));
        let (mut a, mut b) = (trunk.clone(), trunk.clone());
        let topic = dag.state(&mut a, &bob, "m.room.topic", "", json!({ "topic": "a" }));
        let pl = dag.pl(&[(&bob, 100), (&carol, 100)], json!({ "state_default": 30 }));
        dag.state(&mut a, &bob, "m.room.power_levels", "", pl);
        let pl = dag.pl(&[(&bob, 100), (&carol, 100)], json!({ "state_default": 40 }));
        dag.state(&mut b, &carol, "m.room.power_levels", "", pl);

        // A state event.
        let mut events = dag.events.clone();
        events.remove(&topic.event_id);
        match resolve(&version, &[a.ids(), b.ids()], &events) {
            Err(ResolveError::MissingEvents(ids)) => assert_eq!(ids, vec![topic.event_id.clone()]),
            other => panic!("room v{version}: {other:?}"),
        }

        // An event only in the auth chains: the first power levels, replaced on both branches.
        if version != RoomVersionId::V1 {
            let first_pl = trunk.state[&pl_key()].event_id.clone();
            let mut events = dag.events.clone();
            events.remove(&first_pl);
            match resolve(&version, &[a.ids(), b.ids()], &events) {
                Err(ResolveError::MissingEvents(ids)) => assert!(ids.contains(&first_pl), "{ids:?}"),
                other => panic!("room v{version}: {other:?}"),
            }
        }
    }
}
