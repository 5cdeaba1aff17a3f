//! The process roles and the ways a proxy spreads requests over one role's pool.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A process role: what one `ganglion worker <role>` process does.
///
/// `ganglion serve` runs all of them in one process. The string forms (`as_str`, `FromStr`,
/// serde) are the kebab-case names used on the command line, in configuration and in generated
/// proxy configs: `main`, `sync`, `federation-reader`, `federation-sender`, `media`, `pusher`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Every Client-Server endpoint not routed elsewhere; the only writer of events and streams.
    Main,
    /// `/sync`, simplified sliding sync, `/events`, `/initialSync`; stateless, any number.
    Sync,
    /// Inbound `/_matrix/federation/*` (except media) and `/_matrix/key/*`.
    FederationReader,
    /// Outbound federation transactions; serves no client or federation HTTP.
    FederationSender,
    /// `/_matrix/media/*`, `/_matrix/client/v1/media/*`, `/_matrix/federation/v1/media/*`.
    Media,
    /// HTTP push to push gateways; serves no client or federation HTTP.
    Pusher,
}

impl Role {
    /// Every role, in a fixed order (`main` first).
    pub const ALL: [Role; 6] =
        [Role::Main, Role::Sync, Role::FederationReader, Role::FederationSender, Role::Media, Role::Pusher];

    /// The kebab-case name: `"main"`, `"sync"`, `"federation-reader"`, `"federation-sender"`,
    /// `"media"`, `"pusher"`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Role::Main => "main",
            Role::Sync => "sync",
            Role::FederationReader => "federation-reader",
            Role::FederationSender => "federation-sender",
            Role::Media => "media",
            Role::Pusher => "pusher",
        }
    }

    /// Whether processes of this role serve client or federation HTTP, i.e. whether a reverse
    /// proxy may route requests to them.
    ///
    /// `federation-sender` and `pusher` only listen for health checks and metrics; they get no
    /// upstream or backend in the generated proxy configs.
    pub const fn serves_http(&self) -> bool {
        match self {
            Role::Main | Role::Sync | Role::FederationReader | Role::Media => true,
            Role::FederationSender | Role::Pusher => false,
        }
    }

    /// One sentence on what the role does and how it scales (used in generated docs and configs).
    pub const fn description(&self) -> &'static str {
        match self {
            Role::Main => {
                "Every Client-Server endpoint not routed elsewhere (the default for unmatched paths); \
                 the only writer of events and stream rows, the gRPC write API and background jobs. \
                 One instance."
            }
            Role::Sync => {
                "`/sync`, simplified sliding sync, `/events` and `/initialSync` long-polls. Stateless: \
                 any instance serves any user, so run any number behind round robin."
            }
            Role::FederationReader => {
                "Inbound federation (`/_matrix/federation/*` except media) and server keys \
                 (`/_matrix/key/*`): verifies signatures, hashes and auth, then hands PDUs to main. \
                 Any number; inbound `/send/` transactions are balanced by source IP."
            }
            Role::FederationSender => {
                "Outbound federation transactions (PDUs; EDUs not yet) to other servers, sharded by \
                 destination over the live instances (Redis `ShardRing`; no configuration)."
            }
            Role::Media => {
                "Media upload, download, thumbnails and URL previews for clients and federation. \
                 Any number."
            }
            Role::Pusher => {
                "Pushes to push gateways and notification emails, sharded by user over the live \
                 instances (found through Redis: scaling needs no config change). Any number."
            }
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = ParseRoleError;

    /// Parses the kebab-case name exactly as [`Role::as_str`] prints it.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL.into_iter().find(|role| role.as_str() == s).ok_or_else(|| ParseRoleError { input: s.to_owned() })
    }
}

/// The error from parsing an unknown role name; its message lists the valid names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseRoleError {
    input: String,
}

impl ParseRoleError {
    /// The string that is not a role name.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for ParseRoleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown role {:?}; expected one of ", self.input)?;
        for (i, role) in Role::ALL.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            f.write_str(role.as_str())?;
        }
        Ok(())
    }
}

impl std::error::Error for ParseRoleError {}

/// How the reverse proxy spreads the requests of one route over the instances of its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// Each request to the next instance in turn (nginx's default; HAProxy `balance roundrobin`).
    /// Right for stateless roles such as `sync`.
    RoundRobin,
    /// By the client's source address, consistently hashed (nginx `hash $remote_addr
    /// consistent`; HAProxy `balance source` + `hash-type consistent`), so one origin server's
    /// federation transactions stay on one worker.
    SourceIp,
}

impl Balance {
    /// Every balancing method.
    pub const ALL: [Balance; 2] = [Balance::RoundRobin, Balance::SourceIp];

    /// The kebab-case name: `"round-robin"` or `"source-ip"`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::SourceIp => "source-ip",
        }
    }

    /// A short human description used in generated documentation.
    pub const fn description(&self) -> &'static str {
        match self {
            Balance::RoundRobin => "round robin",
            Balance::SourceIp => "source IP (consistent hash)",
        }
    }
}

impl fmt::Display for Balance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip() {
        for role in Role::ALL {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
            assert_eq!(role.to_string(), role.as_str());
        }
        assert_eq!("federation-reader".parse::<Role>(), Ok(Role::FederationReader));
    }

    #[test]
    fn unknown_role_lists_valid_names() {
        let err = "federation_reader".parse::<Role>().unwrap_err();
        assert_eq!(err.input(), "federation_reader");
        let msg = err.to_string();
        for role in Role::ALL {
            assert!(msg.contains(role.as_str()), "{msg}");
        }
    }

    #[test]
    fn only_sender_and_pusher_serve_no_http() {
        let silent: Vec<Role> = Role::ALL.into_iter().filter(|r| !r.serves_http()).collect();
        assert_eq!(silent, [Role::FederationSender, Role::Pusher]);
    }
}
