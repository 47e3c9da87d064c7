//! Several hubs on one database: what each hub does to stay in step with the others' writes.
//! The leader lease (see [`crate::leader`]) decides who does the once-only work; this keeps
//! every hub's memory (the fleet, the alert rules, the servers with tasks) current.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::alerts::AlertService;
use crate::fleet::FleetService;
use crate::leader::Leadership;
use crate::tasks::TaskService;

/// How often a hub takes in the others' changes: how long a change on one hub may take to
/// show on the others.
pub const SYNC_EVERY: Duration = Duration::from_secs(2);

/// Take in the other hubs' changes every [`SYNC_EVERY`] until `shutdown`.
pub async fn run_sync(
    fleet: FleetService,
    alerts: AlertService,
    tasks: TaskService,
    leadership: Arc<Leadership>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(SYNC_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                if let Err(e) = fleet.sync_from_store(leadership.is_leader()).await {
                    tracing::warn!(error = %e, "cannot take in the other hubs' fleet changes");
                }
                if let Err(e) = alerts.sync_from_store().await {
                    tracing::warn!(error = %e, "cannot take in the other hubs' alert changes");
                }
                if let Err(e) = tasks.sync_from_store().await {
                    tracing::warn!(error = %e, "cannot take in the other hubs' tasks");
                }
            }
        }
    }
}
