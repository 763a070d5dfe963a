//! Every operation through the instrumentation layer, with tracing captured at TRACE level:
//! the log names sessions by handle and never contains a raw token.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use session_core::{
    Instrumented, ManualClock, NewUserSession, SessionPolicy, SessionToken, UserSessionStore,
};
use session_memory::MemoryStore;
use tracing_subscriber::fmt::MakeWriter;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Self;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn no_operation_logs_a_raw_token() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(captured.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let clock = ManualClock::starting_now();
    let policy = SessionPolicy::default().with_clock(clock.clone());
    let store = Instrumented::new(MemoryStore::new(policy).expect("valid policy"));

    let mut secrets = Vec::new();
    let a = store
        .create(NewUserSession::new("alice").email("a@x.test"))
        .await
        .expect("create");
    let b = store
        .create(NewUserSession::new("alice"))
        .await
        .expect("create");
    secrets.push(a.token.clone());
    secrets.push(b.token.clone());
    store.get(&a.token).await.expect("get");
    clock.advance(Duration::from_secs(120));
    store.touch(&a.token).await.expect("touch");
    let s = store.get(&a.token).await.expect("get").expect("live");
    let _ = store.update(&s).await.expect("update");
    store
        .update(&s)
        .await
        .expect_err("stale update conflicts and is logged");
    let rotated = store.rotate(&a.token).await.expect("rotate").expect("live");
    secrets.push(rotated.token.clone());
    store.get(&a.token).await.expect("get of dead token");
    let unknown = SessionToken::generate().expect("rng");
    secrets.push(unknown.clone());
    store.get(&unknown).await.expect("miss");
    store.list_by_user("alice").await.expect("list");
    store
        .delete_by_user("alice", Some(&rotated.session.handle))
        .await
        .expect("delete_by_user");
    store
        .delete_by_handle(&b.session.handle)
        .await
        .expect("delete_by_handle");
    store.delete(&rotated.token).await.expect("delete");
    let mut gone = rotated.session.clone();
    gone.version = 99;
    store
        .update(&gone)
        .await
        .expect_err("update of a deleted session fails and is logged");
    clock.advance(Duration::from_secs(3600));
    store.purge_expired().await.expect("purge");
    // Errors built from bad input must not echo it either.
    let bad = format!("{}!", a.token.expose_secret());
    let err = SessionToken::parse(&bad).expect_err("rejected");
    tracing::warn!(error = %err, "rejected token");

    let log = String::from_utf8(captured.0.lock().expect("log buffer").clone()).expect("utf-8 log");
    for event in [
        "session.created",
        "session.touched",
        "session.rotated",
        "session.revoked",
        "session.expired",
        "session.conflict",
        "session.failed",
    ] {
        assert!(
            log.contains(event),
            "missing {event} in captured log:\n{log}"
        );
    }
    assert!(
        log.contains(rotated.session.handle.as_str()),
        "sessions are named by handle"
    );
    for token in &secrets {
        let secret = token.expose_secret();
        assert!(!log.contains(secret), "raw token in log:\n{log}");
        assert!(!log.contains(&secret[..20]), "token fragment in log");
    }
}
