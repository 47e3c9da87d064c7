//! Settings → Integrations → Webhooks: the table, create and edit dialogs (showing the API's
//! validation messages), secret generation, enable/disable, delete with confirmation, a test
//! button with the real outcome, and a self-refreshing deliveries panel with redelivery.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};

use super::layout::{self, Nav, ago};
use super::{Csrf, FormData, PageUser, error_page, page, redirect_or_error, refuse_form};
use crate::app::AppState;
use crate::auth::roles::Permission;
use crate::error::{Error, Result};
use crate::events::EventType;
use crate::store::DeliveryRecord;
use crate::webhooks::service::{NewWebhook, TestOutcome, WebhookPatch, WebhookView};

/// What a page shows besides its data: an error in a dialog, a one-time secret, a test outcome.
#[derive(Default)]
struct Notice {
    /// The dialog to open again with the error and the values the user typed.
    dialog: Option<(&'static str, String, FormValues)>,
    secret: Option<String>,
    test: Option<TestOutcome>,
}

/// The fields of the create and edit forms.
#[derive(Default, Clone)]
struct FormValues {
    name: String,
    url: String,
    event_types: Vec<String>,
    retry_max: String,
    timeout: String,
}

impl FormValues {
    fn from_form(f: &FormData) -> FormValues {
        FormValues {
            name: f.get("name").to_string(),
            url: f.get("url").to_string(),
            event_types: f.all("event_types"),
            retry_max: f.get("retry_max").to_string(),
            timeout: f.get("timeout").to_string(),
        }
    }

    fn from_view(w: &WebhookView) -> FormValues {
        FormValues {
            name: w.name.clone(),
            url: w.url.clone(),
            event_types: w.event_types.clone().unwrap_or_default(),
            retry_max: w.retry_max.to_string(),
            timeout: w.timeout.to_string(),
        }
    }
}

fn number(field: &str, raw: &str) -> Result<Option<u32>> {
    match raw.trim() {
        "" => Ok(None),
        v => v
            .parse()
            .map(Some)
            .map_err(|_| Error::invalid(field, "must be a whole number")),
    }
}

fn form_fields(csrf: &Csrf, v: &FormValues, editing: bool) -> Markup {
    html! {
        (csrf.field())
        label for={ "name-" (editing) } { "Name" }
        input id={ "name-" (editing) } name="name" required maxlength="100" value=(v.name);
        label for={ "url-" (editing) } { "URL" }
        input id={ "url-" (editing) } name="url" type="url" required placeholder="https://example.com/hooks/smon" value=(v.url);
        label for={ "secret-" (editing) } { "Signing secret" }
        input id={ "secret-" (editing) } name="secret" type="password" autocomplete="off"
            placeholder=(if editing { "unchanged when empty" } else { "none when empty" });
        label.check { input type="checkbox" name="generate_secret"; " Generate a secret (shown once)" }
        fieldset.types {
            legend { "Event types (none ticked: all)" }
            @for t in EventType::ALL {
                label.check { input type="checkbox" name="event_types" value=(t.as_str()) checked[v.event_types.iter().any(|x| x == t.as_str())]; " " (t.as_str()) }
            }
        }
        label for={ "retry-" (editing) } { "Attempts (1-10)" }
        input id={ "retry-" (editing) } name="retry_max" inputmode="numeric" size="4" value=(if v.retry_max.is_empty() { "3" } else { &v.retry_max });
        label for={ "timeout-" (editing) } { "Timeout, s (1-30)" }
        input id={ "timeout-" (editing) } name="timeout" inputmode="numeric" size="4" value=(if v.timeout.is_empty() { "10" } else { &v.timeout });
    }
}

fn dialog(id: &str, title: &str, action: &str, body: Markup, error: Option<&str>) -> Markup {
    html! {
        dialog id=(id) aria-labelledby={ (id) "-title" } data-open-on-load[error.is_some()] {
            form.dialog method="post" action=(action) {
                h2 id={ (id) "-title" } { (title) }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                (body)
                div.actions {
                    button type="submit" { "Save" }
                    button type="button" data-close { "Cancel" }
                }
            }
        }
    }
}

/// `GET /settings/webhooks`.
pub async fn list(State(state): State<AppState>, user: PageUser, csrf: Csrf) -> Response {
    if let Some(refused) = user.refuse_unless(Permission::ManageWebhooks) {
        return refused;
    }
    respond(
        &csrf,
        &user,
        StatusCode::OK,
        list_page(&state, &user, &csrf, Notice::default()).await,
    )
}

fn respond(csrf: &Csrf, user: &PageUser, status: StatusCode, body: Result<Markup>) -> Response {
    match body {
        Ok(body) => page(csrf, status, body),
        Err(e) => error_page(e, &Nav::of(&user.0), csrf),
    }
}

async fn list_page(
    state: &AppState,
    user: &PageUser,
    csrf: &Csrf,
    notice: Notice,
) -> Result<Markup> {
    let mut views = Vec::new();
    for w in state.webhooks.list().await? {
        views.push(state.webhooks.view(w).await?);
    }
    let (values, error) = match &notice.dialog {
        Some(("webhook-new", e, v)) => (v.clone(), Some(e.as_str())),
        _ => (FormValues::default(), None),
    };
    let body = html! {
        h1 { "Webhooks" }
        p { "Signed, retried deliveries of events to your endpoints (see docs/WEBHOOKS.md)." }
        button type="button" data-open="webhook-new" { "New webhook" }
        (dialog("webhook-new", "New webhook", "/settings/webhooks", form_fields(csrf, &values, false), error))
        div.scroll { table #webhooks {
            caption { (views.len()) " webhooks" }
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "URL" } th scope="col" { "Status" }
                th scope="col" { "Events" } th scope="col" { "Retry / timeout" } th scope="col" { "Last triggered" }
            } }
            tbody {
                @for w in &views {
                    tr {
                        td { a href={ "/settings/webhooks/" (w.id) } { (w.name) } }
                        td { code { (w.url) } }
                        td { (enabled_badge(w)) }
                        td { (types_text(w)) }
                        td { (w.retry_max) " × " (w.timeout) " s" }
                        td { (ago(w.last_triggered_at)) }
                    }
                }
                @if views.is_empty() { tr { td colspan="6" { "No webhook yet." } } }
            }
        } }
    };
    Ok(layout::page("Webhooks", &Nav::of(&user.0), csrf, body))
}

fn enabled_badge(w: &WebhookView) -> Markup {
    html! {
        @if w.enabled { span.badge.online { "enabled" } }
        @else { span.badge.offline { "disabled" } }
        @if let Some(r) = &w.disabled_reason { " " span.muted { "(" (r) ")" } }
    }
}

fn types_text(w: &WebhookView) -> String {
    match &w.event_types {
        None => "all".into(),
        Some(t) if t.len() <= 3 => t.join(", "),
        Some(t) => format!("{} types", t.len()),
    }
}

/// `POST /settings/webhooks`: create.
pub async fn create(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageWebhooks) {
        return refused;
    }
    let created = async {
        let new = NewWebhook {
            name: f.get("name").to_string(),
            url: f.get("url").to_string(),
            secret: Some(f.get("secret").to_string()).filter(|s| !s.is_empty()),
            generate_secret: f.checked("generate_secret"),
            enabled: true,
            event_types: Some(f.all("event_types")),
            retry_max: number("retry_max", f.get("retry_max"))?,
            timeout: number("timeout", f.get("timeout"))?,
        };
        state.limits.webhook_create.check(&user.0.user_id)?;
        state.webhooks.create(&user.0.origin, new).await
    }
    .await;
    match created {
        Ok((w, None)) => Redirect::to(&format!("/settings/webhooks/{}", w.id)).into_response(),
        Ok((w, Some(secret))) => {
            let notice = Notice {
                secret: Some(secret),
                ..Default::default()
            };
            respond(
                &csrf,
                &user,
                StatusCode::CREATED,
                detail_page(&state, &user, &csrf, &w.id, notice).await,
            )
        }
        Err(e) => {
            let status = e.status();
            let notice = Notice {
                dialog: Some(("webhook-new", e.to_string(), FormValues::from_form(&f))),
                ..Default::default()
            };
            respond(
                &csrf,
                &user,
                status,
                list_page(&state, &user, &csrf, notice).await,
            )
        }
    }
}

/// `GET /settings/webhooks/{id}`.
pub async fn show(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = user.refuse_unless(Permission::ManageWebhooks) {
        return refused;
    }
    respond(
        &csrf,
        &user,
        StatusCode::OK,
        detail_page(&state, &user, &csrf, &id, Notice::default()).await,
    )
}

async fn detail_page(
    state: &AppState,
    user: &PageUser,
    csrf: &Csrf,
    id: &str,
    notice: Notice,
) -> Result<Markup> {
    let w = state.webhooks.view(state.webhooks.get(id).await?).await?;
    let (values, error) = match &notice.dialog {
        Some(("webhook-edit", e, v)) => (v.clone(), Some(e.as_str())),
        _ => (FormValues::from_view(&w), None),
    };
    let base = format!("/settings/webhooks/{}", w.id);
    let body = html! {
        p.crumbs { a href="/settings/webhooks" { "Webhooks" } " / " }
        h1 { (w.name) " " (enabled_badge(&w)) }
        @if let Some(secret) = &notice.secret {
            div.notice role="status" {
                p { strong { "Signing secret (shown this once): " } code #new-secret { (secret) } }
            }
        }
        @if let Some(t) = &notice.test {
            div.notice role="status" #test-outcome {
                @if t.success {
                    p { "Test delivered: HTTP " (t.status_code.map(|c| c.to_string()).unwrap_or_default()) " in " (t.duration_ms) " ms." }
                } @else {
                    p.error { "Test failed: " (t.error.as_deref().unwrap_or("no answer")) }
                }
            }
        }
        dl.facts {
            dt { "URL" } dd { code { (w.url) } }
            dt { "Events" } dd { (types_text(&w)) }
            dt { "Attempts" } dd { (w.retry_max) ", " (w.timeout) " s each" }
            dt { "Secret" } dd { (w.secret.as_deref().unwrap_or("none")) }
            dt { "Last triggered" } dd { (ago(w.last_triggered_at)) }
            dt { "Pending" } dd { (w.pending_deliveries) }
        }
        div.actions {
            button type="button" data-open="webhook-edit" { "Edit" }
            form method="post" action={ (base) "/enabled" } {
                (csrf.field())
                input type="hidden" name="enabled" value=(if w.enabled { "false" } else { "true" });
                button type="submit" { (if w.enabled { "Disable" } else { "Enable" }) }
            }
            form method="post" action={ (base) "/test" } {
                (csrf.field())
                button type="submit" { "Send test" }
            }
            form method="post" action={ (base) "/delete" } data-confirm={ "Delete webhook " (w.name) " with its delivery log?" } {
                (csrf.field())
                button.danger type="submit" { "Delete" }
            }
        }
        (dialog("webhook-edit", "Edit webhook", &base, form_fields(csrf, &values, true), error))
        (deliveries_section(state, csrf, &w).await?)
    };
    Ok(layout::page(&w.name, &Nav::of(&user.0), csrf, body))
}

async fn deliveries_section(state: &AppState, csrf: &Csrf, w: &WebhookView) -> Result<Markup> {
    let (rows, total) = state.webhooks.deliveries(&w.id, None, 25, 0).await?;
    let base = format!("/settings/webhooks/{}", w.id);
    Ok(deliveries_panel(&base, &rows, total, Some(csrf)))
}

/// A delivery log panel that refreshes itself from `{base}/deliveries`; with `redeliver`'s
/// CSRF token each row gets a Redeliver button.
pub fn deliveries_panel(
    base: &str,
    rows: &[DeliveryRecord],
    total: u64,
    redeliver: Option<&Csrf>,
) -> Markup {
    html! {
        section #deliveries data-refresh={ (base) "/deliveries" } aria-live="polite" {
            h2 { "Deliveries" }
            p.muted { (total) " attempts logged; newest first; refreshes every 10 s." }
            div.scroll { table {
                thead { tr {
                    th scope="col" { "Status" } th scope="col" { "Code" } th scope="col" { "Attempt" }
                    th scope="col" { "Event" } th scope="col" { "Time" } th scope="col" { "Error" }
                    @if redeliver.is_some() { th scope="col" { "Actions" } }
                } }
                tbody {
                    @for d in rows {
                        tr {
                            td { span class={ "badge " (if d.status == "success" { "online" } else if d.status == "failed" { "offline" } else { "unknown" }) } { (d.status) } }
                            td { (d.status_code.map(|c| c.to_string()).unwrap_or_else(|| "–".into())) }
                            td { (d.attempt) }
                            td { code { (d.event_type) } }
                            td { (ago(Some(d.delivered_at))) }
                            td { (d.error.as_deref().unwrap_or("")) }
                            @if let Some(csrf) = redeliver {
                                td {
                                    form method="post" action={ (base) "/deliveries/" (d.id) "/redeliver" } {
                                        (csrf.field())
                                        button type="submit" aria-label={ "Redeliver " (d.event_type) " attempt " (d.attempt) } { "Redeliver" }
                                    }
                                }
                            }
                        }
                    }
                    @if rows.is_empty() { tr { td colspan="7" { "No delivery yet." } } }
                }
            } }
        }
    }
}

/// `GET /settings/webhooks/{id}/deliveries`: the panel alone, for its refresh.
pub async fn deliveries(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = user.refuse_unless(Permission::ManageWebhooks) {
        return refused;
    }
    let panel = async {
        let w = state.webhooks.view(state.webhooks.get(&id).await?).await?;
        deliveries_section(&state, &csrf, &w).await
    }
    .await;
    match panel {
        Ok(m) => page(&csrf, StatusCode::OK, m),
        Err(e) => (e.status(), e.to_string()).into_response(),
    }
}

/// `POST /settings/webhooks/{id}`: edit. `enabled` is not part of the form, so an edit
/// never flips it.
pub async fn update(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    Path(id): Path<String>,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageWebhooks) {
        return refused;
    }
    let updated = async {
        let secret = f.get("secret");
        let patch = WebhookPatch {
            name: Some(f.get("name").to_string()),
            url: Some(f.get("url").to_string()),
            secret: Some(secret.to_string()).filter(|s| !s.is_empty()),
            generate_secret: Some(f.checked("generate_secret")),
            enabled: None,
            event_types: Some(Some(f.all("event_types"))),
            retry_max: number("retry_max", f.get("retry_max"))?,
            timeout: number("timeout", f.get("timeout"))?,
        };
        state.webhooks.update(&user.0.origin, &id, patch).await
    }
    .await;
    match updated {
        Ok((_, secret)) => {
            let notice = Notice {
                secret,
                ..Default::default()
            };
            respond(
                &csrf,
                &user,
                StatusCode::OK,
                detail_page(&state, &user, &csrf, &id, notice).await,
            )
        }
        Err(Error::NotFound(what)) => error_page(Error::NotFound(what), &Nav::of(&user.0), &csrf),
        Err(e) => {
            let status = e.status();
            let notice = Notice {
                dialog: Some(("webhook-edit", e.to_string(), FormValues::from_form(&f))),
                ..Default::default()
            };
            respond(
                &csrf,
                &user,
                status,
                detail_page(&state, &user, &csrf, &id, notice).await,
            )
        }
    }
}

/// `POST /settings/webhooks/{id}/enabled`.
pub async fn set_enabled(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    Path(id): Path<String>,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageWebhooks) {
        return refused;
    }
    let patch = WebhookPatch {
        enabled: Some(f.get("enabled") == "true"),
        ..Default::default()
    };
    redirect_or_error(
        state.webhooks.update(&user.0.origin, &id, patch).await,
        &format!("/settings/webhooks/{id}"),
        &user,
        &csrf,
    )
}

/// `POST /settings/webhooks/{id}/test`: the real outcome, on the webhook's page.
pub async fn test(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    Path(id): Path<String>,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageWebhooks) {
        return refused;
    }
    let outcome = async {
        state.limits.webhook_test.check(&user.0.user_id)?;
        state.webhooks.test(&user.0.origin, &id).await
    }
    .await;
    match outcome {
        Ok(t) => {
            let notice = Notice {
                test: Some(t),
                ..Default::default()
            };
            respond(
                &csrf,
                &user,
                StatusCode::OK,
                detail_page(&state, &user, &csrf, &id, notice).await,
            )
        }
        Err(e) => error_page(e, &Nav::of(&user.0), &csrf),
    }
}

/// `POST /settings/webhooks/{id}/delete`.
pub async fn delete(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    Path(id): Path<String>,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageWebhooks) {
        return refused;
    }
    redirect_or_error(
        state.webhooks.delete(&user.0.origin, &id).await,
        "/settings/webhooks",
        &user,
        &csrf,
    )
}

/// `POST /settings/webhooks/{id}/deliveries/{delivery}/redeliver`.
pub async fn redeliver(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    Path((id, delivery)): Path<(String, String)>,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageWebhooks) {
        return refused;
    }
    redirect_or_error(
        state.webhooks.redeliver(&id, &delivery).await,
        &format!("/settings/webhooks/{id}#deliveries"),
        &user,
        &csrf,
    )
}
