//! The worker routing table, once, in code — and everything generated from it.
//!
//! A reverse proxy in front of Ganglion sends each request to a role's pool by its path. This
//! crate holds that table and renders it for nginx, HAProxy, the Helm chart and the docs, so the
//! proxies, the workers' routers and `docs/workers.md` cannot drift apart.
//!
//! Map:
//!
//! - `role.rs` — [`Role`] (`main`, `sync`, `federation-reader`, `federation-sender`, `media`,
//!   `pusher`; [`Role::serves_http`]) and [`Balance`] (round robin, source IP).
//! - `table.rs` — [`ROUTES`], the ordered table of [`Route`]s (anchored path regex → role +
//!   balancing). **Table order is match order: the first matching route wins; unmatched paths
//!   go to [`Role::Main`].** [`role_for_path`] / [`route_for_path`] apply it with the `regex`
//!   crate; workers' tests use them to prove their routers agree with the proxy.
//! - `upstreams.rs` — [`Upstreams`]: each role's `host:port` backends; roles given none fall back
//!   to main's (one-process deployments); [`Upstreams::default_kubernetes`],
//!   [`Upstreams::docker_compose`], [`Upstreams::apply_spec`] for `role=host:port,…` flags.
//! - `nginx.rs` — [`nginx`] / [`nginx_with_options`] ([`NginxOptions`]): a complete `nginx.conf`.
//! - `haproxy.rs` — [`haproxy`]: a complete `haproxy.cfg`.
//! - `markdown.rs` — [`markdown`]: `docs/workers.md`.
//! - `files.rs` — [`repository_files`]: the generated files checked into the repository
//!   (`deploy/nginx.conf`, `deploy/haproxy.cfg`, `helm/ganglion/files/nginx.conf`,
//!   `docs/workers.md`); `cargo run -p ganglion-routing --example generate` rewrites them.
//! - `pool.rs`, `text.rs` (private) — upstream/backend naming shared by the generators; output
//!   helpers.
//!
//! The `ganglion routes --format nginx|haproxy|markdown` command is a thin wrapper over
//! [`nginx`], [`haproxy`] and [`markdown`].

mod files;
mod haproxy;
mod markdown;
mod nginx;
mod pool;
mod role;
mod table;
mod text;
mod upstreams;

pub use files::{GeneratedFile, PROXY_PORT, helm_placeholder, repository_files};
pub use haproxy::haproxy;
pub use markdown::markdown;
pub use nginx::{DEFAULT_MAX_BODY_BYTES, NginxOptions, nginx, nginx_with_options};
pub use role::{Balance, ParseRoleError, Role};
pub use table::{ROUTES, Route, role_for_path, route_for_path, routes_for};
pub use upstreams::{UpstreamSpecError, Upstreams};
