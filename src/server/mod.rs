//! `onnx-cle serve`: the HTTP job service around the core.
//!
//! ```text
//! POST /equalize ──► upload (stream to BlobStore, sha256) ──► Jobs (JobStore, queue) ──► 202
//!                                                                │
//!                      worker threads (bounded pool) ◄───────────┘  claim
//!                      read upload → onnx::decode → crate::run (same as the CLI) → store results
//! GET /jobs/{id}[?wait=30s], /jobs/{id}/model, /jobs/{id}/report, GET /jobs, cancel, DELETE
//! /healthz /readyz /metrics /openapi.json /docs
//! ```
//!
//! Layering: this module uses the core; the core knows nothing of it. Persistence sits behind
//! [`store::JobStore`] and [`store::BlobStore`] (filesystem by default, [`store::fs`] is the
//! only code touching the data directory). CPU work runs on [`jobs::worker::Pool`] threads,
//! never on the async runtime. Every error is an RFC 9457 problem ([`problem`]).
//!
//! Lifecycle: at start, interrupted runs go back to the queue ([`jobs::Jobs::open`]). On
//! SIGTERM or Ctrl-C the service stops accepting connections and jobs (readiness turns 503),
//! lets running jobs finish for `--shutdown-grace`, then interrupts them; interrupted jobs stay
//! `queued` on disk and run after the next start. Finished jobs expire after `--retention`.
//!
//! Scale-out: with `--database-url` (and `--blob-store s3://…`) any number of replicas share one
//! queue ([`store::pg`], [`store::s3`]); `--role api|worker` splits the HTTP API from the
//! workers. Each replica renews the leases of the jobs it runs ([`jobs::Jobs::renew_leases`])
//! and puts the jobs of replicas that stopped renewing back in the queue ([`jobs::Jobs::reap`]);
//! interrupted jobs are taken over by the other replicas at once.

pub mod auth;
pub mod config;
pub mod job;
pub mod jobs;
pub mod listen;
pub mod metrics;
pub mod problem;
pub mod routes;
pub mod store;
pub mod upload;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::Router;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

pub use config::ServeConfig;
use jobs::{worker, Jobs};
use routes::AppState;

/// Why the service could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory could not be opened or read.
    #[error("data directory {path}: {source}")]
    Storage {
        /// The directory.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Any other I/O failure (worker threads, the server loop).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The database or object store could not be opened, or the settings combine badly.
    #[error("{0}")]
    Backend(String),
}

/// The OpenAPI document of the service.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes::api_router().split_for_parts().1
}

/// The OpenAPI document as pretty JSON with a final newline (the form committed in
/// `openapi/openapi.json` and printed by `onnx-cle openapi`).
pub fn openapi_json() -> String {
    let mut s = openapi()
        .to_pretty_json()
        .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"));
    s.push('\n');
    s
}

/// The complete router: API routes, Swagger UI, `/openapi.json`, problem and metrics layers.
pub fn app(state: AppState) -> Router {
    app_with_auth(state, auth::Auth::new(None))
}

/// [`app`] behind bearer-token authentication ([`auth`]; health checks stay open).
pub fn app_with_auth(state: AppState, auth: auth::Auth) -> Router {
    let (router, api) = routes::api_router().split_for_parts();
    let metrics = Arc::clone(state.jobs.metrics());
    let body_limit = usize::try_from(state.max_upload.saturating_add(upload::MULTIPART_OVERHEAD))
        .unwrap_or(usize::MAX);
    router
        .merge(SwaggerUi::new(config::DOCS_PATH).url(config::OPENAPI_PATH, api))
        .route_layer(from_fn_with_state(metrics, metrics::track_http))
        .fallback(problem::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(from_fn_with_state(auth, auth::require))
        .layer(from_fn(problem::ensure_problem))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

async fn shutdown_signal() {
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

/// Cancels runs that exceed `--max-job-time` (checked four times a second).
async fn deadline_loop(jobs: Arc<Jobs>, stop: CancellationToken) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(250)) => {},
        }
        let n = jobs.enforce_deadlines();
        if n > 0 {
            tracing::warn!("canceled {n} jobs that ran past --max-job-time");
        }
    }
}

/// Calls `task` on the blocking pool every `period` (the first time after one period) until
/// `stop` is cancelled, and hands what it returns to `report`.
async fn every<T: Send + 'static>(
    period: Duration,
    stop: CancellationToken,
    jobs: Arc<Jobs>,
    task: impl Fn(&Jobs) -> T + Clone + Send + 'static,
    report: impl Fn(T),
) {
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(period) => {},
        }
        let (j, task) = (Arc::clone(&jobs), task.clone());
        if let Ok(out) = tokio::task::spawn_blocking(move || task(&j)).await {
            report(out);
        }
    }
}

/// Removes finished jobs older than the retention, every tenth of it (1 s to 1 min).
async fn expire_loop(jobs: Arc<Jobs>, retention: Duration, stop: CancellationToken) {
    if retention.is_zero() {
        return;
    }
    let period = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    let expire = |j: &Jobs| j.expire(job::now_ms());
    every(period, stop, jobs, expire, |n| {
        if n > 0 {
            tracing::info!("expired {n} finished jobs");
        }
    })
    .await;
}

/// Renews this replica's leases every third of the lease (shared stores).
async fn lease_loop(jobs: Arc<Jobs>, stop: CancellationToken) {
    let period = jobs.lease() / 3;
    every(period, stop, jobs, Jobs::renew_leases, |()| {}).await;
}

/// Puts jobs of replicas that stopped renewing their leases back in the queue (shared stores;
/// every replica runs it, each expired job is taken over once).
async fn reap_loop(jobs: Arc<Jobs>, stop: CancellationToken) {
    let period = (jobs.lease() / 4).clamp(Duration::from_millis(250), Duration::from_secs(5));
    every(period, stop, jobs, Jobs::reap, |()| {}).await;
}

/// Removes blobs without a job record on a shared store (a replica that died between upload
/// and queueing, or while expiring), every 10 minutes, for uploads older than `min_age`.
async fn orphan_loop(jobs: Arc<Jobs>, min_age: Duration, stop: CancellationToken) {
    let period = Duration::from_secs(600);
    let sweep = move |j: &Jobs| j.sweep_orphans(job::now_ms(), min_age);
    every(period, stop, jobs, sweep, |swept| match swept {
        Ok(n) if n > 0 => tracing::info!("removed the files of {n} jobs without a record"),
        Err(e) => tracing::warn!("orphan sweep: {e}"),
        Ok(_) => {}
    })
    .await;
}

/// Opens the backends the settings select, retrying for up to a minute while the database or
/// object store is unreachable (replicas may start before their database).
async fn open_backends(cfg: &ServeConfig) -> Result<store::Backends, ServeError> {
    if cfg.database_url.is_none() && cfg.role != config::Role::All {
        return Err(ServeError::Backend(
            "--role api and --role worker need a shared --database-url".into(),
        ));
    }
    let bcfg = store::BackendConfig {
        data_dir: cfg.data_dir.clone(),
        database_url: cfg.database_url.as_ref().map(|s| s.expose().to_string()),
        database_ca: cfg.database_ca.clone(),
        blob_store: cfg.blob_store.clone(),
        pool_size: 4 + 2 * usize::from(cfg.workers),
    };
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match store::open(&bcfg).await {
            Ok(b) => return Ok(b),
            Err(e) if store::is_unavailable(&e) && tokio::time::Instant::now() < give_up => {
                tracing::warn!("storage not reachable yet ({e}); retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(source) if cfg.database_url.is_none() && cfg.blob_store.is_none() => {
                return Err(ServeError::Storage {
                    path: cfg.data_dir.display().to_string(),
                    source,
                })
            }
            Err(e) => return Err(ServeError::Backend(e.to_string())),
        }
    }
}

/// Runs the service until SIGTERM or Ctrl-C.
pub async fn serve(cfg: ServeConfig) -> Result<(), ServeError> {
    let data_dir = cfg.data_dir.clone();
    let storage = |source| ServeError::Storage {
        path: data_dir.display().to_string(),
        source,
    };
    let metrics = Arc::new(metrics::Metrics::default());
    let backends = open_backends(&cfg).await?;
    let describe = backends.describe.clone();
    let opened = {
        let (queue_size, retention, metrics) =
            (cfg.queue_size as usize, cfg.retention, Arc::clone(&metrics));
        let (js, bs) = (Arc::clone(&backends.jobs), Arc::clone(&backends.blobs));
        tokio::task::spawn_blocking(move || Jobs::open(js, bs, queue_size, retention, metrics))
            .await
            .map_err(std::io::Error::other)?
    };
    let (jobs, recovery) = match opened {
        Ok(j) => j,
        Err(e) if backends.jobs.shared() => return Err(ServeError::Backend(e.to_string())),
        Err(e) => return Err(storage(e)),
    };
    for bad in &recovery.unreadable {
        tracing::warn!("ignoring unreadable job record {bad}");
    }
    tracing::info!(
        loaded = recovery.loaded,
        requeued = recovery.requeued,
        failed = recovery.failed,
        orphans = recovery.orphans,
        "{describe}"
    );
    let jobs = Arc::new(
        jobs.with_max_job_time(cfg.max_job_time)
            .with_lease(cfg.job_lease),
    );
    if jobs.shared() {
        let weak = Arc::downgrade(&jobs);
        backends.jobs.subscribe(Arc::new(move |ev| {
            if let Some(j) = weak.upgrade() {
                j.on_event(ev);
            }
        }));
        if cfg.blob_store.is_none() {
            tracing::warn!(
                "--database-url without --blob-store: uploads and results stay in {}; every \
                 replica must share that folder",
                cfg.data_dir.display()
            );
        }
        tracing::info!(
            replica = jobs.owner(),
            role = ?cfg.role,
            lease_s = jobs.lease().as_secs_f64(),
            "sharing the queue with other replicas"
        );
    }
    let limits = cfg.limits();
    let engine: Arc<worker::Engine> = Arc::new(move |input, options, cancel, progress| {
        worker::run_core_within(input, options, &limits, cancel, progress)
    });
    let workers = if cfg.role.runs_jobs() {
        usize::from(cfg.workers)
    } else {
        0
    };
    if workers > 0 && !worker::init_compute_pool(cfg.worker_nice) {
        tracing::warn!("the compute thread pool was already running: its priority is unchanged");
    }
    let pool = worker::Pool::start(Arc::clone(&jobs), engine, workers, cfg.worker_nice)?;
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: cfg.addr,
            source,
        })?;
    let local = listener.local_addr()?;
    tracing::info!("listening on http://{local}");
    let shutdown = CancellationToken::new();
    // Background loops stop only after the pool has drained (leases must be renewed until
    // the last run is recorded).
    let background = CancellationToken::new();
    tokio::spawn(expire_loop(
        Arc::clone(&jobs),
        cfg.retention,
        background.clone(),
    ));
    if !cfg.max_job_time.is_zero() {
        tokio::spawn(deadline_loop(Arc::clone(&jobs), background.clone()));
    }
    if jobs.shared() {
        tokio::spawn(lease_loop(Arc::clone(&jobs), background.clone()));
        tokio::spawn(reap_loop(Arc::clone(&jobs), background.clone()));
        let min_age = cfg.upload_timeout + Duration::from_secs(600);
        tokio::spawn(orphan_loop(Arc::clone(&jobs), min_age, background.clone()));
    }
    let state = AppState {
        jobs: Arc::clone(&jobs),
        max_upload: cfg.max_upload,
        max_wait: cfg.max_wait,
        workers,
        shutdown: shutdown.clone(),
        limits,
        uploads: Arc::new(tokio::sync::Semaphore::new(
            cfg.max_concurrent_uploads as usize,
        )),
        upload_timeout: cfg.upload_timeout,
        presign: cfg.presign,
    };
    let auth = auth::Auth::new(cfg.auth_token.as_ref().map(config::Secret::expose));
    if auth.required() {
        tracing::info!("bearer-token authentication is on (health checks stay open)");
    }
    let on_signal = {
        let (jobs, shutdown) = (Arc::clone(&jobs), shutdown.clone());
        async move {
            shutdown_signal().await;
            tracing::info!("shutting down: no new jobs; running jobs get the grace period");
            jobs.drain();
            jobs.stop_claiming();
            shutdown.cancel();
        }
    };
    let conn_limits = listen::ConnLimits {
        header_timeout: cfg.header_timeout,
        max_connections: cfg.max_connections as usize,
    };
    listen::serve(listener, app_with_auth(state, auth), conn_limits, on_signal).await;
    let deadline = tokio::time::Instant::now() + cfg.shutdown_grace;
    while !pool.is_finished() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !pool.is_finished() {
        tracing::info!("grace period over: interrupting running jobs (they go back to the queue)");
        jobs.interrupt_running();
        let hard = tokio::time::Instant::now() + Duration::from_secs(10);
        while !pool.is_finished() && tokio::time::Instant::now() < hard {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    background.cancel();
    if pool.is_finished() {
        pool.join();
    } else {
        tracing::warn!(
            "a job did not stop in time; it stays `running` and runs again after a restart \
             (or, on a shared database, once its lease runs out)"
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// `onnx-cle migrate`: applies the embedded schema migrations to the database at `url` (`ca`:
/// as `--database-ca`).
pub async fn migrate(url: &str, ca: Option<&std::path::Path>) -> Result<Vec<i32>, ServeError> {
    let s = store::pg::PgJobStore::connect(url, ca, 2)
        .await
        .map_err(|e| ServeError::Backend(e.to_string()))?;
    s.migrate()
        .await
        .map_err(|e| ServeError::Backend(e.to_string()))
}

/// `onnx-cle healthcheck`: GETs the liveness path of a local server (for container health
/// checks, where no curl is installed). An unspecified address (`0.0.0.0`) means loopback.
pub fn healthcheck(addr: SocketAddr) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut target = addr;
    if target.ip().is_unspecified() {
        target.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let timeout = Duration::from_secs(5);
    let mut s =
        TcpStream::connect_timeout(&target, timeout).map_err(|e| format!("{target}: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {} HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n",
        config::HEALTH_PATH
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    if line.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "unexpected answer: {}",
            line.lines().next().unwrap_or("")
        ))
    }
}
