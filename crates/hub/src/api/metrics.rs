//! `GET /api/metrics` and the middleware that counts every request.

use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::api::ErrorBody;
use crate::app::AppState;
use crate::auth::Caller;
use crate::auth::roles::Permission;
use crate::error::{Error, Result};

/// Count the request under its route template (never the raw path) with status and latency.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    // Only standard methods become label values: made-up ones must not create series.
    let method: &'static str = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    };
    let started = Instant::now();
    let response = next.run(req).await;
    state.http_metrics.record(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

/// An admin, or a scraper presenting the configured metrics token.
pub struct MetricsReader;

impl FromRequestParts<AppState> for MetricsReader {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self> {
        let configured = state.config.metrics_token.expose().trim();
        if !configured.is_empty() {
            let presented = parts
                .headers
                .get(AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or_default();
            // Digests have equal length, so comparing them leaks nothing about the token.
            if Sha256::digest(presented.trim()) == Sha256::digest(configured) {
                return Ok(MetricsReader);
            }
        }
        Caller::from_request_parts(parts, state)
            .await?
            .require(Permission::ReadMetrics)?;
        Ok(MetricsReader)
    }
}

/// Prometheus text exposition: requests and latency by route template, webhook deliveries and
/// latency, queue depths, plugin counters, resident memory (admins or the metrics token).
#[utoipa::path(get, path = "/api/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn metrics(State(state): State<AppState>, _reader: MetricsReader) -> Result<Response> {
    let text = crate::metrics::render(&state).await?;
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}
