//! Logging in and out.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::{Csrf, FormData, PageUser, layout, page, refuse_post};
use crate::api::auth::session_cookie;
use crate::api::extract::ClientOrigin;
use crate::app::AppState;
use crate::error::Error;

#[derive(Deserialize)]
pub struct Next {
    next: Option<String>,
}

/// Only paths of this site: `/servers/x`, never `//evil.example`, `https://…`, or a path
/// with whitespace or control characters (browsers drop a tab, turning `/\t/evil` into
/// `//evil`).
fn safe_next(next: &str) -> &str {
    let local = next.starts_with('/')
        && !next.starts_with("//")
        && next.chars().all(|c| c.is_ascii_graphic() && c != '\\');
    if local { next } else { "/" }
}

fn login_page(csrf: &Csrf, next: &str, username: &str, error: Option<&str>) -> Markup {
    layout::bare(
        "Log in",
        html! {
            section.login {
                h1 { "Server Monitor" }
                form method="post" action="/login" {
                    (csrf.field())
                    input type="hidden" name="next" value=(next);
                    @if let Some(error) = error {
                        p.error role="alert" id="login-error" { (error) }
                    }
                    label for="username" { "Username" }
                    input #username name="username" autocomplete="username" required autofocus value=(username);
                    label for="password" { "Password" }
                    input #password name="password" type="password" autocomplete="current-password" required;
                    button type="submit" { "Log in" }
                }
            }
        },
    )
}

/// `GET /login`.
pub async fn form(csrf: Csrf, Query(q): Query<Next>) -> Response {
    let next = safe_next(q.next.as_deref().unwrap_or("/"));
    page(&csrf, StatusCode::OK, login_page(&csrf, next, "", None))
}

/// `POST /login`: the API's login, answered with the session cookie and a redirect.
pub async fn submit(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    csrf: Csrf,
    headers: HeaderMap,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_post(&headers, f.get("csrf")) {
        return refused;
    }
    let next = safe_next(f.get("next"));
    let username = f.get("username");
    match state.auth.login(username, f.get("password"), &origin).await {
        Ok(outcome) => {
            let cookie = session_cookie(
                &outcome.token,
                state.auth.session_max_age().as_secs(),
                state.auth.cookie_secure(),
            );
            let mut res = Redirect::to(next).into_response();
            res.headers_mut().append(header::SET_COOKIE, cookie);
            res
        }
        Err(e) => {
            let message = match &e {
                Error::RateLimited { .. } => {
                    format!("Too many login attempts: {e}. Wait, then try again.")
                }
                Error::Unauthorized(_) | Error::Forbidden(_) => {
                    "Wrong username or password, or the account is disabled.".to_string()
                }
                Error::Invalid { .. } | Error::BadRequest(_) => e.to_string(),
                _ => {
                    tracing::error!(error = %e, "UI login failed");
                    "The hub could not log you in; try again.".to_string()
                }
            };
            page(
                &csrf,
                e.status(),
                login_page(&csrf, next, username, Some(&message)),
            )
        }
    }
}

/// `POST /logout`: end the session.
pub async fn logout(
    State(state): State<AppState>,
    PageUser(caller): PageUser,
    headers: HeaderMap,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_post(&headers, f.get("csrf")) {
        return refused;
    }
    if let Err(e) = state.auth.logout(&caller).await {
        tracing::warn!(error = %e, "UI logout failed");
    }
    let mut res = Redirect::to("/login").into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        session_cookie("", 0, state.auth.cookie_secure()),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn only_local_paths_are_followed_after_login() {
        assert_eq!(
            safe_next("/servers/abc?range=24h"),
            "/servers/abc?range=24h"
        );
        for hostile in [
            "//evil.example/",
            "/\t/evil.example",
            "/\\evil.example",
            "https://evil.example/",
            "/a\nb",
            "/ /x",
            "",
        ] {
            assert_eq!(safe_next(hostile), "/", "{hostile:?}");
        }
    }
}
