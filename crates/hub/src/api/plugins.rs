//! `GET /api/plugins`.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::ErrorBody;
use crate::api::extract::{Authorized, need};
use crate::app::AppState;
use crate::plugins::PluginStatus;

/// Every plugin the hub knows.
#[derive(Serialize, ToSchema)]
pub struct PluginList {
    pub plugins: Vec<PluginStatus>,
    pub count: usize,
}

/// Loaded plugins with their state and counters, then the ones not on the allowlist (admins).
#[utoipa::path(get, path = "/api/plugins", tag = "plugins",
    responses((status = 200, body = PluginList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_plugins(
    State(state): State<AppState>,
    _caller: Authorized<need::ManagePlugins>,
) -> Json<PluginList> {
    let plugins = state.plugins.statuses();
    Json(PluginList {
        count: plugins.len(),
        plugins,
    })
}
