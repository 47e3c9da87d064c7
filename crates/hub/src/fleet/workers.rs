//! The fleet's background loops: offline detection and history retention.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::FleetService;

/// Check every second for servers that stopped reporting.
pub async fn run_offline_detector(
    fleet: FleetService,
    leadership: std::sync::Arc<crate::leader::Leadership>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick(), if leadership.is_leader() => {
                let n = fleet.detect_offline().await;
                if n > 0 {
                    tracing::info!(servers = n, "servers went offline");
                }
            }
        }
    }
}

/// How often a hub sharing its database with others takes in their changes.
const SYNC_EVERY: Duration = Duration::from_secs(2);

/// Several hubs on one database: keep this hub's memory of the fleet in step with what the
/// others write, until `shutdown`.
pub async fn run_sync(
    fleet: FleetService,
    leadership: std::sync::Arc<crate::leader::Leadership>,
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
            }
        }
    }
}

/// Delete history past its retention, shortly after start and then every 10 minutes.
pub async fn run_retention(fleet: FleetService, shutdown: CancellationToken) {
    let mut wait = Duration::from_secs(30);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {
                match fleet.prune(Utc::now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(points = n, "old metrics history deleted"),
                    Err(e) => tracing::warn!(error = %e, "metrics retention failed"),
                }
                wait = Duration::from_secs(600);
            }
        }
    }
}
