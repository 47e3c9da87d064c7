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
            // The tick always fires and leadership is asked inside: a `select!` guard is read
            // once per call, and a false one would leave this waiting for shutdown alone.
            _ = tick.tick() => if leadership.is_leader() {
                let n = fleet.detect_offline().await;
                if n > 0 {
                    tracing::info!(servers = n, "servers went offline");
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
