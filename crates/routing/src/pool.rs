//! Proxy pools: one per (role, balancing method) pair the table needs. Shared by the nginx and
//! HAProxy generators so both name and order them the same way.

use crate::role::{Balance, Role};
use crate::table::ROUTES;

/// One upstream (nginx) or backend (HAProxy): the instances of `role`, spread by `balance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pool {
    pub(crate) role: Role,
    pub(crate) balance: Balance,
}

impl Pool {
    /// The pool that serves `role` with `balance`.
    pub(crate) const fn new(role: Role, balance: Balance) -> Self {
        Pool { role, balance }
    }

    /// `ganglion_<role>` for round robin, `ganglion_<role>_by_source_ip` for source IP.
    pub(crate) fn name(&self) -> String {
        let role = self.role.as_str().replace('-', "_");
        match self.balance {
            Balance::RoundRobin => format!("ganglion_{role}"),
            Balance::SourceIp => format!("ganglion_{role}_by_source_ip"),
        }
    }
}

/// Every pool the generated configs declare: a round-robin pool for each role that serves HTTP
/// (main first, it is the default), then one per other balancing method a route uses, in
/// [`Role::ALL`] and [`Balance::ALL`] order.
pub(crate) fn pools() -> Vec<Pool> {
    let mut pools = Vec::new();
    for role in Role::ALL.into_iter().filter(Role::serves_http) {
        for balance in Balance::ALL {
            let used = ROUTES.iter().any(|route| route.role == role && route.balance == balance);
            if balance == Balance::RoundRobin || used {
                pools.push(Pool::new(role, balance));
            }
        }
    }
    pools
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_round_robin_pool_per_http_role_plus_source_ip() {
        let names: Vec<String> = pools().iter().map(Pool::name).collect();
        assert_eq!(
            names,
            [
                "ganglion_main",
                "ganglion_sync",
                "ganglion_federation_reader",
                "ganglion_federation_reader_by_source_ip",
                "ganglion_media",
            ]
        );
    }

    #[test]
    fn every_route_has_a_pool() {
        let pools = pools();
        for route in ROUTES {
            assert!(pools.contains(&Pool::new(route.role, route.balance)));
        }
    }
}
