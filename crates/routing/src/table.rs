//! The routing table: which role serves which request path.

use std::sync::LazyLock;

use regex::RegexSet;

use crate::role::{Balance, Role};

/// One row of the routing table: requests whose path matches `pattern` go to `role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The role whose pool serves matching requests.
    pub role: Role,
    /// An anchored (`^…`) regular expression over the request path (no query string), in the
    /// syntax shared by PCRE (nginx, HAProxy) and the `regex` crate, e.g.
    /// `^/_matrix/client/(r0|v3)/sync$`. Patterns contain no whitespace, quotes, `;`, `{` or
    /// `}`, so they can be written into nginx and HAProxy configs verbatim.
    pub pattern: &'static str,
    /// How the proxy spreads matching requests over the role's instances.
    pub balance: Balance,
    /// What the route is for, in a few words.
    pub description: &'static str,
}

/// The routing table, **in match order: the first route whose pattern matches wins**.
///
/// Order matters where prefixes overlap: `^/_matrix/federation/v1/media/` (media) and
/// `^/_matrix/federation/v1/send/` (source-IP balanced) must come before the generic
/// `^/_matrix/federation/` route. The generated nginx config keeps this order (nginx tries regex
/// `location`s in the order they appear) and so does the HAProxy config (`use_backend` rules are
/// evaluated in order).
///
/// A path that matches no route goes to [`Role::Main`].
pub const ROUTES: &[Route] = &[
    // --- sync: long-polls, stateless workers ---
    Route {
        role: Role::Sync,
        pattern: r"^/_matrix/client/(r0|v3)/sync$",
        balance: Balance::RoundRobin,
        description: "Initial and incremental /sync (long-poll)",
    },
    Route {
        role: Role::Sync,
        pattern: r"^/_matrix/client/(api/v1|r0|v3)/events$",
        balance: Balance::RoundRobin,
        description: "Legacy /events stream (long-poll)",
    },
    Route {
        role: Role::Sync,
        pattern: r"^/_matrix/client/(api/v1|r0|v3)/initialSync$",
        balance: Balance::RoundRobin,
        description: "Legacy global /initialSync",
    },
    Route {
        role: Role::Sync,
        pattern: r"^/_matrix/client/(api/v1|r0|v3)/rooms/[^/]+/initialSync$",
        balance: Balance::RoundRobin,
        description: "Legacy per-room /initialSync",
    },
    Route {
        role: Role::Sync,
        pattern: r"^/_matrix/client/unstable/org\.matrix\.simplified_msc3575/sync$",
        balance: Balance::RoundRobin,
        description: "Simplified sliding sync (MSC4186, unstable prefix)",
    },
    // --- media: before the generic federation route ---
    Route {
        role: Role::Media,
        pattern: r"^/_matrix/media/",
        balance: Balance::RoundRobin,
        description: "Legacy media API: upload, download, thumbnails, URL previews, config",
    },
    Route {
        role: Role::Media,
        pattern: r"^/_matrix/client/v1/media/",
        balance: Balance::RoundRobin,
        description: "Authenticated client media (MSC3916)",
    },
    Route {
        role: Role::Media,
        pattern: r"^/_synapse/admin/v1/media/",
        balance: Balance::RoundRobin,
        description: "Media admin: quarantine and delete by media ID",
    },
    Route {
        role: Role::Media,
        pattern: r"^/_synapse/admin/v1/(user|users|room)/[^/]+/media(/|$)",
        balance: Balance::RoundRobin,
        description: "Media admin: quarantine or delete a user's or a room's media",
    },
    Route {
        role: Role::Media,
        pattern: r"^/_matrix/federation/v1/media/",
        balance: Balance::RoundRobin,
        description: "Authenticated federation media; must precede the generic federation route",
    },
    // --- federation reader ---
    Route {
        role: Role::FederationReader,
        pattern: r"^/_matrix/federation/v1/send/",
        balance: Balance::SourceIp,
        description: "Inbound federation transactions; one origin stays on one worker",
    },
    Route {
        role: Role::FederationReader,
        pattern: r"^/_matrix/federation/",
        balance: Balance::RoundRobin,
        description: "All other inbound federation requests (events, state, joins, queries, ...)",
    },
    Route {
        role: Role::FederationReader,
        pattern: r"^/_matrix/key/",
        balance: Balance::RoundRobin,
        description: "Server signing keys: key/v2/server and the key/v2/query notary",
    },
];

/// The table compiled once; `RegexSet` reports every matching index, the lowest wins.
static COMPILED: LazyLock<RegexSet> = LazyLock::new(|| {
    RegexSet::new(ROUTES.iter().map(|route| route.pattern))
        .expect("every pattern in ROUTES is a valid regex (checked by tests)")
});

/// The first route of [`ROUTES`] whose pattern matches `path`, or `None` when the request
/// belongs to [`Role::Main`] by default.
///
/// `path` is the request path as the proxy sees it. A query string (from the first `?`) is
/// ignored, as nginx (`$uri`) and HAProxy (`path`) do. Note that nginx matches against the
/// normalised, percent-decoded URI; Matrix route prefixes contain no characters that decoding
/// changes, so both views agree for every real client.
pub fn route_for_path(path: &str) -> Option<&'static Route> {
    let path = path.split_once('?').map_or(path, |(path, _query)| path);
    COMPILED.matches(path).into_iter().next().map(|index| &ROUTES[index])
}

/// The role that serves `path` according to [`ROUTES`]: the first matching route's role, else
/// [`Role::Main`].
///
/// Workers' tests use this to prove that their HTTP routers serve exactly the paths the proxy
/// sends them.
pub fn role_for_path(path: &str) -> Role {
    route_for_path(path).map_or(Role::Main, |route| route.role)
}

/// The routes of one role, in table order.
pub fn routes_for(role: Role) -> impl Iterator<Item = &'static Route> {
    ROUTES.iter().filter(move |route| route.role == role)
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    #[test]
    fn every_pattern_compiles_and_is_anchored() {
        for route in ROUTES {
            assert!(route.pattern.starts_with('^'), "pattern {} is not anchored", route.pattern);
            Regex::new(route.pattern).unwrap_or_else(|e| panic!("{}: {e}", route.pattern));
            assert!(
                !route.pattern.contains(|c: char| c.is_whitespace() || "'\";{}#".contains(c)),
                "pattern {} contains a character that needs quoting in nginx/HAProxy",
                route.pattern
            );
            assert!(route.role.serves_http(), "{route:?}");
            assert!(!route.description.contains('|'), "{route:?}");
        }
        // Forces the lazy set too.
        assert_eq!(COMPILED.len(), ROUTES.len());
    }

    #[test]
    fn patterns_are_unique() {
        for (i, a) in ROUTES.iter().enumerate() {
            for b in &ROUTES[i + 1..] {
                assert_ne!(a.pattern, b.pattern);
            }
        }
    }

    #[track_caller]
    fn assert_role(path: &str, role: Role) {
        assert_eq!(role_for_path(path), role, "{path}");
    }

    #[test]
    fn sync_paths() {
        assert_role("/_matrix/client/v3/sync", Role::Sync);
        assert_role("/_matrix/client/r0/sync", Role::Sync);
        assert_role("/_matrix/client/v3/sync?since=s72594_4483_1934&timeout=30000", Role::Sync);
        assert_role("/_matrix/client/v3/events", Role::Sync);
        assert_role("/_matrix/client/api/v1/events", Role::Sync);
        assert_role("/_matrix/client/r0/initialSync", Role::Sync);
        assert_role("/_matrix/client/v3/rooms/!abc:example.org/initialSync", Role::Sync);
        assert_role("/_matrix/client/unstable/org.matrix.simplified_msc3575/sync", Role::Sync);
        // Anchors: near misses stay on main.
        assert_role("/_matrix/client/v3/sync/extra", Role::Main);
        assert_role("/_matrix/client/v1/sync", Role::Main);
        assert_role("/x/_matrix/client/v3/sync", Role::Main);
        assert_role("/_matrix/client/v3/rooms/!a/b/initialSync", Role::Main);
        assert_role("/_matrix/client/unstable/orgXmatrixXsimplified_msc3575/sync", Role::Main);
        // /events$ is the stream, not /rooms/{id}/event/{id}.
        assert_role("/_matrix/client/v3/rooms/!a:b/event/$e", Role::Main);
    }

    #[test]
    fn media_paths() {
        assert_role("/_matrix/media/v3/download/example.org/abcDEF", Role::Media);
        assert_role("/_matrix/media/v3/upload", Role::Media);
        assert_role("/_matrix/client/v1/media/download/example.org/abcDEF", Role::Media);
        assert_role("/_matrix/client/v1/media/thumbnail/example.org/abc?width=32&height=32", Role::Media);
        assert_role("/_matrix/federation/v1/media/download/abcDEF", Role::Media);
        assert_role("/_synapse/admin/v1/media/quarantine/example.org/abc", Role::Media);
        assert_role("/_synapse/admin/v1/media/example.org/abc", Role::Media);
        assert_role("/_synapse/admin/v1/user/@a:example.org/media/quarantine", Role::Media);
        assert_role("/_synapse/admin/v1/users/@a:example.org/media", Role::Media);
        assert_role("/_synapse/admin/v1/room/!r:example.org/media/quarantine", Role::Media);
        // Other admin paths stay on main.
        assert_role("/_synapse/admin/v1/registration_tokens", Role::Main);
        assert_role("/_synapse/admin/v1/users/@a:example.org/mediax", Role::Main);
    }

    #[test]
    fn federation_paths() {
        // Federation media beats the generic federation route.
        assert_eq!(route_for_path("/_matrix/federation/v1/media/thumbnail/abc").map(|r| r.role), Some(Role::Media));
        let send = route_for_path("/_matrix/federation/v1/send/1700000000000").unwrap();
        assert_eq!(send.role, Role::FederationReader);
        assert_eq!(send.balance, Balance::SourceIp);
        let event = route_for_path("/_matrix/federation/v1/event/$abc").unwrap();
        assert_eq!(event.role, Role::FederationReader);
        assert_eq!(event.balance, Balance::RoundRobin);
        assert_role("/_matrix/federation/v2/send_join/!r:example.org/$e", Role::FederationReader);
        assert_role("/_matrix/federation/v1/version", Role::FederationReader);
        assert_role("/_matrix/key/v2/query", Role::FederationReader);
        assert_role("/_matrix/key/v2/server", Role::FederationReader);
    }

    #[test]
    fn main_is_the_default() {
        assert_role("/_matrix/client/v3/createRoom", Role::Main);
        assert_role("/_matrix/client/v3/login", Role::Main);
        assert_role("/_matrix/client/v3/rooms/!r:example.org/send/m.room.message/txn1", Role::Main);
        assert_role("/_matrix/client/versions", Role::Main);
        assert_role("/", Role::Main);
        assert_role("", Role::Main);
        assert_role("/health/ready", Role::Main);
        assert_role("/something/unknown", Role::Main);
        assert!(route_for_path("/_matrix/client/v3/createRoom").is_none());
    }

    #[test]
    fn routes_for_groups_by_role() {
        assert_eq!(routes_for(Role::Sync).count(), 5);
        assert_eq!(routes_for(Role::Media).count(), 5);
        assert_eq!(routes_for(Role::FederationReader).count(), 3);
        assert_eq!(routes_for(Role::Main).count(), 0);
        assert_eq!(routes_for(Role::Pusher).count(), 0);
    }
}
