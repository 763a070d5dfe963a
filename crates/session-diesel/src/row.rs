//! A `user_sessions` row as the SQL stores read it, and its decoding into a [`UserSession`].

use std::net::IpAddr;

use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};
use session_core::clock::from_millis_since_epoch;
use session_core::{Result, ScanCursor, ScanPage, SessionError, SessionHandle, UserSession};

/// A row of `user_sessions` as the SQL stores select it (instants as epoch milliseconds): the
/// PostgreSQL, MySQL and SQLite stores read the same columns. Public, hidden, only for the fuzz
/// targets and property tests (`fuzzing::PgRow`).
#[doc(hidden)]
#[derive(QueryableByName)]
pub struct Row {
    #[diesel(sql_type = Text)]
    pub handle: String,
    #[diesel(sql_type = Text)]
    pub user_id: String,
    #[diesel(sql_type = Text)]
    pub company_name: String,
    #[diesel(sql_type = Text)]
    pub email: String,
    #[diesel(sql_type = Bool)]
    pub is_root: bool,
    #[diesel(sql_type = Bool)]
    pub remember_me: bool,
    #[diesel(sql_type = Text)]
    pub attributes: String,
    #[diesel(sql_type = BigInt)]
    pub created_at_ms: i64,
    #[diesel(sql_type = BigInt)]
    pub last_seen_at_ms: i64,
    #[diesel(sql_type = BigInt)]
    pub idle_expires_at_ms: i64,
    #[diesel(sql_type = BigInt)]
    pub absolute_expires_at_ms: i64,
    #[diesel(sql_type = BigInt)]
    pub version: i64,
    /// Selected as `COALESCE(authenticated_at, created_at)`: a row written before the column
    /// existed (by the previous release, during a rolling deploy) was authenticated at sign-in.
    #[diesel(sql_type = BigInt)]
    pub authenticated_at_ms: i64,
    #[diesel(sql_type = Text)]
    pub device: String,
    /// The address's text form (`IpAddr`'s `Display`), `NULL` when unknown.
    #[diesel(sql_type = Nullable<Text>)]
    pub address: Option<String>,
}

impl Row {
    /// The session this row holds, as the PostgreSQL store reads it; `Decode` for a malformed
    /// handle, attributes or address.
    pub fn into_session(self) -> Result<UserSession> {
        self.decode("postgres")
    }

    /// The session this row holds; `Decode` (naming `backend`) for a malformed handle,
    /// attributes or address, or a negative instant or version.
    pub(crate) fn decode(self, backend: &'static str) -> Result<UserSession> {
        let handle = SessionHandle::parse(&self.handle).map_err(|_| SessionError::Decode {
            backend,
            handle: None,
            reason: "a row's handle is malformed".to_owned(),
        })?;
        let attributes =
            serde_json::from_str(&self.attributes).map_err(|e| SessionError::Decode {
                backend,
                handle: Some(handle.clone()),
                reason: format!("`attributes` is not a JSON object: {e}"),
            })?;
        // The store never writes a negative instant or version: one read back is a damaged row,
        // refused like any other undecodable field (as the Redis store does), not read as 1970 or 0.
        let negative = |field: &str| SessionError::Decode {
            backend,
            handle: Some(handle.clone()),
            reason: format!("`{field}` is negative"),
        };
        let at = |field: &str, ms: i64| {
            u64::try_from(ms)
                .map(from_millis_since_epoch)
                .map_err(|_| negative(field))
        };
        // Only the store writes the column, from an `IpAddr`: anything else is a damaged row.
        let address = self
            .address
            .as_deref()
            .map(str::parse::<IpAddr>)
            .transpose()
            .map_err(|_| SessionError::Decode {
                backend,
                handle: Some(handle.clone()),
                reason: "`address` is not an IP address".to_owned(),
            })?;
        Ok(UserSession {
            authenticated_at: at("authenticated_at", self.authenticated_at_ms)?,
            device: self.device,
            address,
            created_at: at("created_at", self.created_at_ms)?,
            last_seen_at: at("last_seen_at", self.last_seen_at_ms)?,
            idle_expires_at: at("idle_expires_at", self.idle_expires_at_ms)?,
            absolute_expires_at: at("absolute_expires_at", self.absolute_expires_at_ms)?,
            version: u64::try_from(self.version).map_err(|_| negative("version"))?,
            handle,
            user_id: self.user_id,
            company_name: self.company_name,
            email: self.email,
            is_root: self.is_root,
            remember_me: self.remember_me,
            attributes,
        })
    }
}

/// The `address` column's value for `session`: the address's text form, which [`Row::decode`]
/// parses back; `NULL` when unknown.
pub(crate) fn address_text(session: &UserSession) -> Option<String> {
    session.address.map(|a| a.to_string())
}

/// Where a page of `scan` starts: `None` for the first one.
pub(crate) fn parse_keyset_cursor(
    prefix: &str,
    cursor: Option<&ScanCursor>,
) -> Result<Option<SessionHandle>> {
    let Some(cursor) = cursor else {
        return Ok(None);
    };
    cursor
        .as_str()
        .strip_prefix(prefix)
        .and_then(|handle| SessionHandle::parse(handle).ok())
        .map(Some)
        .ok_or_else(|| session_core::bad_scan_cursor(cursor))
}

/// A page of `limit` sessions from at most `limit + 1` rows read: the extra row only says that
/// the walk goes on, after the page's last handle.
pub(crate) fn keyset_page(prefix: &str, mut sessions: Vec<UserSession>, limit: usize) -> ScanPage {
    let next = (sessions.len() > limit).then(|| {
        sessions.truncate(limit);
        let last = sessions.last().map_or("", |s| s.handle.as_str());
        ScanCursor::new(format!("{prefix}{last}"))
    });
    ScanPage { sessions, next }
}

/// The `user_id` and `version` of the live row under a handle, read after a compare-and-set
/// `update` matched nothing, to say why.
#[cfg(any(feature = "postgres", feature = "mysql"))]
#[derive(QueryableByName)]
pub(crate) struct Stored {
    #[diesel(sql_type = Text)]
    pub(crate) user_id: String,
    #[diesel(sql_type = BigInt)]
    pub(crate) version: i64,
}

/// Why a compare-and-set `update` of `session` matched no row, given the live row (`user_id`,
/// `version`) found under its handle afterwards, if any.
pub(crate) fn update_missed(session: &UserSession, live: Option<(&str, i64)>) -> SessionError {
    match live {
        None => SessionError::NotFound,
        Some((user_id, _)) if user_id != session.user_id => SessionError::invalid_input(
            "user_id",
            "cannot change; sign the other user in with a new session",
        ),
        Some((_, version)) => SessionError::Conflict {
            expected: session.version,
            actual: u64::try_from(version).unwrap_or(0),
        },
    }
}

/// `update` as two statements (`once`: the compare-and-set, then on a miss the read that says
/// why), asked once more when the read found the version the update asked for: the row appeared
/// between the two statements (an `import` of this handle, as a migration copies it forward).
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) async fn update_looking_twice<F, Fut>(once: F) -> Result<session_core::Updated>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<session_core::Updated>>,
{
    match once().await {
        Err(SessionError::Conflict { expected, actual }) if expected == actual => once().await,
        other => other,
    }
}
