//! The connection loop: the axum router served by hyper (HTTP/1.1 and HTTP/2), with the two
//! bounds `axum::serve` does not set.
//!
//! - **Header timeout**: a client must send a request's headers within `header_timeout` of the
//!   connection waiting for them, or the connection is closed. This ends slow-header
//!   ("slowloris") clients and idle keep-alive connections. Bodies are bounded separately by the
//!   upload timeout of `POST /equalize`.
//! - **Connection cap**: at most `max_connections` connections are served at once; further ones
//!   wait in the kernel's accept backlog until one closes, so file descriptors and per-connection
//!   memory stay bounded whatever clients do.
//!
//! Shutdown is graceful as with `axum::serve`: once `shutdown` resolves no connection is
//! accepted, idle connections are closed, and in-flight requests finish.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Bounds of the connection loop.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Longest a connection may take to deliver a request's headers (also the idle keep-alive
    /// limit); zero: no limit.
    pub header_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

/// Serves `app` on `listener` until `shutdown` resolves, then waits for in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout((!limits.header_timeout.is_zero()).then_some(limits.header_timeout));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&slots).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                        () = &mut shutdown => break,
                    }
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
