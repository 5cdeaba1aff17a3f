//! `ganglion`: the one binary. It loads the configuration once, picks the role(s) to run, wires
//! them to the database, the replication bus and each other's APIs, and serves the listeners.
//!
//! Commands: `serve` (every role in one process), `worker <role>`, `migrate`, `config
//! generate|check`, `register-user`, `routes`.

mod cli;
mod listeners;
mod roles;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::run()
}
