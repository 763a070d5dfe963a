//! `session_axum::serve` stops when told to, also with an idle keep-alive connection open and
//! with a client that never reads its (large) response: the grace period bounds the wait.
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use session_axum::{ServerLimits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_idle_and_stuck_connections_within_the_grace_period() {
    let router = Router::new()
        .route("/small", get(|| async { "ok" }))
        .route("/large", get(|| async { vec![b'x'; 16 << 20] }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut limits = ServerLimits::default();
    limits.shutdown_grace = Duration::from_secs(1);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, router, limits, async {
        let _ = stopped.await;
    }));

    // A keep-alive connection that has had its answer and now idles.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 64];
    let n = idle.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    // A client that asks for 16 MiB and never reads it: the server's writes block.
    let mut stuck = tokio::net::TcpStream::connect(addr).await.unwrap();
    stuck
        .write_all(b"GET /large HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    stop.send(()).unwrap();
    // The bound only catches a server that never stops; the grace period is 1 s.
    let stopped = tokio::time::timeout(Duration::from_secs(10), server).await;
    assert!(stopped.is_ok(), "serve did not return after shutdown");
    stopped.unwrap().unwrap().unwrap();
    // The idle connection was closed by the server.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the idle connection was left open");
    drop(stuck);
}
