//! Serving with the time-outs a public HTTP service needs.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

use crate::error::ApiError;

/// Limits of [`serve`]. Every field has a default.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerLimits {
    /// A connection must deliver a request's whole header block within this, counted from when
    /// the server starts waiting for it (so it also ends idle keep-alive connections). Default `10s`.
    pub header_read_timeout: Duration,
    /// A request must be answered within this, reading its body included: a client that stalls
    /// its body gets a 408 (and so does a handler that takes longer: the two cannot be told apart
    /// from outside the handler). Default `30s`.
    pub request_timeout: Duration,
    /// Largest request body read, in bytes; larger is a 413. Default 64 KiB.
    pub max_body_bytes: usize,
    /// After the shutdown signal, how long requests in flight may take to finish before their
    /// connections are dropped (a client that never reads its response cannot hold shutdown
    /// up). Default `10s`.
    pub shutdown_grace: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_body_bytes: 64 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl ServerLimits {
    /// Sets the header-read (and keep-alive idle) time-out.
    #[must_use]
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.header_read_timeout = timeout;
        self
    }

    /// Sets the whole-request time-out.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The router with the request time-out (408) and the body limit (413) applied, as JSON errors.
    pub fn apply(&self, router: Router) -> Router {
        router
            .layer(
                tower::ServiceBuilder::new()
                    .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
                        ApiError::new(
                            StatusCode::REQUEST_TIMEOUT,
                            "request_timeout",
                            "the request was not completed in time",
                        )
                        .into_response()
                    }))
                    .timeout(self.request_timeout),
            )
            .layer(DefaultBodyLimit::max(self.max_body_bytes))
    }
}

/// Serves `router` on `listener` over HTTP/1.1 with `limits` ([`ServerLimits::apply`] plus the
/// header-read time-out, which `axum::serve` cannot set), until `shutdown` resolves; then stops
/// accepting, closes idle connections, lets requests in flight finish for at most
/// `shutdown_grace`, drops what is left, and returns.
///
/// A failed accept (e.g. out of file descriptors) is logged and retried after a short pause; a
/// failed connection is logged at DEBUG. There is no cap on open connections: put one in front
/// (a proxy, or the OS's limits) where that matters.
///
/// # Errors
/// None today; the `Result` leaves room for listener failures that should stop the server.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let router = limits.apply(router);
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(router.clone());
        let mut stopping = stopping.clone();
        let header_read_timeout = limits.header_read_timeout;
        connections.spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stopping.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
        // Reap finished connections so the set does not grow with the server's age.
        while connections.try_join_next().is_some() {}
    }
    let _ = stop.send(true);
    let drained = tokio::time::timeout(limits.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = connections.len(),
            "connections still busy after the shutdown grace period; dropping them"
        );
        connections.shutdown().await;
    }
    Ok(())
}
