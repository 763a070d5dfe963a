//! How the session cookie is written.

use std::time::SystemTime;

use axum::http::HeaderValue;
use axum_extra::extract::cookie::{Cookie, SameSite};
use session_core::{SessionToken, UserSession};

/// How the session cookie is written.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionCookies {
    /// The cookie's name. Default `session`. A `Secure` cookie is sent as `__Host-<name>` on
    /// path `/` and `__Secure-<name>` on any other (see [`SessionCookies::cookie_name`]).
    pub name: String,
    /// Send it over HTTPS only. Default `true`; turn off only for local plain-HTTP development.
    pub secure: bool,
    /// The `SameSite` attribute. Default `Lax`.
    pub same_site: SameSite,
    /// The cookie's path. Default `/`.
    pub path: String,
}

impl Default for SessionCookies {
    fn default() -> Self {
        Self {
            name: "session".to_owned(),
            secure: true,
            same_site: SameSite::Lax,
            path: "/".to_owned(),
        }
    }
}

impl SessionCookies {
    /// Sets whether the cookie is `Secure` (keep it on outside local plain-HTTP development).
    #[must_use]
    pub fn secure(mut self, secure: bool) -> Self {
        self.secure = secure;
        self
    }

    /// Sets the cookie's name.
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Sets the cookie's path (a `Secure` cookie off `/` is then named `__Secure-<name>`).
    #[must_use]
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// The name the cookie is written and read under. A `Secure` cookie on path `/` is
    /// `__Host-<name>`: a browser accepts it only from this exact host over HTTPS, never from a
    /// sibling subdomain or a plain-HTTP page (OWASP ASVS 4.0.3 V3.4.4). A `Secure` cookie on
    /// another path cannot carry `__Host-` (browsers drop it), so it is `__Secure-<name>`: still
    /// never set by a plain-HTTP page. Without `Secure` (local development) `name` as it is. A
    /// name that already carries a prefix is kept.
    #[must_use]
    pub fn cookie_name(&self) -> std::borrow::Cow<'_, str> {
        let prefixed = self.name.starts_with("__Host-") || self.name.starts_with("__Secure-");
        if !self.secure || prefixed {
            std::borrow::Cow::Borrowed(&self.name)
        } else if self.path == "/" {
            std::borrow::Cow::Owned(format!("__Host-{}", self.name))
        } else {
            std::borrow::Cow::Owned(format!("__Secure-{}", self.name))
        }
    }

    /// Whether the name and path can be written in a `Set-Cookie` header.
    ///
    /// # Errors
    /// What is wrong, naming the field.
    pub fn check(&self) -> Result<(), String> {
        let token_char = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
        if self.name.is_empty() || !self.name.chars().all(token_char) {
            return Err(format!("cookie name `{}` is not an HTTP token", self.name));
        }
        if !self.path.starts_with('/') || self.path.chars().any(|c| c.is_control() || c == ';') {
            return Err(format!(
                "cookie path `{}` must start with / and hold no `;`",
                self.path
            ));
        }
        // Browsers silently drop prefixed cookies that break the prefix's rules.
        if self.name.starts_with("__Host-") && !(self.secure && self.path == "/") {
            return Err(format!(
                "cookie name `{}` needs Secure and path /",
                self.name
            ));
        }
        if self.name.starts_with("__Secure-") && !self.secure {
            return Err(format!("cookie name `{}` needs Secure", self.name));
        }
        Ok(())
    }

    /// The `Set-Cookie` value carrying `token`. A "remember me" session's cookie lives until the
    /// session's absolute expiry; any other session gets a browser-session cookie (no `Max-Age`),
    /// gone when the browser closes. The server enforces the idle expiry either way.
    #[must_use]
    pub fn set(&self, token: &SessionToken, session: &UserSession) -> HeaderValue {
        let mut cookie = Cookie::build((
            self.cookie_name().into_owned(),
            token.expose_secret().to_owned(),
        ))
        .http_only(true)
        .secure(self.secure)
        .same_site(self.same_site)
        .path(self.path.clone());
        if session.remember_me {
            let seconds = session
                .absolute_expires_at
                .duration_since(SystemTime::now())
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            cookie = cookie.max_age(time::Duration::seconds(seconds));
        }
        header(&cookie.build())
    }

    /// The `Set-Cookie` value that removes the cookie.
    #[must_use]
    pub fn clear(&self) -> HeaderValue {
        let cookie = Cookie::build((self.cookie_name().into_owned(), ""))
            .http_only(true)
            .secure(self.secure)
            .same_site(self.same_site)
            .path(self.path.clone())
            .max_age(time::Duration::ZERO)
            .build();
        header(&cookie)
    }
}

fn header(cookie: &Cookie<'_>) -> HeaderValue {
    // A token is base64url, and the name and path were checked by `SessionCookies::check`, so this
    // is always a valid header.
    let mut value =
        HeaderValue::from_str(&cookie.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""));
    // It carries a token: kept out of `Debug` output and of HTTP/2 header compression tables.
    value.set_sensitive(true);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_http_only_secure_lax_and_scoped_by_default() {
        let policy = session_core::SessionPolicy::default();
        let token = SessionToken::generate().unwrap();
        let session = session_core::NewUserSession::new("u")
            .into_session(&token, &policy)
            .unwrap();
        let set = SessionCookies::default().set(&token, &session);
        let text = set.to_str().unwrap();
        for part in [
            "__Host-session=",
            "HttpOnly",
            "Secure",
            "SameSite=Lax",
            "Path=/",
        ] {
            assert!(text.contains(part), "{text}");
        }
        assert!(
            !text.contains("Max-Age"),
            "a browser-session cookie: {text}"
        );
        let remembered = session_core::NewUserSession::new("u")
            .remember_me(true)
            .into_session(&token, &policy)
            .unwrap();
        let text = SessionCookies::default().set(&token, &remembered);
        assert!(text.to_str().unwrap().contains("Max-Age="), "{text:?}");
        let local = SessionCookies::default()
            .secure(false)
            .set(&token, &session);
        assert!(!local.to_str().unwrap().contains("Secure"));
        assert!(
            local.to_str().unwrap().starts_with("session="),
            "no prefix without Secure"
        );
        let scoped = SessionCookies::default().path("/app");
        assert_eq!(
            scoped.cookie_name(),
            "__Secure-session",
            "__Host- needs path /"
        );
        assert!(scoped.check().is_ok());
        let named = SessionCookies::default().name("__Secure-sid");
        assert_eq!(
            named.cookie_name(),
            "__Secure-sid",
            "a chosen prefix is kept"
        );
        assert!(
            SessionCookies::default()
                .clear()
                .to_str()
                .unwrap()
                .contains("Max-Age=0")
        );
    }
}
