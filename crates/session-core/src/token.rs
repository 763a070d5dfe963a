//! Session tokens (the secret a client holds) and handles (the public name a store keys by).
//!
//! A token is 256 bits from the OS CSPRNG, base64url-encoded. Stores never keep it: they key by the
//! token's SHA-256 hash, which is also the session's public [`SessionHandle`]. A dump of the store
//! therefore yields no usable token, and logs can name a session by its handle.
//!
//! A token may carry a short public *routing tag* before a `.` (e.g. `k3f9.<secret>`). The tag is
//! copied into the handle unhashed, so a backend that shards (Redis Cluster hash slots) can find the
//! shard from either. The tag is chosen by the store that issues the token, never by a client.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, SessionError};

/// Random bytes in an issued token (256 bits; OWASP asks for at least 64).
pub const TOKEN_RANDOM_BYTES: usize = 32;
/// Shortest token [`SessionToken::parse`] accepts. A UUID (36 characters) is accepted so the Redis
/// compatibility layout can read session ids issued by other services.
pub const TOKEN_MIN_LEN: usize = 32;
/// Longest token [`SessionToken::parse`] accepts.
pub const TOKEN_MAX_LEN: usize = 128;
/// Longest routing tag a token or handle may carry.
pub const ROUTING_TAG_MAX_LEN: usize = 16;

const HANDLE_HASH_LEN: usize = 43; // base64url of a 32-byte SHA-256 digest, unpadded

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Splits `s` at its one optional `.` into (tag, rest), validating the alphabet of both.
fn split_tag(s: &str) -> Option<(Option<&str>, &str)> {
    match s.split_once('.') {
        None => s.bytes().all(is_token_char).then_some((None, s)),
        Some((tag, rest)) => {
            let ok = !tag.is_empty()
                && tag.len() <= ROUTING_TAG_MAX_LEN
                && tag.bytes().all(is_token_char)
                && !rest.is_empty()
                && rest.bytes().all(is_token_char);
            ok.then_some((Some(tag), rest))
        }
    }
}

/// The secret a client presents. Its `Debug` and `Display` print a fingerprint, never the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionToken {
    secret: Box<str>,
    handle: SessionHandle,
}

impl SessionToken {
    /// Issues a new token from the OS CSPRNG.
    ///
    /// # Errors
    /// [`SessionError::Unavailable`] if the operating system cannot supply randomness.
    pub fn generate() -> Result<Self> {
        Self::generate_tagged(None)
    }

    /// Issues a new token carrying a public routing tag (see the module docs).
    ///
    /// # Errors
    /// [`SessionError::InvalidInput`] for a malformed tag; [`SessionError::Unavailable`] if the
    /// operating system cannot supply randomness.
    pub fn generate_tagged(tag: Option<&str>) -> Result<Self> {
        let mut bytes = [0u8; TOKEN_RANDOM_BYTES];
        crate::random::fill(&mut bytes).map_err(|e| SessionError::Unavailable {
            backend: "os-rng",
            source: Box::new(std::io::Error::other(e.to_string())),
        })?;
        let random = URL_SAFE_NO_PAD.encode(bytes);
        let secret = match tag {
            None => random,
            Some(tag) => {
                if tag.is_empty()
                    || tag.len() > ROUTING_TAG_MAX_LEN
                    || !tag.bytes().all(is_token_char)
                {
                    return Err(SessionError::invalid_input(
                        "routing tag",
                        "must be 1-16 characters of [A-Za-z0-9_-]",
                    ));
                }
                format!("{tag}.{random}")
            }
        };
        Ok(Self::from_valid(secret.into_boxed_str()))
    }

    /// Parses untrusted input (a cookie or a bearer header) strictly, before any store is asked.
    ///
    /// Accepts 32 to 128 characters of `[A-Za-z0-9_-]`, optionally behind one routing tag and `.`.
    ///
    /// # Errors
    /// [`SessionError::InvalidToken`] naming what is wrong, never echoing the input.
    pub fn parse(input: &str) -> Result<Self> {
        if input.len() < TOKEN_MIN_LEN {
            return Err(SessionError::InvalidToken {
                reason: "too short",
            });
        }
        if input.len() > TOKEN_MAX_LEN {
            return Err(SessionError::InvalidToken { reason: "too long" });
        }
        if split_tag(input).is_none() {
            return Err(SessionError::InvalidToken {
                reason: "contains characters outside [A-Za-z0-9_-] or a malformed routing tag",
            });
        }
        Ok(Self::from_valid(input.into()))
    }

    fn from_valid(secret: Box<str>) -> Self {
        let handle = SessionHandle::of_secret(&secret);
        Self { secret, handle }
    }

    /// The secret itself, for writing into a cookie or a response body. Never log it.
    #[must_use]
    pub fn expose_secret(&self) -> &str {
        &self.secret
    }

    /// The public handle this token's session is stored under.
    #[must_use]
    pub fn handle(&self) -> &SessionHandle {
        &self.handle
    }

    /// The routing tag, if the issuing store set one.
    #[must_use]
    pub fn routing_tag(&self) -> Option<&str> {
        self.handle.routing_tag()
    }

    /// A secret derived from this token for one `purpose` (e.g. `"csrf"`): base64url of
    /// SHA-256 over a fixed label, `purpose`, a separator and the token. Only a holder of the
    /// token can compute it; it reveals nothing of the token, differs from the handle (which
    /// hashes the token alone) and from every other purpose's secret, and changes whenever the
    /// session moves to a new token. Nothing is stored.
    #[must_use]
    pub fn derive(&self, purpose: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(b"session-core derived secret\0");
        hasher.update(purpose.as_bytes());
        hasher.update(b"\0");
        hasher.update(self.secret.as_bytes());
        URL_SAFE_NO_PAD.encode(hasher.finalize())
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionToken({})", self.handle.fingerprint())
    }
}

impl fmt::Display for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "token:{}", self.handle.fingerprint())
    }
}

/// The public name of a session: the SHA-256 of its token (base64url), behind the token's routing tag
/// if it has one. Safe to log, list and show to the session's owner; it cannot be used to sign in.
///
/// Shared text (`Arc<str>`): stores hold a handle in several places (map key, session, indexes),
/// and a clone is a reference count, not an allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionHandle(Arc<str>);

impl SessionHandle {
    fn of_secret(secret: &str) -> Self {
        let digest = Sha256::digest(secret.as_bytes());
        let hash = URL_SAFE_NO_PAD.encode(digest);
        // `secret` was validated (parsed or generated), so its one `.` ends a routing tag.
        match secret.split_once('.') {
            Some((tag, _)) => Self(format!("{tag}.{hash}").into()),
            None => Self(hash.into()),
        }
    }

    /// Parses a handle from untrusted input (e.g. a URL path segment).
    ///
    /// # Errors
    /// [`SessionError::InvalidInput`] unless it is a 43-character hash, optionally behind a routing tag.
    pub fn parse(input: &str) -> Result<Self> {
        let bad = || SessionError::invalid_input("handle", "not a session handle");
        let (_, hash) = split_tag(input).ok_or_else(bad)?;
        if hash.len() != HANDLE_HASH_LEN {
            return Err(bad());
        }
        Ok(Self(input.into()))
    }

    /// The handle as text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The routing tag, if any.
    #[must_use]
    pub fn routing_tag(&self) -> Option<&str> {
        self.0.split_once('.').map(|(tag, _)| tag)
    }

    /// The hash part, without the routing tag.
    #[must_use]
    pub fn hash(&self) -> &str {
        self.0.split_once('.').map_or(&*self.0, |(_, hash)| hash)
    }

    /// A short prefix of the hash for log lines and `Debug` output.
    #[must_use]
    pub fn fingerprint(&self) -> &str {
        &self.hash()[..8]
    }
}

impl fmt::Display for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SessionHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionHandle({})", self.0)
    }
}

impl TryFrom<String> for SessionHandle {
    type Error = SessionError;
    fn try_from(value: String) -> Result<Self> {
        Self::parse(&value)
    }
}

impl From<SessionHandle> for String {
    fn from(value: SessionHandle) -> Self {
        value.0.as_ref().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_secrets_differ_by_purpose_from_the_handle_and_across_tokens() {
        let token = SessionToken::generate().unwrap();
        let csrf = token.derive("csrf");
        assert_eq!(csrf, token.derive("csrf"), "deterministic");
        assert_ne!(csrf, token.derive("other"));
        assert_ne!(csrf, token.handle().hash());
        assert!(!csrf.contains(token.expose_secret()));
        assert_ne!(csrf, SessionToken::generate().unwrap().derive("csrf"));
        assert_eq!(csrf.len(), 43, "base64url of 32 bytes");
    }

    #[test]
    fn generated_tokens_are_long_unique_and_parse_back() {
        let a = SessionToken::generate().unwrap();
        let b = SessionToken::generate().unwrap();
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert_eq!(a.expose_secret().len(), 43);
        let parsed = SessionToken::parse(a.expose_secret()).unwrap();
        assert_eq!(parsed.handle(), a.handle());
    }

    #[test]
    fn debug_and_display_never_show_the_secret() {
        let t = SessionToken::generate().unwrap();
        let shown = format!("{t:?} {t} {:?} {}", t.handle(), t.handle());
        assert!(!shown.contains(t.expose_secret()));
        assert!(shown.contains(t.handle().fingerprint()));
    }

    #[test]
    fn handle_is_not_the_token_and_is_stable() {
        let t = SessionToken::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
        assert_eq!(t.handle().as_str().len(), 43);
        assert_ne!(t.handle().as_str(), t.expose_secret());
        // SHA-256("abc…EFG") base64url: pinned so a change of hash is a deliberate migration.
        assert_eq!(
            t.handle().as_str(),
            URL_SAFE_NO_PAD.encode(Sha256::digest(t.expose_secret().as_bytes()))
        );
    }

    #[test]
    fn parse_rejects_garbage() {
        for bad in [
            "",
            "short",
            &"a".repeat(129),
            "abcdefghijklmnopqrstuvwxyz0123456789+/==ABC",
            "abcdefghijklmnopqrstuvwxyz 0123456789ABCDEF",
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF\n",
            "..abcdefghijklmnopqrstuvwxyz0123456789ABCDEF",
            "tag.with.two.dots.abcdefghijklmnopqrstuvwxyz01",
            "ünïcödé-abcdefghijklmnopqrstuvwxyz0123456789",
        ] {
            assert!(
                matches!(
                    SessionToken::parse(bad),
                    Err(SessionError::InvalidToken { .. })
                ),
                "accepted {bad:?}"
            );
        }
    }

    #[test]
    fn uuid_session_ids_parse_for_compatibility() {
        let t = SessionToken::parse("2f1b7c1e-9a0b-4a53-8f57-2b2f0c5e8d11").unwrap();
        assert_eq!(t.routing_tag(), None);
    }

    #[test]
    fn routing_tag_is_carried_into_the_handle() {
        let t = SessionToken::generate_tagged(Some("k3f9")).unwrap();
        assert!(t.expose_secret().starts_with("k3f9."));
        assert_eq!(t.routing_tag(), Some("k3f9"));
        assert!(t.handle().as_str().starts_with("k3f9."));
        let h = SessionHandle::parse(t.handle().as_str()).unwrap();
        assert_eq!(&h, t.handle());
        assert!(SessionToken::generate_tagged(Some("bad tag")).is_err());
    }

    #[test]
    fn handle_parse_is_strict() {
        let t = SessionToken::generate().unwrap();
        assert!(SessionHandle::parse(t.handle().as_str()).is_ok());
        assert!(SessionHandle::parse("abc").is_err());
        assert!(SessionHandle::parse(&format!("{}x", t.handle())).is_err());
        assert!(SessionHandle::parse("../../etc/passwd").is_err());
    }
}
