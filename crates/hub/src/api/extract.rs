//! Extractors that turn every malformed request into a clear 4xx `{"error": ...}`.

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::ops::Deref;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Query, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE, USER_AGENT};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use serde::de::DeserializeOwned;

use crate::app::AppState;
use crate::auth::Caller;
use crate::auth::roles::Permission;
use crate::error::Error;
use crate::events::Origin;

/// Name of the browser session cookie.
pub const SESSION_COOKIE: &str = "smon_session";

/// A JSON body: `application/json`, within the size limit, every field named in errors.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ApiJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        let is_json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || m.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(Error::UnsupportedMediaType(
                "expected a JSON body with Content-Type: application/json".into(),
            ));
        }
        let limit = state.config.max_body_bytes;
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::PayloadTooLarge { limit }
            } else {
                Error::BadRequest(format!(
                    "cannot read request body: {}",
                    rejection.body_text()
                ))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// A JSON body that may also be left out entirely (then `T::default()`).
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Error> {
        let empty = req
            .headers()
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() == b"0")
            || (req.headers().get(CONTENT_TYPE).is_none()
                && req
                    .headers()
                    .get(axum::http::header::TRANSFER_ENCODING)
                    .is_none()
                && req
                    .headers()
                    .get(axum::http::header::CONTENT_LENGTH)
                    .is_none());
        if empty {
            return Ok(OptionalJson(T::default()));
        }
        ApiJson::from_request(req, state)
            .await
            .map(|ApiJson(v)| OptionalJson(v))
    }
}

/// Deserialize a JSON document, naming the offending field on error.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::BadRequest(
            "request body is empty; expected a JSON object".into(),
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            Error::BadRequest(format!("invalid JSON body: {}", e.inner()))
        } else {
            Error::BadRequest(format!("invalid JSON body: field `{path}`: {}", e.inner()))
        }
    })?;
    de.end()
        .map_err(|e| Error::BadRequest(format!("invalid JSON body: trailing characters: {e}")))?;
    Ok(value)
}

/// A query string with unknown or mistyped parameters answered by a 400.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        Query::<T>::try_from_uri(&parts.uri)
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| {
                Error::BadRequest(e.body_text().replace("Failed to deserialize", "invalid"))
            })
    }
}

/// Where a request came from (client address, through trusted proxies, and user agent), for
/// events and rate limits.
pub struct ClientOrigin(pub Origin);

fn origin_from(parts: &Parts, state: &AppState) -> Origin {
    let ip = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| {
            state
                .limits
                .client_ip(addr.ip(), &parts.headers)
                .to_string()
        });
    let user_agent = parts
        .headers
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(256).collect());
    Origin {
        user_id: None,
        username: None,
        ip,
        user_agent,
    }
}

impl FromRequestParts<AppState> for ClientOrigin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        Ok(ClientOrigin(origin_from(parts, state)))
    }
}

/// The token a request presents: `Authorization: Bearer …`, else the session cookie.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = value.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_string())
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = presented_token(&parts.headers).ok_or_else(|| {
            Error::Unauthorized(
                "authentication required: send Authorization: Bearer <token> or log in".into(),
            )
        })?;
        state
            .auth
            .authenticate(&token, origin_from(parts, state))
            .await
    }
}

/// A route's permission, as a type, so that it is checked before the body is read: a caller
/// without the role gets 403 whatever they send.
pub trait Requirement {
    /// The permission the route needs.
    const PERMISSION: Permission;
}

/// Marker types, one per [`Permission`], for [`Authorized`].
pub mod need {
    use super::{Permission, Requirement};

    macro_rules! markers {
        ($($name:ident),* $(,)?) => {$(
            #[doc = concat!("Requires [`Permission::", stringify!($name), "`].")]
            pub struct $name;
            impl Requirement for $name {
                const PERMISSION: Permission = Permission::$name;
            }
        )*};
    }

    markers!(
        ReadDashboard,
        ManageOwnAccount,
        ReadAuditLog,
        ManageUsers,
        ManagePlugins,
        ManageWebhooks,
        ManageNotifications,
        ReadFleet,
        ManageServers,
        RunTasks,
        ManageAlerts
    );
}

/// An authenticated caller whose role holds `R::PERMISSION`.
pub struct Authorized<R> {
    caller: Caller,
    _requirement: PhantomData<R>,
}

impl<R> Deref for Authorized<R> {
    type Target = Caller;

    fn deref(&self) -> &Caller {
        &self.caller
    }
}

impl<R: Requirement> FromRequestParts<AppState> for Authorized<R> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(R::PERMISSION)?;
        Ok(Authorized {
            caller,
            _requirement: PhantomData,
        })
    }
}
