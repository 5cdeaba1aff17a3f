//! Which addresses the server may connect to on someone else's say-so.
//!
//! URL previews fetch pages clients name and federation connects to servers other servers name;
//! left open, either lets a stranger make the server reach its own loopback, private network or
//! cloud metadata service. An [`AddressPolicy`] allows global unicast addresses and whatever an
//! operator lists (CIDR ranges); a client built with [`AddressPolicy::resolver`] drops refused
//! addresses while resolving, so DNS rebinding between a check and the connection cannot get
//! round it, and [`AddressPolicy::check_url`] covers IP-literal hosts, which are never resolved.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// An IP network in CIDR notation (`10.0.0.0/8`, `::1/128`; a bare address is a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for IpNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (ip, prefix) = s.trim().split_once('/').map_or((s.trim(), None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = ip.parse().map_err(|_| format!("{s:?} is not an IP range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{s:?} has a bad prefix"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl IpNet {
    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn v4_is_global(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (b & 0xc0) == 64) // 100.64.0.0/10 shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24 IETF protocol assignments
        || (a == 198 && (b & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || a >= 240) // reserved
}

/// Whether `ip` is a global unicast address: neither loopback, private, link-local, CGNAT,
/// reserved, documentation nor multicast, also when an IPv4 address hides inside IPv6.
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_is_global(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_is_global(v4);
            }
            let seg = v6.segments();
            // NAT64 (64:ff9b::/96) reaches the embedded IPv4 address.
            if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
                let [a, b] = seg[6].to_be_bytes();
                let [c, d] = seg[7].to_be_bytes();
                return v4_is_global(Ipv4Addr::new(a, b, c, d));
            }
            !(v6.is_unspecified()
                || v6.is_loopback()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local
                || (seg[0] & 0xffc0) == 0xfe80 // link-local
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || seg[0] == 0x2002 // 6to4 can reach any IPv4 address
                || v6 == Ipv6Addr::from(1u128) // ::1
                || seg[..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible and the rest of ::/96
        }
    }
}

/// A refused destination: what was refused, for the error and the log line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Blocked(pub String);

/// Global unicast addresses, plus the operator's allow-list. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allow: Arc<Vec<IpNet>>,
}

impl AddressPolicy {
    /// A policy allowing global addresses and the CIDR ranges in `allowlist`.
    ///
    /// # Errors
    /// When an entry is not a CIDR range; the message names `key` (the configuration key).
    pub fn new(allowlist: &[String], key: &str) -> Result<Self, String> {
        let allow = allowlist
            .iter()
            .map(|s| s.parse::<IpNet>().map_err(|e| format!("{key}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { allow: Arc::new(allow) })
    }

    /// Whether the server may connect to `ip`.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        is_global(ip) || self.allow.iter().any(|n| n.contains(ip))
    }

    /// Refuses a URL whose host is an IP literal the policy does not allow (names are checked
    /// when [`Self::resolver`] resolves them).
    ///
    /// # Errors
    /// [`Blocked`] naming the address.
    pub fn check_url(&self, url: &url::Url) -> Result<(), Blocked> {
        let ip = match url.host() {
            Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
            Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
            _ => return Ok(()),
        };
        if self.allowed(ip) { Ok(()) } else { Err(Blocked(format!("{ip} is not a public address"))) }
    }

    /// A resolver for `reqwest::ClientBuilder::dns_resolver` that drops refused addresses and
    /// fails with [`Blocked`] when none is left.
    pub fn resolver(&self) -> Arc<GuardedResolver> {
        Arc::new(GuardedResolver(self.clone()))
    }
}

/// The [`Blocked`] error somewhere in `e`'s source chain, if the resolver refused the host.
pub fn blocked_in<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a Blocked> {
    let mut source: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(b) = s.downcast_ref::<Blocked>() {
            return Some(b);
        }
        source = s.source();
    }
    None
}

/// The resolver [`AddressPolicy::resolver`] hands out.
#[derive(Debug)]
pub struct GuardedResolver(AddressPolicy);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = addrs.into_iter().filter(|a| policy.allowed(a.ip())).collect();
            if allowed.is_empty() {
                tracing::warn!(host = %host, "refused to connect: the name resolves only to non-public addresses outside the allow-list");
                let e = Blocked(format!("{host} resolves only to addresses that are not allowed"));
                return Err(Box::new(e) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_global_addresses_pass_unless_allowed() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let open = AddressPolicy::default();
        for refused in ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "100.64.0.1", "::1", "fd00::1"] {
            assert!(!open.allowed(ip(refused)), "{refused}");
        }
        assert!(open.allowed(ip("93.184.216.34")));
        assert!(!open.allowed(ip("::ffff:127.0.0.1")), "IPv4-mapped loopback");
        let lab = AddressPolicy::new(&["127.0.0.0/8".into()], "k").unwrap();
        assert!(lab.allowed(ip("127.0.0.2")));
        assert!(!lab.allowed(ip("10.0.0.1")));
        assert!(AddressPolicy::new(&["127.0.0.0/33".into()], "k").unwrap_err().contains("k:"));
    }

    #[test]
    fn ip_literal_urls_are_checked_names_are_left_to_the_resolver() {
        let p = AddressPolicy::default();
        assert!(p.check_url(&"https://127.0.0.1:8448/x".parse().unwrap()).is_err());
        assert!(p.check_url(&"https://[::1]/x".parse().unwrap()).is_err());
        assert!(p.check_url(&"https://example.org/x".parse().unwrap()).is_ok());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_that_reach_only_loopback() {
        let client = reqwest::Client::builder().dns_resolver(AddressPolicy::default().resolver()).build().unwrap();
        let err = client.get("http://localhost:1/").send().await.unwrap_err();
        assert!(blocked_in(&err).is_some(), "{err:?}");
    }

    #[test]
    fn only_global_addresses_pass() {
        for bad in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "198.18.0.1",
            "192.0.0.8",
            "240.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
            "2002:7f00:1::",
            "::127.0.0.1",
            "ff02::1",
        ] {
            assert!(!is_global(bad.parse().unwrap()), "{bad}");
        }
        for good in ["1.1.1.1", "93.184.216.34", "2606:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808"] {
            assert!(is_global(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn cidr_ranges() {
        let net: IpNet = "192.168.1.0/24".parse().unwrap();
        assert!(net.contains("192.168.1.77".parse().unwrap()));
        assert!(!net.contains("192.168.2.1".parse().unwrap()));
        assert!(!net.contains("::1".parse().unwrap()));
        let one: IpNet = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("10.0.0.1".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nope".parse::<IpNet>().is_err());
    }
}
