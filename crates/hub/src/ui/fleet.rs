//! The fleet overview: counts, search, tag and status filters, sorting and server-side
//! pages, read from the hub's in-memory fleet state (fast at 10,000 servers). The script
//! refreshes the `#fleet` section every 10 s from `?…&partial=1` without a full reload.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::{Markup, PreEscaped, html};
use serde::Deserialize;

use super::layout::{self, Nav, ago, percent, status};
use super::{Csrf, PageUser, error_page, page};
use crate::api::servers::overview_json;
use crate::app::AppState;
use crate::auth::roles::Permission;
use crate::fleet::{Overview, ServerPage, ServerQuery};

/// Servers per page.
const PER_PAGE: u32 = 50;

#[derive(Deserialize, Default, Clone)]
pub struct FleetParams {
    #[serde(default)]
    q: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    sort: String,
    #[serde(default)]
    page: Option<u64>,
    #[serde(default)]
    partial: Option<u8>,
}

impl FleetParams {
    /// This view's URL with some parameters changed.
    fn url(&self, sort: Option<&str>, page: Option<u64>) -> String {
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("q", self.q.as_str()),
            ("tag", self.tag.as_str()),
            ("status", self.status.as_str()),
            ("sort", sort.unwrap_or(&self.sort)),
        ] {
            if !v.is_empty() {
                query.append_pair(k, v);
            }
        }
        let page = page.or(self.page).unwrap_or(1);
        if page > 1 {
            query.append_pair("page", &page.to_string());
        }
        let query = query.finish();
        if query.is_empty() {
            "/".into()
        } else {
            format!("/?{query}")
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    Some(s.trim().to_string()).filter(|s| !s.is_empty())
}

/// `GET /`.
pub async fn show(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    Query(p): Query<FleetParams>,
) -> Response {
    let nav = Nav::of(&user.0);
    if let Some(refused) = user.refuse_unless(Permission::ReadFleet) {
        return refused;
    }
    let page_no = p.page.unwrap_or(1).clamp(1, 1_000_000);
    // The same caches as the API's list and overview: with 10,000 servers, sorting and
    // counting on every view would hold the fleet's lock against the agents' reports.
    let rendered = async {
        let overview: Overview = serde_json::from_slice(&overview_json(&state).await?)
            .map_err(|e| crate::error::Error::Internal(e.into()))?;
        let key = format!(
            "{}|ui|{}|{}|{}|{}|{page_no}",
            state.fleet.generation(),
            p.q,
            p.tag,
            p.status,
            p.sort
        );
        let section = state
            .caches
            .servers
            .get_or_compute(key, || async {
                let query = ServerQuery {
                    tag: non_empty(&p.tag),
                    status: non_empty(&p.status),
                    search: non_empty(&p.q),
                    sort: non_empty(&p.sort),
                    limit: Some(PER_PAGE),
                    offset: Some((page_no - 1) * u64::from(PER_PAGE)),
                };
                let servers = state.fleet.list(&query)?;
                let html = fleet_section(&overview, &p, page_no, &servers).into_string();
                Ok(Bytes::from(html))
            })
            .await?;
        Ok::<_, crate::error::Error>((overview, section))
    }
    .await;
    let (overview, section) = match rendered {
        Ok(r) => r,
        Err(e) => return error_page(e, &nav, &csrf),
    };
    // Cached as text: it was escaped when it was rendered.
    let section = PreEscaped(String::from_utf8_lossy(&section).into_owned());
    if p.partial == Some(1) {
        return (StatusCode::OK, section).into_response();
    }
    let tags: Vec<&String> = overview.tags.keys().collect();
    let body = html! {
        h1 { "Fleet" }
        form.filters method="get" action="/" role="search" {
            label for="q" { "Search" }
            input #q name="q" type="search" value=(p.q) placeholder="Server name";
            label for="tag" { "Tag" }
            select #tag name="tag" {
                option value="" { "All tags" }
                @for t in &tags {
                    option value=(t) selected[p.tag == **t] { (t) }
                }
            }
            label for="status" { "Status" }
            select #status name="status" {
                @for (value, label) in [("", "Any status"), ("online", "Online"), ("offline", "Offline"), ("unknown", "Unknown")] {
                    option value=(value) selected[p.status == value] { (label) }
                }
            }
            input type="hidden" name="sort" value=(p.sort);
            button type="submit" { "Filter" }
        }
        (section)
    };
    page(
        &csrf,
        StatusCode::OK,
        layout::page("Fleet", &nav, &csrf, body),
    )
}

fn fleet_section(
    overview: &Overview,
    p: &FleetParams,
    page_no: u64,
    servers: &ServerPage,
) -> Markup {
    let pages = (servers.total as u64).div_ceil(u64::from(PER_PAGE)).max(1);
    let sort_link = |key: &str, label: &str| {
        let (next, mark) = match p.sort.as_str() {
            s if s == key => (format!("-{key}"), " ▲"),
            s if s.strip_prefix('-') == Some(key) => (key.to_string(), " ▼"),
            _ => (key.to_string(), ""),
        };
        let aria = match mark {
            " ▲" => "ascending",
            " ▼" => "descending",
            _ => "none",
        };
        html! { th scope="col" aria-sort=(aria) { a href=(p.url(Some(&next), Some(1))) { (label) span aria-hidden="true" { (mark) } } } }
    };
    html! {
        section #fleet data-refresh=(p.url(None, Some(page_no))) aria-live="polite" {
            ul.counts {
                li { strong { (overview.total_servers) } " servers" }
                li.online { strong { (overview.online_servers) } " online" }
                li.offline { strong { (overview.offline_servers) } " offline" }
                li.unknown { strong { (overview.unknown_servers) } " unknown" }
                li { "CPU avg " strong { (percent(overview.avg_cpu_percent)) } }
            }
            div.scroll {
                table #servers {
                    caption { (servers.total) " matching, page " (page_no) " of " (pages) }
                    thead {
                        tr {
                            (sort_link("name", "Name"))
                            (sort_link("status", "Status"))
                            (sort_link("cpu", "CPU"))
                            (sort_link("memory", "Memory"))
                            (sort_link("disk", "Disk"))
                            th scope="col" { "Load" }
                            (sort_link("last_seen", "Last seen"))
                            th scope="col" { "Tags" }
                        }
                    }
                    tbody {
                        @for s in &servers.servers {
                            tr {
                                td { a href={ "/servers/" (s.id) } { (s.name) } @if s.local { " " span.muted { "(this hub)" } } }
                                td { (status(s.status.as_str())) }
                                td { (percent(s.metrics.as_ref().map(|m| m.cpu_percent))) }
                                td { (percent(s.metrics.as_ref().and_then(|m| m.memory_percent))) }
                                td { (percent(s.metrics.as_ref().and_then(|m| m.disk_percent))) }
                                td { @if let Some(m) = &s.metrics { (format!("{:.2}", m.load1)) } @else { span.muted { "–" } } }
                                td { (ago(s.last_seen)) }
                                td { @for t in &s.tags { span.tag { (t) } " " } }
                            }
                        }
                        @if servers.servers.is_empty() {
                            tr { td colspan="8" { "No server matches." } }
                        }
                    }
                }
            }
            nav.pager aria-label="Pages" {
                @if page_no > 1 { a href=(p.url(None, Some(page_no - 1))) rel="prev" { "← Previous" } }
                span { "Page " (page_no) " of " (pages) }
                @if page_no < pages { a href=(p.url(None, Some(page_no + 1))) rel="next" { "Next →" } }
            }
        }
    }
}
