//! The files in this repository that are generated from the table.

use crate::haproxy::haproxy;
use crate::markdown::markdown;
use crate::nginx::nginx;
use crate::role::Role;
use crate::upstreams::Upstreams;

/// The port the generated proxy configs listen on (unprivileged; mapped to 80/443 outside).
pub const PROXY_PORT: u16 = 8080;

/// One generated file: its path relative to the repository root, and its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// Path relative to the repository root, with `/` separators, e.g. `deploy/nginx.conf`.
    pub path: &'static str,
    /// The full contents.
    pub contents: String,
}

/// The placeholder the Helm chart replaces with `role`'s backend (`<service>:<port>`) in
/// `helm/ganglion/files/nginx.conf`: `__GANGLION_MAIN__`, `__GANGLION_SYNC__`,
/// `__GANGLION_FEDERATION_READER__`, `__GANGLION_MEDIA__`, ….
pub fn helm_placeholder(role: Role) -> String {
    format!("__GANGLION_{}__", role.as_str().replace('-', "_").to_ascii_uppercase())
}

/// Every file of the repository generated from the routing table, with its current contents:
///
/// - `deploy/nginx.conf` and `deploy/haproxy.cfg`: for the services of `deploy/compose.yaml`
///   ([`Upstreams::docker_compose`]), listening on [`PROXY_PORT`];
/// - `helm/ganglion/files/nginx.conf`: the same nginx config with [`helm_placeholder`]s as
///   backends, which the chart's templates replace with its Service names;
/// - `docs/workers.md`: [`markdown`].
///
/// `cargo run -p ganglion-routing --example generate` writes them; a test compares them.
pub fn repository_files() -> Vec<GeneratedFile> {
    let mut helm = Upstreams::new([helm_placeholder(Role::Main)]);
    for role in Role::ALL {
        if role != Role::Main && role.serves_http() {
            helm.set(role, [helm_placeholder(role)]);
        }
    }
    vec![
        GeneratedFile { path: "deploy/nginx.conf", contents: nginx(&Upstreams::docker_compose(), PROXY_PORT) },
        GeneratedFile { path: "deploy/haproxy.cfg", contents: haproxy(&Upstreams::docker_compose(), PROXY_PORT) },
        GeneratedFile { path: "helm/ganglion/files/nginx.conf", contents: nginx(&helm, PROXY_PORT) },
        GeneratedFile { path: "docs/workers.md", contents: markdown() },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helm_file_has_a_placeholder_per_http_role() {
        let files = repository_files();
        let helm = files.iter().find(|f| f.path == "helm/ganglion/files/nginx.conf").unwrap();
        for role in Role::ALL {
            assert_eq!(
                helm.contents.contains(&format!("server {};", helm_placeholder(role))),
                role.serves_http(),
                "{role}"
            );
        }
        assert_eq!(helm_placeholder(Role::FederationReader), "__GANGLION_FEDERATION_READER__");
    }
}
