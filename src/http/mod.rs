//! The daemon's read-only HTTP face (`daemon.http`): Prometheus metrics, health and readiness probes, a versioned
//! JSON API over the spool and the published reports, the files of a result, and a server-rendered dashboard.
//! It runs as tasks on the daemon's tokio runtime; everything that touches the disk runs on tokio's blocking pool,
//! so neither the service loop nor the job threads ever wait for a client.
//!
//! - [`metrics`]: the Prometheus registry the daemon records into, and the scrape.
//! - [`views`]: what the API and the dashboard show, read from the queue and `paths.models`.
//! - [`api`]: `/api/v1/...` (JSON) and result files by name.
//! - [`dashboard`]: `/`, `/models/{name}` and the two static assets.
//! - [`guard`]: what every request passes first: method, size, rate, bearer token, security headers.
//! - [`names`]: names and paths from a URL, checked before they touch the filesystem.
//!
//! Nothing here changes state: every route is GET (or HEAD).

// Served unattended by the daemon: no unwrap/expect/panic outside tests.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod api;
pub mod dashboard;
pub mod guard;
pub mod metrics;
pub mod names;
pub mod views;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{HttpSpec, Paths};
use crate::queue::Queue;

pub use metrics::Metrics;

#[derive(Debug, Error)]
pub enum HttpError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read the bearer token file {path}: {source}")]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the bearer token file {0} is empty")]
    EmptyToken(PathBuf),
}

/// What `/readyz` reports: set by the daemon as it comes up.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The spool was recovered (jobs left running put back, half-enqueued ones settled).
    pub recovered: AtomicBool,
    /// The inbox watcher is running.
    pub watching: AtomicBool,
}

impl Readiness {
    pub fn set_recovered(&self) {
        self.recovered.store(true, Ordering::Release);
    }

    pub fn set_watching(&self) {
        self.watching.store(true, Ordering::Release);
    }
}

/// Everything a handler reads.
#[derive(Clone)]
pub struct AppState {
    pub queue: Arc<dyn Queue>,
    pub paths: Paths,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub guard: Arc<guard::Guard>,
}

/// The running server: its address, and the way to stop it.
pub struct HttpServer {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Stops accepting, lets requests in flight finish for up to a second.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(std::time::Duration::from_secs(1), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}

/// Binds `spec.listen` and serves on the current runtime; `None` when `listen` is null.
pub async fn start(
    spec: &HttpSpec,
    paths: &Paths,
    queue: Arc<dyn Queue>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) -> Result<Option<HttpServer>, HttpError> {
    let Some(addr) = spec.listen else {
        return Ok(None);
    };
    let token = match &spec.token_file {
        Some(path) => Some(guard::read_token(path)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { addr, source })?;
    let state = AppState {
        queue,
        paths: paths.clone(),
        metrics,
        readiness,
        guard: Arc::new(guard::Guard::new(token, spec.requests_per_s)),
    };
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stopped.wait_for(|&s| s).await;
        };
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!("HTTP server stopped: {e}");
        }
    });
    tracing::info!(%addr, "HTTP listening on http://{addr}/ (metrics at /metrics)");
    Ok(Some(HttpServer { addr, stop, task }))
}

/// Every route; all read-only.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard::index))
        .route("/models/{name}", get(dashboard::model))
        .route("/static/{file}", get(dashboard::asset))
        .route("/metrics", get(metrics::scrape))
        .route("/healthz", get(api::healthz))
        .route("/readyz", get(api::readyz))
        .route("/api/v1/jobs", get(api::jobs))
        .route("/api/v1/jobs/{id}", get(api::job))
        .route("/api/v1/models", get(api::models))
        .route("/api/v1/models/{name}", get(api::model))
        .route("/api/v1/models/{name}/files/{*path}", get(api::file))
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::check,
        ))
        .with_state(state)
}
