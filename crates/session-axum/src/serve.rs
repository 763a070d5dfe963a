//! Serving with the time-outs a public HTTP service needs.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::extract::connect_info::ConnectInfo;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use session_core::ErrorChain;

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
    /// Longest request target (path and query), in bytes; longer is a JSON 414. Default 8 KiB.
    pub max_uri_bytes: usize,
    /// Largest header block (each header's name and value, plus 4 bytes for `: ` and CRLF);
    /// larger is a JSON 431. Default 16 KiB.
    pub max_header_bytes: usize,
    /// Most header fields; more is a JSON 431. Default 100.
    pub max_headers: usize,
    /// Most connections open at once; at the cap the server stops accepting until one closes
    /// (new clients wait in the listen backlog rather than being reset). Default 10 000; the
    /// process's open-file limit (`ulimit -n`) must allow it.
    pub max_connections: usize,
    /// A write to the client that makes no progress for this long ends the connection: a client
    /// that asks and never reads cannot hold its connection (and its place under
    /// `max_connections`) for ever. Default `30s`.
    pub write_stall_timeout: Duration,
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
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_connections: 10_000,
            write_stall_timeout: Duration::from_secs(30),
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

    /// Sets the largest request body, in bytes.
    #[must_use]
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.max_body_bytes = bytes;
        self
    }

    /// Sets the longest request target (path and query), in bytes.
    #[must_use]
    pub fn max_uri_bytes(mut self, bytes: usize) -> Self {
        self.max_uri_bytes = bytes;
        self
    }

    /// Sets the largest header block, in bytes.
    #[must_use]
    pub fn max_header_bytes(mut self, bytes: usize) -> Self {
        self.max_header_bytes = bytes;
        self
    }

    /// Sets the most header fields.
    #[must_use]
    pub fn max_headers(mut self, headers: usize) -> Self {
        self.max_headers = headers;
        self
    }

    /// Sets how long requests in flight may take to finish after the shutdown signal.
    #[must_use]
    pub fn shutdown_grace(mut self, grace: Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Sets the connection cap.
    #[must_use]
    pub fn max_connections(mut self, connections: usize) -> Self {
        self.max_connections = connections;
        self
    }

    /// hyper's read buffer: room for the largest request head these limits accept, so that hyper
    /// itself (whose refusals have no body) only cuts off heads far past them.
    fn read_buffer_bytes(&self) -> usize {
        self.max_uri_bytes
            .saturating_add(self.max_header_bytes)
            .saturating_add(4096)
            .max(8192)
    }

    /// Sets the write-stall time-out.
    #[must_use]
    pub fn write_stall_timeout(mut self, timeout: Duration) -> Self {
        self.write_stall_timeout = timeout;
        self
    }

    /// The router with the request time-out (408), the body limit (413) and the request-target
    /// and header limits (414, 431) applied, as JSON errors.
    pub fn apply(&self, router: Router) -> Router {
        let (max_uri, max_header_bytes, max_headers) =
            (self.max_uri_bytes, self.max_header_bytes, self.max_headers);
        router
            // Last on the way out: an error response with no body (a handler's bare
            // `StatusCode::BAD_REQUEST`) gets the JSON shape too, so that on the wire a bodiless
            // error can only be hyper's own refusal, which the connection rewrites.
            .layer(axum::middleware::map_response(json_for_bodiless_errors))
            .layer(axum::middleware::from_fn(
                move |request: axum::extract::Request, next: axum::middleware::Next| async move {
                    if let Some(refusal) =
                        oversized_head(&request, max_uri, max_header_bytes, max_headers)
                    {
                        return refusal.into_response();
                    }
                    next.run(request).await
                },
            ))
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

/// An error response without a body or a content type, given `{"error", "message"}` from its
/// status; everything else as it is.
async fn json_for_bodiless_errors(response: axum::response::Response) -> axum::response::Response {
    use axum::body::HttpBody as _;
    let status = response.status();
    let bodiless = response.body().size_hint().exact() == Some(0)
        && !response
            .headers()
            .contains_key(axum::http::header::CONTENT_TYPE);
    if !(status.is_client_error() || status.is_server_error()) || !bodiless {
        return response;
    }
    let reason = status
        .canonical_reason()
        .unwrap_or("error")
        .to_ascii_lowercase();
    let code: &'static str = match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::CONFLICT => "conflict",
        StatusCode::TOO_MANY_REQUESTS => "too_many_requests",
        s if s.is_server_error() => "internal",
        _ => "error",
    };
    let (mut parts, _) = response.into_parts();
    let mut json = ApiError::new(status, code, reason).into_response();
    // The response's own headers (e.g. `Retry-After`, `WWW-Authenticate`) stay.
    for (name, value) in json.headers().iter() {
        parts.headers.insert(name.clone(), value.clone());
    }
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    let body = std::mem::take(json.body_mut());
    axum::response::Response::from_parts(parts, body)
}

/// The JSON refusal of a request whose target or header block is over the limits.
fn oversized_head(
    request: &axum::extract::Request,
    max_uri: usize,
    max_header_bytes: usize,
    max_headers: usize,
) -> Option<ApiError> {
    let target = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if target > max_uri {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is longer than {max_uri} bytes"),
        ));
    }
    let headers = request.headers();
    let header_bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if headers.len() > max_headers || header_bytes > max_header_bytes {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request has more than {max_headers} header fields or more than {max_header_bytes} bytes of them"
            ),
        ));
    }
    None
}

/// Serves `router` on `listener` over HTTP/1.1 with `limits` ([`ServerLimits::apply`] plus the
/// header-read time-out, which `axum::serve` cannot set), until `shutdown` resolves; then stops
/// accepting, closes idle connections, lets requests in flight finish for at most
/// `shutdown_grace`, drops what is left, and returns.
///
/// A failed accept (e.g. out of file descriptors) is logged and retried after a short pause; a
/// failed connection is logged at DEBUG. At `max_connections` open connections it accepts no
/// more until one closes. Requests get the peer's address as
/// `axum::extract::ConnectInfo<SocketAddr>`, as with axum's `into_make_service_with_connect_info`.
///
/// hyper parses the request head before any of this runs, and refuses a head it cannot parse (a
/// control byte in a header value, a malformed `Content-Length`, more than its read buffer, sized
/// for the largest accepted target plus header block plus 4 KiB, or more than twice `max_headers`
/// fields) itself, with a bodiless 400, 414 or 431; the connection gives those answers the same
/// JSON body as every other error (and [`ServerLimits::apply`] gives one to a handler's bodiless
/// error status), so a client sees one error shape whatever refused it.
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
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %ErrorChain(&e), "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // The peer's address, as `axum::serve`'s `into_make_service_with_connect_info` gives
        // it, for handlers that limit or log by client.
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        ));
        let mut stopping = stopping.clone();
        let header_read_timeout = limits.header_read_timeout;
        let (read_buffer, max_headers) = (
            limits.read_buffer_bytes(),
            limits.max_headers.max(1).saturating_mul(2),
        );
        let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
        stream.set_write_timeout(Some(limits.write_stall_timeout));
        connections.spawn(async move {
            // Held for the connection's life: dropping it lets the accept loop take another.
            let _slot = slot;
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .max_buf_size(read_buffer)
                .max_headers(max_headers)
                .serve_connection(
                    TokioIo::new(crate::refusals::JsonRefusals::new(Box::pin(stream))),
                    service,
                );
            tokio::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = stopping.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %ErrorChain(&e), "connection ended with an error");
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
