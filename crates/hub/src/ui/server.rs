//! One server: status, charts over 1 h / 24 h / 7 d / 30 d from the rollup tiers, inventory,
//! recent events, its tasks and a form to run one.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{Duration, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use super::charts::{Series, line_chart};
use super::layout::{self, Nav, ago, bytes, percent, rate, status};
use super::{Csrf, FormData, PageUser, error_page, page, refuse_form};
use crate::app::AppState;
use crate::auth::roles::Permission;
use crate::events::EventFilter;
use crate::fleet::HistoryView;
use crate::tasks::TaskQuery;

/// The ranges the page offers.
const RANGES: &[(&str, i64)] = &[("1h", 1), ("24h", 24), ("7d", 24 * 7), ("30d", 24 * 30)];

#[derive(Deserialize)]
pub struct ServerParams {
    range: Option<String>,
}

/// `GET /servers/{id}`.
pub async fn show(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    Path(id): Path<String>,
    Query(q): Query<ServerParams>,
) -> Response {
    if let Some(refused) = user.refuse_unless(Permission::ReadFleet) {
        return refused;
    }
    match render(&state, &user, &csrf, &id, q.range.as_deref(), None).await {
        Ok(body) => page(&csrf, StatusCode::OK, body),
        Err(e) => error_page(e, &Nav::of(&user.0), &csrf),
    }
}

/// `POST /servers/{id}/tasks`: run a command, then back to the server's tasks.
pub async fn run_task(
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
    let timeout = match f.get("timeout_seconds").trim() {
        "" => None,
        t => match t.parse::<u32>() {
            Ok(t) => Some(t),
            Err(_) => {
                let e = crate::error::Error::invalid("timeout_seconds", "must be a whole number");
                return form_error(&state, &user, &csrf, &id, e).await;
            }
        },
    };
    let created = async {
        state.fleet.exists(&id)?;
        state.limits.task_create.check(&user.0.user_id)?;
        state
            .tasks
            .create(
                &user.0,
                std::slice::from_ref(&id),
                f.get("command").to_string(),
                timeout,
                None,
            )
            .await
    }
    .await;
    match created {
        Ok(_) => Redirect::to(&format!("/servers/{id}#tasks")).into_response(),
        Err(e) => form_error(&state, &user, &csrf, &id, e).await,
    }
}

/// The server page again, with the task form's error shown by the form.
async fn form_error(
    state: &AppState,
    user: &PageUser,
    csrf: &Csrf,
    id: &str,
    e: crate::error::Error,
) -> Response {
    let status = e.status();
    match render(state, user, csrf, id, None, Some(e.to_string())).await {
        Ok(body) => page(csrf, status, body),
        Err(e) => error_page(e, &Nav::of(&user.0), csrf),
    }
}

fn chart<'a>(hist: &'a HistoryView, label: &'a str, class: &'a str) -> Series<'a> {
    Series {
        label,
        class,
        points: &hist.points,
    }
}

async fn render(
    state: &AppState,
    user: &PageUser,
    csrf: &Csrf,
    id: &str,
    range: Option<&str>,
    task_error: Option<String>,
) -> crate::error::Result<Markup> {
    let detail = state.fleet.get(id)?;
    let s = &detail.server;
    let (range, hours) = RANGES
        .iter()
        .find(|(r, _)| Some(*r) == range)
        .copied()
        .unwrap_or(RANGES[0]);
    let to = Utc::now();
    let from = to - Duration::hours(hours);
    let history = |metric: &'static str| async move {
        state
            .fleet
            .history(id, metric, Some(from), Some(to), None)
            .await
    };
    let (cpu, memory, disk, load, rx, tx) = (
        history("cpu").await?,
        history("memory").await?,
        history("disk").await?,
        history("load1").await?,
        history("net_rx").await?,
        history("net_tx").await?,
    );
    let inventory = state.fleet.inventory(id).await.ok();
    let (events, _) = state
        .events
        .query(&EventFilter {
            server_id: Some(id.to_string()),
            limit: 15,
            ..Default::default()
        })
        .await?;
    let tasks = state
        .tasks
        .list(
            &user.0,
            &TaskQuery {
                server_id: Some(id.to_string()),
                status: None,
                limit: Some(10),
                offset: None,
            },
        )
        .await?;
    let pct = |v: f64| format!("{v:.0} %");
    let can_run = user.0.require(Permission::RunTasks).is_ok();
    let body = html! {
        p.crumbs { a href="/" { "Fleet" } " / " }
        h1 { (s.name) " " (status(s.status.as_str())) }
        @if let Some(d) = &s.description { p { (d) } }
        dl.facts {
            dt { "Last seen" } dd { (ago(s.last_seen)) }
            dt { "Agent" } dd { (s.agent_version.as_deref().unwrap_or("–")) }
            dt { "Interval" } dd { @if let Some(i) = s.interval_secs { (i) " s" } @else { "–" } }
            dt { "Tags" } dd { @for t in &s.tags { span.tag { (t) } " " } }
            @if let Some(m) = &s.metrics {
                dt { "CPU" } dd { (percent(Some(m.cpu_percent))) }
                dt { "Memory" } dd { (percent(m.memory_percent)) }
                dt { "Disk (fullest)" } dd { (percent(m.disk_percent)) }
                dt { "Load" } dd { (format!("{:.2} {:.2} {:.2}", m.load1, m.load5, m.load15)) }
                dt { "Uptime" } dd { (crate::notifications::render::duration(m.uptime_secs as i64)) }
            }
        }
        section #charts aria-labelledby="charts-h" {
            h2 #charts-h { "History" }
            nav.tabs aria-label="Range" {
                @for (r, _) in RANGES {
                    a href={ "/servers/" (s.id) "?range=" (r) } aria-current=[(*r == range).then_some("page")] { (r) }
                }
            }
            p.muted { "Tier: " (cpu.tier.as_str()) ", " (cpu.points.len()) " points" }
            div.charts {
                (line_chart("chart-cpu", "CPU", &[chart(&cpu, "CPU", "s1")], from, to, true, pct))
                (line_chart("chart-memory", "Memory", &[chart(&memory, "Memory", "s2")], from, to, true, pct))
                (line_chart("chart-disk", "Disk (fullest)", &[chart(&disk, "Disk", "s3")], from, to, true, pct))
                (line_chart("chart-net", "Network", &[chart(&rx, "Received", "s1"), chart(&tx, "Sent", "s4")], from, to, false, rate))
                (line_chart("chart-load", "Load (1 min)", &[chart(&load, "Load", "s2")], from, to, false, |v| format!("{v:.2}")))
            }
        }
        section #tasks aria-labelledby="tasks-h" {
            h2 #tasks-h { "Tasks" }
            @if can_run {
                form.task method="post" action={ "/servers/" (s.id) "/tasks" } {
                    (csrf.field())
                    @if let Some(e) = &task_error { p.error role="alert" { (e) } }
                    label for="command" { "Command" }
                    input #command name="command" required placeholder="uptime";
                    label for="timeout" { "Timeout (s)" }
                    input #timeout name="timeout_seconds" inputmode="numeric" value="60" size="5";
                    button type="submit" { "Run" }
                }
            }
            @if tasks.tasks.is_empty() {
                p.muted { "No task yet." }
            } @else {
                div.scroll { table {
                    thead { tr { th scope="col" { "Command" } th scope="col" { "Status" } th scope="col" { "Exit" } th scope="col" { "Created" } } }
                    tbody {
                        @for t in &tasks.tasks {
                            tr {
                                td { a href={ "/tasks/" (t.id) } { code { (t.command) } } }
                                td { (status(t.status.as_str())) }
                                td { @if let Some(c) = t.exit_code { (c) } @else { "–" } }
                                td { (ago(Some(t.created_at))) }
                            }
                        }
                    }
                } }
            }
        }
        @if let Some(inv) = &inventory {
            section #inventory aria-labelledby="inv-h" {
                h2 #inv-h { "Inventory" }
                dl.facts {
                    @for key in ["hostname", "os_name", "os_version", "kernel", "arch", "cpu_model", "cpu_cores", "cpu_threads"] {
                        @if let Some(v) = inv.inventory.get(key) {
                            dt { (key.replace('_', " ")) }
                            dd { (v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())) }
                        }
                    }
                    @if let Some(total) = inv.inventory.get("memory_total").and_then(|v| v.as_u64()) {
                        dt { "memory" } dd { (bytes(total)) }
                    }
                }
            }
        }
        section #events aria-labelledby="events-h" {
            h2 #events-h { "Recent events" }
            @if events.is_empty() { p.muted { "None." } }
            ul.events {
                @for e in &events {
                    li { (ago(Some(e.timestamp))) " " span class={ "sev " (e.severity.as_str()) } { (e.severity.as_str()) } " " code { (e.event_type) } }
                }
            }
        }
    };
    Ok(layout::page(&s.name, &Nav::of(&user.0), csrf, body))
}
