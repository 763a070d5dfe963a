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

/// Serves a small route (`/`) and a 16 MiB one (`/large`) with `limits` on an ephemeral port.
async fn start(limits: ServerLimits) -> std::net::SocketAddr {
    let router = Router::new()
        .route("/", get(|| async { "ok" }))
        .route("/large", get(|| async { vec![b'x'; 16 << 20] }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, router, limits, std::future::pending()));
    addr
}

/// Sends `head` on a new connection and returns the server's answer: its head and, by its
/// `content-length`, its body (read until complete, whatever the segments; 10 s at most).
async fn exchange(addr: std::net::SocketAddr, head: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    let read_all = async {
        let mut chunk = [0u8; 4096];
        loop {
            let n = stream.read(&mut chunk).await.unwrap();
            reply.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&reply).to_ascii_lowercase();
            let complete = text.find("\r\n\r\n").is_some_and(|end| {
                let length = text[..end]
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                reply.len() >= end + 4 + length
            });
            if n == 0 || complete {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_all)
        .await
        .expect("no complete answer");
    String::from_utf8_lossy(&reply).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_targets_and_header_blocks_get_json_errors() {
    let addr = start(ServerLimits::default()).await;
    let long_target = format!("GET /?q={} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9_000));
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(17_000)
    );
    let many_headers = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..150)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    for (head, status, code) in [
        (long_target.as_str(), "414", "uri_too_long"),
        (big_header.as_str(), "431", "headers_too_large"),
        (many_headers.as_str(), "431", "headers_too_large"),
    ] {
        let reply = exchange(addr, head).await;
        assert!(reply.starts_with(&format!("HTTP/1.1 {status}")), "{reply}");
        assert!(reply.contains("application/json"), "{reply}");
        assert!(reply.contains(&format!("\"error\":\"{code}\"")), "{reply}");
    }
    // Just under the limits is served.
    let fits = format!("GET /?q={} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(8_000));
    assert!(exchange(addr, &fits).await.starts_with("HTTP/1.1 200"));
    // Far past hyper's read buffer, hyper refuses on its own (a 431, given its JSON body on the
    // way out, or a reset when the refusal closes the connection with the rest of the head
    // unread) and the server goes on serving.
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n",
        "c".repeat(64 * 1024)
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    if stream.write_all(huge.as_bytes()).await.is_ok() {
        let mut reply = vec![0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut reply))
            .await
            .expect("no answer to an oversized head");
        if let Ok(n) = read {
            let text = String::from_utf8_lossy(&reply[..n]);
            assert!(
                text.starts_with("HTTP/1.1 431")
                    && text.contains("\"error\":\"headers_too_large\""),
                "{text}"
            );
        }
    }
    assert!(
        exchange(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200")
    );
}

/// At the connection cap, a new connection is not served until an open one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_new_connections_until_one_closes() {
    let addr = start(ServerLimits::default().max_connections(1)).await;
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut reply = [0u8; 256];
    let n = first.read(&mut reply).await.unwrap();
    assert!(reply[..n].starts_with(b"HTTP/1.1 200"));
    // The first stays open (keep-alive); the second waits in the backlog.
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut reply)).await;
    assert!(early.is_err(), "served past the cap");
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(10), second.read(&mut reply))
        .await
        .expect("the second connection was never served")
        .unwrap();
    assert!(reply[..n].starts_with(b"HTTP/1.1 200"));
}

/// A client that asks for a large answer and never reads it loses its connection once a write
/// has made no progress for the write-stall time-out, so it cannot keep its place under the
/// connection cap: with a cap of 1, the next client is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_loses_its_connection() {
    let addr = start(
        ServerLimits::default()
            .max_connections(1)
            .write_stall_timeout(Duration::from_millis(500)),
    )
    .await;
    let mut stuck = tokio::net::TcpStream::connect(addr).await.unwrap();
    stuck
        .write_all(b"GET /large HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The bound only catches a server that keeps the stuck connection (and so the only slot).
    let next = exchange(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(next.starts_with("HTTP/1.1 200"), "{next}");
    drop(stuck);
}

/// Heads hyper cannot parse, which it refuses before any service runs, get the same JSON error
/// shape as everything else; the server serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_hyper_refuses_get_json_errors_too() {
    let addr = start(ServerLimits::default()).await;
    for (head, status, code) in [
        (
            "GET / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \u{1}abc\r\n\r\n",
            "400",
            "bad_request",
        ),
        ("GARBAGE\r\n\r\n", "400", "bad_request"),
        (
            "GET /sess\u{1}ions HTTP/1.1\r\nHost: x\r\n\r\n",
            "400",
            "bad_request",
        ),
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            "400",
            "bad_request",
        ),
        ("GET / HTTP/2.5\r\nHost: x\r\n\r\n", "400", "bad_request"),
    ] {
        let reply = exchange(addr, head).await;
        assert!(
            reply.starts_with(&format!("HTTP/1.1 {status}")),
            "{head:?}: {reply}"
        );
        assert!(reply.contains("content-type: application/json"), "{reply}");
        let body = reply.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], code, "{reply}");
        assert!(json["message"].is_string());
    }
    assert!(
        exchange(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 200")
    );
}

/// A handler's bare error status becomes a JSON error with its own status and no claim about
/// HTTP validity, also when the connection closes after it (where its head would otherwise look
/// like hyper's own refusal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handlers_bare_error_gets_its_own_json_body() {
    let router = Router::new().route(
        "/bare",
        get(|| async { axum::http::StatusCode::BAD_REQUEST }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        router,
        ServerLimits::default(),
        std::future::pending(),
    ));
    for head in [
        "GET /bare HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /bare HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ] {
        let reply = exchange(addr, head).await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
        let body = reply.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(
            (json["error"].as_str(), json["message"].as_str()),
            (Some("bad_request"), Some("bad request")),
            "{reply}"
        );
    }
}
