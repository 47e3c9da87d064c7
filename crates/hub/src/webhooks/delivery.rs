//! The delivery workers and the delivery log pruner: named background loops.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::service::WebhookService;

/// Longest a worker sleeps before looking at the queue again.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How often old delivery log rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Deliver due jobs until `shutdown`. An attempt in progress at shutdown is abandoned; its
/// lease is released at the next start and the job is retried (same webhook-id).
pub async fn run_worker(service: WebhookService, shutdown: CancellationToken) {
    let signal = service.job_signal();
    while !shutdown.is_cancelled() {
        let notified = signal.notified();
        tokio::pin!(notified);
        // Registered before looking, so a job queued meanwhile still wakes this worker.
        notified.as_mut().enable();
        let delivered = tokio::select! {
            _ = shutdown.cancelled() => break,
            result = service.deliver_next() => result,
        };
        match delivered {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                let detail = match &e {
                    crate::error::Error::Internal(inner) => format!("{inner:#}"),
                    other => other.to_string(),
                };
                tracing::warn!(error = %detail, "webhook delivery could not claim or record a job; retrying");
                tokio::time::sleep(IDLE_POLL).await;
                continue;
            }
        }
        let wait = match service.until_next_due().await {
            Ok(Some(due)) => due.clamp(Duration::from_millis(5), IDLE_POLL),
            _ => IDLE_POLL,
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = &mut notified => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Prune the delivery log now and then, until `shutdown`.
pub async fn run_pruner(service: WebhookService, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PRUNE_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => match service.prune().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "old webhook deliveries pruned"),
                Err(e) => tracing::warn!(error = %e, "pruning webhook deliveries failed"),
            },
        }
    }
}
