//! The hub's embedded agent: the real agent loop, reporting in-process instead of over HTTP.

use std::time::Duration;

use smon_agent::collect::Collector;
use smon_agent::push::{self, HubLink, PushError, PushSettings};
use smon_agent::tasks::TaskPolicy;
use smon_proto::{Report, ReportResponse, TaskUpdate};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::fleet::FleetService;
use crate::tasks::TaskService;

/// Delivers the embedded agent's reports and task updates straight to the services, through
/// the same validation and storage as the HTTP routes.
struct LocalLink {
    fleet: FleetService,
    tasks: TaskService,
    server_id: String,
}

fn push_error(e: Error) -> PushError {
    match e {
        Error::BadRequest(_) | Error::Invalid { .. } | Error::NotFound(_) | Error::Conflict(_) => {
            PushError::Rejected(e.to_string())
        }
        Error::Unauthorized(_) => PushError::Unauthorized(e.to_string()),
        other => PushError::Unavailable(other.to_string()),
    }
}

impl HubLink for LocalLink {
    async fn report(&self, report: &Report) -> Result<ReportResponse, PushError> {
        let mut answer = self
            .fleet
            .ingest(&self.server_id, report.clone())
            .await
            .map_err(push_error)?;
        if let Err(e) = self.tasks.attach(&self.server_id, &mut answer).await {
            tracing::warn!(error = %e, "cannot hand tasks to the local agent");
        }
        Ok(answer)
    }

    async fn task_update(&self, task_id: &str, update: &TaskUpdate) -> Result<(), PushError> {
        self.tasks
            .agent_update(&self.server_id, task_id, update.clone())
            .await
            .map_err(push_error)
    }
}

/// Run the embedded agent for `server_id` until `shutdown`.
pub async fn run(
    fleet: FleetService,
    tasks: TaskService,
    server_id: String,
    shutdown: CancellationToken,
) {
    let interval = Duration::from_secs(u64::from(fleet.config().local_agent_interval_secs));
    let settings = PushSettings {
        interval,
        buffer: Duration::from_secs(7200),
        max_backoff: Duration::from_secs(60),
        initial_jitter: false,
        tasks: TaskPolicy {
            allow: fleet.config().local_agent_allow_tasks,
            allowlist: Vec::new(),
        },
    };
    let collector = match tokio::task::spawn_blocking(Collector::new).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the local agent cannot start");
            return;
        }
    };
    let link = LocalLink {
        fleet,
        tasks,
        server_id,
    };
    push::run(link, collector, settings, shutdown).await;
}
