//! How long `ganglion_state::resolve` takes on a large forked room.
//!
//! Run me (release, or the numbers mean little):
//!
//! ```text
//! cargo run --release -p ganglion-state --example state_res_timing -- \
//!     --members 1000,5000,10000 --conflicts 10,200,1000 --repeats 5 --versions 11,12
//! ```
//!
//! For each room version and member count it builds one room (signed events, as the server would):
//! create, power levels, public join rules, an admin, then the members joining one after another,
//! with a power-levels change every 1,000 joins. For each conflict count K the room then forks in
//! two: on one branch the admin changes the power levels and K-1 members change their display
//! name; on the other the creator changes the power levels, and the same members change theirs
//! too, except every tenth, whom the admin kicks. That gives K conflicted state keys, some of them
//! power events. Only `resolve` is timed; building and signing the events is not.

#[allow(dead_code, unreachable_pub)]
#[path = "../tests/it/dag.rs"]
mod dag;

use std::time::{Duration, Instant};

use ruma::RoomVersionId;
use serde_json::json;

use dag::{Branch, Dag, user};

struct Args {
    members: Vec<usize>,
    conflicts: Vec<usize>,
    repeats: usize,
    versions: Vec<RoomVersionId>,
}

fn parse_args() -> Args {
    let mut args =
        Args { members: vec![1000, 5000, 10_000], conflicts: vec![10, 200, 1000], repeats: 5, versions: vec![] };
    let mut versions = "11,12".to_owned();
    let mut it = std::env::args().skip(1);
    let list = |s: Option<String>| -> Vec<usize> {
        s.unwrap_or_default().split(',').map(|n| n.trim().parse().expect("a comma-separated list of numbers")).collect()
    };
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--members" => args.members = list(it.next()),
            "--conflicts" => args.conflicts = list(it.next()),
            "--repeats" => args.repeats = list(it.next()).first().copied().unwrap_or(5).max(1),
            "--versions" => versions = it.next().unwrap_or_default(),
            other => panic!("unknown argument {other}; see the top of examples/state_res_timing.rs"),
        }
    }
    args.versions = versions.split(',').map(|v| RoomVersionId::try_from(v.trim()).expect("a room version")).collect();
    args
}

/// The room before the fork: `members` joined, the admin `bob`, creator `alice`.
fn trunk(version: RoomVersionId, members: usize) -> (Dag, Branch) {
    let mut dag = Dag::new(version);
    let (alice, bob) = (user("alice"), user("bob"));
    let mut trunk = dag.create_room(&alice, &[], &[(&bob, 100)], json!({}));
    dag.join(&mut trunk, &bob);
    for i in 0..members {
        dag.join(&mut trunk, &user(&format!("m{i}")));
        if i % 1000 == 999 {
            let moderator = user(&format!("m{i}"));
            let pl = dag.pl(&[(&bob, 100), (&moderator, 50)], json!({ "state_default": 50 + (i / 1000) % 10 }));
            dag.state(&mut trunk, &alice, "m.room.power_levels", "", pl);
        }
    }
    (dag, trunk)
}

/// Two branches off `trunk` with `conflicts` conflicted keys.
fn fork(dag: &mut Dag, trunk: &Branch, conflicts: usize) -> (Branch, Branch) {
    let (alice, bob) = (user("alice"), user("bob"));
    let (mut a, mut b) = (trunk.clone(), trunk.clone());
    let pl = dag.pl(&[(&bob, 100)], json!({ "state_default": 40 }));
    dag.state(&mut a, &bob, "m.room.power_levels", "", pl);
    let pl = dag.pl(&[(&bob, 100)], json!({ "state_default": 60 }));
    dag.state(&mut b, &alice, "m.room.power_levels", "", pl);
    for i in 0..conflicts.saturating_sub(1) {
        let m = user(&format!("m{i}"));
        dag.state(
            &mut a,
            &m,
            "m.room.member",
            m.as_str(),
            json!({ "membership": "join", "displayname": format!("a{i}") }),
        );
        if i % 10 == 0 {
            dag.state(&mut b, &bob, "m.room.member", m.as_str(), json!({ "membership": "leave" }));
        } else {
            let name = json!({ "membership": "join", "displayname": format!("b{i}") });
            dag.state(&mut b, &m, "m.room.member", m.as_str(), name);
        }
    }
    (a, b)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let args = parse_args();
    println!("| room version | state events | conflicted keys | events in DAG | median ms | min ms | max ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for version in &args.versions {
        for &members in &args.members {
            let build = Instant::now();
            let (mut dag, trunk) = trunk(version.clone(), members);
            let trunk_events = dag.events.len();
            eprintln!("v{version}: built {members} members in {:.1} s", build.elapsed().as_secs_f64());
            for &conflicts in &args.conflicts {
                if conflicts > members {
                    continue;
                }
                let (a, b) = fork(&mut dag, &trunk, conflicts);
                let sets = [a.ids(), b.ids()];
                let conflicted = sets[0].iter().filter(|(k, v)| sets[1].get(*k) != Some(*v)).count();
                let mut times = Vec::with_capacity(args.repeats);
                let mut size = 0;
                for _ in 0..args.repeats {
                    let start = Instant::now();
                    let resolved = ganglion_state::resolve(version, &sets, &dag.events).expect("resolves");
                    times.push(start.elapsed());
                    size = resolved.len();
                }
                times.sort();
                let dag_events = trunk_events + (a.depth - trunk.depth + b.depth - trunk.depth) as usize;
                println!(
                    "| {version} | {size} | {conflicted} | {dag_events} | {:.1} | {:.1} | {:.1} |",
                    ms(times[times.len() / 2]),
                    ms(times[0]),
                    ms(times[times.len() - 1]),
                );
            }
        }
    }
}
