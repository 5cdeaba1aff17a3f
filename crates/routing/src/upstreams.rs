//! Where each role's instances listen: the backends the generated proxy configs point at.

use std::collections::BTreeMap;
use std::fmt;

use crate::role::{ParseRoleError, Role};

/// The backends (`host:port`) of each role's pool.
///
/// A role without backends of its own falls back to `main`'s, so a one-process deployment
/// (`ganglion serve`) needs only `main` set and every route still resolves. `main` itself falls
/// back to [`Upstreams::DEFAULT_MAIN`] if it was given no backends.
///
/// Roles that serve no HTTP ([`Role::serves_http`] is false) may be set but are never used by
/// the generators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstreams {
    backends: BTreeMap<Role, Vec<String>>,
}

/// The default main backend for a local, one-process deployment.
const DEFAULT_MAIN_BACKENDS: &[&str] = &["127.0.0.1:8008"];

impl Upstreams {
    /// The backend used for `main` when none is given: a local `ganglion serve` on port 8008.
    pub const DEFAULT_MAIN: &'static str = "127.0.0.1:8008";

    /// Upstreams where `main` has the given backends and every other role falls back to them.
    pub fn new<I, S>(main: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Upstreams { backends: BTreeMap::new() }.with(Role::Main, main)
    }

    /// The one-process deployment: everything goes to `backend` (e.g. `127.0.0.1:8008`).
    pub fn single(backend: impl Into<String>) -> Self {
        Upstreams::new([backend.into()])
    }

    /// Kubernetes-style service names, one Service per role on port 8008:
    /// `ganglion-main:8008`, `ganglion-sync:8008`, `ganglion-federation-reader:8008`,
    /// `ganglion-media:8008` (only roles that serve HTTP).
    pub fn default_kubernetes() -> Self {
        let mut upstreams = Upstreams::new([service_name(Role::Main)]);
        for role in Role::ALL {
            if role != Role::Main && role.serves_http() {
                upstreams.set(role, [service_name(role)]);
            }
        }
        upstreams
    }

    /// The services of `deploy/compose.yaml`: `main:8008`, `sync-1:8008` and `sync-2:8008`,
    /// `federation-reader:8008`, `media:8008`.
    pub fn docker_compose() -> Self {
        Upstreams::new(["main:8008"])
            .with(Role::Sync, ["sync-1:8008", "sync-2:8008"])
            .with(Role::FederationReader, ["federation-reader:8008"])
            .with(Role::Media, ["media:8008"])
    }

    /// Builder form of [`Upstreams::set`].
    #[must_use]
    pub fn with<I, S>(mut self, role: Role, backends: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.set(role, backends);
        self
    }

    /// Replaces `role`'s backends. An empty list makes the role fall back to `main`'s again.
    ///
    /// Backends are written into the configs verbatim (`host:port`, `[v6]:port`; nginx also takes
    /// `unix:/path`); [`Upstreams::apply_spec`] validates them, this does not.
    pub fn set<I, S>(&mut self, role: Role, backends: I)
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let backends: Vec<String> = backends.into_iter().map(Into::into).collect();
        if backends.is_empty() {
            self.backends.remove(&role);
        } else {
            self.backends.insert(role, backends);
        }
    }

    /// The backends that serve `role`: its own, else `main`'s, else [`Upstreams::DEFAULT_MAIN`].
    pub fn backends(&self, role: Role) -> Vec<&str> {
        self.backends
            .get(&role)
            .or_else(|| self.backends.get(&Role::Main))
            .map(|list| list.iter().map(String::as_str).collect())
            .unwrap_or_else(|| DEFAULT_MAIN_BACKENDS.to_vec())
    }

    /// Whether `role` has backends of its own (rather than falling back to `main`'s).
    pub fn is_explicit(&self, role: Role) -> bool {
        self.backends.contains_key(&role)
    }

    /// Applies one `role=host:port[,host:port…]` assignment, the form of a CLI flag such as
    /// `--upstream sync=sync-1:8008,sync-2:8008`. An empty list (`media=`) resets the role to
    /// fall back to `main`.
    pub fn apply_spec(&mut self, spec: &str) -> Result<(), UpstreamSpecError> {
        let error = |reason: String| UpstreamSpecError { spec: spec.to_owned(), reason };
        let (role, list) =
            spec.split_once('=').ok_or_else(|| error("expected ROLE=HOST:PORT[,HOST:PORT...]".to_owned()))?;
        let role: Role = role.trim().parse().map_err(|e: ParseRoleError| error(e.to_string()))?;
        let mut backends = Vec::new();
        for backend in list.split(',').map(str::trim).filter(|b| !b.is_empty()) {
            if backend.contains(|c: char| c.is_whitespace() || c.is_control() || "'\";{}#,".contains(c)) {
                return Err(error(format!("backend {backend:?} contains whitespace, a quote or one of ;{{}}#")));
            }
            backends.push(backend.to_owned());
        }
        self.set(role, backends);
        Ok(())
    }
}

impl Default for Upstreams {
    /// The same as `Upstreams::single(Upstreams::DEFAULT_MAIN)`.
    fn default() -> Self {
        Upstreams::single(Upstreams::DEFAULT_MAIN)
    }
}

/// `ganglion-<role>:8008`.
fn service_name(role: Role) -> String {
    format!("ganglion-{}:8008", role.as_str())
}

/// The error from [`Upstreams::apply_spec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSpecError {
    spec: String,
    reason: String,
}

impl fmt::Display for UpstreamSpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid upstream {:?}: {}", self.spec, self.reason)
    }
}

impl std::error::Error for UpstreamSpecError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_fall_back_to_main() {
        let upstreams = Upstreams::single("10.0.0.1:8008");
        for role in Role::ALL {
            assert_eq!(upstreams.backends(role), ["10.0.0.1:8008"]);
        }
        assert!(upstreams.is_explicit(Role::Main));
        assert!(!upstreams.is_explicit(Role::Sync));

        let upstreams = upstreams.with(Role::Sync, ["a:1", "b:2"]);
        assert_eq!(upstreams.backends(Role::Sync), ["a:1", "b:2"]);
        assert_eq!(upstreams.backends(Role::Media), ["10.0.0.1:8008"]);

        let upstreams = upstreams.with(Role::Sync, Vec::<String>::new());
        assert_eq!(upstreams.backends(Role::Sync), ["10.0.0.1:8008"]);
    }

    #[test]
    fn empty_main_falls_back_to_default() {
        let upstreams = Upstreams::new(Vec::<String>::new());
        assert_eq!(upstreams.backends(Role::Main), [Upstreams::DEFAULT_MAIN]);
        assert_eq!(upstreams.backends(Role::Sync), [Upstreams::DEFAULT_MAIN]);
        assert_eq!(Upstreams::default().backends(Role::Media), ["127.0.0.1:8008"]);
    }

    #[test]
    fn kubernetes_names() {
        let upstreams = Upstreams::default_kubernetes();
        assert_eq!(upstreams.backends(Role::Main), ["ganglion-main:8008"]);
        assert_eq!(upstreams.backends(Role::Sync), ["ganglion-sync:8008"]);
        assert_eq!(upstreams.backends(Role::FederationReader), ["ganglion-federation-reader:8008"]);
        assert_eq!(upstreams.backends(Role::Media), ["ganglion-media:8008"]);
        assert!(!upstreams.is_explicit(Role::Pusher));
    }

    #[test]
    fn specs() {
        let mut upstreams = Upstreams::default();
        upstreams.apply_spec("sync=s1:8008, s2:8008").unwrap();
        assert_eq!(upstreams.backends(Role::Sync), ["s1:8008", "s2:8008"]);
        upstreams.apply_spec("sync=").unwrap();
        assert!(!upstreams.is_explicit(Role::Sync));
        upstreams.apply_spec("main=m:1").unwrap();
        assert_eq!(upstreams.backends(Role::Media), ["m:1"]);

        let err = upstreams.apply_spec("syncer=a:1").unwrap_err().to_string();
        assert!(err.contains("unknown role"), "{err}");
        assert!(upstreams.apply_spec("sync").is_err());
        assert!(upstreams.apply_spec("sync=a:1;b").is_err());
        assert!(upstreams.apply_spec("sync=a b:1").is_err());
    }
}
