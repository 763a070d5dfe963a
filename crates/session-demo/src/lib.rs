//! The demo service as a library: [`app`] builds the router, so tests drive exactly what the binary
//! serves.
//!
//! Every route sits behind [`SessionLayer`], which owns the cookie: no handler writes one.
//!
//! Pages (server-rendered HTML, forms only, no JavaScript):
//! - `GET /sign-in`, `POST /sign-in` (a form: `email`, `password`, `remember_me`);
//! - `GET /account/sessions`, "Your sessions": this device marked, every other session with its
//!   device label, address, sign-in time and last activity, a "Sign out" button on each
//!   (`POST /account/sessions/revoke`, the caller's own sessions only) and "Sign out everywhere
//!   else" (`POST /account/sessions/revoke-others`). Both need the password entered within the
//!   recent-authentication bound, else they send the browser to `GET /account/confirm`, whose
//!   form (`POST /account/confirm`) checks the password and moves the session to a new token;
//! - `POST /sign-out`; `GET /` sends the browser to one page or the other.
//!
//! Every unsafe request passes [`CsrfLayer`]: from this origin only, and with the session's CSRF
//! token when it authenticates with the cookie (forms carry it in a hidden field; API scripts
//! send the `csrf_token` their sign-in returned in `X-CSRF-Token`). Bearer calls are exempt.
//!
//! JSON routes:
//! - `POST /sessions` sign in (`email`, `password`, `remember_me`): the password is checked against
//!   the account's argon2id hash (see [`accounts`]) and the session is built from the account's
//!   row, root flag included; the layer sets the cookie; the body returns the session id (the
//!   token, for API clients) and the session;
//! - `GET /sessions/me`, `POST /sessions/me/rotate`, `DELETE /sessions/me`;
//! - `PUT /sessions/me/password` (`current_password`, `new_password`): signs out every other
//!   session of the account and rotates this one;
//! - `POST /sessions/me/step-down`: a root session gives up root; the store rotates the token in
//!   the same step and the layer sends the new cookie;
//! - `GET /sessions/me/preferences`, `PUT /sessions/me/preferences` (`locale`, `theme`): typed
//!   session data;
//! - `GET /users/{user_id}/sessions`, `DELETE /users/{user_id}/sessions` (the user, or a root
//!   session; 403 otherwise; deleting needs the password within the recent-authentication bound,
//!   else 403 `reauthentication_required`). Deleting one's own sessions keeps the current one;
//! - `GET /db-items?limit=N` (the newest, default 100), `POST /db-items` (`name`, `quantity`),
//!   each in a transaction scope; a POST
//!   whose quantity fails validation after the insert rolls back;
//! - `GET /healthz` (both stores), `GET /metrics` (Prometheus text).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod accounts;
mod pages;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use session_axum::{
    ApiError, CsrfLayer, CurrentSession, JsonBody, JsonPath, RecentAuth, Session, SessionCookies,
    SessionLayer, TrustedProxies, csrf_token_for,
};
use session_core::{
    ErrorChain, IssuedSession, NewUserSession, ScopeOptions, SessionError, UserSession,
};
use session_manager::session_diesel::diesel::QueryableByName;
use session_manager::session_diesel::diesel::sql_types::{BigInt, Text};
use session_manager::session_diesel::diesel_async::RunQueryDsl;
use session_manager::{SessionManager, db_transaction};

use crate::accounts::{AccountError, AddressLimiter, ClientAddr, NewAccount, SignInLimits};

/// The router's state.
#[derive(Clone)]
pub struct AppState {
    manager: Arc<SessionManager>,
    metrics: PrometheusHandle,
    limiter: Arc<AddressLimiter>,
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn prometheus() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding application's); then this
            // handle renders only what was recorded through it, which is nothing.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

fn db_error(e: session_manager::session_diesel::diesel::result::Error) -> ApiError {
    ApiError::from(SessionError::Backend {
        backend: "db",
        source: Box::new(e),
    })
}

/// The manager's database, or a 501 for a demo started with `DATABASE_URL=none`.
fn database(manager: &SessionManager) -> Result<&session_manager::Db, ApiError> {
    manager.db().map_err(|_| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "no_database",
            "this service runs without a database (DATABASE_URL=none)",
        )
    })
}

/// Applies the demo's migrations (the `users` and `db_items` tables), on whichever database the
/// manager has (none: nothing to do).
///
/// # Errors
/// If the database refuses.
pub async fn migrate(manager: &SessionManager) -> Result<(), SessionError> {
    match manager.db() {
        Ok(db) => accounts::migrate(db).await,
        Err(_) => Ok(()),
    }
}

/// The accounts [`seed`] adds: email, whether root, company.
pub const SEED_ACCOUNTS: [(&str, bool, &str); 2] = [
    ("root@demo.test", true, "Demo Inc"),
    ("user@demo.test", false, "Demo Inc"),
];

/// Adds [`SEED_ACCOUNTS`] with fresh random passwords and returns `(email, password, is_root)`
/// for each. The binary does this on the embedded default (an in-memory database, so the
/// passwords live as long as the process).
///
/// # Errors
/// If the database refuses, or an account exists already.
pub async fn seed(manager: &SessionManager) -> Result<Vec<(String, String, bool)>, AccountError> {
    let db = database(manager)?;
    let mut added = Vec::new();
    for (email, is_root, company) in SEED_ACCOUNTS {
        let password = accounts::random_password()?;
        accounts::add_account(
            db,
            NewAccount {
                email: email.to_owned(),
                password: password.clone(),
                company_name: company.to_owned(),
                is_root,
            },
        )
        .await?;
        added.push((email.to_owned(), password, is_root));
    }
    Ok(added)
}

/// The router, on `manager`, writing cookies as `cookies` says, with the default sign-in limits.
/// Migrates the database first.
///
/// # Errors
/// If the database refuses the migration.
pub async fn app(
    manager: Arc<SessionManager>,
    cookies: SessionCookies,
) -> Result<Router, SessionError> {
    app_with(manager, cookies, SignInLimits::default()).await
}

/// [`app`] with these sign-in limits.
///
/// # Errors
/// If the database refuses the migration.
pub async fn app_with(
    manager: Arc<SessionManager>,
    cookies: SessionCookies,
    limits: SignInLimits,
) -> Result<Router, SessionError> {
    app_with_options(
        manager,
        Options {
            cookies,
            limits,
            ..Options::default()
        },
    )
    .await
}

/// How the demo's router is set up.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Options {
    /// How the session cookie is written.
    pub cookies: SessionCookies,
    /// Failed sign-in limits.
    pub limits: SignInLimits,
    /// Proxies whose `X-Forwarded-For` is believed for the client's address (`DEMO_TRUSTED_PROXIES`).
    pub trusted_proxies: TrustedProxies,
    /// How recently the password must have been entered to sign out other sessions
    /// (`DEMO_RECENT_AUTH`); `None`: the library's default, 10 minutes.
    pub recent_auth: Option<std::time::Duration>,
}

/// [`app`] with every option.
///
/// # Errors
/// If the database refuses the migration.
pub async fn app_with_options(
    manager: Arc<SessionManager>,
    options: Options,
) -> Result<Router, SessionError> {
    migrate(&manager).await?;
    accounts::warm_up().await?;
    let mut sessions = SessionLayer::new(manager.sessions().clone())
        .with_cookies(options.cookies)
        .with_trusted_proxies(options.trusted_proxies);
    if let Some(bound) = options.recent_auth {
        sessions = sessions.with_recent_auth(bound);
    }
    let state = AppState {
        manager,
        metrics: prometheus(),
        limiter: Arc::new(AddressLimiter::new(options.limits)),
    };
    Ok(Router::new()
        .route("/", get(pages::home))
        .route(
            pages::SIGN_IN,
            get(pages::sign_in_form).post(pages::sign_in),
        )
        .route("/sign-out", post(pages::sign_out))
        .route(pages::SESSIONS, get(pages::sessions_page))
        .route("/account/sessions/revoke", post(pages::revoke))
        .route(
            "/account/sessions/revoke-others",
            post(pages::revoke_others),
        )
        .route(
            pages::CONFIRM,
            get(pages::confirm_form).post(pages::confirm),
        )
        .route("/sessions", post(sign_in))
        .route("/sessions/me", get(me).delete(sign_out))
        .route("/sessions/me/rotate", post(rotate))
        .route("/sessions/me/password", put(change_password))
        .route("/sessions/me/step-down", post(step_down))
        .route(
            "/sessions/me/preferences",
            get(preferences).put(set_preferences),
        )
        .route(
            "/users/{user_id}/sessions",
            get(list_user_sessions).delete(revoke_user_sessions),
        )
        .route("/db-items", get(list_items).post(create_item))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::no_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        // Inside the session layer: it reads the request's session to find its CSRF token.
        .layer(CsrfLayer::default())
        .layer(sessions)
        .with_state(state))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignIn {
    email: String,
    password: String,
    #[serde(default)]
    remember_me: bool,
}

/// A new token, for API clients, and the CSRF token a script sends with it in `X-CSRF-Token` when
/// it authenticates with the cookie instead.
#[derive(Serialize)]
struct Issued {
    session_id: String,
    csrf_token: String,
    session: UserSession,
}

impl Issued {
    fn new(token: &session_core::SessionToken, session: UserSession) -> Self {
        Self {
            session_id: token.expose_secret().to_owned(),
            csrf_token: csrf_token_for(token),
            session,
        }
    }
}

impl From<IssuedSession> for Issued {
    fn from(issued: IssuedSession) -> Self {
        Self::new(&issued.token, issued.session)
    }
}

/// Signs in with a password. Everything in the session comes from the account's row; the client
/// chooses only `remember_me`.
async fn sign_in(
    State(state): State<AppState>,
    client: ClientAddr,
    session: Session,
    JsonBody(body): JsonBody<SignIn>,
) -> Result<(StatusCode, axum::Json<Issued>), AccountError> {
    let issued = sign_in_with_password(
        &state,
        client,
        &session,
        &body.email,
        &body.password,
        body.remember_me,
    )
    .await?;
    Ok((StatusCode::CREATED, axum::Json(issued.into())))
}

/// Checks the password and signs the account in on `session` (the JSON route and the form share
/// it). Everything in the session comes from the account's row; the client chooses only
/// `remember_me`.
pub(crate) async fn sign_in_with_password(
    state: &AppState,
    client: ClientAddr,
    session: &Session,
    email: &str,
    password: &str,
    remember_me: bool,
) -> Result<IssuedSession, AccountError> {
    let db = database(&state.manager)?;
    let account = accounts::authenticate(db, &state.limiter, client, email, password).await?;
    let stamp = account.stamp();
    let new = NewUserSession::new(account.id.to_string())
        .company_name(account.company_name)
        .email(account.email)
        .root(account.is_root)
        .remember_me(remember_me);
    let issued = session.sign_in(new).await?;
    // A password change between the check and this session's creation signed out the account's
    // sessions before this one existed: this one must not outlive the old password either.
    if !accounts::still_current(db, &stamp).await? {
        session.sign_out().await?;
        return Err(AccountError::InvalidCredentials);
    }
    Ok(issued)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PasswordChange {
    current_password: String,
    new_password: String,
}

#[derive(Serialize)]
struct PasswordChanged {
    session_id: String,
    csrf_token: String,
    session: UserSession,
    /// The account's other sessions, now signed out.
    signed_out: u64,
}

/// Changes the account's password: every other session of the account is signed out (ASVS 4.0.3
/// V3.3.3) and this one moves to a new token.
async fn change_password(
    State(state): State<AppState>,
    session: Session,
    current: CurrentSession,
    JsonBody(body): JsonBody<PasswordChange>,
) -> Result<axum::Json<PasswordChanged>, AccountError> {
    let db = database(&state.manager)?;
    let user_id = &current.session.user_id;
    let id = user_id.parse().map_err(|_| AccountError::NoAccount)?;
    accounts::change_password(
        db,
        state.limiter.limits(),
        id,
        &body.current_password,
        body.new_password,
    )
    .await?;
    let signed_out = state
        .manager
        .sessions()
        .delete_by_user(user_id, Some(&current.session.handle))
        .await?;
    let issued = session
        .rotate()
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    Ok(axum::Json(PasswordChanged {
        session_id: issued.token.expose_secret().to_owned(),
        csrf_token: csrf_token_for(&issued.token),
        session: issued.session,
        signed_out,
    }))
}

async fn me(current: CurrentSession) -> axum::Json<UserSession> {
    axum::Json(current.session)
}

async fn rotate(session: Session) -> Result<axum::Json<Issued>, ApiError> {
    let issued = session
        .rotate()
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    Ok(axum::Json(issued.into()))
}

async fn sign_out(session: Session) -> Result<StatusCode, ApiError> {
    // A session that was already gone (revoked, expired, rotated away) is not a success.
    if session.sign_out().await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::unauthenticated())
    }
}

/// A root session gives up root. The store rotates the token in the same step as the write.
async fn step_down(
    session: Session,
    current: CurrentSession,
) -> Result<axum::Json<Issued>, ApiError> {
    if !current.session.is_root {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_root",
            "this session has no root rights to give up",
        ));
    }
    let (_, updated) = session
        .update_with(|s| {
            s.is_root = false;
            Ok(())
        })
        .await
        .map_err(|e| match e {
            SessionError::NotFound => ApiError::unauthenticated(),
            other => other.into(),
        })?;
    // A concurrent request may have stepped down first: then nothing rotated here.
    let token = updated.rotated.ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_root",
            "this session has no root rights to give up",
        )
    })?;
    Ok(axum::Json(Issued::new(&token, updated.session)))
}

/// Typed session data: kept in the session's attributes under `preferences`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Preferences {
    locale: String,
    theme: String,
}

const PREFERENCES: &str = "preferences";

async fn preferences(
    session: Session,
    _current: CurrentSession,
) -> Result<axum::Json<Preferences>, ApiError> {
    Ok(axum::Json(
        session.get(PREFERENCES).await?.unwrap_or_default(),
    ))
}

async fn set_preferences(
    session: Session,
    _current: CurrentSession,
    JsonBody(body): JsonBody<Preferences>,
) -> Result<axum::Json<Preferences>, ApiError> {
    session.insert(PREFERENCES, &body).await?;
    Ok(axum::Json(body))
}

fn may_manage(current: &CurrentSession, user_id: &str) -> Result<(), ApiError> {
    if current.session.user_id == user_id || current.session.is_root {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "only the user or a root session may manage these sessions",
        ))
    }
}

async fn list_user_sessions(
    State(state): State<AppState>,
    current: CurrentSession,
    JsonPath(user_id): JsonPath<String>,
) -> Result<axum::Json<Vec<UserSession>>, ApiError> {
    may_manage(&current, &user_id)?;
    Ok(axum::Json(
        state.manager.sessions().list_by_user(&user_id).await?,
    ))
}

#[derive(Serialize)]
struct Revoked {
    revoked: u64,
}

/// Revoking is sensitive, as on the pages: it needs the password entered within the
/// recent-authentication bound (403 `reauthentication_required` otherwise), so a stolen cookie
/// or token cannot sign its owner out elsewhere.
async fn revoke_user_sessions(
    State(state): State<AppState>,
    RecentAuth(current): RecentAuth,
    JsonPath(user_id): JsonPath<String>,
) -> Result<axum::Json<Revoked>, ApiError> {
    may_manage(&current, &user_id)?;
    // "Sign out everywhere else": one's own current session stays.
    let keep = (current.session.user_id == user_id).then_some(&current.session.handle);
    let revoked = state
        .manager
        .sessions()
        .delete_by_user(&user_id, keep)
        .await?;
    Ok(axum::Json(Revoked { revoked }))
}

#[derive(Deserialize)]
struct NewItem {
    name: String,
    quantity: i64,
}

#[derive(Serialize, QueryableByName)]
struct Item {
    #[diesel(sql_type = BigInt)]
    id: i64,
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = BigInt)]
    quantity: i64,
    #[diesel(sql_type = Text)]
    created_by: String,
}

/// `GET /db-items?limit=N`: the newest `N` items (default 100, at most 1000).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ItemsQuery {
    #[serde(default = "default_items_limit")]
    limit: i64,
}

fn default_items_limit() -> i64 {
    100
}

async fn list_items(
    State(state): State<AppState>,
    _current: CurrentSession,
    query: Result<axum::extract::Query<ItemsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<Vec<Item>>, ApiError> {
    let query = query
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", e.body_text()))?;
    if !(1..=1000).contains(&query.limit) {
        return Err(SessionError::invalid_input("limit", "must be between 1 and 1000").into());
    }
    let items = db_transaction!(database(&state.manager)?, ScopeOptions::new(), |conn| {
        session_manager::session_diesel::diesel::sql_query(
            "SELECT CAST(id AS BIGINT) AS id, name, quantity, created_by FROM db_items
             ORDER BY id DESC LIMIT $1",
        )
        .bind::<BigInt, _>(query.limit)
        .load::<Item>(conn)
        .await
        .map_err(db_error)
    })?;
    Ok(axum::Json(items))
}

async fn create_item(
    State(state): State<AppState>,
    current: CurrentSession,
    JsonBody(body): JsonBody<NewItem>,
) -> Result<(StatusCode, axum::Json<Item>), ApiError> {
    // Text reaches every database the same way: PostgreSQL refuses a NUL in TEXT, SQLite would
    // store it, so it is refused here, as the session fields are by the policy.
    if body.name.chars().any(char::is_control) {
        return Err(
            SessionError::invalid_input("name", "must not contain control characters").into(),
        );
    }
    let user = current.session.user_id;
    let item = db_transaction!(database(&state.manager)?, ScopeOptions::new(), |conn| {
        use session_manager::session_diesel::diesel::sql_types::BigInt as Big;
        let item = session_manager::session_diesel::diesel::sql_query(
            "INSERT INTO db_items (name, quantity, created_by) VALUES ($1, $2, $3)
             RETURNING CAST(id AS BIGINT) AS id, name, quantity, created_by",
        )
        .bind::<Text, _>(&body.name)
        .bind::<Big, _>(body.quantity)
        .bind::<Text, _>(&user)
        .get_result::<Item>(conn)
        .await
        .map_err(db_error)?;
        // Validated after the insert, as a multi-step handler would: failing here rolls it back.
        if item.quantity < 1 || item.name.trim().is_empty() {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_item",
                "an item needs a name and a quantity of at least 1",
            ));
        }
        Ok(item)
    })?;
    Ok((StatusCode::CREATED, axum::Json(item)))
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    sessions: &'static str,
    database: &'static str,
}

async fn healthz(State(state): State<AppState>) -> Response {
    let manager = &state.manager;
    let body = |status| Health {
        status,
        sessions: manager.sessions().backend(),
        database: manager.db().map_or("none", session_manager::Db::backend),
    };
    match manager.health().await {
        Ok(()) => axum::Json(body("ok")).into_response(),
        Err(e) => {
            tracing::warn!(error = %ErrorChain(&e), "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(body("unavailable")),
            )
                .into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    state.manager.record_pool_gauges();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        state.metrics.render(),
    )
}
