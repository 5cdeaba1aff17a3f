//! The checks on receipt of a PDU: against its own auth events, the state before it, and the
//! current state.

use ganglion_state::{Verdict, check_auth_events, check_incoming};
use ruma::RoomVersionId;
use serde_json::json;

use crate::dag::{Branch, Dag, user};

/// Alice's public room, with bob (100) and eve joined.
fn room(version: RoomVersionId) -> (Dag, Branch) {
    let mut dag = Dag::new(version);
    let (alice, bob, eve) = (user("alice"), user("bob"), user("eve"));
    let mut trunk = dag.create_room(&alice, &[], &[(&bob, 100)], json!({}));
    dag.join(&mut trunk, &bob);
    dag.join(&mut trunk, &eve);
    (dag, trunk)
}

fn text(body: &str) -> serde_json::Value {
    json!({ "msgtype": "m.text", "body": body })
}

#[test]
fn events_citing_wrong_or_missing_auth_events_are_rejected() {
    for version in [RoomVersionId::V6, RoomVersionId::V11, RoomVersionId::V12] {
        let (mut dag, trunk) = room(version.clone());
        let eve = user("eve");
        let rules = dag.rules.authorization.clone();
        let id = |ty: &str, key: &str| trunk.state[&(ty.to_owned(), key.to_owned())].event_id.clone();
        let mut proper = vec![id("m.room.power_levels", ""), id("m.room.member", eve.as_str())];
        if !rules.room_create_event_id_as_room_id {
            proper.push(id("m.room.create", ""));
        }

        let valid = dag.try_send(&mut trunk.clone(), &eve, "m.room.message", None, text("ok")).expect("valid");
        assert_eq!(check_auth_events(&rules, &valid, &dag.events), Ok(()), "room v{version}");
        let forged_ok = dag.forge(&eve, "m.room.message", None, text("ok"), &proper.iter().collect::<Vec<_>>(), &trunk);
        assert_eq!(check_auth_events(&rules, &forged_ok, &dag.events), Ok(()), "room v{version}");

        // A join rules event is no auth event of a message.
        let mut extra = proper.clone();
        extra.push(id("m.room.join_rules", ""));
        let wrong = dag.forge(&eve, "m.room.message", None, text("x"), &extra.iter().collect::<Vec<_>>(), &trunk);
        let err = check_auth_events(&rules, &wrong, &dag.events).expect_err("unexpected auth event");
        assert!(err.contains("unexpected auth event"), "{err}");

        // An auth event nobody has.
        let mut unknown = proper.clone();
        unknown[1] = "$nowhere".try_into().expect("event ID");
        let missing = dag.forge(&eve, "m.room.message", None, text("x"), &unknown.iter().collect::<Vec<_>>(), &trunk);
        assert!(check_auth_events(&rules, &missing, &dag.events).is_err());

        // Without her membership among them, eve is not joined as far as the auth events say.
        let no_member: Vec<_> = proper.iter().filter(|i| **i != id("m.room.member", eve.as_str())).collect();
        let unjoined = dag.forge(&eve, "m.room.message", None, text("x"), &no_member, &trunk);
        assert!(check_auth_events(&rules, &unjoined, &dag.events).is_err());

        // A rejected auth event.
        let mut events = dag.events.clone();
        events.get_mut(&id("m.room.member", eve.as_str())).expect("present").rejected = true;
        let err = check_auth_events(&rules, &forged_ok, &events).expect_err("rejected auth event");
        assert!(err.contains("rejected"), "{err}");

        for pdu in [&wrong, &missing, &unjoined] {
            let verdict = check_incoming(&rules, pdu, &dag.events, &trunk.state, &trunk.state);
            assert!(matches!(verdict, Verdict::Rejected(_)), "{verdict:?}");
        }
        let verdict = check_incoming(&rules, &valid, &dag.events, &trunk.state, &trunk.state);
        assert_eq!(verdict, Verdict::Accepted);
    }
}

#[test]
fn an_event_valid_where_it_sits_but_not_now_is_soft_failed() {
    for version in [RoomVersionId::V6, RoomVersionId::V11, RoomVersionId::V12] {
        let (mut dag, trunk) = room(version.clone());
        let (bob, eve) = (user("bob"), user("eve"));
        let rules = dag.rules.authorization.clone();
        // Bob bans eve; eve's server has not seen it and sends a message after the trunk.
        let mut current = trunk.clone();
        dag.state(&mut current, &bob, "m.room.member", eve.as_str(), json!({ "membership": "ban" }));
        let msg = dag.try_send(&mut trunk.clone(), &eve, "m.room.message", None, text("late")).expect("valid");

        let verdict = check_incoming(&rules, &msg, &dag.events, &trunk.state, &current.state);
        assert!(
            matches!(&verdict, Verdict::SoftFailed(r) if r.contains("current state")),
            "room v{version}: {verdict:?}"
        );
        // Against the state it was sent in, it is fine.
        assert_eq!(check_incoming(&rules, &msg, &dag.events, &trunk.state, &trunk.state), Verdict::Accepted);
    }
}
