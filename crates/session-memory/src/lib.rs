//! An in-memory [`UserSessionStore`](session_core::UserSessionStore).
//!
//! For tests, single-instance services and development: sessions live in this process and vanish
//! with it. It follows the same contract as every other backend, so switching to Redis or
//! PostgreSQL is a configuration change.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> session_core::Result<()> {
//! use session_core::{NewUserSession, SessionPolicy, UserSessionStore};
//! let store = session_memory::MemoryStore::new(SessionPolicy::default())?;
//! let issued = store.create(NewUserSession::new("u-1").email("a@example.com")).await?;
//! let again = store.get(&issued.token).await?.expect("live session");
//! assert_eq!(again.email, "a@example.com");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod store;

pub use store::MemoryStore;
