//! Application services (bridges and bots): their registrations, read from Synapse's YAML files,
//! and the HTTP client for the Application Service API that `main` (queries, ping) and the
//! `pusher` role (transactions) call.
//!
//! Map:
//! - `registration.rs`: [`Registration`] and the field-by-field checks of one file.
//! - `client.rs`: [`AppserviceClient`]: transactions, user and alias queries, third-party
//!   lookups and ping, with the `hs_token`.
//! - here: [`Appservices`], every registration of the process, looked up by token, user, alias or
//!   protocol, and [`load`].
//!
//! Depends on nothing of Ganglion's; `ganglion-http` (authentication), `main` and `pusher` use it.

#![warn(missing_docs)]

mod client;
mod registration;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use sha2::{Digest, Sha256};

pub use client::{AppserviceClient, CallError};
pub use registration::{Namespace, Registration};

/// Every application service this process knows, shared cheaply.
#[derive(Debug, Clone, Default)]
pub struct Appservices {
    all: Arc<Vec<Arc<Registration>>>,
    /// SHA-256 of each `as_token` → index, so a token is found without comparing secrets in code
    /// whose timing depends on them.
    by_token: Arc<HashMap<[u8; 32], usize>>,
}

/// Why the registrations could not be loaded: one line per problem.
#[derive(Debug, thiserror::Error)]
#[error("app_service_config_files: {}", problems.join("; "))]
pub struct LoadError {
    /// Every problem, each naming its file and key.
    pub problems: Vec<String>,
}

/// Reads and checks every registration file: each on its own, then together (ids and tokens
/// unique, exclusive namespaces not claimed twice by the same regex).
///
/// # Errors
/// [`LoadError`] listing every problem in every file.
pub fn load(paths: &[PathBuf], server_name: &str) -> Result<Appservices, LoadError> {
    let mut problems = Vec::new();
    let mut regs: Vec<Registration> = Vec::new();
    for path in paths {
        match registration::read(path, server_name) {
            Ok(r) => regs.push(r),
            Err(p) => problems.extend(p),
        }
    }
    for (i, r) in regs.iter().enumerate() {
        for earlier in &regs[..i] {
            let clash = |what: &str| format!("{}: {what} is also used by {}", r.path.display(), earlier.path.display());
            if r.id == earlier.id {
                problems.push(clash(&format!("id {:?}", r.id)));
            }
            if r.as_token == earlier.as_token || r.as_token == earlier.hs_token {
                problems.push(clash("as_token"));
            }
            if r.hs_token == earlier.hs_token || r.hs_token == earlier.as_token {
                problems.push(clash("hs_token"));
            }
            if r.sender == earlier.sender {
                problems.push(clash(&format!("sender_localpart {:?}", r.sender.localpart())));
            }
        }
    }
    if !problems.is_empty() {
        return Err(LoadError { problems });
    }
    Ok(Appservices::new(regs))
}

fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Appservices {
    /// A registry of `regs` (already checked).
    pub fn new(regs: Vec<Registration>) -> Self {
        let by_token = regs.iter().enumerate().map(|(i, r)| (token_digest(&r.as_token), i)).collect();
        Self { all: Arc::new(regs.into_iter().map(Arc::new).collect()), by_token: Arc::new(by_token) }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// Every registration.
    pub fn all(&self) -> &[Arc<Registration>] {
        &self.all
    }

    /// The service whose `as_token` this is.
    pub fn by_as_token(&self, token: &str) -> Option<&Arc<Registration>> {
        self.by_token.get(&token_digest(token)).map(|&i| &self.all[i])
    }

    /// The service with this `id`.
    pub fn by_id(&self, id: &str) -> Option<&Arc<Registration>> {
        self.all.iter().find(|r| r.id == id)
    }

    /// The service that claims `user_id` exclusively, if one does.
    pub fn exclusive_user_owner(&self, user_id: &str) -> Option<&Arc<Registration>> {
        self.all.iter().find(|r| r.is_exclusive_user(user_id))
    }

    /// The service that claims `alias` exclusively, if one does.
    pub fn exclusive_alias_owner(&self, alias: &str) -> Option<&Arc<Registration>> {
        self.all.iter().find(|r| r.is_exclusive_alias(alias))
    }

    /// The services with a URL whose user namespace holds `user_id`.
    pub fn interested_in_user<'a>(&'a self, user_id: &'a str) -> impl Iterator<Item = &'a Arc<Registration>> + 'a {
        self.all.iter().filter(move |r| r.url.is_some() && r.users.iter().any(|n| n.matches(user_id)))
    }

    /// The services with a URL whose alias namespace holds `alias`.
    pub fn interested_in_alias<'a>(&'a self, alias: &'a str) -> impl Iterator<Item = &'a Arc<Registration>> + 'a {
        self.all.iter().filter(move |r| r.url.is_some() && r.is_interested_in_alias(alias))
    }

    /// The services with a URL that declare `protocol`.
    pub fn for_protocol<'a>(&'a self, protocol: &'a str) -> impl Iterator<Item = &'a Arc<Registration>> + 'a {
        self.all.iter().filter(move |r| r.url.is_some() && r.protocols.iter().any(|p| p == protocol))
    }
}

#[cfg(test)]
mod tests;
