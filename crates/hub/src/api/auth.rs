//! `/api/auth/*`: login, logout, verify.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::extract::{ApiJson, ClientOrigin, SESSION_COOKIE};
use crate::api::{ErrorBody, Success};
use crate::app::AppState;
use crate::auth::Caller;
use crate::auth::roles::Role;
use crate::error::Result;
use crate::users::UserView;
use crate::wire::rfc3339_millis;

/// Credentials.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
}

/// A new session. The token is also set as an HttpOnly cookie.
#[derive(Serialize, ToSchema)]
pub struct LoginResponse {
    pub success: bool,
    pub token: String,
    pub username: String,
    pub role: Role,
    pub user: UserView,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: DateTime<Utc>,
}

/// Whether the presented token is valid, and whose it is.
#[derive(Serialize, ToSchema)]
pub struct VerifyResponse {
    pub valid: bool,
    pub user_id: String,
    pub username: String,
    pub role: Role,
}

/// The session cookie: HttpOnly, SameSite=Lax, Secure when configured (empty value and 0 clear it).
pub fn session_cookie(value: &str, max_age_secs: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_secs}{secure}"
    );
    HeaderValue::from_str(&cookie).expect("token characters are cookie-safe")
}

/// Log in with a username and password. Limited per client address and per username (429).
#[utoipa::path(post, path = "/api/auth/login", tag = "auth", security(()),
    request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<(HeaderMap, Json<LoginResponse>)> {
    let outcome = state
        .auth
        .login(&req.username, &req.password, &origin)
        .await?;
    let mut headers = HeaderMap::new();
    let max_age = state.auth.session_max_age().as_secs();
    headers.insert(
        header::SET_COOKIE,
        session_cookie(&outcome.token, max_age, state.auth.cookie_secure()),
    );
    Ok((
        headers,
        Json(LoginResponse {
            success: true,
            token: outcome.token,
            username: outcome.user.username.clone(),
            role: outcome.user.role,
            user: outcome.user.into(),
            expires_at: outcome.expires_at,
        }),
    ))
}

/// End this login session: the token stops working at once.
#[utoipa::path(post, path = "/api/auth/logout", tag = "auth",
    responses((status = 200, body = Success), (status = 401, body = ErrorBody)))]
pub async fn logout(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<(HeaderMap, Json<Success>)> {
    state.auth.logout(&caller).await?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::SET_COOKIE,
        session_cookie("", 0, state.auth.cookie_secure()),
    );
    Ok((headers, Json(Success::OK)))
}

/// Check the presented token.
#[utoipa::path(get, path = "/api/auth/verify", tag = "auth",
    responses((status = 200, body = VerifyResponse), (status = 401, body = ErrorBody)))]
pub async fn verify(caller: Caller) -> Json<VerifyResponse> {
    Json(VerifyResponse {
        valid: true,
        user_id: caller.user_id,
        username: caller.username,
        role: caller.role,
    })
}
