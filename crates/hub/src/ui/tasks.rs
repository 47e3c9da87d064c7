//! Tasks: the list with filters, and one task with its output (refreshing while it runs) and
//! a cancel button.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::layout::{self, Nav, ago, status};
use super::{Csrf, FormData, PageUser, error_page, page, redirect_or_error, refuse_form};
use crate::app::AppState;
use crate::auth::roles::Permission;
use crate::store::TaskStatus;
use crate::tasks::TaskQuery;

const PER_PAGE: u32 = 50;

#[derive(Deserialize)]
pub struct TaskParams {
    #[serde(default)]
    status: String,
    page: Option<u64>,
}

/// `GET /tasks`.
pub async fn list(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    Query(p): Query<TaskParams>,
) -> Response {
    if let Some(refused) = user.refuse_unless(Permission::ReadFleet) {
        return refused;
    }
    let nav = Nav::of(&user.0);
    let page_no = p.page.unwrap_or(1).clamp(1, 1_000_000);
    let q = TaskQuery {
        server_id: None,
        status: Some(p.status.clone()).filter(|s| !s.is_empty()),
        limit: Some(PER_PAGE),
        offset: Some((page_no - 1) * u64::from(PER_PAGE)),
    };
    let tasks = match state.tasks.list(&user.0, &q).await {
        Ok(t) => t,
        Err(e) => return error_page(e, &nav, &csrf),
    };
    let pages = tasks.total.div_ceil(u64::from(PER_PAGE)).max(1);
    let link = |n: u64| {
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("status", &p.status)
            .append_pair("page", &n.to_string())
            .finish();
        format!("/tasks?{q}")
    };
    let body = html! {
        h1 { "Tasks" }
        form.filters method="get" action="/tasks" {
            label for="status" { "Status" }
            select #status name="status" {
                option value="" { "Any" }
                @for s in ["queued", "running", "finished", "failed", "timeout", "cancelled", "interrupted"] {
                    option value=(s) selected[p.status == s] { (s) }
                }
            }
            button type="submit" { "Filter" }
        }
        div.scroll { table #tasks {
            caption { (tasks.total) " tasks" }
            thead { tr {
                th scope="col" { "Command" } th scope="col" { "Server" } th scope="col" { "Status" }
                th scope="col" { "Exit" } th scope="col" { "By" } th scope="col" { "Created" }
            } }
            tbody {
                @for t in &tasks.tasks {
                    tr {
                        td { a href={ "/tasks/" (t.id) } { code { (t.command) } } }
                        td { a href={ "/servers/" (t.server_id) } { (t.server_name.as_deref().unwrap_or(&t.server_id)) } }
                        td { (status(t.status.as_str())) }
                        td { @if let Some(c) = t.exit_code { (c) } @else { "–" } }
                        td { (t.created_by_name.as_deref().unwrap_or("–")) }
                        td { (ago(Some(t.created_at))) }
                    }
                }
                @if tasks.tasks.is_empty() { tr { td colspan="6" { "No task." } } }
            }
        } }
        nav.pager aria-label="Pages" {
            @if page_no > 1 { a href=(link(page_no - 1)) rel="prev" { "← Previous" } }
            span { "Page " (page_no) " of " (pages) }
            @if page_no < pages { a href=(link(page_no + 1)) rel="next" { "Next →" } }
        }
    };
    page(
        &csrf,
        StatusCode::OK,
        layout::page("Tasks", &nav, &csrf, body),
    )
}

/// `GET /tasks/{id}`.
pub async fn show(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = user.refuse_unless(Permission::ReadFleet) {
        return refused;
    }
    let nav = Nav::of(&user.0);
    let t = match state.tasks.get(&user.0, &id).await {
        Ok(t) => t,
        Err(e) => return error_page(e, &nav, &csrf),
    };
    let open = matches!(t.status, TaskStatus::Queued | TaskStatus::Running);
    let can_cancel = open && user.0.require(Permission::RunTasks).is_ok();
    let body = html! {
        p.crumbs { a href="/tasks" { "Tasks" } " / " }
        h1 { "Task " code { (t.command) } }
        section #task data-refresh=[open.then(|| format!("/tasks/{}", t.id))] aria-live="polite" {
            dl.facts {
                dt { "Status" } dd #task-status { (status(t.status.as_str())) @if t.cancel_requested { " (cancel asked)" } }
                dt { "Server" } dd { a href={ "/servers/" (t.server_id) } { (t.server_name.as_deref().unwrap_or(&t.server_id)) } }
                dt { "Exit code" } dd { @if let Some(c) = t.exit_code { (c) } @else { "–" } }
                dt { "Timeout" } dd { (t.timeout_seconds) " s" }
                dt { "Created" } dd { (ago(Some(t.created_at))) " by " (t.created_by_name.as_deref().unwrap_or("–")) }
                dt { "Started" } dd { (ago(t.started_at)) }
                dt { "Finished" } dd { (ago(t.finished_at)) }
            }
            @if let Some(e) = &t.error { p.error { (e) } }
            h2 { "Output" }
            @if t.output_truncated { p.muted { "Cut at 64 KiB." } }
            pre.output #stdout { (t.stdout.as_deref().unwrap_or("")) }
            @if let Some(err) = t.stderr.as_deref().filter(|s| !s.is_empty()) {
                h3 { "Standard error" }
                pre.output.stderr #stderr { (err) }
            }
        }
        @if can_cancel {
            form method="post" action={ "/tasks/" (t.id) "/cancel" } data-confirm="Cancel this task?" {
                (csrf.field())
                button.danger type="submit" { "Cancel task" }
            }
        }
    };
    page(
        &csrf,
        StatusCode::OK,
        layout::page("Task", &nav, &csrf, body),
    )
}

/// `POST /tasks/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    Path(id): Path<String>,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::RunTasks) {
        return refused;
    }
    redirect_or_error(
        state.tasks.cancel(&user.0, &id).await,
        &format!("/tasks/{id}"),
        &user,
        &csrf,
    )
}
