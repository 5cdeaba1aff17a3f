//! Bytes on disk for one big room: builds a room of `--members` members (a few of them local, the
//! rest on another server, as in a large federated room) and `--messages` messages from the local
//! members, with real signed events, through the same `EventStore::persist` path the writer uses
//! (state groups, current state, the graph, push actions for the local members). Then prints the
//! database's size and each table's.
//!
//! ```sh
//! cargo run --release -p ganglion-storage --example room_bytes_on_disk -- --backend sqlite
//! cargo run --release -p ganglion-storage --example room_bytes_on_disk -- --backend postgres
//! ```
//! PostgreSQL is reached at `TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`);
//! the example makes a scratch database and drops it at the end. PostgreSQL is vacuumed (plain
//! `VACUUM`, as autovacuum would) before it is measured.

use std::collections::HashMap;
use std::time::Instant;

use ganglion_core::{EventTemplate, Pdu, RoomContext, ServerSigningKey, StateMap, build_event};
use ganglion_storage::test_util::TestDb;
use ganglion_storage::{Backend, EventStore, NewEvent};
use ruma::{OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomVersionId};
use serde_json::json;

struct Args {
    backend: Backend,
    members: usize,
    local_members: usize,
    messages: usize,
}

fn args() -> Args {
    let mut a = Args { backend: Backend::Sqlite, members: 5000, local_members: 10, messages: 100_000 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => {
                a.backend = match value.as_str() {
                    "sqlite" => Backend::Sqlite,
                    "postgres" => Backend::Postgres,
                    other => panic!("unknown backend {other}"),
                }
            }
            "--members" => a.members = value.parse().expect("--members"),
            "--local-members" => a.local_members = value.parse().expect("--local-members"),
            "--messages" => a.messages = value.parse().expect("--messages"),
            other => panic!("unknown flag {other}"),
        }
    }
    a.local_members = a.local_members.clamp(1, a.members);
    a
}

/// Builds events in one room, keeping its state in memory as the writer does.
struct RoomBuilder {
    version: RoomVersionId,
    room_id: Option<OwnedRoomId>,
    state: StateMap,
    last: Option<(OwnedEventId, u64)>,
    now: u64,
}

impl RoomBuilder {
    fn build(
        &mut self,
        sender: &OwnedUserId,
        server: &(OwnedServerName, ServerSigningKey),
        template: EventTemplate,
    ) -> (Pdu, OwnedRoomId) {
        self.now += 1;
        let ctx = RoomContext {
            room_id: self.room_id.as_deref(),
            version: &self.version,
            state: &self.state,
            prev_events: self.last.iter().map(|(id, _)| id.clone()).collect(),
            max_prev_depth: self.last.as_ref().map_or(0, |(_, d)| *d),
        };
        let (pdu, room_id) = build_event(&template, sender, &ctx, &server.0, &server.1, self.now).expect("build");
        self.room_id = Some(room_id.clone());
        self.last = Some((pdu.event_id.clone(), u64::from(pdu.depth)));
        if let Some(k) = &pdu.state_key {
            self.state.insert((pdu.event_type.to_string(), k.clone()), pdu.clone());
        }
        (pdu, room_id)
    }
}

fn new_event(pdu: &Pdu, room_id: &OwnedRoomId, creates: bool, push: Vec<ganglion_storage::PushAction>) -> NewEvent {
    NewEvent {
        creates_room: creates.then(|| ("12".to_owned(), pdu.sender.clone())),
        push_actions: push,
        ..NewEvent::ordinary(pdu, room_id)
    }
}

async fn sizes(t: &TestDb) -> (i64, Vec<(String, i64)>) {
    let pool = t.pool();
    match t.db.backend() {
        Backend::Postgres => {
            // What autovacuum would do soon anyway: reclaim the dead rows of updated tables
            // (forward extremities, the room's current group), so the figures are steady-state.
            sqlx::query("VACUUM").execute(pool).await.expect("vacuum");
            let total: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())::BIGINT")
                .fetch_one(pool)
                .await
                .expect("size");
            let tables: Vec<(String, i64)> = sqlx::query_as(
                "SELECT relname::TEXT, pg_total_relation_size(relid)::BIGINT FROM pg_catalog.pg_statio_user_tables
                 ORDER BY 2 DESC",
            )
            .fetch_all(pool)
            .await
            .expect("tables");
            (total, tables)
        }
        Backend::Sqlite => {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(pool).await.expect("checkpoint");
            let path = t.url.trim_start_matches("sqlite://").split('?').next().unwrap_or_default().to_owned();
            let total = std::fs::metadata(&path).map(|m| i64::try_from(m.len()).unwrap_or(0)).unwrap_or(0);
            // Per table (indexes included) when SQLite was built with the dbstat table.
            let tables: Vec<(String, i64)> = sqlx::query_as(
                "SELECT COALESCE(m.tbl_name, s.name), SUM(s.pgsize) FROM dbstat s
                 LEFT JOIN sqlite_master m ON m.name = s.name GROUP BY 1 ORDER BY 2 DESC",
            )
            .fetch_all(pool)
            .await
            .unwrap_or_default();
            (total, tables)
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = args();
    let t = TestDb::new(a.backend).await;
    let store = EventStore::new(t.db.clone());
    let here = (OwnedServerName::try_from("here.example").expect("name"), ServerSigningKey::generate());
    let there = (OwnedServerName::try_from("there.example").expect("name"), ServerSigningKey::generate());
    let user = |i: usize| -> OwnedUserId {
        let server = if i < a.local_members { "here.example" } else { "there.example" };
        OwnedUserId::try_from(format!("@member{i}:{server}")).expect("user id")
    };
    let creator = user(0);
    let mut room =
        RoomBuilder { version: RoomVersionId::V12, room_id: None, state: StateMap::new(), last: None, now: 1 };
    let mut batch: Vec<NewEvent> = Vec::new();
    let mut position = 0_i64;
    let started = Instant::now();
    let flush = |batch: &mut Vec<NewEvent>| {
        let rows = std::mem::take(batch);
        let store = store.clone();
        async move { store.persist_batch(&rows).await.expect("persist") }
    };
    let mut push = |ev: &mut NewEvent, batch: &mut Vec<NewEvent>| {
        position += 1;
        ev.stream_ordering = position;
        batch.push(ev.clone());
    };

    let tpl = |ty: &str, key: Option<&str>, content: serde_json::Value| EventTemplate {
        event_type: ty.to_owned(),
        state_key: key.map(str::to_owned),
        content,
    };
    let (pdu, room_id) = room.build(&creator, &here, tpl("m.room.create", Some(""), json!({"room_version": "12"})));
    push(&mut new_event(&pdu, &room_id, true, Vec::new()), &mut batch);
    let join = |name: String| json!({"membership": "join", "displayname": name});
    for (ty, key, content) in [
        ("m.room.member", Some(creator.as_str()), join("member0".into())),
        (
            "m.room.power_levels",
            Some(""),
            json!({"users": {}, "users_default": 0, "events_default": 0, "state_default": 50}),
        ),
        ("m.room.join_rules", Some(""), json!({"join_rule": "public"})),
        ("m.room.history_visibility", Some(""), json!({"history_visibility": "shared"})),
        ("m.room.name", Some(""), json!({"name": "A big room"})),
    ] {
        let (pdu, _) = room.build(&creator, &here, tpl(ty, key, content));
        push(&mut new_event(&pdu, &room_id, false, Vec::new()), &mut batch);
    }
    for i in 1..a.members {
        let u = user(i);
        let server = if i < a.local_members { &here } else { &there };
        let (pdu, _) = room.build(&u, server, tpl("m.room.member", Some(u.as_str()), join(format!("member{i}"))));
        push(&mut new_event(&pdu, &room_id, false, Vec::new()), &mut batch);
        if batch.len() >= 200 {
            flush(&mut batch).await;
        }
    }
    flush(&mut batch).await;
    let joined = started.elapsed();
    let locals: Vec<OwnedUserId> = (0..a.local_members).map(user).collect();
    for m in 0..a.messages {
        let sender = &locals[m % locals.len()];
        let body = format!("message {m} of a big room, long enough to look like something a person would write");
        let (pdu, _) =
            room.build(sender, &here, tpl("m.room.message", None, json!({"msgtype": "m.text", "body": body})));
        // The default rules notify every other local member of a message.
        let notified = locals
            .iter()
            .filter(|u| *u != sender)
            .map(|u| ganglion_storage::PushAction {
                user_id: u.clone(),
                highlight: false,
                thread_id: String::new(),
                actions: r#"["notify"]"#.into(),
            })
            .collect();
        push(&mut new_event(&pdu, &room_id, false, notified), &mut batch);
        if batch.len() >= 200 {
            flush(&mut batch).await;
        }
    }
    flush(&mut batch).await;
    let written = started.elapsed();

    let (total, tables) = sizes(&t).await;
    // PostgreSQL again after VACUUM FULL: the live data alone, without the dead index entries a
    // burst of writes leaves behind faster than autovacuum visits (forward extremities churn).
    let compacted = if t.db.backend() == Backend::Postgres {
        sqlx::query("VACUUM FULL").execute(t.pool()).await.expect("vacuum full");
        Some(sizes(&t).await)
    } else {
        None
    };
    let count = |sql: &'static str| {
        let pool = t.pool().clone();
        async move { sqlx::query_scalar::<_, i64>(sql).fetch_one(&pool).await.expect("count") }
    };
    let events = count("SELECT COUNT(*) FROM events").await;
    let groups = count("SELECT COUNT(*) FROM state_groups").await;
    let snapshots = count("SELECT COUNT(*) FROM state_groups WHERE prev_group IS NULL").await;
    let entries = count("SELECT COUNT(*) FROM state_group_entries").await;
    let state_rows_if_copied: u64 = {
        // What storing every event's full state would take: each event's state size, summed.
        let state_events = a.members + 5;
        let during_setup: u64 = (1..=state_events as u64).sum();
        during_setup + a.messages as u64 * state_events as u64
    };
    println!(
        "backend {:?}: {} members ({} local), {} messages, {events} events written in {:.1}s (members joined after {:.1}s)",
        a.backend,
        a.members,
        a.local_members,
        a.messages,
        written.as_secs_f64(),
        joined.as_secs_f64()
    );
    println!(
        "state groups {groups} ({snapshots} snapshots), state_group_entries {entries} rows; a full copy per event would be {state_rows_if_copied} rows"
    );
    println!("database total: {:.1} MiB", total as f64 / 1_048_576.0);
    let mut by_name: HashMap<String, i64> = HashMap::new();
    for (name, bytes) in tables {
        *by_name.entry(name).or_default() += bytes;
    }
    let mut by_size: Vec<(String, i64)> = by_name.into_iter().filter(|(_, b)| *b > 0).collect();
    by_size.sort_by_key(|x| std::cmp::Reverse(x.1));
    for (name, bytes) in by_size.iter().take(14) {
        println!("  {name:<28} {:>9.2} MiB", *bytes as f64 / 1_048_576.0);
    }
    if let Some((total, tables)) = compacted {
        println!("after VACUUM FULL: {:.1} MiB", total as f64 / 1_048_576.0);
        for (name, bytes) in tables.iter().filter(|(_, b)| *b > 0).take(14) {
            println!("  {name:<28} {:>9.2} MiB", *bytes as f64 / 1_048_576.0);
        }
    }
    t.cleanup().await;
}
