//! Cross-site request forgery protection for cookie-authenticated requests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::header::{ACCEPT, CONTENT_TYPE, HOST, ORIGIN};
use axum::http::{HeaderName, Method, Request, Response, StatusCode};
use axum::response::IntoResponse;
use tower_layer::Layer;
use tower_service::Service;

use crate::error::ApiError;
use crate::session::{Session, Transport, csrf_token_for};

/// The header a fetch request carries the CSRF token in, unless configured otherwise.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// The form field a form post carries the CSRF token in, unless configured otherwise.
pub const CSRF_FIELD: &str = "csrf_token";

/// Why [`CsrfLayer`] refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CsrfRejection {
    /// The browser says the request came from another site (`Sec-Fetch-Site`), or its `Origin`
    /// is not this service's.
    CrossSite,
    /// A cookie-authenticated request without the session's CSRF token, or with another one.
    BadToken,
    /// A form body too large to look for the token in.
    FormTooLarge,
}

impl CsrfRejection {
    fn message(self) -> &'static str {
        match self {
            Self::CrossSite => "a request from another site may not change anything here",
            Self::BadToken => {
                "the form or request is missing this session's CSRF token; reload the page and try again"
            }
            Self::FormTooLarge => "the form is too large",
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::FormTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::FORBIDDEN,
        }
    }
}

/// Renders a refusal: the default answers JSON, or a small HTML page to a request that accepts
/// HTML (a browser's form post).
pub type CsrfRenderer =
    Arc<dyn Fn(CsrfRejection, &axum::http::request::Parts) -> Response<Body> + Send + Sync>;

/// How [`CsrfLayer`] checks requests.
#[derive(Clone)]
#[non_exhaustive]
pub struct CsrfConfig {
    /// Where fetch requests carry the token. Default [`CSRF_HEADER`].
    pub header: HeaderName,
    /// Where url-encoded form posts carry the token. Default [`CSRF_FIELD`].
    pub field: String,
    /// Origins besides the request's own host that may post, e.g. `https://app.example.com`.
    pub trusted_origins: Vec<String>,
    /// The largest url-encoded form body read to find the field. Default 64 KiB.
    pub max_form_bytes: usize,
    renderer: Option<CsrfRenderer>,
}

impl std::fmt::Debug for CsrfConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsrfConfig")
            .field("header", &self.header)
            .field("field", &self.field)
            .field("trusted_origins", &self.trusted_origins)
            .field("max_form_bytes", &self.max_form_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for CsrfConfig {
    fn default() -> Self {
        Self {
            header: HeaderName::from_static(CSRF_HEADER),
            field: CSRF_FIELD.to_owned(),
            trusted_origins: Vec::new(),
            max_form_bytes: 64 * 1024,
            renderer: None,
        }
    }
}

/// Refuses cross-site requests that would act with the browser's session cookie.
///
/// For every request with an unsafe method (anything but GET, HEAD, OPTIONS and TRACE):
/// 1. **Where it came from.** A browser's `Sec-Fetch-Site` must be `same-origin` or `none` (typed
///    or bookmarked); without it, an `Origin` header must be this host's own origin (the `Host`
///    header) or one of [`CsrfConfig::trusted_origins`]. This holds signed in or not, so a
///    sign-in form cannot be posted from another site either (login CSRF).
///    A trusted origin passes whatever `Sec-Fetch-Site` says (a sibling arrives as `same-site`).
/// 2. **The session's token.** A request that authenticates with the session cookie must carry
///    the session's CSRF token ([`Session::csrf_token`], a secret derived from the session's
///    token) in the [`CsrfConfig::header`] header (fetch) or the [`CsrfConfig::field`] field of
///    an `application/x-www-form-urlencoded` body (forms). Compared in constant time.
///
/// Only url-encoded forms are read for the field: a `multipart/form-data` form (a file upload)
/// must send the header, so it needs a script; a body that cannot be read within the limit is
/// answered 413.
///
/// Requests that authenticate with `Authorization: Bearer` are exempt from both: a browser
/// never adds that header by itself, so a forged request cannot carry it. Requests with neither a
/// cookie nor browser headers (API clients) pass step 1 and have nothing to protect in step 2.
///
/// Install it inside [`crate::SessionLayer`] (added before it, so the session layer wraps it):
/// `.layer(CsrfLayer::default()).layer(SessionLayer::new(store))`.
#[derive(Clone, Debug, Default)]
pub struct CsrfLayer {
    config: Arc<CsrfConfig>,
}

impl CsrfLayer {
    /// Checks requests as `config` says.
    #[must_use]
    pub fn new(config: CsrfConfig) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    /// Renders refusals with `render` (e.g. the application's own error page).
    #[must_use]
    pub fn with_renderer(
        self,
        render: impl Fn(CsrfRejection, &axum::http::request::Parts) -> Response<Body>
        + Send
        + Sync
        + 'static,
    ) -> Self {
        let mut config = (*self.config).clone();
        config.renderer = Some(Arc::new(render));
        Self::new(config)
    }
}

impl<S> Layer<S> for CsrfLayer {
    type Service = CsrfService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CsrfService {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service [`CsrfLayer`] wraps around the routes.
#[derive(Clone, Debug)]
pub struct CsrfService<S> {
    inner: S,
    config: Arc<CsrfConfig>,
}

fn is_safe(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// Equal in time that depends only on the lengths, so a guess learns nothing from the timing.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether the request's origin is this service's: `Sec-Fetch-Site` first (every current
/// browser sends it), then `Origin`. A request with neither is not from a browser's page.
fn same_origin(parts: &axum::http::request::Parts, config: &CsrfConfig) -> bool {
    let origin = parts.headers.get(ORIGIN).and_then(|v| v.to_str().ok());
    let trusted = origin.is_some_and(|o| config.trusted_origins.iter().any(|t| t == o));
    if let Some(site) = parts.headers.get("sec-fetch-site") {
        // A trusted sibling (`https://app.example.com` posting here) arrives as `same-site`.
        return matches!(site.as_bytes(), b"same-origin" | b"none") || trusted;
    }
    let Some(origin) = origin else {
        return true;
    };
    if trusted {
        return true;
    }
    // `scheme://host[:port]`: the authority must be the one the client addressed.
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    let host = parts.headers.get(HOST).and_then(|v| v.to_str().ok());
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h))
}

fn is_form(parts: &axum::http::request::Parts) -> bool {
    parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

fn render(
    config: &CsrfConfig,
    rejection: CsrfRejection,
    parts: &axum::http::request::Parts,
) -> Response<Body> {
    tracing::info!(reason = ?rejection, method = %parts.method, path = %parts.uri.path(), "CSRF check refused a request");
    if let Some(render) = &config.renderer {
        return render(rejection, parts);
    }
    let wants_html = parts
        .headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    if wants_html {
        let page = format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Request refused</title></head><body><h1>Request refused</h1><p>{}</p></body></html>",
            rejection.message()
        );
        let mut response = (
            rejection.status(),
            [(CONTENT_TYPE, "text/html; charset=utf-8")],
            page,
        )
            .into_response();
        response.headers_mut().insert(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
        return response;
    }
    let code = match rejection {
        CsrfRejection::CrossSite => "cross_site",
        CsrfRejection::BadToken => "csrf_token",
        CsrfRejection::FormTooLarge => "payload_too_large",
    };
    ApiError::new(rejection.status(), code, rejection.message()).into_response()
}

impl<S> Service<Request<Body>> for CsrfService<S>
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let config = self.config.clone();
        Box::pin(async move {
            if is_safe(request.method()) {
                return inner.call(request).await;
            }
            let (parts, body) = request.into_parts();
            let Some(session) = parts.extensions.get::<Session>().cloned() else {
                tracing::error!(
                    "CsrfLayer needs SessionLayer around it; refusing an unsafe request"
                );
                return Ok(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "the service could not complete the request",
                )
                .into_response());
            };
            if session.transport() == Some(Transport::Bearer) {
                return inner.call(Request::from_parts(parts, body)).await;
            }
            if !same_origin(&parts, &config) {
                return Ok(render(&config, CsrfRejection::CrossSite, &parts));
            }
            if session.transport() != Some(Transport::Cookie) {
                return inner.call(Request::from_parts(parts, body)).await;
            }
            // The token of the session the cookie names; a cookie naming no live session carries
            // no authority, and the route answers it as signed out.
            let live = match session.current_with_token().await {
                Ok(live) => live,
                Err(e) => return Ok(ApiError::from(e).into_response()),
            };
            let Some((_, token)) = live else {
                return inner.call(Request::from_parts(parts, body)).await;
            };
            let expected = csrf_token_for(&token);
            if let Some(presented) = parts.headers.get(&config.header) {
                if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
                    return inner.call(Request::from_parts(parts, body)).await;
                }
                return Ok(render(&config, CsrfRejection::BadToken, &parts));
            }
            if !is_form(&parts) {
                return Ok(render(&config, CsrfRejection::BadToken, &parts));
            }
            let Ok(bytes) = axum::body::to_bytes(body, config.max_form_bytes).await else {
                return Ok(render(&config, CsrfRejection::FormTooLarge, &parts));
            };
            let fields: Vec<(String, String)> =
                serde_urlencoded::from_bytes(&bytes).unwrap_or_default();
            let matches = fields
                .iter()
                .filter(|(name, _)| *name == config.field)
                .any(|(_, value)| constant_time_eq(value.as_bytes(), expected.as_bytes()));
            if !matches {
                return Ok(render(&config, CsrfRejection::BadToken, &parts));
            }
            inner
                .call(Request::from_parts(parts, Body::from(bytes)))
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> axum::http::request::Parts {
        let mut builder = Request::post("/x");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn origin_checks_prefer_fetch_metadata_and_compare_authorities() {
        let config = CsrfConfig::default();
        assert!(same_origin(
            &parts(&[("sec-fetch-site", "same-origin")]),
            &config
        ));
        assert!(same_origin(&parts(&[("sec-fetch-site", "none")]), &config));
        assert!(!same_origin(
            &parts(&[("sec-fetch-site", "cross-site")]),
            &config
        ));
        assert!(!same_origin(
            &parts(&[("sec-fetch-site", "same-site")]),
            &config
        ));
        assert!(same_origin(
            &parts(&[
                ("origin", "http://app.test:8080"),
                ("host", "app.test:8080")
            ]),
            &config
        ));
        assert!(!same_origin(
            &parts(&[("origin", "http://evil.test"), ("host", "app.test")]),
            &config
        ));
        assert!(!same_origin(
            &parts(&[("origin", "null"), ("host", "app.test")]),
            &config
        ));
        assert!(
            same_origin(&parts(&[("host", "app.test")]), &config),
            "not from a page"
        );
        let mut trusting = CsrfConfig::default();
        trusting.trusted_origins.push("https://admin.test".into());
        assert!(same_origin(
            &parts(&[("origin", "https://admin.test"), ("host", "app.test")]),
            &trusting
        ));
        assert!(same_origin(
            &parts(&[
                ("origin", "https://admin.test"),
                ("sec-fetch-site", "same-site")
            ]),
            &trusting
        ));
        assert!(!same_origin(
            &parts(&[
                ("origin", "https://evil.test"),
                ("sec-fetch-site", "cross-site")
            ]),
            &trusting
        ));
    }

    #[test]
    fn tokens_compare_by_content_and_length() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
