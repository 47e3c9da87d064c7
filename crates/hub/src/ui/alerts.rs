//! Alerts: what fires now, the history, acknowledging; the rules editor.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::layout::{self, Nav, ago};
use super::{Csrf, FormData, PageUser, error_page, page, redirect_or_error, refuse_form};
use crate::alerts::{AlertQuery, AlertView, RuleInput, RuleView};
use crate::app::AppState;
use crate::auth::roles::Permission;
use crate::error::{Error, Result};
use crate::events::Severity;

const METRICS: &[&str] = &[
    "cpu",
    "memory",
    "swap",
    "disk",
    "load",
    "net_rx",
    "net_tx",
    "temperature",
    "offline",
];

fn alerts_table(id: &str, alerts: &[AlertView], csrf: &Csrf, can_ack: bool) -> Markup {
    html! {
        div.scroll { table id=(id) {
            thead { tr {
                th scope="col" { "Rule" } th scope="col" { "Server" } th scope="col" { "Severity" }
                th scope="col" { "Value" } th scope="col" { "Fired" } th scope="col" { "Resolved" } th scope="col" { "Acknowledged" }
            } }
            tbody {
                @for a in alerts {
                    tr {
                        td { (a.rule_name) }
                        td { a href={ "/servers/" (a.server_id) } { (a.server_name.as_deref().unwrap_or(&a.server_id)) } }
                        td { span class={ "sev " (a.severity.as_str()) } { (a.severity.as_str()) } }
                        td { (a.value.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into())) " / " (a.threshold) }
                        td { (ago(Some(a.fired_at))) }
                        td { @if a.resolved_at.is_some() { (ago(a.resolved_at)) " " span.muted { (a.resolution.as_deref().unwrap_or("")) } } @else { "firing" } }
                        td {
                            @if let Some(by) = &a.acknowledged_by { (by) }
                            @else if can_ack {
                                form method="post" action={ "/alerts/" (a.id) "/acknowledge" } {
                                    (csrf.field())
                                    button type="submit" aria-label={ "Acknowledge " (a.rule_name) " on " (a.server_name.as_deref().unwrap_or(&a.server_id)) } { "Acknowledge" }
                                }
                            } @else { "–" }
                        }
                    }
                }
                @if alerts.is_empty() { tr { td colspan="7" { "None." } } }
            }
        } }
    }
}

/// `GET /alerts`.
pub async fn list(State(state): State<AppState>, user: PageUser, csrf: Csrf) -> Response {
    if let Some(refused) = user.refuse_unless(Permission::ReadFleet) {
        return refused;
    }
    let nav = Nav::of(&user.0);
    let query = |status: &str, limit: u32| AlertQuery {
        status: Some(status.into()),
        limit: Some(limit),
        ..Default::default()
    };
    let lists = async {
        Ok::<_, Error>((
            state.alerts.list(&query("firing", 200)).await?,
            state.alerts.list(&query("resolved", 50)).await?,
        ))
    }
    .await;
    let (firing, resolved) = match lists {
        Ok(l) => l,
        Err(e) => return error_page(e, &nav, &csrf),
    };
    let can_ack = user.0.require(Permission::ManageAlerts).is_ok();
    let body = html! {
        h1 { "Alerts" }
        p { a href="/alerts/rules" { "Rules" } }
        section #firing data-refresh="/alerts" aria-live="polite" {
            h2 { "Firing (" (firing.total) ")" }
            (alerts_table("firing-alerts", &firing.alerts, &csrf, can_ack))
            h2 { "History" }
            (alerts_table("resolved-alerts", &resolved.alerts, &csrf, can_ack))
        }
    };
    page(
        &csrf,
        StatusCode::OK,
        layout::page("Alerts", &nav, &csrf, body),
    )
}

/// `POST /alerts/{id}/acknowledge`.
pub async fn acknowledge(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    Path(id): Path<String>,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageAlerts) {
        return refused;
    }
    redirect_or_error(
        state.alerts.acknowledge(&user.0.origin, &id).await,
        "/alerts",
        &user,
        &csrf,
    )
}

/// The rule form's values, from a rule or from what the user typed.
#[derive(Default, Clone)]
struct RuleValues {
    name: String,
    metric: String,
    mount: String,
    comparison: String,
    threshold: String,
    recovery: String,
    for_: String,
    severity: String,
    tag: String,
    /// A rule scoped to one server keeps that scope through an edit.
    server_id: String,
    enabled: bool,
}

impl RuleValues {
    fn of(r: &RuleView) -> RuleValues {
        RuleValues {
            name: r.name.clone(),
            metric: r.metric.clone(),
            mount: r.mount.clone().unwrap_or_default(),
            comparison: r.comparison.clone(),
            threshold: r.threshold.to_string(),
            recovery: r
                .recovery_threshold
                .map(|v| v.to_string())
                .unwrap_or_default(),
            for_: r.for_duration.clone(),
            severity: r.severity.as_str().into(),
            tag: r.tag.clone().unwrap_or_default(),
            server_id: r.server_id.clone().unwrap_or_default(),
            enabled: r.enabled,
        }
    }

    fn from_form(f: &FormData) -> RuleValues {
        RuleValues {
            name: f.get("name").into(),
            metric: f.get("metric").into(),
            mount: f.get("mount").into(),
            comparison: f.get("comparison").into(),
            threshold: f.get("threshold").into(),
            recovery: f.get("recovery_threshold").into(),
            for_: f.get("for").into(),
            severity: f.get("severity").into(),
            tag: f.get("tag").into(),
            server_id: f.get("server_id").into(),
            enabled: f.checked("enabled"),
        }
    }

    fn input(&self) -> Result<RuleInput> {
        let num = |field: &str, v: &str| -> Result<Option<f64>> {
            match v.trim() {
                "" => Ok(None),
                v => v
                    .parse()
                    .map(Some)
                    .map_err(|_| Error::invalid(field, "must be a number")),
            }
        };
        let severity = Severity::parse(&self.severity).ok_or_else(|| {
            Error::invalid("severity", "must be info, warning, error or critical")
        })?;
        let tag = self.tag.trim();
        let server = self.server_id.trim();
        let scope = match (tag.is_empty(), server.is_empty()) {
            (false, _) => "tag",
            (true, false) => "server",
            (true, true) => "all",
        };
        Ok(RuleInput {
            name: Some(self.name.clone()),
            metric: Some(self.metric.clone()),
            mount: Some(self.mount.trim().to_string()),
            comparison: Some(self.comparison.clone()),
            threshold: num("threshold", &self.threshold)?,
            recovery_threshold: Some(num("recovery_threshold", &self.recovery)?),
            for_duration: Some(serde_json::Value::String(if self.for_.trim().is_empty() {
                "0s".into()
            } else {
                self.for_.trim().to_string()
            })),
            severity: Some(severity),
            scope: Some(scope.into()),
            tag: Some(tag.to_string()).filter(|t| !t.is_empty()),
            server_id: Some(server.to_string()).filter(|s| !s.is_empty() && scope == "server"),
            enabled: Some(self.enabled),
            channels: None,
        })
    }
}

fn rule_form(csrf: &Csrf, id: &str, action: &str, v: &RuleValues, error: Option<&str>) -> Markup {
    let field = |name: &str| format!("{id}-{name}");
    html! {
        dialog id=(id) aria-labelledby={ (id) "-title" } data-open-on-load[error.is_some()] {
            form.dialog method="post" action=(action) {
                h2 id={ (id) "-title" } { @if id == "rule-new" { "New rule" } @else { "Rule " (v.name) } }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                (csrf.field())
                label for=(field("name")) { "Name" }
                input id=(field("name")) name="name" required value=(v.name);
                label for=(field("metric")) { "Metric" }
                select id=(field("metric")) name="metric" {
                    @for m in METRICS { option value=(m) selected[v.metric == *m] { (m) } }
                }
                label for=(field("mount")) { "Mount (disk only; empty: the fullest)" }
                input id=(field("mount")) name="mount" value=(v.mount);
                label for=(field("comparison")) { "Comparison" }
                select id=(field("comparison")) name="comparison" {
                    @for c in [">", ">=", "<", "<="] { option value=(c) selected[v.comparison == c || (v.comparison.is_empty() && c == ">")] { (c) } }
                }
                label for=(field("threshold")) { "Threshold" }
                input id=(field("threshold")) name="threshold" inputmode="decimal" value=(v.threshold);
                label for=(field("recovery")) { "Recovery threshold (empty: the threshold)" }
                input id=(field("recovery")) name="recovery_threshold" inputmode="decimal" value=(v.recovery);
                label for=(field("for")) { "For (e.g. 5m, 30s)" }
                input id=(field("for")) name="for" value=(v.for_);
                label for=(field("severity")) { "Severity" }
                select id=(field("severity")) name="severity" {
                    @for s in ["info", "warning", "error", "critical"] { option value=(s) selected[v.severity == s || (v.severity.is_empty() && s == "warning")] { (s) } }
                }
                @if v.server_id.is_empty() {
                    label for=(field("tag")) { "Only servers tagged (empty: all)" }
                    input id=(field("tag")) name="tag" value=(v.tag);
                } @else {
                    p { "Scope: one server (" a href={ "/servers/" (v.server_id) } { "its page" } "); give a tag to widen it." }
                    input type="hidden" name="server_id" value=(v.server_id);
                    label for=(field("tag")) { "Tag (replaces the server scope)" }
                    input id=(field("tag")) name="tag" value=(v.tag);
                }
                label.check { input type="checkbox" name="enabled" checked[v.enabled]; " Enabled" }
                div.actions {
                    button type="submit" { "Save" }
                    button type="button" data-close { "Cancel" }
                }
            }
        }
    }
}

/// `GET /alerts/rules`.
pub async fn rules(State(state): State<AppState>, user: PageUser, csrf: Csrf) -> Response {
    if let Some(refused) = user.refuse_unless(Permission::ReadFleet) {
        return refused;
    }
    page(
        &csrf,
        StatusCode::OK,
        rules_page(&state, &user, &csrf, None).await,
    )
}

async fn rules_page(
    state: &AppState,
    user: &PageUser,
    csrf: &Csrf,
    error: Option<(String, String, RuleValues)>,
) -> Markup {
    let rules = state.alerts.rules().await;
    let can_edit = user.0.require(Permission::ManageAlerts).is_ok();
    let error_for = |dialog: &str| {
        error
            .as_ref()
            .filter(|(d, _, _)| d == dialog)
            .map(|(_, e, v)| (e.as_str(), v.clone()))
    };
    let body = html! {
        p.crumbs { a href="/alerts" { "Alerts" } " / " }
        h1 { "Alert rules" }
        @if can_edit {
            button type="button" data-open="rule-new" { "New rule" }
            @let new = error_for("rule-new");
            (rule_form(csrf, "rule-new", "/alerts/rules", &new.as_ref().map(|(_, v)| v.clone()).unwrap_or(RuleValues { enabled: true, ..Default::default() }), new.as_ref().map(|(e, _)| *e)))
        }
        div.scroll { table #rules {
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Condition" } th scope="col" { "For" }
                th scope="col" { "Severity" } th scope="col" { "Scope" } th scope="col" { "Enabled" } th scope="col" { "Actions" }
            } }
            tbody {
                @for r in &rules {
                    tr {
                        td { (r.name) }
                        td { code { (r.metric) @if let Some(m) = &r.mount { " " (m) } " " (r.comparison) " " (r.threshold) } }
                        td { (r.for_duration) }
                        td { span class={ "sev " (r.severity.as_str()) } { (r.severity.as_str()) } }
                        td { (r.scope) @if let Some(t) = &r.tag { " " span.tag { (t) } } @if let Some(id) = &r.server_id { " " a href={ "/servers/" (id) } { "(server)" } } }
                        td { (if r.enabled { "yes" } else { "no" }) }
                        td {
                            @if can_edit {
                                @let dialog = format!("rule-{}", r.id);
                                @let failed = error_for(&dialog);
                                div.actions {
                                    button type="button" data-open=(dialog) aria-label={ "Edit rule " (r.name) } { "Edit" }
                                    form method="post" action={ "/alerts/rules/" (r.id) "/delete" } data-confirm={ "Delete rule " (r.name) "?" } {
                                        (csrf.field())
                                        button.danger type="submit" aria-label={ "Delete rule " (r.name) } { "Delete" }
                                    }
                                }
                                (rule_form(csrf, &dialog, &format!("/alerts/rules/{}", r.id),
                                    &failed.as_ref().map(|(_, v)| v.clone()).unwrap_or_else(|| RuleValues::of(r)),
                                    failed.as_ref().map(|(e, _)| *e)))
                            }
                        }
                    }
                }
            }
        } }
    };
    layout::page("Alert rules", &Nav::of(&user.0), csrf, body)
}

async fn save_rule(
    state: &AppState,
    user: &PageUser,
    csrf: &Csrf,
    headers: &HeaderMap,
    id: Option<&str>,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(headers, &f, user, Permission::ManageAlerts) {
        return refused;
    }
    let values = RuleValues::from_form(&f);
    let saved = async {
        let input = values.input()?;
        match id {
            None => state.alerts.create(&user.0.origin, input).await,
            Some(id) => state.alerts.update(&user.0.origin, id, input).await,
        }
    }
    .await;
    match saved {
        Ok(_) => Redirect::to("/alerts/rules").into_response(),
        Err(e) => {
            let dialog = id.map_or_else(|| "rule-new".to_string(), |id| format!("rule-{id}"));
            let status = e.status();
            page(
                csrf,
                status,
                rules_page(state, user, csrf, Some((dialog, e.to_string(), values))).await,
            )
        }
    }
}

/// `POST /alerts/rules`.
pub async fn create_rule(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    f: FormData,
) -> Response {
    save_rule(&state, &user, &csrf, &headers, None, f).await
}

/// `POST /alerts/rules/{id}`.
pub async fn update_rule(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    Path(id): Path<String>,
    f: FormData,
) -> Response {
    save_rule(&state, &user, &csrf, &headers, Some(&id), f).await
}

/// `POST /alerts/rules/{id}/delete`.
pub async fn delete_rule(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    Path(id): Path<String>,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageAlerts) {
        return refused;
    }
    redirect_or_error(
        state.alerts.delete(&user.0.origin, &id).await,
        "/alerts/rules",
        &user,
        &csrf,
    )
}
