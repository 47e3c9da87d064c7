//! Settings: users (admins), agent installation (a server and its one-time command),
//! plugins with their counters.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;

use super::layout::{self, Nav, ago};
use super::{Csrf, FormData, PageUser, error_page, page, refuse_form};
use crate::app::AppState;
use crate::auth::roles::{Permission, Role};
use crate::error::Error;
use crate::fleet::NewServer;
use crate::users::{NewUser, UserPatch};

const ROLES: &[&str] = &["admin", "operator", "viewer", "auditor"];

/// `GET /settings/users`.
pub async fn users(State(state): State<AppState>, user: PageUser, csrf: Csrf) -> Response {
    if let Some(refused) = user.refuse_unless(Permission::ManageUsers) {
        return refused;
    }
    users_page(&state, &user, &csrf, StatusCode::OK, None).await
}

async fn users_page(
    state: &AppState,
    user: &PageUser,
    csrf: &Csrf,
    status: StatusCode,
    error: Option<String>,
) -> Response {
    let nav = Nav::of(&user.0);
    let users = match state.users.list().await {
        Ok(u) => u,
        Err(e) => return error_page(e, &nav, csrf),
    };
    let body = html! {
        h1 { "Users" }
        @if let Some(e) = &error { p.error role="alert" { (e) } }
        form.filters method="post" action="/settings/users" {
            (csrf.field())
            label for="new-username" { "Username" }
            input #new-username name="username" required autocomplete="off";
            label for="new-password" { "Password" }
            input #new-password name="password" type="password" required autocomplete="new-password";
            label for="new-role" { "Role" }
            select #new-role name="role" { @for r in ROLES { option value=(r) selected[*r == "viewer"] { (r) } } }
            button type="submit" { "Add user" }
        }
        div.scroll { table #users {
            thead { tr { th scope="col" { "Username" } th scope="col" { "Role" } th scope="col" { "Enabled" } th scope="col" { "Last login" } th scope="col" { "Actions" } } }
            tbody {
                @for u in &users {
                    tr {
                        td { (u.username) }
                        td {
                            form.inline method="post" action={ "/settings/users/" (u.id) "/role" } {
                                (csrf.field())
                                label.visually-hidden for={ "role-" (u.id) } { "Role of " (u.username) }
                                select id={ "role-" (u.id) } name="role" { @for r in ROLES { option value=(r) selected[u.role.as_str() == *r] { (r) } } }
                                button type="submit" aria-label={ "Change the role of " (u.username) } { "Change" }
                            }
                        }
                        td { (if u.enabled { "yes" } else { "no" }) }
                        td { (ago(u.last_login_at)) }
                        td {
                            form method="post" action={ "/settings/users/" (u.id) "/delete" } data-confirm={ "Delete user " (u.username) "?" } {
                                (csrf.field())
                                button.danger type="submit" aria-label={ "Delete user " (u.username) } { "Delete" }
                            }
                        }
                    }
                }
            }
        } }
    };
    page(csrf, status, layout::page("Users", &nav, csrf, body))
}

/// `POST /settings/users`.
pub async fn create_user(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageUsers) {
        return refused;
    }
    let created = async {
        let role = Role::parse(f.get("role"))
            .ok_or_else(|| Error::invalid("role", "must be admin, operator, viewer or auditor"))?;
        let new = NewUser {
            username: f.get("username").into(),
            password: f.get("password").into(),
            role,
            email: None,
            enabled: true,
        };
        state.users.create(&user.0.origin, new).await
    }
    .await;
    match created {
        Ok(_) => Redirect::to("/settings/users").into_response(),
        Err(e) => users_page(&state, &user, &csrf, e.status(), Some(e.to_string())).await,
    }
}

/// `POST /settings/users/{id}/role`.
pub async fn set_role(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    Path(id): Path<String>,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageUsers) {
        return refused;
    }
    let changed = async {
        let role = Role::parse(f.get("role"))
            .ok_or_else(|| Error::invalid("role", "must be admin, operator, viewer or auditor"))?;
        let patch = UserPatch {
            role: Some(role),
            ..Default::default()
        };
        state.users.update(&user.0.origin, &id, patch).await
    }
    .await;
    match changed {
        Ok(_) => Redirect::to("/settings/users").into_response(),
        Err(e) => users_page(&state, &user, &csrf, e.status(), Some(e.to_string())).await,
    }
}

/// `POST /settings/users/{id}/delete`.
pub async fn delete_user(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    Path(id): Path<String>,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageUsers) {
        return refused;
    }
    match state.users.delete(&user.0.origin, &id).await {
        Ok(()) => Redirect::to("/settings/users").into_response(),
        Err(e) => users_page(&state, &user, &csrf, e.status(), Some(e.to_string())).await,
    }
}

/// `GET /settings/agents`: how to install an agent, and a form that adds a server.
pub async fn agents(State(_): State<AppState>, user: PageUser, csrf: Csrf) -> Response {
    if let Some(refused) = user.refuse_unless(Permission::ManageServers) {
        return refused;
    }
    agents_page(&user, &csrf, StatusCode::OK, None, None)
}

fn agents_page(
    user: &PageUser,
    csrf: &Csrf,
    status: StatusCode,
    error: Option<String>,
    created: Option<(String, String, String)>,
) -> Response {
    let body = html! {
        h1 { "Install an agent" }
        p { "Add a server here, then run the command on it. The agent pushes its metrics to this hub; it runs tasks only if its own configuration allows them (see docs/AGENT.md)." }
        @if let Some((id, name, command)) = &created {
            div.notice role="status" {
                p { "Server " a href={ "/servers/" (id) } { (name) } " added. Run this on it (the token is shown this once):" }
                pre.output #agent-command { (command) }
                button type="button" data-copy="agent-command" { "Copy" }
            }
        }
        @if let Some(e) = &error { p.error role="alert" { (e) } }
        form.filters method="post" action="/settings/agents" {
            (csrf.field())
            label for="server-name" { "Server name" }
            input #server-name name="name" required;
            label for="server-tags" { "Tags (comma-separated)" }
            input #server-tags name="tags";
            button type="submit" { "Add server" }
        }
    };
    page(
        csrf,
        status,
        layout::page("Agents", &Nav::of(&user.0), csrf, body),
    )
}

/// `POST /settings/agents`.
pub async fn add_server(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageServers) {
        return refused;
    }
    let new = NewServer {
        name: f.get("name").into(),
        description: None,
        tags: f
            .get("tags")
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(String::from)
            .collect(),
        interval_secs: None,
    };
    match state.fleet.create(&user.0.origin, new).await {
        Ok((view, token)) => {
            let command = crate::fleet::agent_command(
                &crate::api::servers::hub_url(&state, &headers),
                &token,
            );
            agents_page(
                &user,
                &csrf,
                StatusCode::CREATED,
                None,
                Some((view.id, view.name, command)),
            )
        }
        Err(e) => agents_page(&user, &csrf, e.status(), Some(e.to_string()), None),
    }
}

/// `GET /settings/plugins`.
pub async fn plugins(State(state): State<AppState>, user: PageUser, csrf: Csrf) -> Response {
    if let Some(refused) = user.refuse_unless(Permission::ManagePlugins) {
        return refused;
    }
    let statuses = state.plugins.statuses();
    let body = html! {
        h1 { "Plugins" }
        p { "Plugins run from the configuration (see docs/PLUGINS.md); this page shows their state and counters." }
        div.scroll { table #plugins {
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Kind" } th scope="col" { "State" }
                th scope="col" { "Handled" } th scope="col" { "Failed" } th scope="col" { "Dropped" }
                th scope="col" { "Queued" } th scope="col" { "Last error" }
            } }
            tbody {
                @for p in &statuses {
                    tr {
                        td { (p.name) } td { (p.kind) }
                        td { span class={ "badge " (if p.state == "running" { "online" } else if p.state == "failed" { "offline" } else { "unknown" }) } { (p.state) } }
                        td { (p.handled) } td { (p.failed) } td { (p.dropped) }
                        td { (p.queued) " / " (p.queue_capacity) }
                        td { (p.last_error.as_deref().unwrap_or("")) " " (ago(p.last_error_at)) }
                    }
                }
                @if statuses.is_empty() { tr { td colspan="8" { "No plugin." } } }
            }
        } }
    };
    page(
        &csrf,
        StatusCode::OK,
        layout::page("Plugins", &Nav::of(&user.0), &csrf, body),
    )
}
