//! The event log: the full audit log with filters for admins and auditors, recent activity
//! (without client details) for everyone else.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::html;
use serde::Deserialize;

use super::layout::{self, Nav, ago};
use super::{Csrf, PageUser, error_page, page};
use crate::app::AppState;
use crate::auth::roles::Permission;
use crate::events::{EventFilter, EventType, Severity};

const PER_PAGE: u32 = 50;

#[derive(Deserialize, Default)]
pub struct EventParams {
    #[serde(default)]
    event_type: String,
    #[serde(default)]
    severity: String,
    #[serde(default)]
    username: String,
    page: Option<u64>,
}

/// `GET /events`.
pub async fn list(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    Query(p): Query<EventParams>,
) -> Response {
    if let Some(refused) = user.refuse_unless(Permission::ReadDashboard) {
        return refused;
    }
    let nav = Nav::of(&user.0);
    let audit = user.0.require(Permission::ReadAuditLog).is_ok();
    let page_no = p.page.unwrap_or(1).clamp(1, 1_000_000);
    let listed = if audit {
        let filter = EventFilter {
            event_type: Some(p.event_type.clone()).filter(|s| !s.is_empty()),
            severity: Severity::parse(&p.severity),
            username: Some(p.username.clone()).filter(|s| !s.is_empty()),
            limit: PER_PAGE,
            offset: (page_no - 1) * u64::from(PER_PAGE),
            ..Default::default()
        };
        state.events.query(&filter).await
    } else {
        state
            .events
            .recent(PER_PAGE, false)
            .await
            .map(|e| (e, PER_PAGE as u64))
    };
    let (events, total) = match listed {
        Ok(l) => l,
        Err(e) => return error_page(e, &nav, &csrf),
    };
    let pages = total.div_ceil(u64::from(PER_PAGE)).max(1);
    let link = |n: u64| {
        let q = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("event_type", &p.event_type)
            .append_pair("severity", &p.severity)
            .append_pair("username", &p.username)
            .append_pair("page", &n.to_string())
            .finish();
        format!("/events?{q}")
    };
    let body = html! {
        h1 { @if audit { "Audit log" } @else { "Recent activity" } }
        @if audit {
            form.filters method="get" action="/events" {
                label for="event_type" { "Type" }
                select #event_type name="event_type" {
                    option value="" { "Any" }
                    @for t in EventType::ALL { option value=(t.as_str()) selected[p.event_type == t.as_str()] { (t.as_str()) } }
                }
                label for="severity" { "Severity" }
                select #severity name="severity" {
                    option value="" { "Any" }
                    @for s in ["info", "warning", "error", "critical"] { option value=(s) selected[p.severity == s] { (s) } }
                }
                label for="username" { "User" }
                input #username name="username" value=(p.username);
                button type="submit" { "Filter" }
            }
        }
        div.scroll { table #events {
            thead { tr {
                th scope="col" { "When" } th scope="col" { "Type" } th scope="col" { "Severity" }
                th scope="col" { "User" } th scope="col" { "Server" } th scope="col" { "Target" }
                @if audit { th scope="col" { "From" } }
            } }
            tbody {
                @for e in &events {
                    tr {
                        td { (ago(Some(e.timestamp))) }
                        td { code { (e.event_type) } }
                        td { span class={ "sev " (e.severity.as_str()) } { (e.severity.as_str()) } }
                        td { (e.username.as_deref().unwrap_or("–")) }
                        td { @if let Some(id) = &e.server_id { a href={ "/servers/" (id) } { (e.server_name.as_deref().unwrap_or(id)) } } @else { "–" } }
                        td { (e.target_type.as_deref().unwrap_or("")) " " span.muted { (e.target_id.as_deref().unwrap_or("")) } }
                        @if audit { td { (e.ip.as_deref().unwrap_or("–")) } }
                    }
                }
                @if events.is_empty() { tr { td colspan=(if audit { "7" } else { "6" }) { "No event." } } }
            }
        } }
        @if audit {
            nav.pager aria-label="Pages" {
                @if page_no > 1 { a href=(link(page_no - 1)) rel="prev" { "← Previous" } }
                span { "Page " (page_no) " of " (pages) }
                @if page_no < pages { a href=(link(page_no + 1)) rel="next" { "Next →" } }
            }
        }
    };
    page(
        &csrf,
        StatusCode::OK,
        layout::page("Events", &nav, &csrf, body),
    )
}
