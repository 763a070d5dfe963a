//! The user session and what a caller supplies to create one.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SessionError};
use crate::policy::SessionPolicy;
use crate::token::{SessionHandle, SessionToken};

/// Small, size-limited application data kept with a session (e.g. a CSRF secret, a locale).
pub type Attributes = BTreeMap<String, serde_json::Value>;

/// Who signed in, as whom, until when. Returned by every read; it never contains the token.
///
/// Exhaustive on purpose: backends in other crates rebuild it from what they stored.
///
/// Read back from JSON written before `authenticated_at`, `device` and `address` existed (an old
/// `sessionctl export`), it takes `created_at` as the authentication time and no device metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "SessionWire")]
pub struct UserSession {
    /// The session's public name (a hash of its token). Use it to list and revoke.
    pub handle: SessionHandle,
    /// The signed-in user. Fixed for the session's life: another user signs in with a new session.
    pub user_id: String,
    /// The user's company.
    pub company_name: String,
    /// The user's e-mail address.
    pub email: String,
    /// Whether the user has root (administrator) rights.
    pub is_root: bool,
    /// Whether the session uses the longer "remember me" timeouts.
    pub remember_me: bool,
    /// Application data, limited by [`SessionPolicy::max_attributes_bytes`].
    pub attributes: Attributes,
    /// Sign-in time.
    #[serde(with = "humantime_serde")]
    pub created_at: SystemTime,
    /// Last time a touch was written.
    #[serde(with = "humantime_serde")]
    pub last_seen_at: SystemTime,
    /// When the session expires unless touched; never after `absolute_expires_at`.
    #[serde(with = "humantime_serde")]
    pub idle_expires_at: SystemTime,
    /// When the session expires regardless of activity.
    #[serde(with = "humantime_serde")]
    pub absolute_expires_at: SystemTime,
    /// Bumped by every successful `update`; the compare-and-set token.
    pub version: u64,
    /// When the user last proved who they are: the sign-in, or a later re-authentication (see
    /// [`UserSession::reauthenticated`]). Never before `created_at`. An `update` that changes it
    /// also rotates the token, as a change of `is_root` does: a fresh proof must not extend to a
    /// token that may have leaked before it.
    #[serde(with = "humantime_serde")]
    pub authenticated_at: SystemTime,
    /// A short label of the client that signed in, e.g. "Firefox on Linux" (empty: unknown).
    /// Editable like `email`, limited by [`SessionPolicy::max_field_bytes`].
    pub device: String,
    /// The client's IP address as the service saw it at sign-in (behind a proxy, the address the
    /// trusted proxy reported), if known. Editable.
    pub address: Option<IpAddr>,
}

/// How far ahead of a store's clock [`UserSession::validate`] accepts `authenticated_at`: the
/// clocks of the instances sharing a store may differ by this much.
pub const MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(60);

/// [`UserSession`] as JSON may carry it: the metadata fields added later are optional.
#[derive(Deserialize)]
struct SessionWire {
    handle: SessionHandle,
    user_id: String,
    company_name: String,
    email: String,
    is_root: bool,
    remember_me: bool,
    attributes: Attributes,
    #[serde(with = "humantime_serde")]
    created_at: SystemTime,
    #[serde(with = "humantime_serde")]
    last_seen_at: SystemTime,
    #[serde(with = "humantime_serde")]
    idle_expires_at: SystemTime,
    #[serde(with = "humantime_serde")]
    absolute_expires_at: SystemTime,
    version: u64,
    #[serde(default, with = "humantime_serde")]
    authenticated_at: Option<SystemTime>,
    #[serde(default)]
    device: String,
    #[serde(default)]
    address: Option<IpAddr>,
}

impl From<SessionWire> for UserSession {
    fn from(wire: SessionWire) -> Self {
        Self {
            handle: wire.handle,
            user_id: wire.user_id,
            company_name: wire.company_name,
            email: wire.email,
            is_root: wire.is_root,
            remember_me: wire.remember_me,
            attributes: wire.attributes,
            created_at: wire.created_at,
            last_seen_at: wire.last_seen_at,
            idle_expires_at: wire.idle_expires_at,
            absolute_expires_at: wire.absolute_expires_at,
            version: wire.version,
            authenticated_at: wire.authenticated_at.unwrap_or(wire.created_at),
            device: wire.device,
            address: wire.address,
        }
    }
}

/// What a caller supplies to sign a user in.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct NewUserSession {
    /// The signed-in user (required, non-empty).
    pub user_id: String,
    /// The user's company.
    pub company_name: String,
    /// The user's e-mail address.
    pub email: String,
    /// Whether the user has root rights.
    pub is_root: bool,
    /// Use the "remember me" timeouts.
    pub remember_me: bool,
    /// Initial application data.
    pub attributes: Attributes,
    /// A short label of the client signing in ("Firefox on Linux"); `session-axum` fills it from
    /// the `User-Agent` header when left empty.
    pub device: String,
    /// The client's address; `session-axum` fills it (trusting `X-Forwarded-For` only from the
    /// proxies it is told to) when left `None`.
    pub address: Option<IpAddr>,
}

impl NewUserSession {
    /// A new session for `user_id` with every other field empty.
    pub fn new(user_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            ..Self::default()
        }
    }

    /// Sets the company name.
    #[must_use]
    pub fn company_name(mut self, company_name: impl Into<String>) -> Self {
        self.company_name = company_name.into();
        self
    }

    /// Sets the e-mail address.
    #[must_use]
    pub fn email(mut self, email: impl Into<String>) -> Self {
        self.email = email.into();
        self
    }

    /// Sets the root flag.
    #[must_use]
    pub fn root(mut self, is_root: bool) -> Self {
        self.is_root = is_root;
        self
    }

    /// Chooses the "remember me" tier.
    #[must_use]
    pub fn remember_me(mut self, remember_me: bool) -> Self {
        self.remember_me = remember_me;
        self
    }

    /// Sets the device label (e.g. "Firefox on Linux").
    #[must_use]
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = device.into();
        self
    }

    /// Sets the client's address.
    #[must_use]
    pub fn address(mut self, address: Option<IpAddr>) -> Self {
        self.address = address;
        self
    }

    /// Adds one attribute.
    #[must_use]
    pub fn attribute(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.attributes.insert(key.into(), value.into());
        self
    }

    /// Validates against `policy` and builds the session a store will keep under `token`.
    ///
    /// # Errors
    /// [`SessionError::InvalidInput`] or [`SessionError::PayloadTooLarge`].
    pub fn into_session(self, token: &SessionToken, policy: &SessionPolicy) -> Result<UserSession> {
        validate_fields(
            &self.user_id,
            &self.company_name,
            &self.email,
            &self.device,
            policy,
        )?;
        validate_attributes(&self.attributes, policy)?;
        let now = policy.now();
        let expiry = policy.initial_expiry(now, self.remember_me);
        Ok(UserSession {
            handle: token.handle().clone(),
            user_id: self.user_id,
            company_name: self.company_name,
            email: self.email,
            is_root: self.is_root,
            remember_me: self.remember_me,
            attributes: self.attributes,
            created_at: now,
            last_seen_at: now,
            idle_expires_at: expiry.idle_expires_at,
            absolute_expires_at: expiry.absolute_expires_at,
            version: 1,
            authenticated_at: now,
            device: self.device,
            address: self.address,
        })
    }
}

impl UserSession {
    /// Validates the caller-editable fields before an `update` is sent to a store.
    ///
    /// # Errors
    /// [`SessionError::InvalidInput`] or [`SessionError::PayloadTooLarge`].
    /// `authenticated_at` must not be before `created_at`, nor more than [`MAX_CLOCK_SKEW`]
    /// ahead of the policy clock (a proof from the future would pass freshness checks for
    /// longer; the allowance keeps a session another instance dated with a clock slightly ahead
    /// writable).
    pub fn validate(&self, policy: &SessionPolicy) -> Result<()> {
        self.validate_editable(policy)?;
        self.validate_authenticated_at()?;
        if self.authenticated_at > policy.now() + MAX_CLOCK_SKEW {
            return Err(SessionError::invalid_input(
                "authenticated_at",
                "is in the future",
            ));
        }
        Ok(())
    }

    fn validate_editable(&self, policy: &SessionPolicy) -> Result<()> {
        validate_fields(
            &self.user_id,
            &self.company_name,
            &self.email,
            &self.device,
            policy,
        )?;
        validate_attributes(&self.attributes, policy)
    }

    fn validate_authenticated_at(&self) -> Result<()> {
        whole_millis("authenticated_at", self.authenticated_at)?;
        if self.authenticated_at < self.created_at {
            return Err(SessionError::invalid_input(
                "authenticated_at",
                "is before created_at",
            ));
        }
        Ok(())
    }

    /// The session with `authenticated_at` set to the policy clock's now, for an `update` after
    /// the user proved who they are again (re-entered the password): the store rotates the token
    /// in the same step ([`Updated::rotated`]).
    #[must_use]
    pub fn reauthenticated(mut self, policy: &SessionPolicy) -> Self {
        self.authenticated_at = policy.now().max(self.created_at);
        self
    }

    /// How long ago the user last proved who they are, by the policy clock (zero if
    /// `authenticated_at` is ahead of it).
    #[must_use]
    pub fn authentication_age(&self, policy: &SessionPolicy) -> std::time::Duration {
        policy
            .now()
            .duration_since(self.authenticated_at)
            .unwrap_or_default()
    }

    /// Validates a session read from another store before [`crate::UserSessionStore::import`]
    /// keeps it: the editable fields as [`UserSession::validate`] does, a version of at least 1,
    /// instants in order (`created_at <= last_seen_at`, `created_at <= idle_expires_at <=
    /// absolute_expires_at`) and every instant in whole milliseconds after 1970, the grain every
    /// backend stores. Expiry is not checked here: the store compares with its own clock.
    ///
    /// # Errors
    /// [`SessionError::InvalidInput`] naming the field, or [`SessionError::PayloadTooLarge`].
    pub fn validate_import(&self, policy: &SessionPolicy) -> Result<()> {
        // Not `validate`: a copy's `authenticated_at` was dated by the source store's clock, which
        // may run a little ahead of this one.
        self.validate_editable(policy)?;
        if self.version == 0 {
            return Err(SessionError::invalid_input("version", "must be at least 1"));
        }
        if i64::try_from(self.version).is_err() {
            return Err(SessionError::invalid_input("version", "too large to store"));
        }
        for (field, instant) in [
            ("created_at", self.created_at),
            ("last_seen_at", self.last_seen_at),
            ("idle_expires_at", self.idle_expires_at),
            ("absolute_expires_at", self.absolute_expires_at),
        ] {
            whole_millis(field, instant)?;
        }
        self.validate_authenticated_at()?;
        let order = [
            ("last_seen_at", self.created_at <= self.last_seen_at),
            ("idle_expires_at", self.created_at <= self.idle_expires_at),
            (
                "absolute_expires_at",
                self.idle_expires_at <= self.absolute_expires_at,
            ),
        ];
        if let Some((field, _)) = order.into_iter().find(|(_, in_order)| !in_order) {
            return Err(SessionError::invalid_input(
                field,
                "is out of order with the session's other instants",
            ));
        }
        Ok(())
    }

    /// The attributes as JSON, the encoding every backend stores.
    ///
    /// # Errors
    /// [`SessionError::InvalidInput`] if a value cannot be encoded.
    pub fn attributes_json(&self) -> Result<String> {
        encode_attributes(&self.attributes)
    }

    /// Sets (or replaces) one attribute. Size is checked when the session is written.
    pub fn set_attribute(&mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) {
        self.attributes.insert(key.into(), value.into());
    }

    /// The attribute `key` decoded as a `T`, or `None` if the session has no such attribute.
    ///
    /// # Errors
    /// [`SessionError::Decode`] naming the key if the stored value is not a `T`: stored data the
    /// program reads as the wrong type is a server-side fault (the client cannot fix it), and the
    /// error never quotes the stored value.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.attributes
            .get(key)
            .map(|value| {
                T::deserialize(value).map_err(|_| SessionError::Decode {
                    backend: "attributes",
                    handle: Some(self.handle.clone()),
                    reason: format!("`{key}` does not hold a {}", std::any::type_name::<T>()),
                })
            })
            .transpose()
    }

    /// Stores `value` (encoded as JSON) under `key`, replacing what was there. Nothing is written
    /// until the session is passed to `update` (or edited inside an `update_with` closure); the
    /// size limit is checked then.
    ///
    /// # Errors
    /// [`SessionError::InvalidInput`] if `value` cannot be encoded as JSON (e.g. a map with
    /// non-string keys).
    pub fn insert<T: Serialize + ?Sized>(
        &mut self,
        key: impl Into<String>,
        value: &T,
    ) -> Result<()> {
        let key = key.into();
        let value = serde_json::to_value(value).map_err(|e| {
            SessionError::invalid_input("attributes", format!("`{key}` cannot be encoded: {e}"))
        })?;
        self.attributes.insert(key, value);
        Ok(())
    }

    /// Removes the attribute `key`, returning its raw value if there was one.
    pub fn remove(&mut self, key: &str) -> Option<serde_json::Value> {
        self.attributes.remove(key)
    }
}

/// What [`crate::UserSessionStore::update`] stored.
#[derive(Clone, Debug)]
#[non_exhaustive]
#[must_use = "a change of is_root or authenticated_at moves the session to a new token: send `rotated` to the client"]
pub struct Updated {
    /// The session as stored, at `version + 1`.
    pub session: UserSession,
    /// A new token when the update changed `is_root`: the store rotated the session in the same
    /// atomic step (a privilege change must not keep a token that may have leaked before it). The
    /// old token finds nothing from then on; hand this one to the client.
    pub rotated: Option<SessionToken>,
}

impl Updated {
    /// An update that kept the token.
    pub fn kept(session: UserSession) -> Self {
        Self {
            session,
            rotated: None,
        }
    }

    /// An update that moved the session to `token`.
    pub fn moved_to(session: UserSession, token: SessionToken) -> Self {
        Self {
            session,
            rotated: Some(token),
        }
    }
}

/// Refuses an instant no backend stores exactly: before 1970, past `i64` milliseconds, or finer
/// than a millisecond.
fn whole_millis(field: &'static str, instant: SystemTime) -> Result<()> {
    let Ok(since) = instant.duration_since(std::time::UNIX_EPOCH) else {
        return Err(SessionError::invalid_input(field, "is before 1970"));
    };
    if since.subsec_nanos() % 1_000_000 != 0 {
        return Err(SessionError::invalid_input(
            field,
            "is not in whole milliseconds",
        ));
    }
    if i64::try_from(since.as_millis()).is_err() {
        return Err(SessionError::invalid_input(field, "is too far ahead"));
    }
    Ok(())
}

/// Encodes attributes as JSON.
///
/// # Errors
/// [`SessionError::InvalidInput`] if a value cannot be encoded.
pub fn encode_attributes(attributes: &Attributes) -> Result<String> {
    serde_json::to_string(attributes)
        .map_err(|e| SessionError::invalid_input("attributes", e.to_string()))
}

fn validate_fields(
    user_id: &str,
    company_name: &str,
    email: &str,
    device: &str,
    policy: &SessionPolicy,
) -> Result<()> {
    if user_id.is_empty() {
        return Err(SessionError::invalid_input("user_id", "must not be empty"));
    }
    for (field, value) in [
        ("user_id", user_id),
        ("company_name", company_name),
        ("email", email),
        ("device", device),
    ] {
        if value.len() > policy.max_field_bytes {
            return Err(SessionError::PayloadTooLarge {
                what: field,
                size: value.len(),
                limit: policy.max_field_bytes,
            });
        }
        if value.chars().any(char::is_control) {
            return Err(SessionError::invalid_input(
                field,
                "must not contain control characters",
            ));
        }
    }
    Ok(())
}

fn validate_attributes(attributes: &Attributes, policy: &SessionPolicy) -> Result<()> {
    // Counted without allocating the encoding: the writer only adds up lengths.
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, attributes)
        .map_err(|e| SessionError::invalid_input("attributes", e.to_string()))?;
    if counter.0 > policy.max_attributes_bytes {
        return Err(SessionError::PayloadTooLarge {
            what: "attributes",
            size: counter.0,
            limit: policy.max_attributes_bytes,
        });
    }
    Ok(())
}

/// A session together with its secret token: returned only by `create` and `rotate`.
#[derive(Clone, Debug)]
pub struct IssuedSession {
    /// The secret to hand to the client (cookie or bearer). Never store or log it.
    pub token: SessionToken,
    /// The session as stored.
    pub session: UserSession,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_and_empty_fields_are_rejected() {
        let policy = SessionPolicy::default();
        let token = SessionToken::generate().unwrap();
        assert!(matches!(
            NewUserSession::new("").into_session(&token, &policy),
            Err(SessionError::InvalidInput {
                field: "user_id",
                ..
            })
        ));
        assert!(matches!(
            NewUserSession::new("u")
                .email("x".repeat(1000))
                .into_session(&token, &policy),
            Err(SessionError::PayloadTooLarge { what: "email", .. })
        ));
        assert!(matches!(
            NewUserSession::new("u")
                .attribute("blob", "x".repeat(5000))
                .into_session(&token, &policy),
            Err(SessionError::PayloadTooLarge {
                what: "attributes",
                ..
            })
        ));
        assert!(matches!(
            NewUserSession::new("u\n").into_session(&token, &policy),
            Err(SessionError::InvalidInput {
                field: "user_id",
                ..
            })
        ));
    }

    #[test]
    fn typed_attributes_round_trip_and_a_wrong_type_is_a_typed_error() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Cart {
            items: Vec<u32>,
        }
        let token = SessionToken::generate().unwrap();
        let mut s = NewUserSession::new("u1")
            .into_session(&token, &SessionPolicy::default())
            .unwrap();
        assert_eq!(s.get::<Cart>("cart").unwrap(), None);
        s.insert("cart", &Cart { items: vec![1, 2] }).unwrap();
        assert_eq!(
            s.get::<Cart>("cart").unwrap(),
            Some(Cart { items: vec![1, 2] })
        );
        match s.get::<u64>("cart") {
            Err(SessionError::Decode { reason, .. }) => {
                assert!(
                    reason.contains("`cart`") && !reason.contains('1'),
                    "{reason}"
                );
            }
            other => panic!("expected Decode, got {other:?}"),
        }
        let non_string_keys: BTreeMap<(u8, u8), u8> = [((1, 2), 3)].into();
        assert!(s.insert("bad", &non_string_keys).is_err());
        assert!(s.remove("cart").is_some());
        assert_eq!(s.get::<Cart>("cart").unwrap(), None);
    }

    #[test]
    fn serialised_session_carries_no_token() {
        let token = SessionToken::generate().unwrap();
        let s = NewUserSession::new("u1")
            .into_session(&token, &SessionPolicy::default())
            .unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains(token.expose_secret()));
        assert!(json.contains(token.handle().as_str()));
    }
}
