//! Room v12: the creator and `additional_creators` have unlimited power and are never listed in
//! the power levels.

use ganglion_core::{BuildError, CREATOR_POWER, user_power_level};
use ganglion_state::{check_against_state, resolve, state_map};
use ruma::RoomVersionId;
use serde_json::json;

use crate::dag::{Branch, Dag, user};

/// Alice creates the room with zed as an additional creator; bob is an admin (100) and carol a
/// moderator (50), which is enough to change the power levels (`state_default`).
fn room() -> (Dag, Branch) {
    let mut dag = Dag::new(RoomVersionId::V12);
    let (alice, zed, bob, carol) = (user("alice"), user("zed"), user("bob"), user("carol"));
    let mut trunk = dag.create_room(&alice, &[&zed], &[(&bob, 100), (&carol, 50)], json!({}));
    dag.join(&mut trunk, &zed);
    dag.join(&mut trunk, &bob);
    dag.join(&mut trunk, &carol);
    (dag, trunk)
}

#[test]
fn an_admin_cannot_ban_or_demote_a_creator() {
    let (mut dag, mut trunk) = room();
    let (bob, carol) = (user("bob"), user("carol"));
    let rules = dag.rules.authorization.clone();
    for creator in [user("alice"), user("zed")] {
        // A ban by a PL-100 admin: our builder refuses it, and so does the check on receipt.
        let ban = json!({ "membership": "ban" });
        let built = dag.try_send(&mut trunk.clone(), &bob, "m.room.member", Some(creator.as_str()), ban.clone());
        assert!(matches!(built, Err(BuildError::Forbidden(_))), "{built:?}");
        let auth: Vec<_> =
            [("m.room.power_levels", ""), ("m.room.member", bob.as_str()), ("m.room.member", creator.as_str())]
                .iter()
                .map(|(t, k)| &trunk.state[&((*t).to_owned(), (*k).to_owned())].event_id)
                .collect();
        let auth: Vec<_> = auth.into_iter().cloned().collect();
        let forged =
            dag.forge(&bob, "m.room.member", Some(creator.as_str()), ban, &auth.iter().collect::<Vec<_>>(), &trunk);
        assert!(check_against_state(&rules, &forged, &trunk.state).is_err());

        // Listing a creator in `users` at any level is invalid from v12 on, even at 100.
        for level in [0, 100] {
            let pl = json!({ "users": { bob.as_str(): 100, carol.as_str(): 50, creator.as_str(): level } });
            let built = dag.try_send(&mut trunk.clone(), &bob, "m.room.power_levels", Some(""), pl.clone());
            assert!(matches!(built, Err(BuildError::Forbidden(_))), "{built:?}");
            let pl_auth: Vec<_> = [("m.room.power_levels", ""), ("m.room.member", bob.as_str())]
                .iter()
                .map(|(t, k)| trunk.state[&((*t).to_owned(), (*k).to_owned())].event_id.clone())
                .collect();
            let forged =
                dag.forge(&bob, "m.room.power_levels", Some(""), pl, &pl_auth.iter().collect::<Vec<_>>(), &trunk);
            assert!(check_against_state(&rules, &forged, &trunk.state).is_err());
        }
    }
    // The same admin may still ban an ordinary user.
    dag.state(&mut trunk, &bob, "m.room.member", user("dave").as_str(), json!({ "membership": "ban" }));
}

#[test]
fn creators_keep_their_power_through_concurrent_power_level_changes() {
    let (mut dag, trunk) = room();
    let (alice, zed, bob, carol) = (user("alice"), user("zed"), user("bob"), user("carol"));
    let (mut a, mut b) = (trunk.clone(), trunk.clone());
    // Bob demotes carol while carol promotes dave. Bob's change sorts first (more power), and
    // carol, then at 0, can no longer change the power levels: bob's stands. Neither lists the
    // creators, who need no entry.
    let demote_carol = dag.state(&mut a, &bob, "m.room.power_levels", "", json!({ "users": { bob.as_str(): 100 } }));
    let promote = json!({ "users": { bob.as_str(): 100, carol.as_str(): 50, user("dave").as_str(): 50 } });
    dag.state(&mut b, &carol, "m.room.power_levels", "", promote);
    let resolved = resolve(&dag.version, &[a.ids(), b.ids()], &dag.events).expect("resolves");
    assert_eq!(resolved[&("m.room.power_levels".to_owned(), String::new())], demote_carol.event_id);

    let state = state_map(&resolved, &dag.events).expect("events present");
    for creator in [&alice, &zed] {
        assert_eq!(user_power_level(&state, creator, &dag.rules), CREATOR_POWER);
    }
    assert_eq!(user_power_level(&state, &bob, &dag.rules), 100);
    assert_eq!(user_power_level(&state, &carol, &dag.rules), 0);

    // After the merge a creator can still take everyone's power away and ban bob.
    let mut merged = dag.merge(&[&a, &b], &resolved);
    dag.state(&mut merged, &zed, "m.room.power_levels", "", json!({ "users": {} }));
    dag.state(&mut merged, &alice, "m.room.member", bob.as_str(), json!({ "membership": "ban" }));
}
