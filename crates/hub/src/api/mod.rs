//! The HTTP API: one router module per area, assembled here with the OpenAPI document.

pub mod agent;
pub mod alerts;
pub mod auth;
pub mod events;
pub mod extract;
pub mod health;
pub mod metrics;
pub mod notifications;
pub mod plugins;
pub mod ratelimit;
pub mod servers;
pub mod tasks;
pub mod users;
pub mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;
use crate::error::Error;

/// The body of every error answer.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What is wrong, in words.
    pub error: String,
}

/// `{"success": true}`.
#[derive(Serialize, ToSchema)]
pub struct Success {
    pub success: bool,
}

impl Success {
    /// The one value.
    pub const OK: Success = Success { success: true };
}

/// A JSON answer already serialised (by a cache).
pub fn json_bytes(body: axum::body::Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Server Monitor hub API",
        description = "Self-hosted server fleet monitor. Authenticate with `Authorization: Bearer <token>` (a session token from `/api/auth/login` or a personal API token) or the `smon_session` cookie. Errors are `{\"error\": \"...\"}`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&SecuritySchemes),
    security(("bearer" = []), ("cookie" = [])),
    tags(
        (name = "system", description = "Liveness, readiness and this document"),
        (name = "auth", description = "Login, logout, token checks"),
        (name = "users", description = "User accounts and personal API tokens"),
        (name = "events", description = "The event log: audit trail, recent activity, catalog"),
        (name = "servers", description = "The fleet: servers, their latest metrics, history and inventory"),
        (name = "tasks", description = "Remote tasks: shell commands run by agents that allow them"),
        (name = "alerts", description = "Threshold alert rules and the alerts they raise"),
        (name = "agent", description = "The agent protocol (docs/AGENT_PROTOCOL.md), authenticated by agent tokens"),
        (name = "plugins", description = "Plugins and their counters"),
        (name = "webhooks", description = "Managed webhooks: signed, retried, SSRF-safe, with delivery logs"),
        (name = "notifications", description = "Notification channels: alerts and events to e-mail, Slack, Discord, Teams, Telegram, ntfy and webhooks"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(extract::SESSION_COOKIE))),
        );
    }
}

fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(metrics::metrics))
        .routes(routes!(auth::login))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::verify))
        .routes(routes!(users::list_users, users::create_user))
        .routes(routes!(users::me))
        .routes(routes!(users::change_own_password))
        .routes(routes!(users::list_tokens, users::create_token))
        .routes(routes!(users::revoke_token))
        .routes(routes!(
            users::get_user,
            users::update_user,
            users::delete_user
        ))
        .routes(routes!(events::audit_logs))
        .routes(routes!(events::recent_activity))
        .routes(routes!(events::event_types))
        .routes(routes!(servers::list_servers, servers::create_server))
        .routes(routes!(
            servers::get_server,
            servers::update_server,
            servers::delete_server
        ))
        .routes(routes!(servers::rotate_token))
        .routes(routes!(servers::server_metrics))
        .routes(routes!(servers::latest_inventory))
        .routes(routes!(servers::refresh_inventory))
        .routes(routes!(servers::overview))
        .routes(routes!(agent::report))
        .routes(routes!(agent::enroll))
        .routes(routes!(agent::task_result))
        .routes(routes!(tasks::create_task))
        .routes(routes!(tasks::list_tasks, tasks::create_fleet_task))
        .routes(routes!(tasks::get_task))
        .routes(routes!(tasks::cancel_task))
        .routes(routes!(alerts::list_rules, alerts::create_rule))
        .routes(routes!(
            alerts::get_rule,
            alerts::update_rule,
            alerts::delete_rule
        ))
        .routes(routes!(alerts::list_alerts))
        .routes(routes!(alerts::get_alert))
        .routes(routes!(alerts::acknowledge_alert))
        .routes(routes!(plugins::list_plugins))
        .routes(routes!(webhooks::list_webhooks, webhooks::create_webhook))
        .routes(routes!(
            webhooks::get_webhook,
            webhooks::update_webhook,
            webhooks::delete_webhook
        ))
        .routes(routes!(webhooks::test_webhook))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::list_deliveries))
        .routes(routes!(webhooks::redeliver))
        .routes(routes!(
            notifications::list_channels,
            notifications::create_channel
        ))
        .routes(routes!(
            notifications::get_channel,
            notifications::update_channel,
            notifications::delete_channel
        ))
        .routes(routes!(notifications::test_channel))
        .routes(routes!(notifications::list_channel_deliveries))
}

/// The OpenAPI document of this build.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api_routes().split_for_parts().1;
    doc.info.version = crate::VERSION.to_string();
    doc
}

/// Render the OpenAPI document as committed in `docs/openapi.json`.
pub fn openapi_json() -> String {
    let mut text = openapi()
        .to_pretty_json()
        .expect("OpenAPI document serialises");
    text.push('\n');
    text
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let spec: Arc<str> = openapi_json().into();
    let (api, _) = api_routes().split_for_parts();
    api.route(
        "/api/openapi.json",
        get(move || {
            let spec = spec.clone();
            async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    spec.to_string(),
                )
            }
        }),
    )
    .merge(crate::ui::router())
    .fallback(|| async { Error::NotFound("route".into()) })
    .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
    // Inner to outer: the rate limit answers 429 before a handler runs; a panic becomes a 500;
    // the request counter sees every answer, those two included.
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        ratelimit::limit_api,
    ))
    .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
    .layer(CatchPanicLayer::custom(
        |_panic: Box<dyn std::any::Any + Send>| -> Response {
            tracing::error!("request handler panicked");
            Error::Internal(anyhow::anyhow!("handler panicked")).into_response()
        },
    ))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        metrics::track,
    ))
    .layer(SetResponseHeaderLayer::overriding(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ))
    .layer(SetResponseHeaderLayer::if_not_present(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    ))
    // Failed answers are logged once, by the error type (internal errors with their cause,
    // unavailability throttled), not again here.
    .layer(
        TraceLayer::new_for_http()
            .on_failure(tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG)),
    )
    .with_state(state)
}
