//! [`Config::validate`]: the checks serde cannot express. TLS files are not checked here; the
//! listener reads them when it starts.

use std::collections::HashMap;

use ruma::{OwnedServerName, ServerName};
use tracing_subscriber::EnvFilter;

use crate::error::{ConfigError, Problem};
use crate::{Config, Resource};

/// Room versions Ganglion can create.
const ROOM_VERSIONS: std::ops::RangeInclusive<u32> = 1..=12;

impl Config {
    /// Checks what types cannot: server name syntax, URL schemes, listener sanity, room version,
    /// Argon2 cost, log filter syntax and positive limits.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] listing every problem found, each naming its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |key: &str, message: String| problems.push(Problem::new(key, message));

        if <&ServerName>::try_from(self.server_name.as_str()).is_err() {
            problem("server_name", format!("{:?} is not a valid server name", self.server_name));
        }
        if let Some(url) = &self.public_baseurl
            && !has_scheme(url, &["http://", "https://"])
        {
            problem("public_baseurl", format!("{url:?} must start with http:// or https://"));
        }

        if self.listeners.is_empty() {
            problem("listeners", "at least one listener is required".to_owned());
        }
        let mut seen = HashMap::new();
        for (i, listener) in self.listeners.iter().enumerate() {
            if listener.resources.is_empty() {
                problem(&format!("listeners[{i}].resources"), "must list at least one resource".to_owned());
            }
            // Port 0 asks the OS for a free port, so several such listeners never collide.
            if listener.port != 0
                && let Some(first) = seen.insert((listener.bind, listener.port), i)
            {
                problem(
                    &format!("listeners[{i}]"),
                    format!("{}:{} is already used by listeners[{first}]", listener.bind, listener.port),
                );
            }
        }

        if let Some(url) = &self.database.url
            && !has_scheme(url, &["sqlite://", "postgres://", "postgresql://"])
        {
            problem("database.url", format!("{url:?} must start with sqlite://, postgres:// or postgresql://"));
        }
        if let Some(email) = &self.email {
            if email.notif_from.trim().is_empty() {
                problem("email.notif_from", "is required when email is set".to_owned());
            } else if !email.notif_from.contains('@') {
                problem("email.notif_from", format!("{:?} is not an email address", email.notif_from));
            }
            if email.smtp_host.trim().is_empty() {
                problem("email.smtp_host", "must not be empty".to_owned());
            }
            if email.smtp_user.is_some() != email.smtp_pass.is_some() {
                problem("email.smtp_pass", "smtp_user and smtp_pass go together".to_owned());
            }
        }
        if self.push.request_timeout_ms == 0 {
            problem("push.request_timeout_ms", "must be at least 1".to_owned());
        }
        if self.push.max_retry_interval_ms < 1000 {
            problem("push.max_retry_interval_ms", "must be at least 1000 (retries start after 1 s)".to_owned());
        }
        if self.database.max_connections == 0 {
            problem("database.max_connections", "must be at least 1".to_owned());
        }

        if let Some(url) = &self.redis.url
            && !has_scheme(url, &["redis://", "rediss://"])
        {
            problem("redis.url", format!("{url:?} must start with redis:// or rediss://"));
        }
        if self.redis.key_prefix.is_empty() {
            problem("redis.key_prefix", "must not be empty".to_owned());
        }
        if self.redis.stream_max_len == 0 {
            problem("redis.stream_max_len", "must be at least 1".to_owned());
        }

        for (i, range) in self.federation.ip_range_allowlist.iter().enumerate() {
            if !is_cidr(range) {
                problem(&format!("federation.ip_range_allowlist[{i}]"), format!("{range:?} is not a CIDR range"));
            }
        }
        for (i, notary) in self.federation.trusted_key_servers.iter().enumerate() {
            if <&ServerName>::try_from(notary.as_str()).is_err() {
                problem(
                    &format!("federation.trusted_key_servers[{i}]"),
                    format!("{notary:?} is not a valid server name"),
                );
            }
        }

        if !has_scheme(&self.rpc.main_url, &["http://", "https://"]) {
            problem("rpc.main_url", format!("{:?} must start with http:// or https://", self.rpc.main_url));
        }

        let hashing = &self.password_hashing;
        if hashing.parallelism == 0 {
            problem("password_hashing.parallelism", "must be at least 1".to_owned());
        }
        if hashing.iterations == 0 {
            problem("password_hashing.iterations", "must be at least 1".to_owned());
        }
        if u64::from(hashing.memory_kib) < 8 * u64::from(hashing.parallelism.max(1)) {
            problem(
                "password_hashing.memory_kib",
                format!(
                    "{} is too small: Argon2 needs at least 8 KiB per lane ({} for parallelism {})",
                    hashing.memory_kib,
                    8 * u64::from(hashing.parallelism.max(1)),
                    hashing.parallelism
                ),
            );
        }

        let version_ok = self
            .rooms
            .default_version
            .parse::<u32>()
            .is_ok_and(|v| ROOM_VERSIONS.contains(&v) && v.to_string() == self.rooms.default_version);
        if !version_ok {
            problem(
                "rooms.default_version",
                format!(
                    "{:?} is not a supported room version (expected \"{}\" to \"{}\")",
                    self.rooms.default_version,
                    ROOM_VERSIONS.start(),
                    ROOM_VERSIONS.end()
                ),
            );
        }

        if let Err(e) = EnvFilter::builder().parse(&self.telemetry.log_level) {
            problem(
                "telemetry.log_level",
                format!("{:?} is not a valid filter directive: {e}", self.telemetry.log_level),
            );
        }
        if let Some(url) = &self.telemetry.otlp_endpoint
            && !has_scheme(url, &["http://", "https://"])
        {
            problem("telemetry.otlp_endpoint", format!("{url:?} must start with http:// or https://"));
        }

        if self.limits.max_request_body_bytes == 0 {
            problem("limits.max_request_body_bytes", "must be at least 1".to_owned());
        }
        if self.limits.max_sync_timeout_ms == 0 {
            problem("limits.max_sync_timeout_ms", "must be at least 1".to_owned());
        }

        if self.sessions.refreshable_access_token_lifetime_secs == 0 {
            problem("sessions.refreshable_access_token_lifetime_secs", "must be at least 1".to_owned());
        }
        if self.sessions.login_token_lifetime_secs == 0 {
            problem("sessions.login_token_lifetime_secs", "must be at least 1".to_owned());
        }

        if let Some(server) = &self.well_known.server
            && <&ServerName>::try_from(server.as_str()).is_err()
        {
            problem("well_known.server", format!("{server:?} is not a valid `host:port`"));
        }

        if problems.is_empty() { Ok(()) } else { Err(ConfigError::Invalid { problems }) }
    }

    /// `server_name` as a typed [`OwnedServerName`].
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] naming `server_name` if it does not parse; [`crate::load`] has already
    /// rejected such a config, so this only fails for one built by hand.
    pub fn owned_server_name(&self) -> Result<OwnedServerName, ConfigError> {
        OwnedServerName::try_from(self.server_name.as_str()).map_err(|_| {
            ConfigError::invalid("server_name", format!("{:?} is not a valid server name", self.server_name))
        })
    }

    /// The listeners that serve `resource`, in configuration order.
    pub fn listeners_serving(&self, resource: Resource) -> impl Iterator<Item = &crate::ListenerConfig> {
        self.listeners.iter().filter(move |l| l.resources.contains(&resource))
    }
}

fn has_scheme(url: &str, schemes: &[&str]) -> bool {
    schemes.iter().any(|scheme| {
        url.len() > scheme.len() && url.get(..scheme.len()).is_some_and(|start| start.eq_ignore_ascii_case(scheme))
    })
}

/// `addr` or `addr/prefix` with a prefix no longer than the address.
fn is_cidr(s: &str) -> bool {
    let (ip, prefix) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
    let Ok(ip) = ip.parse::<std::net::IpAddr>() else { return false };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= max))
}
