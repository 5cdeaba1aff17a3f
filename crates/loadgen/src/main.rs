//! `ganglion-loadgen`: load-tests any Matrix homeserver over the Client-Server API. See the
//! library's docs and `docs/benchmarks.md`.

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};
use ganglion_loadgen::{big_room, client, delivery, sync_cost};
use serde_json::{Value, json};

/// Which measurements to run.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Send→arrival latency in long-polling receivers, lost/duplicates, server CPU per event.
    Delivery,
    /// Incremental /sync with nothing new and with one new event.
    Incremental,
    /// Initial /sync of a user in many rooms with a lazy-loading filter.
    Initial,
    /// All three, in that order.
    All,
    /// Not a measurement: fills one room with many members and messages (for bytes on disk).
    BigRoom,
}

/// Load generator for Matrix homeservers (Client-Server API only; open registration with
/// `m.login.dummy` required; rate limits should be off).
#[derive(Parser)]
#[command(name = "ganglion-loadgen", version)]
struct Cli {
    /// What to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Base URL of the homeserver's client API.
    #[arg(long, default_value = "http://127.0.0.1:8008")]
    url: String,
    /// Print one JSON document on stdout (the summary then goes to stderr).
    #[arg(long)]
    json: bool,
    /// A server process whose CPU time is measured over the delivery scenario (repeatable; its
    /// living descendants count too).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// A database process serving the server (e.g. a PostgreSQL backend), measured like
    /// `--server-pid` but reported apart (repeatable).
    #[arg(long = "db-pid")]
    db_pids: Vec<u32>,
    /// Give up after this many seconds in all.
    #[arg(long, default_value_t = 1800)]
    max_secs: u64,
    /// Delivery: receiving clients.
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Delivery: messages in all.
    #[arg(long, default_value_t = 1000)]
    messages: usize,
    /// Delivery: sending users.
    #[arg(long, default_value_t = 1)]
    senders: usize,
    /// Delivery: messages per second, all senders together.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Delivery: seconds after the last send before missing messages count as lost.
    #[arg(long, default_value_t = 10)]
    grace_secs: u64,
    /// Delivery: the receivers' filter's timeline limit.
    #[arg(long, default_value_t = 50)]
    timeline_limit: u32,
    /// Incremental: measured iterations.
    #[arg(long, default_value_t = 100)]
    iterations: usize,
    /// Initial: rooms to create and sync.
    #[arg(long, default_value_t = 500)]
    rooms: usize,
    /// Initial: room creations at once.
    #[arg(long, default_value_t = 4)]
    create_concurrency: usize,
    /// Initial: initial syncs to time (the first is the headline).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Big room: members, the creator included.
    #[arg(long, default_value_t = 5000)]
    members: usize,
    /// Big room: messages.
    #[arg(long, default_value_t = 100_000)]
    room_messages: usize,
    /// Big room: requests at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
}

/// Prints a summary: on stdout, or on stderr when stdout carries the JSON.
fn say(cli: &Cli, what: &dyn std::fmt::Display) {
    if cli.json {
        eprint!("{what}");
    } else {
        print!("{what}");
    }
}

async fn run(cli: &Cli) -> Result<Value> {
    let http = client::http_client()?;
    let base = cli.url.trim_end_matches('/');
    let server = client::server_version(&http, base).await;
    let mut out = json!({ "url": base, "server": server, "loadgen": env!("CARGO_PKG_VERSION") });
    say(cli, &format!("server: {base} ({})\n", server.as_deref().unwrap_or("version unknown")));
    let all = cli.scenario == Scenario::All;
    if all || cli.scenario == Scenario::Delivery {
        let params = delivery::Params {
            clients: cli.clients,
            messages: cli.messages,
            senders: cli.senders,
            rate_per_sec: cli.rate,
            grace: Duration::from_secs(cli.grace_secs),
            timeline_limit: cli.timeline_limit,
            ..delivery::Params::default()
        };
        let r = delivery::run(&http, base, &params, &cli.server_pids, &cli.db_pids).await.context("delivery")?;
        say(cli, &r);
        out["delivery"] = r.to_json();
    }
    if all || cli.scenario == Scenario::Incremental {
        let r = sync_cost::incremental(&http, base, cli.iterations).await.context("incremental sync")?;
        say(cli, &r);
        out["incremental_sync"] = r.to_json();
    }
    if all || cli.scenario == Scenario::Initial {
        let r = sync_cost::initial(&http, base, cli.rooms, cli.create_concurrency, cli.repeats)
            .await
            .context("initial sync")?;
        say(cli, &r);
        out["initial_sync"] = r.to_json();
    }
    if cli.scenario == Scenario::BigRoom {
        let params = big_room::Params {
            members: cli.members,
            messages: cli.room_messages,
            senders: cli.senders.max(10),
            concurrency: cli.concurrency,
        };
        let r = big_room::run(&http, base, &params).await.context("big room")?;
        say(cli, &r);
        out["big_room"] = r.to_json();
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let out = tokio::time::timeout(Duration::from_secs(cli.max_secs), run(&cli))
        .await
        .with_context(|| format!("gave up after {}s (--max-secs)", cli.max_secs))??;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(())
}
