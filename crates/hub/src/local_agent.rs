//! The hub's embedded agent: the real agent loop, reporting in-process instead of over HTTP.

use std::time::Duration;

use smon_agent::collect::Collector;
use smon_agent::push::{self, HubLink, PushError, PushSettings};
use smon_proto::{Report, ReportResponse};
use tokio_util::sync::CancellationToken;

use super::FleetService;
use crate::error::Error;

/// Delivers the embedded agent's reports straight to the fleet service.
struct LocalLink {
    fleet: FleetService,
    server_id: String,
}

impl HubLink for LocalLink {
    async fn report(&self, report: &Report) -> Result<ReportResponse, PushError> {
        self.fleet
            .ingest(&self.server_id, report.clone())
            .await
            .map_err(|e| match e {
                Error::BadRequest(_) | Error::Invalid { .. } => PushError::Rejected(e.to_string()),
                Error::Unauthorized(_) => PushError::Unauthorized(e.to_string()),
                other => PushError::Unavailable(other.to_string()),
            })
    }
}

/// Run the embedded agent for `server_id` until `shutdown`.
pub async fn run(fleet: FleetService, server_id: String, shutdown: CancellationToken) {
    let interval = Duration::from_secs(u64::from(fleet.config().local_agent_interval_secs));
    let settings = PushSettings {
        interval,
        buffer_capacity: (7200 / interval.as_secs().max(1)) as usize,
        max_backoff: Duration::from_secs(60),
        initial_jitter: false,
    };
    let collector = match tokio::task::spawn_blocking(Collector::new).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the local agent cannot start");
            return;
        }
    };
    push::run(
        LocalLink { fleet, server_id },
        collector,
        settings,
        shutdown,
    )
    .await;
}
