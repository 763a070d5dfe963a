//! Signs a user in on the in-memory store, touches, rotates and signs out, printing each step.
//! The session's public handle is printed; the secret token is only ever shown as a fingerprint.
//!
//! `cargo run -p session-memory --example quickstart`

use session_core::{Instrumented, NewUserSession, SessionPolicy, UserSessionStore};
use session_memory::MemoryStore;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), session_core::SessionError> {
    tracing_subscriber::fmt()
        .with_env_filter("session=info")
        .init();
    let store = Instrumented::new(MemoryStore::new(SessionPolicy::default())?);

    let issued = store
        .create(
            NewUserSession::new("u-42")
                .company_name("Acme")
                .email("ada@acme.test")
                .root(false),
        )
        .await?;
    println!(
        "signed in:  handle={} token={}",
        issued.session.handle, issued.token
    );
    let json = serde_json::to_string_pretty(&issued.session)
        .map_err(|e| session_core::SessionError::invalid_input("session", e.to_string()))?;
    println!("{json}");

    let mut session = store
        .get(&issued.token)
        .await?
        .ok_or(session_core::SessionError::NotFound)?;
    session.set_attribute("theme", "dark");
    let session = store.update(&session).await?.session;
    println!(
        "updated:    version={} attributes={:?}",
        session.version, session.attributes
    );

    let rotated = store
        .rotate(&issued.token)
        .await?
        .ok_or(session_core::SessionError::NotFound)?;
    println!("rotated:    new handle={}", rotated.session.handle);
    println!(
        "  old token still valid? {}",
        store.get(&issued.token).await?.is_some()
    );

    let sessions = store.list_by_user("u-42").await?;
    println!("sessions of u-42: {}", sessions.len());
    println!("signed out: {}", store.delete(&rotated.token).await?);
    Ok(())
}
