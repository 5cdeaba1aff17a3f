//! Where another server's federation API listens.

use std::net::IpAddr;
use std::time::Duration;

use ruma::ServerName;
use serde_json::Value;

/// How long a resolution is reused: a `.well-known` answer without caching headers, and
/// names that need no lookup.
const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// The longest a `.well-known` answer's `Cache-Control: max-age` is honoured.
const MAX_TTL: Duration = Duration::from_secs(48 * 3600);
/// How long a missing or broken `.well-known` is remembered as missing.
const FAILURE_TTL: Duration = Duration::from_secs(3600);

/// A resolved destination: the base URL requests go to, and for how long that holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// `https://host:port`, without a trailing slash.
    pub base_url: String,
    /// How long to reuse this answer.
    pub ttl: Duration,
}

fn at(base_url: String) -> Destination {
    Destination { base_url, ttl: DEFAULT_TTL }
}

/// `max-age` of a `Cache-Control` header, capped at [`MAX_TTL`].
fn max_age(resp: &reqwest::Response) -> Option<Duration> {
    let value = resp.headers().get(reqwest::header::CACHE_CONTROL)?.to_str().ok()?;
    let secs = value.split(',').find_map(|d| d.trim().strip_prefix("max-age=")?.parse::<u64>().ok())?;
    Some(Duration::from_secs(secs).min(MAX_TTL))
}

/// `host` and the port if one is given (IPv6 literals keep their brackets).
fn split_port(name: &str) -> (&str, Option<&str>) {
    if let Some(end) = name.find(']') {
        let (host, rest) = name.split_at(end + 1);
        return (host, rest.strip_prefix(':'));
    }
    match name.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (name, None),
    }
}

fn is_ip_literal(host: &str) -> bool {
    host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok()
}

/// A name with an explicit port or an IP literal names its endpoint directly.
fn direct(name: &str) -> Option<Destination> {
    let (host, port) = split_port(name);
    match (port, is_ip_literal(host)) {
        (Some(port), _) => Some(at(format!("https://{host}:{port}"))),
        (None, true) => Some(at(format!("https://{host}:8448"))),
        (None, false) => None,
    }
}

/// Resolves `server` per the spec's server discovery, minus SRV records: direct names first,
/// then `/.well-known/matrix/server` (its answer resolved the same way, without another
/// well-known lookup), then port 8448.
pub async fn resolve_destination(http: &reqwest::Client, server: &ServerName) -> Destination {
    if let Some(d) = direct(server.as_str()) {
        return d;
    }
    let url = format!("https://{server}/.well-known/matrix/server");
    let delegated = async {
        let resp = http.get(&url).timeout(Duration::from_secs(10)).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let ttl = max_age(&resp).unwrap_or(DEFAULT_TTL);
        let body: Value = resp.json().await.ok()?;
        Some((body.get("m.server")?.as_str()?.to_owned(), ttl))
    }
    .await;
    if let Some((to, ttl)) = delegated.filter(|(d, _)| ServerName::parse(d).is_ok()) {
        let base_url = direct(&to).map_or_else(|| format!("https://{to}:8448"), |d| d.base_url);
        return Destination { base_url, ttl };
    }
    Destination { base_url: format!("https://{server}:8448"), ttl: FAILURE_TTL }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_ports_and_ip_literals_are_direct() {
        let d = |n: &str| direct(n).map(|d| d.base_url);
        assert_eq!(d("example.org:8000").as_deref(), Some("https://example.org:8000"));
        assert_eq!(d("127.0.0.1").as_deref(), Some("https://127.0.0.1:8448"));
        assert_eq!(d("127.0.0.1:9000").as_deref(), Some("https://127.0.0.1:9000"));
        assert_eq!(d("[::1]").as_deref(), Some("https://[::1]:8448"));
        assert_eq!(d("[::1]:9000").as_deref(), Some("https://[::1]:9000"));
        assert_eq!(d("example.org"), None, "needs .well-known (and SRV)");
    }
}
