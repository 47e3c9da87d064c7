//! `GET /api/health` and `GET /api/ready`.

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::ErrorBody;
use crate::app::AppState;
use crate::error::Result;

/// Liveness answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    pub version: &'static str,
}

/// The process is up (no dependency is checked).
#[utoipa::path(get, path = "/api/health", tag = "system", security(()),
    responses((status = 200, body = Health)))]
pub async fn health() -> Json<Health> {
    Json(Health {
        status: "ok",
        version: crate::VERSION,
    })
}

/// The database answers a read and accepts a write; 503 otherwise.
#[utoipa::path(get, path = "/api/ready", tag = "system", security(()),
    responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Health>> {
    state.system.readiness().await?;
    Ok(Json(Health {
        status: "ready",
        version: crate::VERSION,
    }))
}
