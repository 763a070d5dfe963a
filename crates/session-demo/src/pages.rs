//! The demo's pages, server-rendered (maud, no JavaScript): a sign-in form, "Your sessions" with
//! a sign-out button on each, "Sign out everywhere else", and a password confirmation that
//! sensitive actions ask for when the last sign-in is older than the recent-authentication bound.
//!
//! Every form carries the session's CSRF token ([`Session::csrf_token`]); [`session_axum::CsrfLayer`]
//! checks it and the request's origin. Revoking needs [`RecentAuth`].

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use axum::Form;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::http::header::CACHE_CONTROL;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;
use session_axum::{
    ApiError, CurrentSession, MaybeSession, RecentAuth, RecentAuthRejection, Session,
};
use session_core::{SessionHandle, UserSession};

use crate::AppState;
use crate::accounts::{self, AccountError, ClientAddr};

/// Where the pages live.
pub(crate) const SIGN_IN: &str = "/sign-in";
pub(crate) const SESSIONS: &str = "/account/sessions";
pub(crate) const CONFIRM: &str = "/account/confirm";

const STYLE: &str = r"
*{box-sizing:border-box}
body{font:16px/1.5 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f6f7f9;color:#1f2328}
main{max-width:42rem;margin:0 auto;padding:1rem}
h1{font-size:1.5rem;margin:.5rem 0 1rem}
.card{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:1rem;margin:0 0 .75rem}
.session{display:flex;flex-wrap:wrap;gap:.5rem 1rem;align-items:center;justify-content:space-between}
.session .what{flex:1 1 16rem;min-width:0}
.device{font-weight:600}
.badge{display:inline-block;font-size:.75rem;font-weight:600;background:#dafbe1;color:#116329;border-radius:1rem;padding:0 .5rem;margin-left:.5rem}
.meta{color:#59636e;font-size:.875rem;margin:0;overflow-wrap:anywhere}
label{display:block;margin:.75rem 0 .25rem;font-weight:600}
input[type=email],input[type=password]{width:100%;padding:.5rem;font:inherit;border:1px solid #d0d7de;border-radius:6px}
.check{font-weight:400}
button{font:inherit;padding:.4rem .9rem;border-radius:6px;border:1px solid #d0d7de;background:#f6f8fa;cursor:pointer}
button.primary{background:#1f883d;border-color:#1f883d;color:#fff;margin-top:1rem}
button.danger{color:#cf222e}
.notice{background:#ddf4ff;border:1px solid #54aeff66;border-radius:6px;padding:.5rem .75rem}
.error{background:#ffebe9;border:1px solid #ff818266;border-radius:6px;padding:.5rem .75rem}
header{display:flex;justify-content:space-between;align-items:center;gap:1rem;flex-wrap:wrap}
";

fn page(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · session-demo" }
                style { (PreEscaped(STYLE)) }
            }
            body { main { (body) } }
        }
    }
}

/// A page as a response: never cached (it shows sessions and carries a CSRF token).
fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, [(CACHE_CONTROL, "no-store")], markup).into_response()
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

/// A path the pages may send the browser on to: local only. Browsers read `\\` as `/` and drop
/// tabs and line breaks from a URL, so `/\\evil.example` or `/<tab>/evil.example` would become
/// `//evil.example`, another host: anything but a plain path of printable ASCII is refused.
fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && path.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            path
        }
        _ => SESSIONS,
    }
}

fn csrf_field(token: Option<&str>) -> Markup {
    html! {
        @if let Some(token) = token {
            input type="hidden" name=(session_axum::CSRF_FIELD) value=(token);
        }
    }
}

/// `2026-12-07 13:40 UTC (5 minutes ago)`.
fn when(at: SystemTime, now: SystemTime) -> String {
    // `2026-12-07T13:40:12Z` to the minute.
    let stamp = humantime::format_rfc3339_seconds(at).to_string();
    let stamp = format!(
        "{} UTC",
        stamp.get(..16).unwrap_or(&stamp).replacen('T', " ", 1)
    );
    let ago = now.duration_since(at).unwrap_or_default();
    let relative = match ago.as_secs() {
        0..=59 => "just now".to_owned(),
        s @ 60..=3599 => plural(s / 60, "minute"),
        s @ 3600..=86_399 => plural(s / 3600, "hour"),
        s => plural(s / 86_400, "day"),
    };
    format!("{stamp} ({relative})")
}

fn plural(n: u64, unit: &str) -> String {
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

fn address(address: Option<IpAddr>) -> String {
    address.map_or_else(|| "unknown address".to_owned(), |a| a.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_local_paths_are_followed() {
        for path in ["/account/sessions", "/a?b=c&d=%2F"] {
            assert_eq!(local_path(Some(path)), path);
        }
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/ /x",
            "https://evil.example",
            "evil",
            "/caf\u{e9}",
        ] {
            assert_eq!(local_path(Some(bad)), SESSIONS, "{bad:?}");
        }
        assert_eq!(local_path(None), SESSIONS);
    }
}

#[derive(Deserialize)]
pub(crate) struct SignInQuery {
    next: Option<String>,
}

pub(crate) async fn home(current: MaybeSession) -> Response {
    see_other(if current.0.is_some() {
        SESSIONS
    } else {
        SIGN_IN
    })
}

fn sign_in_page(
    error: Option<&str>,
    next: Option<&str>,
    csrf: Option<&str>,
    email: &str,
) -> Markup {
    page(
        "Sign in",
        html! {
            h1 { "Sign in" }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form.card method="post" action=(SIGN_IN) {
                (csrf_field(csrf))
                @if let Some(next) = next { input type="hidden" name="next" value=(next); }
                label for="email" { "Email" }
                input #email type="email" name="email" value=(email) autocomplete="username" required;
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password" required;
                label.check { input type="checkbox" name="remember_me" value="on"; " Keep me signed in" }
                button.primary #sign-in type="submit" { "Sign in" }
            }
        },
    )
}

pub(crate) async fn sign_in_form(
    session: Session,
    Query(query): Query<SignInQuery>,
) -> Result<Response, ApiError> {
    let csrf = session.csrf_token().await?;
    Ok(respond(
        StatusCode::OK,
        sign_in_page(None, query.next.as_deref(), csrf.as_deref(), ""),
    ))
}

#[derive(Deserialize)]
pub(crate) struct SignInForm {
    email: String,
    password: String,
    remember_me: Option<String>,
    next: Option<String>,
}

pub(crate) async fn sign_in(
    State(state): State<AppState>,
    client: ClientAddr,
    session: Session,
    Form(form): Form<SignInForm>,
) -> Result<Response, ApiError> {
    let signed_in = crate::sign_in_with_password(
        &state,
        client,
        &session,
        &form.email,
        &form.password,
        form.remember_me.is_some(),
    )
    .await;
    let (status, message) = match signed_in {
        Ok(_) => return Ok(see_other(local_path(form.next.as_deref()))),
        Err(AccountError::InvalidCredentials) => (
            StatusCode::UNAUTHORIZED,
            "The email or the password is wrong.".to_owned(),
        ),
        Err(AccountError::TooManyAttempts { .. }) => (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed attempts from this address. Try again later.".to_owned(),
        ),
        Err(e @ AccountError::Invalid { .. }) => (StatusCode::BAD_REQUEST, e.to_string()),
        Err(other) => return Ok(other.into_response()),
    };
    let csrf = session.csrf_token().await?;
    Ok(respond(
        status,
        sign_in_page(
            Some(&message),
            form.next.as_deref(),
            csrf.as_deref(),
            &form.email,
        ),
    ))
}

#[derive(Deserialize)]
pub(crate) struct SessionsQuery {
    done: Option<String>,
    n: Option<u64>,
}

fn notice(query: &SessionsQuery) -> Option<String> {
    match query.done.as_deref()? {
        "revoked" => Some("That session is signed out.".to_owned()),
        "revoked-others" => Some(match query.n.unwrap_or(0) {
            0 => "There were no other sessions to sign out.".to_owned(),
            1 => "Signed out 1 other session.".to_owned(),
            n => format!("Signed out {n} other sessions."),
        }),
        "confirmed" => Some("Password confirmed. You can sign out your sessions now.".to_owned()),
        "gone" => Some("That session had already ended.".to_owned()),
        _ => None,
    }
}

fn session_card(s: &UserSession, current: &SessionHandle, csrf: &str, now: SystemTime) -> Markup {
    let this = &s.handle == current;
    let device = if s.device.is_empty() {
        "Unknown device"
    } else {
        &s.device
    };
    html! {
        li.card.session data-current=(this) data-handle=(s.handle.as_str()) {
            div.what {
                div { span.device { (device) } @if this { span.badge { "This device" } } }
                p.meta.address { (address(s.address)) }
                p.meta.signed-in { "Signed in " (when(s.created_at, now)) }
                p.meta.last-seen { "Last active " (when(s.last_seen_at, now)) }
            }
            @if this {
                form method="post" action="/sign-out" {
                    (csrf_field(Some(csrf)))
                    button.danger.sign-out type="submit" { "Sign out" }
                }
            } @else {
                form method="post" action="/account/sessions/revoke" {
                    (csrf_field(Some(csrf)))
                    input type="hidden" name="handle" value=(s.handle.as_str());
                    button.danger.revoke type="submit" { "Sign out" }
                }
            }
        }
    }
}

pub(crate) async fn sessions_page(
    State(state): State<AppState>,
    session: Session,
    current: Option<CurrentSession>,
    Query(query): Query<SessionsQuery>,
) -> Result<Response, ApiError> {
    let Some(current) = current else {
        return Ok(see_other(&format!("{SIGN_IN}?next={SESSIONS}")));
    };
    let csrf = session.csrf_token().await?.unwrap_or_default();
    let mut sessions = state
        .manager
        .sessions()
        .list_by_user(&current.session.user_id)
        .await?;
    // This device first, then the most recently active.
    sessions.sort_by_key(|s| {
        (
            s.handle != current.session.handle,
            std::cmp::Reverse(s.last_seen_at),
        )
    });
    let now = session.store().policy().now();
    let others = sessions.len().saturating_sub(1);
    let markup = page(
        "Your sessions",
        html! {
            header {
                h1 { "Your sessions" }
                span.meta { (current.session.email) }
            }
            @if let Some(notice) = notice(&query) { p.notice role="status" { (notice) } }
            p.meta { "Where you are signed in. Sign out any session you do not recognise." }
            ul #sessions style="list-style:none;padding:0" {
                @for s in &sessions { (session_card(s, &current.session.handle, &csrf, now)) }
            }
            @if others > 0 {
                form method="post" action="/account/sessions/revoke-others" {
                    (csrf_field(Some(&csrf)))
                    button.danger #revoke-others type="submit" { "Sign out everywhere else" }
                }
            }
        },
    );
    Ok(respond(StatusCode::OK, markup))
}

#[derive(Deserialize)]
pub(crate) struct RevokeForm {
    handle: String,
}

/// The recent-authentication outcome for a page: on to the password confirmation when stale,
/// to the sign-in page when signed out.
fn recent_or_redirect(
    recent: Result<RecentAuth, RecentAuthRejection>,
) -> Result<CurrentSession, Box<Response>> {
    match recent {
        Ok(RecentAuth(current)) => Ok(current),
        Err(RecentAuthRejection::Stale { .. }) => {
            Err(Box::new(see_other(&format!("{CONFIRM}?next={SESSIONS}"))))
        }
        Err(RecentAuthRejection::SignedOut(error))
            if error.status() == StatusCode::UNAUTHORIZED =>
        {
            Err(Box::new(see_other(SIGN_IN)))
        }
        Err(other) => Err(Box::new(other.into_response())),
    }
}

pub(crate) async fn revoke(
    State(state): State<AppState>,
    recent: Result<RecentAuth, RecentAuthRejection>,
    Form(form): Form<RevokeForm>,
) -> Result<Response, ApiError> {
    let current = match recent_or_redirect(recent) {
        Ok(current) => current,
        Err(response) => return Ok(*response),
    };
    let sessions = state.manager.sessions();
    // Only one's own sessions: the handle must be in the caller's list.
    let Ok(handle) = SessionHandle::parse(&form.handle) else {
        return Ok(see_other(&format!("{SESSIONS}?done=gone")));
    };
    let owned = sessions
        .list_by_user(&current.session.user_id)
        .await?
        .iter()
        .any(|s| s.handle == handle && s.handle != current.session.handle);
    let removed = owned && sessions.delete_by_handle(&handle).await?;
    Ok(see_other(&format!(
        "{SESSIONS}?done={}",
        if removed { "revoked" } else { "gone" }
    )))
}

pub(crate) async fn revoke_others(
    State(state): State<AppState>,
    recent: Result<RecentAuth, RecentAuthRejection>,
) -> Result<Response, ApiError> {
    let current = match recent_or_redirect(recent) {
        Ok(current) => current,
        Err(response) => return Ok(*response),
    };
    let n = state
        .manager
        .sessions()
        .delete_by_user(&current.session.user_id, Some(&current.session.handle))
        .await?;
    Ok(see_other(&format!("{SESSIONS}?done=revoked-others&n={n}")))
}

pub(crate) async fn sign_out(session: Session) -> Result<Response, ApiError> {
    session.sign_out().await?;
    Ok(see_other(SIGN_IN))
}

fn confirm_page(
    error: Option<&str>,
    next: &str,
    csrf: &str,
    age: Duration,
    bound: Duration,
) -> Markup {
    page(
        "Confirm your password",
        html! {
            h1 { "Confirm your password" }
            p { "You signed in " (plural(age.as_secs() / 60, "minute")) ". Signing out your sessions needs your password from the last "
                (bound.as_secs() / 60) " minutes." }
            @if let Some(error) = error { p.error role="alert" { (error) } }
            form.card method="post" action=(CONFIRM) {
                (csrf_field(Some(csrf)))
                input type="hidden" name="next" value=(next);
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password" required;
                button.primary #confirm type="submit" { "Confirm" }
            }
        },
    )
}

pub(crate) async fn confirm_form(
    session: Session,
    current: Option<CurrentSession>,
    Query(query): Query<SignInQuery>,
) -> Result<Response, ApiError> {
    let Some(current) = current else {
        return Ok(see_other(SIGN_IN));
    };
    let csrf = session.csrf_token().await?.unwrap_or_default();
    let age = current.session.authentication_age(session.store().policy());
    Ok(respond(
        StatusCode::OK,
        confirm_page(
            None,
            local_path(query.next.as_deref()),
            &csrf,
            age,
            session.recent_auth_bound(),
        ),
    ))
}

#[derive(Deserialize)]
pub(crate) struct ConfirmForm {
    password: String,
    next: Option<String>,
}

pub(crate) async fn confirm(
    State(state): State<AppState>,
    session: Session,
    current: Option<CurrentSession>,
    Form(form): Form<ConfirmForm>,
) -> Result<Response, ApiError> {
    let Some(current) = current else {
        return Ok(see_other(SIGN_IN));
    };
    let db = match crate::database(&state.manager) {
        Ok(db) => db,
        Err(e) => return Ok(e.into_response()),
    };
    let next = local_path(form.next.as_deref()).to_owned();
    let Ok(id) = current.session.user_id.parse::<i64>() else {
        return Ok(AccountError::NoAccount.into_response());
    };
    match accounts::confirm_password(db, state.limiter.limits(), id, &form.password).await {
        Ok(()) => {}
        Err(AccountError::WrongPassword) => {
            let csrf = session.csrf_token().await?.unwrap_or_default();
            let age = current.session.authentication_age(session.store().policy());
            return Ok(respond(
                StatusCode::FORBIDDEN,
                confirm_page(
                    Some("That password is wrong."),
                    &next,
                    &csrf,
                    age,
                    session.recent_auth_bound(),
                ),
            ));
        }
        Err(other) => return Ok(other.into_response()),
    }
    // A fresh proof: `authenticated_at` moves to now and the session to a new token (and cookie).
    // The layer sends the new token's cookie; nothing else here needs it.
    let _moved = session.reauthenticate().await?;
    let separator = if next.contains('?') { '&' } else { '?' };
    Ok(see_other(&if next == SESSIONS {
        format!("{next}{separator}done=confirmed")
    } else {
        next
    }))
}
