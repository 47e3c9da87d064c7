//! Settings → Notifications: the channels, a create dialog with each kind's settings, and per
//! channel: its settings (secrets never shown), an edit dialog, enable/disable, a test with
//! the real outcome, delete, and its self-refreshing delivery log.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde_json::{Map, Value, json};

use super::layout::{self, Nav, ago};
use super::webhooks::deliveries_panel;
use super::{Csrf, FormData, PageUser, error_page, page, redirect_or_error, refuse_form};
use crate::app::AppState;
use crate::auth::roles::Permission;
use crate::error::{Error, Result};
use crate::events::EventType;
use crate::notifications::channel::{DEFAULT_EVENT_TYPES, KINDS};
use crate::notifications::service::{ChannelPatch, ChannelView, NewChannel};
use crate::webhooks::service::TestOutcome;

/// One settings input of the form: `(field, label, input type)`.
type Field = (&'static str, &'static str, &'static str);

/// The form's settings fields of each kind.
const KIND_FIELDS: &[(&str, &[Field])] = &[
    ("slack", &[("url", "Webhook URL", "url")]),
    ("discord", &[("url", "Webhook URL", "url")]),
    ("teams", &[("url", "Workflow URL", "url")]),
    (
        "webhook",
        &[
            ("url", "URL", "url"),
            ("secret", "Signing secret", "password"),
        ],
    ),
    (
        "telegram",
        &[
            ("bot_token", "Bot token", "password"),
            ("chat_id", "Chat id or @channel", "text"),
            (
                "api_url",
                "Bot API URL (empty: https://api.telegram.org)",
                "url",
            ),
        ],
    ),
    (
        "ntfy",
        &[
            ("server_url", "Server URL (empty: https://ntfy.sh)", "url"),
            ("topic", "Topic", "text"),
            ("token", "Access token", "password"),
        ],
    ),
    (
        "email",
        &[
            ("host", "SMTP host", "text"),
            ("port", "Port (empty: by TLS mode)", "text"),
            ("tls", "TLS: starttls, implicit or none", "text"),
            ("username", "Username", "text"),
            ("password", "Password", "password"),
            ("from", "From", "text"),
            ("to", "To (comma-separated)", "text"),
        ],
    ),
];

/// The settings object of `kind` from the form's `{kind}.{field}` inputs (empty ones left out).
fn config_from(f: &FormData, kind: &str) -> Value {
    let mut config = Map::new();
    let fields = KIND_FIELDS
        .iter()
        .find(|(k, _)| *k == kind)
        .map(|(_, fields)| *fields)
        .unwrap_or(&[]);
    for (field, _, _) in fields {
        let value = f.get(&format!("{kind}.{field}")).trim().to_string();
        if value.is_empty() {
            continue;
        }
        let value = match *field {
            "to" => json!(value.split(',').map(str::trim).collect::<Vec<_>>()),
            "port" => value
                .parse::<u64>()
                .map(|p| json!(p))
                .unwrap_or(json!(value)),
            _ => json!(value),
        };
        config.insert((*field).to_string(), value);
    }
    Value::Object(config)
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

/// What a channel dialog shows: the values by input name, and the ticked event types.
#[derive(Default)]
struct DialogValues {
    values: std::collections::HashMap<String, String>,
    event_types: Vec<String>,
}

impl DialogValues {
    /// What the user sent (a refused form comes back as typed).
    fn typed(f: &FormData) -> DialogValues {
        let mut values = std::collections::HashMap::new();
        for name in [
            "name",
            "kind",
            "min_severity",
            "tags",
            "group_window_secs",
            "rate_limit_per_minute",
        ] {
            values.insert(name.to_string(), f.get(name).to_string());
        }
        for (kind, fields) in KIND_FIELDS {
            for (field, _, _) in *fields {
                let name = format!("{kind}.{field}");
                values.insert(name.clone(), f.get(&name).to_string());
            }
        }
        DialogValues {
            values,
            event_types: f.all("event_types"),
        }
    }

    /// A new channel: the default event types.
    fn fresh() -> DialogValues {
        DialogValues {
            values: [("kind".to_string(), "slack".to_string())].into(),
            event_types: DEFAULT_EVENT_TYPES
                .iter()
                .map(|t| t.as_str().to_string())
                .collect(),
        }
    }

    /// A channel as it is (its secrets are not known here and stay blank).
    fn of(c: &ChannelView) -> DialogValues {
        let mut values: std::collections::HashMap<String, String> = [
            ("name", c.name.clone()),
            ("kind", c.kind.clone()),
            ("min_severity", c.min_severity.as_str().to_string()),
            ("tags", c.tags.join(", ")),
            ("group_window_secs", c.group_window_secs.to_string()),
            ("rate_limit_per_minute", c.rate_limit_per_minute.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        if let Some(Value::Object(config)) = &c.config {
            for (key, v) in config {
                let text = match v {
                    Value::String(s) if !s.ends_with('…') => s.clone(),
                    Value::Array(items) => items
                        .iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(", "),
                    Value::Number(n) => n.to_string(),
                    _ => continue,
                };
                values.insert(format!("{}.{key}", c.kind), text);
            }
        }
        DialogValues {
            values,
            event_types: c.event_types.clone(),
        }
    }

    fn get(&self, name: &str) -> String {
        self.values.get(name).cloned().unwrap_or_default()
    }
}

/// The create dialog (any kind) or the edit dialog of one channel (its kind only; secrets
/// left blank keep their stored values).
fn channel_dialog(
    csrf: &Csrf,
    id: &str,
    action: &str,
    editing: bool,
    v: &DialogValues,
    error: Option<&str>,
) -> Markup {
    let kind = v.get("kind");
    let field_id = |name: &str| format!("{id}-{}", name.replace('.', "-"));
    html! {
        dialog id=(id) aria-labelledby={ (id) "-title" } data-open-on-load[error.is_some()] {
            form.dialog method="post" action=(action) {
                h2 id={ (id) "-title" } { @if editing { "Edit " (v.get("name")) } @else { "New notification channel" } }
                @if let Some(e) = error { p.error role="alert" { (e) } }
                (csrf.field())
                label for=(field_id("name")) { "Name" }
                input id=(field_id("name")) name="name" required maxlength="100" value=(v.get("name"));
                @if editing {
                    input type="hidden" name="kind" value=(kind);
                    p.muted { "Secret settings left blank keep their stored values, unless the destination changes." }
                } @else {
                    label for=(field_id("kind")) { "Kind" }
                    select id=(field_id("kind")) name="kind" {
                        @for k in KINDS { option value=(k) selected[*k == kind] { (k) } }
                    }
                    p.muted { "Fill in the settings of the kind you chose; the others are ignored. See docs/NOTIFICATIONS.md for how to get each URL or token." }
                }
                @for (k, fields) in KIND_FIELDS {
                    @if !editing || *k == kind {
                        fieldset.kind {
                            legend { (k) }
                            @for (field, label, input_type) in *fields {
                                @let name = format!("{k}.{field}");
                                label for=(field_id(&name)) { (label) }
                                input id=(field_id(&name)) name=(name) type=(input_type) autocomplete="off"
                                    value=(if *input_type == "password" { String::new() } else { v.get(&name) });
                            }
                        }
                    }
                }
                fieldset.types {
                    legend { "Event types" }
                    @for t in EventType::ALL {
                        label.check { input type="checkbox" name="event_types" value=(t.as_str()) checked[v.event_types.iter().any(|x| x == t.as_str())]; " " (t.as_str()) }
                    }
                }
                label for=(field_id("severity")) { "Minimum severity" }
                select id=(field_id("severity")) name="min_severity" {
                    @for s in ["info", "warning", "error", "critical"] { option value=(s) selected[v.get("min_severity") == s] { (s) } }
                }
                label for=(field_id("tags")) { "Only servers tagged (comma-separated; empty: all)" }
                input id=(field_id("tags")) name="tags" value=(v.get("tags"));
                label for=(field_id("window")) { "Group window, s (0-3600; empty: the default)" }
                input id=(field_id("window")) name="group_window_secs" inputmode="numeric" value=(v.get("group_window_secs"));
                label for=(field_id("rate")) { "Messages per minute at most (empty: the default)" }
                input id=(field_id("rate")) name="rate_limit_per_minute" inputmode="numeric" value=(v.get("rate_limit_per_minute"));
                div.actions {
                    button type="submit" { "Save" }
                    button type="button" data-close { "Cancel" }
                }
            }
        }
    }
}

fn tags_of(f: &FormData) -> Vec<String> {
    f.get("tags")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(String::from)
        .collect()
}

fn status_badge(c: &ChannelView) -> Markup {
    html! {
        @if c.enabled { span.badge.online { "enabled" } } @else { span.badge.offline { "disabled" } }
        @if let Some(r) = &c.disabled_reason { " " span.muted { "(" (r) ")" } }
    }
}

/// `GET /settings/notifications`.
pub async fn list(State(state): State<AppState>, user: PageUser, csrf: Csrf) -> Response {
    if let Some(refused) = user.refuse_unless(Permission::ManageNotifications) {
        return refused;
    }
    list_page(&state, &user, &csrf, StatusCode::OK, None).await
}

async fn list_page(
    state: &AppState,
    user: &PageUser,
    csrf: &Csrf,
    status: StatusCode,
    failed: Option<(&FormData, String)>,
) -> Response {
    let nav = Nav::of(&user.0);
    let views = async {
        let mut views = Vec::new();
        for c in state.notifications.list().await? {
            views.push(state.notifications.view(c).await?);
        }
        Ok::<_, Error>(views)
    }
    .await;
    let views = match views {
        Ok(v) => v,
        Err(e) => return error_page(e, &nav, csrf),
    };
    let body = html! {
        h1 { "Notification channels" }
        p { "Alerts and events to e-mail, Slack, Discord, Teams, Telegram, ntfy or a webhook, grouped and paced (see docs/NOTIFICATIONS.md)." }
        button type="button" data-open="channel-new" { "New channel" }
        (channel_dialog(csrf, "channel-new", "/settings/notifications", false,
            &failed.as_ref().map(|(f, _)| DialogValues::typed(f)).unwrap_or_else(DialogValues::fresh),
            failed.as_ref().map(|(_, e)| e.as_str())))
        div.scroll { table #channels {
            caption { (views.len()) " channels" }
            thead { tr {
                th scope="col" { "Name" } th scope="col" { "Kind" } th scope="col" { "Destination" }
                th scope="col" { "Status" } th scope="col" { "Events" } th scope="col" { "Last sent" }
            } }
            tbody {
                @for c in &views {
                    tr {
                        td { a href={ "/settings/notifications/" (c.id) } { (c.name) } }
                        td { (c.kind) }
                        td { code { (c.destination) } }
                        td { (status_badge(c)) }
                        td { (c.event_types.len()) " types" }
                        td { (ago(c.last_triggered_at)) }
                    }
                }
                @if views.is_empty() { tr { td colspan="6" { "No channel yet." } } }
            }
        } }
    };
    page(
        csrf,
        status,
        layout::page("Notifications", &nav, csrf, body),
    )
}

/// `POST /settings/notifications`: create.
pub async fn create(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageNotifications) {
        return refused;
    }
    let created = async {
        let kind = f.get("kind").to_string();
        let tags = tags_of(&f);
        let new = NewChannel {
            name: f.get("name").into(),
            config: config_from(&f, &kind),
            kind,
            enabled: true,
            event_types: Some(f.all("event_types")),
            min_severity: Some(f.get("min_severity").to_string()).filter(|s| !s.is_empty()),
            tags: Some(tags),
            group_window_secs: number("group_window_secs", f.get("group_window_secs"))?,
            rate_limit_per_minute: number("rate_limit_per_minute", f.get("rate_limit_per_minute"))?,
            retry_max: None,
            timeout: None,
        };
        state.limits.webhook_create.check(&user.0.user_id)?;
        state.notifications.create(&user.0.origin, new).await
    }
    .await;
    match created {
        Ok(c) => Redirect::to(&format!("/settings/notifications/{}", c.id)).into_response(),
        Err(e) => list_page(&state, &user, &csrf, e.status(), Some((&f, e.to_string()))).await,
    }
}

/// `GET /settings/notifications/{id}`.
pub async fn show(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = user.refuse_unless(Permission::ManageNotifications) {
        return refused;
    }
    detail_page(&state, &user, &csrf, &id, None, None).await
}

/// `POST /settings/notifications/{id}`: edit. Secret settings left blank keep their values
/// (the API's rule); `enabled` is not part of the form, so an edit never flips it.
pub async fn update(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    Path(id): Path<String>,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageNotifications) {
        return refused;
    }
    let updated = async {
        let kind = f.get("kind").to_string();
        let patch = ChannelPatch {
            name: Some(f.get("name").into()),
            config: Some(config_from(&f, &kind)),
            kind: Some(kind),
            event_types: Some(f.all("event_types")),
            min_severity: Some(f.get("min_severity").to_string()).filter(|s| !s.is_empty()),
            tags: Some(tags_of(&f)),
            group_window_secs: number("group_window_secs", f.get("group_window_secs"))?,
            rate_limit_per_minute: number("rate_limit_per_minute", f.get("rate_limit_per_minute"))?,
            ..Default::default()
        };
        state.notifications.update(&user.0.origin, &id, patch).await
    }
    .await;
    match updated {
        Ok(_) => Redirect::to(&format!("/settings/notifications/{id}")).into_response(),
        Err(Error::NotFound(what)) => error_page(Error::NotFound(what), &Nav::of(&user.0), &csrf),
        Err(e) => {
            let status = e.status();
            detail_page(
                &state,
                &user,
                &csrf,
                &id,
                None,
                Some((&f, e.to_string(), status)),
            )
            .await
        }
    }
}

async fn detail_page(
    state: &AppState,
    user: &PageUser,
    csrf: &Csrf,
    id: &str,
    test: Option<TestOutcome>,
    failed: Option<(&FormData, String, StatusCode)>,
) -> Response {
    let nav = Nav::of(&user.0);
    let loaded = async {
        let c = state
            .notifications
            .view(state.notifications.get(id).await?)
            .await?;
        let log = state.notifications.deliveries(id, None, 25, 0).await?;
        Ok::<_, Error>((c, log))
    }
    .await;
    let (c, (rows, total)) = match loaded {
        Ok(l) => l,
        Err(e) => return error_page(e, &nav, csrf),
    };
    let base = format!("/settings/notifications/{}", c.id);
    let body = html! {
        p.crumbs { a href="/settings/notifications" { "Notifications" } " / " }
        h1 { (c.name) " " (status_badge(&c)) }
        @if let Some(t) = &test {
            div.notice role="status" #test-outcome {
                @if t.success {
                    p { "Test sent: " (t.status_code.map(|c| c.to_string()).unwrap_or_default()) " in " (t.duration_ms) " ms." }
                } @else {
                    p.error { "Test failed: " (t.error.as_deref().unwrap_or("no answer")) }
                }
            }
        }
        @if let Some(e) = &c.error { p.error role="alert" { (e) } }
        dl.facts {
            dt { "Kind" } dd { (c.kind) }
            dt { "Destination" } dd { code { (c.destination) } }
            @if let Some(Value::Object(config)) = &c.config {
                @for (k, v) in config {
                    dt { (k.replace('_', " ")) }
                    dd { (match v { Value::String(s) => s.clone(), other => other.to_string() }) }
                }
            }
            dt { "Events" } dd { (c.event_types.join(", ")) }
            dt { "Minimum severity" } dd { (c.min_severity.as_str()) }
            dt { "Tags" } dd { @if c.tags.is_empty() { "all servers" } @for t in &c.tags { span.tag { (t) } " " } }
            dt { "Grouping" } dd { (c.group_window_secs) " s window, at most " (c.rate_limit_per_minute) " messages a minute" }
            dt { "Pending" } dd { (c.pending_deliveries) }
        }
        div.actions {
            button type="button" data-open="channel-edit" { "Edit" }
            form method="post" action={ (base) "/enabled" } {
                (csrf.field())
                input type="hidden" name="enabled" value=(if c.enabled { "false" } else { "true" });
                button type="submit" { (if c.enabled { "Disable" } else { "Enable" }) }
            }
            form method="post" action={ (base) "/test" } {
                (csrf.field())
                button type="submit" { "Send test" }
            }
            form method="post" action={ (base) "/delete" } data-confirm={ "Delete channel " (c.name) " with its delivery log?" } {
                (csrf.field())
                button.danger type="submit" { "Delete" }
            }
        }
        (channel_dialog(csrf, "channel-edit", &base, true,
            &failed.as_ref().map(|(f, _, _)| DialogValues::typed(f)).unwrap_or_else(|| DialogValues::of(&c)),
            failed.as_ref().map(|(_, e, _)| e.as_str())))
        (deliveries_panel(&base, &rows, total, None))
    };
    let status = failed.map_or(StatusCode::OK, |(_, _, s)| s);
    page(csrf, status, layout::page(&c.name, &nav, csrf, body))
}

/// `GET /settings/notifications/{id}/deliveries`: the panel alone, for its refresh.
pub async fn deliveries(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = user.refuse_unless(Permission::ManageNotifications) {
        return refused;
    }
    match state.notifications.deliveries(&id, None, 25, 0).await {
        Ok((rows, total)) => {
            let base = format!("/settings/notifications/{id}");
            page(
                &csrf,
                StatusCode::OK,
                deliveries_panel(&base, &rows, total, None),
            )
        }
        Err(e) => (e.status(), e.to_string()).into_response(),
    }
}

/// `POST /settings/notifications/{id}/enabled`.
pub async fn set_enabled(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    Path(id): Path<String>,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageNotifications) {
        return refused;
    }
    let patch = ChannelPatch {
        enabled: Some(f.get("enabled") == "true"),
        ..Default::default()
    };
    redirect_or_error(
        state.notifications.update(&user.0.origin, &id, patch).await,
        &format!("/settings/notifications/{id}"),
        &user,
        &csrf,
    )
}

/// `POST /settings/notifications/{id}/test`.
pub async fn test(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    Path(id): Path<String>,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageNotifications) {
        return refused;
    }
    let outcome = async {
        state.limits.webhook_test.check(&user.0.user_id)?;
        state.notifications.test(&user.0.origin, &id).await
    }
    .await;
    match outcome {
        Ok(t) => detail_page(&state, &user, &csrf, &id, Some(t), None).await,
        Err(e) => error_page(e, &Nav::of(&user.0), &csrf),
    }
}

/// `POST /settings/notifications/{id}/delete`.
pub async fn delete(
    State(state): State<AppState>,
    user: PageUser,
    csrf: Csrf,
    headers: HeaderMap,
    Path(id): Path<String>,
    f: FormData,
) -> Response {
    if let Some(refused) = refuse_form(&headers, &f, &user, Permission::ManageNotifications) {
        return refused;
    }
    redirect_or_error(
        state.notifications.delete(&user.0.origin, &id).await,
        "/settings/notifications",
        &user,
        &csrf,
    )
}
