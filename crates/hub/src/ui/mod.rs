//! The web UI: server-rendered pages (maud escapes every value it interpolates), a stylesheet
//! and one small script of our own, all embedded in the binary. Pages call the same services
//! as the JSON API.
//!
//! Security: the session is the API's HttpOnly, SameSite=Lax cookie; every form post carries a
//! CSRF token that must match the `smon_csrf` cookie (double submit) and comes from this
//! origin; every answer has a Content-Security-Policy that allows only our own script and
//! stylesheet.

mod alerts;
mod channels;
mod charts;
mod events;
mod fleet;
mod layout;
mod login;
mod server;
mod settings;
mod tasks;
mod webhooks;

use axum::Router;
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use sha2::{Digest, Sha256};

use crate::api::extract::SESSION_COOKIE;
use crate::app::AppState;
use crate::auth::Caller;
use crate::auth::roles::Permission;
use crate::error::Error;

use layout::Nav;

/// The CSRF cookie: random, readable only by the server, sent only to this site.
const CSRF_COOKIE: &str = "smon_csrf";
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'";

/// The UI's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(fleet::show))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/servers/{id}", get(server::show))
        .route("/servers/{id}/tasks", post(server::run_task))
        .route("/tasks", get(tasks::list))
        .route("/tasks/{id}", get(tasks::show))
        .route("/tasks/{id}/cancel", post(tasks::cancel))
        .route("/alerts", get(alerts::list))
        .route("/alerts/{id}/acknowledge", post(alerts::acknowledge))
        .route(
            "/alerts/rules",
            get(alerts::rules).post(alerts::create_rule),
        )
        .route("/alerts/rules/{id}", post(alerts::update_rule))
        .route("/alerts/rules/{id}/delete", post(alerts::delete_rule))
        .route("/events", get(events::list))
        .route(
            "/settings/users",
            get(settings::users).post(settings::create_user),
        )
        .route("/settings/users/{id}/role", post(settings::set_role))
        .route("/settings/users/{id}/delete", post(settings::delete_user))
        .route(
            "/settings/agents",
            get(settings::agents).post(settings::add_server),
        )
        .route("/settings/plugins", get(settings::plugins))
        .route(
            "/settings/notifications",
            get(channels::list).post(channels::create),
        )
        .route(
            "/settings/notifications/{id}",
            get(channels::show).post(channels::update),
        )
        .route(
            "/settings/notifications/{id}/enabled",
            post(channels::set_enabled),
        )
        .route("/settings/notifications/{id}/test", post(channels::test))
        .route(
            "/settings/notifications/{id}/delete",
            post(channels::delete),
        )
        .route(
            "/settings/notifications/{id}/deliveries",
            get(channels::deliveries),
        )
        .route(
            "/settings/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route(
            "/settings/webhooks/{id}",
            get(webhooks::show).post(webhooks::update),
        )
        .route(
            "/settings/webhooks/{id}/enabled",
            post(webhooks::set_enabled),
        )
        .route("/settings/webhooks/{id}/test", post(webhooks::test))
        .route("/settings/webhooks/{id}/delete", post(webhooks::delete))
        .route(
            "/settings/webhooks/{id}/deliveries",
            get(webhooks::deliveries),
        )
        .route(
            "/settings/webhooks/{id}/deliveries/{delivery}/redeliver",
            post(webhooks::redeliver),
        )
        .route("/ui/app.css", get(css))
        .route("/ui/app.js", get(js))
        .layer(axum::middleware::from_fn(security_headers))
}

async fn css() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("assets/app.css"),
    )
}

async fn js() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        include_str!("assets/app.js"),
    )
}

/// CSP and friends on every UI answer.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.to_string())
}

/// The CSRF token of this browser: the cookie's, or a new one to set.
pub struct Csrf {
    pub token: String,
    /// `Set-Cookie` to send when the token is new.
    set_cookie: Option<HeaderValue>,
}

impl Csrf {
    fn from_headers(headers: &HeaderMap, secure: bool) -> Csrf {
        match cookie(headers, CSRF_COOKIE).filter(|t| t.len() == 64) {
            Some(token) => Csrf {
                token,
                set_cookie: None,
            },
            None => {
                let mut bytes = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
                let token = hex::encode(bytes);
                let secure = if secure { "; Secure" } else { "" };
                let value =
                    format!("{CSRF_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{secure}");
                Csrf {
                    set_cookie: HeaderValue::from_str(&value).ok(),
                    token,
                }
            }
        }
    }

    /// The hidden form field.
    pub fn field(&self) -> Markup {
        html! { input type="hidden" name="csrf" value=(self.token); }
    }
}

impl FromRequestParts<AppState> for Csrf {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Csrf::from_headers(
            &parts.headers,
            state.auth.cookie_secure(),
        ))
    }
}

/// A page answer, with the CSRF cookie set when it is new.
pub fn page(csrf: &Csrf, status: StatusCode, body: Markup) -> Response {
    let mut res = (status, body).into_response();
    if let Some(c) = &csrf.set_cookie {
        res.headers_mut().append(header::SET_COOKIE, c.clone());
    }
    res
}

/// Check a form post: same origin, and the form's token equals the cookie's. `Some` is the
/// refusal to answer.
pub fn refuse_post(headers: &HeaderMap, form_token: &str) -> Option<Response> {
    // The origin must be the host the browser talked to: the Host header, or the one a
    // reverse proxy says it received (X-Forwarded-Host).
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
        let ours = [header::HOST.as_str(), "x-forwarded-host"]
            .iter()
            .filter_map(|name| headers.get(*name).and_then(|v| v.to_str().ok()))
            .any(|host| host == origin_host);
        if !ours {
            return Some(forbidden("This form was sent from another site."));
        }
    }
    let cookie = cookie(headers, CSRF_COOKIE).unwrap_or_default();
    let same = cookie.len() == 64
        && Sha256::digest(cookie.as_bytes()) == Sha256::digest(form_token.as_bytes());
    if !same {
        return Some(forbidden(
            "The form expired or was not sent by this site. Reload the page and try again.",
        ));
    }
    None
}

fn forbidden(message: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        layout::bare("Forbidden", html! { p role="alert" { (message) } }),
    )
        .into_response()
}

/// A posted form, as name/value pairs in order (repeated names, like checkboxes, kept).
/// Missing fields are the handlers' to judge, so a bad form gets a page, not a bare 422.
pub struct FormData(Vec<(String, String)>);

impl FormData {
    /// The first value of `name`, or "".
    pub fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }

    /// Every value of `name`.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Whether a checkbox named `name` was ticked.
    pub fn checked(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for FormData {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Response> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                (
                    e.status(),
                    layout::bare(
                        "Bad form",
                        html! { p role="alert" { "The form could not be read: " (e.body_text()) } },
                    ),
                )
                    .into_response()
            })?;
        Ok(FormData(
            url::form_urlencoded::parse(&bytes)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        ))
    }
}

/// Check a form post of `user` (origin and CSRF token), then that their role may do it.
pub fn refuse_form(
    headers: &HeaderMap,
    form: &FormData,
    user: &PageUser,
    permission: Permission,
) -> Option<Response> {
    refuse_post(headers, form.get("csrf")).or_else(|| user.refuse_unless(permission))
}

/// A logged-in user of the UI; a page without a session redirects to the login page.
pub struct PageUser(pub Caller);

impl FromRequestParts<AppState> for PageUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        // After logging in, come back to the page; a form post cannot be replayed, so its
        // session's expiry leads back to the start page.
        let next = match parts.method {
            axum::http::Method::GET => parts
                .uri
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
            _ => "/",
        };
        let next: String = url::form_urlencoded::byte_serialize(next.as_bytes()).collect();
        let to_login = || Redirect::to(&format!("/login?next={next}")).into_response();
        let Some(token) = cookie(&parts.headers, SESSION_COOKIE).filter(|t| !t.is_empty()) else {
            return Err(to_login());
        };
        let origin = crate::api::extract::ClientOrigin::from_request_parts(parts, state)
            .await
            .map(|o| o.0)
            .unwrap_or_default();
        match state.auth.authenticate(&token, origin).await {
            Ok(caller) => Ok(PageUser(caller)),
            Err(_) => Err(to_login()),
        }
    }
}

impl PageUser {
    /// A 403 page unless the user's role holds `permission`.
    pub fn refuse_unless(&self, permission: Permission) -> Option<Response> {
        self.0.require(permission).err().map(|_| {
            forbidden(&format!(
                "Your role ({}) may not {}.",
                self.0.role.as_str(),
                permission.describe()
            ))
        })
    }
}

/// After a form post: on success go to `to`, else show the error as a page.
pub fn redirect_or_error<T>(
    done: crate::error::Result<T>,
    to: &str,
    user: &PageUser,
    csrf: &Csrf,
) -> Response {
    match done {
        Ok(_) => Redirect::to(to).into_response(),
        Err(e) => error_page(e, &Nav::of(&user.0), csrf),
    }
}

/// An error as a page: validation messages as they are, the rest as the API says them.
pub fn error_page(e: Error, nav: &Nav, csrf: &Csrf) -> Response {
    let status = e.status();
    let message = match &e {
        Error::Internal(inner) => {
            tracing::error!(error = %format!("{inner:#}"), "UI page failed");
            "Something went wrong on the hub; the log says what.".to_string()
        }
        other => other.to_string(),
    };
    page(
        csrf,
        status,
        layout::page(
            "Error",
            nav,
            csrf,
            html! { h1 { "Error" } p role="alert" { (message) } },
        ),
    )
}
