//! `/api/users`: accounts (admins) and the caller's own account and personal tokens.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::extract::{ApiJson, Authorized, need};
use crate::api::{ErrorBody, Success};
use crate::app::AppState;
use crate::error::Result;
use crate::store::TokenRecord;
use crate::users::{NewUser, UserPatch, UserView};
use crate::wire::{opt_rfc3339_millis, rfc3339_millis};

/// All users.
#[derive(Serialize, ToSchema)]
pub struct UserList {
    pub users: Vec<UserView>,
    pub count: usize,
}

/// A created user.
#[derive(Serialize, ToSchema)]
pub struct UserCreated {
    pub success: bool,
    pub user_id: String,
    pub user: UserView,
}

/// An updated user.
#[derive(Serialize, ToSchema)]
pub struct UserUpdated {
    pub success: bool,
    pub user: UserView,
}

/// List users (admins).
#[utoipa::path(get, path = "/api/users", tag = "users",
    responses((status = 200, body = UserList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_users(
    State(state): State<AppState>,
    _caller: Authorized<need::ManageUsers>,
) -> Result<Json<UserList>> {
    let users: Vec<UserView> = state
        .users
        .list()
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(UserList {
        count: users.len(),
        users,
    }))
}

/// Create a user (admins).
#[utoipa::path(post, path = "/api/users", tag = "users", request_body = NewUser,
    responses((status = 201, body = UserCreated), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_user(
    State(state): State<AppState>,
    caller: Authorized<need::ManageUsers>,
    ApiJson(new): ApiJson<NewUser>,
) -> Result<(StatusCode, Json<UserCreated>)> {
    let user = state.users.create(&caller.origin, new).await?;
    Ok((
        StatusCode::CREATED,
        Json(UserCreated {
            success: true,
            user_id: user.id.clone(),
            user: user.into(),
        }),
    ))
}

/// One user (admins).
#[utoipa::path(get, path = "/api/users/{id}", tag = "users", params(("id" = String, Path)),
    responses((status = 200, body = UserView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_user(
    State(state): State<AppState>,
    _caller: Authorized<need::ManageUsers>,
    Path(id): Path<String>,
) -> Result<Json<UserView>> {
    Ok(Json(state.users.get(&id).await?.into()))
}

/// Change a user (admins). Partial: absent fields are kept. A new password or disabling the
/// account ends the user's sessions. The last enabled admin cannot be demoted or disabled (409).
#[utoipa::path(put, path = "/api/users/{id}", tag = "users", params(("id" = String, Path)),
    request_body = UserPatch,
    responses((status = 200, body = UserUpdated), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_user(
    State(state): State<AppState>,
    caller: Authorized<need::ManageUsers>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<UserPatch>,
) -> Result<Json<UserUpdated>> {
    let user = state.users.update(&caller.origin, &id, patch).await?;
    Ok(Json(UserUpdated {
        success: true,
        user: user.into(),
    }))
}

/// Delete a user and their tokens (admins). The last enabled admin cannot be deleted (409).
#[utoipa::path(delete, path = "/api/users/{id}", tag = "users", params(("id" = String, Path)),
    responses((status = 200, body = Success), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_user(
    State(state): State<AppState>,
    caller: Authorized<need::ManageUsers>,
    Path(id): Path<String>,
) -> Result<Json<Success>> {
    state.users.delete(&caller.origin, &id).await?;
    Ok(Json(Success::OK))
}

/// The caller's own account.
#[utoipa::path(get, path = "/api/users/me", tag = "users",
    responses((status = 200, body = UserView), (status = 401, body = ErrorBody)))]
pub async fn me(
    State(state): State<AppState>,
    caller: Authorized<need::ManageOwnAccount>,
) -> Result<Json<UserView>> {
    Ok(Json(state.users.get(&caller.user_id).await?.into()))
}

/// A password change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    pub new_password: String,
}

/// Change the caller's password. Every login session of the account ends, this one included.
#[utoipa::path(post, path = "/api/users/me/password", tag = "users", request_body = PasswordChange,
    responses((status = 200, body = Success), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn change_own_password(
    State(state): State<AppState>,
    caller: Authorized<need::ManageOwnAccount>,
    ApiJson(req): ApiJson<PasswordChange>,
) -> Result<Json<Success>> {
    state
        .users
        .change_own_password(&caller, &req.current_password, &req.new_password)
        .await?;
    Ok(Json(Success::OK))
}

/// A personal API token, without its value.
#[derive(Serialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: Option<String>,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub last_used_at: DateTime<Utc>,
    #[serde(serialize_with = "opt_rfc3339_millis")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<DateTime<Utc>>,
}

impl From<TokenRecord> for TokenView {
    fn from(t: TokenRecord) -> Self {
        TokenView {
            id: t.id,
            name: t.name,
            created_at: t.created_at,
            last_used_at: t.last_used_at,
            expires_at: t.expires_at,
        }
    }
}

/// The caller's personal tokens.
#[derive(Serialize, ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenView>,
    pub count: usize,
}

/// A personal token to create.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What the token is for, 1-100 characters.
    pub name: String,
    /// Days until it expires (1-3650); absent for a token that does not expire.
    pub expires_in_days: Option<u32>,
}

/// A created token; `token` is shown this once and never again.
#[derive(Serialize, ToSchema)]
pub struct TokenCreated {
    pub success: bool,
    pub token_id: String,
    pub token: String,
    #[serde(flatten)]
    pub details: TokenView,
}

/// List the caller's personal API tokens.
#[utoipa::path(get, path = "/api/users/me/tokens", tag = "users",
    responses((status = 200, body = TokenList), (status = 401, body = ErrorBody)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    caller: Authorized<need::ManageOwnAccount>,
) -> Result<Json<TokenList>> {
    let tokens: Vec<TokenView> = state
        .auth
        .personal_tokens(&caller)
        .await?
        .into_iter()
        .map(Into::into)
        .collect();
    Ok(Json(TokenList {
        count: tokens.len(),
        tokens,
    }))
}

/// Create a personal API token with the caller's role. The token is in the answer only.
#[utoipa::path(post, path = "/api/users/me/tokens", tag = "users", request_body = NewToken,
    responses((status = 201, body = TokenCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Authorized<need::ManageOwnAccount>,
    ApiJson(req): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<TokenCreated>)> {
    let created = state
        .auth
        .create_personal_token(&caller, &req.name, req.expires_in_days)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            success: true,
            token_id: created.record.id.clone(),
            token: created.token,
            details: created.record.into(),
        }),
    ))
}

/// Revoke one of the caller's personal API tokens.
#[utoipa::path(delete, path = "/api/users/me/tokens/{id}", tag = "users", params(("id" = String, Path)),
    responses((status = 200, body = Success), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Authorized<need::ManageOwnAccount>,
    Path(id): Path<String>,
) -> Result<Json<Success>> {
    state.auth.revoke_personal_token(&caller, &id).await?;
    Ok(Json(Success::OK))
}
