//! HTTP listeners: each configured listener serves the routers of the resources it lists, with
//! the common layers, over plain TCP or TLS (rustls).

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use ganglion_config::{Config, ListenerConfig, Resource, TlsConfig};
use ganglion_telemetry::{Health, Metrics};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::roles::Fatal;

/// The routers the started roles contribute, by resource, and the role handles to keep alive.
#[derive(Default)]
pub(crate) struct RoleRouters {
    pub(crate) client: Vec<Router>,
    pub(crate) federation: Vec<Router>,
    pub(crate) media: Vec<Router>,
    /// Routes under `/_matrix/client/v1/media/`: merged once into every listener that serves
    /// `client` or `media` (twice would be a duplicate-route panic).
    pub(crate) client_media: Vec<Router>,
    alive: Vec<Box<dyn Any + Send>>,
}

impl RoleRouters {
    /// Keeps a role's handle (its stream follower) alive as long as the listeners run.
    pub(crate) fn keep(&mut self, handle: Box<dyn Any + Send>) {
        self.alive.push(handle);
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

fn router_for(
    listener: &ListenerConfig,
    routers: &RoleRouters,
    role: &'static str,
    health: &Health,
    metrics: &Metrics,
    body_limit: usize,
) -> Router {
    let mut r = Router::new();
    for res in &listener.resources {
        let parts: &[Router] = match res {
            Resource::Client => &routers.client,
            Resource::Federation => &routers.federation,
            Resource::Media => &routers.media,
            Resource::Metrics => {
                r = r.merge(ganglion_telemetry::metrics_router(metrics.clone()));
                &[]
            }
            Resource::Health => {
                r = r.merge(ganglion_telemetry::health_router(health.clone()));
                &[]
            }
        };
        for p in parts {
            r = r.merge(p.clone());
        }
    }
    if listener.resources.iter().any(|res| matches!(res, Resource::Client | Resource::Media)) {
        for p in &routers.client_media {
            r = r.merge(p.clone());
        }
    }
    let r = ganglion_http::matrix_fallbacks(r);
    ganglion_http::common_layers(r, role, metrics.clone(), body_limit)
}

fn tls_acceptor(tls: &TlsConfig) -> Result<tokio_rustls::TlsAcceptor, Fatal> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| Fatal::Config(format!("tls: cannot read {}: {e}", p.display())))
    };
    let cert_pem = read(&tls.certificate_path)?;
    let key_pem = read(&tls.key_path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| Fatal::Config(format!("tls.certificate_path: {e}")))?;
    if certs.is_empty() {
        return Err(Fatal::Config(format!(
            "tls.certificate_path: no certificate in {}",
            tls.certificate_path.display()
        )));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| Fatal::Config(format!("tls.key_path: {e}")))?
        .ok_or_else(|| Fatal::Config(format!("tls.key_path: no private key in {}", tls.key_path.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| Fatal::Config(format!("tls: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Fatal::Config(format!("tls: {e}")))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn serve_tls(listener: TcpListener, acceptor: tokio_rustls::TlsAcceptor, router: Router) {
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(error = %e, %peer, "TLS handshake failed");
                    return;
                }
            };
            let service = TowerToHyperService::new(router.layer(axum::Extension(axum::extract::ConnectInfo(peer))));
            if let Err(e) =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await
            {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
}

/// Binds every listener, serves until Ctrl-C/SIGTERM, then drains for up to 10 seconds.
pub(crate) async fn serve_listeners(
    cfg: &Config,
    routers: RoleRouters,
    role: &'static str,
    health: Health,
    metrics: Metrics,
) -> Result<(), Fatal> {
    let mut tasks = tokio::task::JoinSet::new();
    for l in &cfg.listeners {
        let addr = SocketAddr::new(l.bind, l.port);
        let listener =
            TcpListener::bind(addr).await.map_err(|e| Fatal::Runtime(format!("cannot listen on {addr}: {e}")))?;
        let bound = listener.local_addr().unwrap_or(addr);
        let router = router_for(l, &routers, role, &health, &metrics, cfg.limits.max_request_body_bytes);
        let resources: Vec<String> = l.resources.iter().map(|r| format!("{r:?}").to_lowercase()).collect();
        match &l.tls {
            Some(tls) => {
                let acceptor = tls_acceptor(tls)?;
                tracing::info!(%bound, tls = true, resources = %resources.join(","), "listening");
                tasks.spawn(serve_tls(listener, acceptor, router));
            }
            None => {
                tracing::info!(%bound, tls = false, resources = %resources.join(","), "listening");
                tasks.spawn(async move {
                    // The peer address feeds per-address rate limits (unless a proxy names the client).
                    let service = router.into_make_service_with_connect_info::<SocketAddr>();
                    let served = axum::serve(listener, service).with_graceful_shutdown(shutdown_signal()).await;
                    if let Err(e) = served {
                        tracing::error!(error = %e, "listener failed");
                    }
                });
            }
        }
    }
    health.set_ready("listeners", true);
    shutdown_signal().await;
    tracing::info!("shutting down: draining requests");
    health.set_ready("listeners", false);
    let drained =
        tokio::time::timeout(Duration::from_secs(10), async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::warn!("requests still running after 10 s; exiting anyway");
    }
    drop(routers);
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt as _;

    use super::*;

    async fn status(router: &Router, path: &str) -> StatusCode {
        router.clone().oneshot(Request::get(path).body(Body::empty()).unwrap()).await.unwrap().status()
    }

    /// `/_matrix/client/v1/media/*` is served where `client` or `media` is, once even when both are
    /// (a second merge of the same routes would panic); `/_matrix/media/*` only where `media` is.
    #[tokio::test]
    async fn client_media_routes_are_merged_once_per_listener() {
        let mut routers = RoleRouters::default();
        routers.client.push(Router::new().route("/_matrix/client/versions", get(|| async { "{}" })));
        routers.media.push(Router::new().route("/_matrix/media/v3/config", get(|| async { "{}" })));
        routers.client_media.push(Router::new().route("/_matrix/client/v1/media/config", get(|| async { "{}" })));
        let (health, metrics) = (Health::new(), Metrics::new());
        let on = |resources: Vec<Resource>| {
            let listener = ListenerConfig { resources, ..ListenerConfig::default() };
            router_for(&listener, &routers, "serve", &health, &metrics, 1024)
        };
        let both = on(vec![Resource::Client, Resource::Media]);
        assert_eq!(status(&both, "/_matrix/client/v1/media/config").await, StatusCode::OK);
        assert_eq!(status(&both, "/_matrix/media/v3/config").await, StatusCode::OK);
        let client = on(vec![Resource::Client]);
        assert_eq!(status(&client, "/_matrix/client/v1/media/config").await, StatusCode::OK);
        assert_eq!(status(&client, "/_matrix/media/v3/config").await, StatusCode::NOT_FOUND);
        let media = on(vec![Resource::Media]);
        assert_eq!(status(&media, "/_matrix/client/v1/media/config").await, StatusCode::OK);
        assert_eq!(status(&media, "/_matrix/client/versions").await, StatusCode::NOT_FOUND);
        let federation = on(vec![Resource::Federation, Resource::Health]);
        assert_eq!(status(&federation, "/_matrix/client/v1/media/config").await, StatusCode::NOT_FOUND);
    }
}
