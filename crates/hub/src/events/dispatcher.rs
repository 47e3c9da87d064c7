//! The outbox dispatcher: undispatched events, in order, to the plugin manager; an event is
//! marked dispatched once every plugin is done with it, so a crash at any point loses nothing
//! (at worst a plugin sees an event twice, with the same event id).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::plugins::PluginManager;
use crate::plugins::manager::Completion;
use crate::store::Store;

/// Events fetched per query.
const BATCH: u32 = 256;
/// Events handed out but not yet finished by every plugin, at most.
const MAX_IN_FLIGHT: usize = 4096;
/// Poll interval for events written by other processes (the CLI) that send no signal.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Run until `shutdown`; events still in flight then stay undispatched for the next start.
pub async fn run(store: Arc<dyn Store>, plugins: Arc<PluginManager>, shutdown: CancellationToken) {
    let new_events = store.event_signal();
    let completed = plugins.completed_signal();
    let mut cursor: i64 = 0;
    let mut in_flight: VecDeque<(i64, Completion)> = VecDeque::new();
    loop {
        let mut more_waiting = false;
        let step: crate::error::Result<()> = async {
            mark_finished_prefix(store.as_ref(), &mut in_flight).await?;
            if in_flight.len() < MAX_IN_FLIGHT {
                let batch = store.undispatched_events(cursor, BATCH).await?;
                more_waiting = batch.len() == BATCH as usize;
                for (seq, event) in batch {
                    cursor = seq;
                    in_flight.push_back((seq, plugins.dispatch(Arc::new(event))));
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = step {
            tracing::warn!(error = %e, "event dispatcher: database error; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let done_ready = in_flight.front().is_some_and(|(_, c)| c.is_done());
        if (more_waiting && in_flight.len() < MAX_IN_FLIGHT) || done_ready {
            tokio::task::yield_now().await;
            if !shutdown.is_cancelled() {
                continue;
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = new_events.notified() => {}
            _ = completed.notified() => {}
            _ = tokio::time::sleep(IDLE_POLL) => {}
        }
    }
    // Record what did finish; the rest is dispatched again after the next start.
    if let Err(e) = mark_finished_prefix(store.as_ref(), &mut in_flight).await {
        tracing::warn!(error = %e, "event dispatcher: cannot record the last dispatched events");
    }
}

/// Mark the finished prefix of `in_flight` dispatched: in order, never past an unfinished event.
async fn mark_finished_prefix(
    store: &dyn Store,
    in_flight: &mut VecDeque<(i64, Completion)>,
) -> crate::error::Result<()> {
    let mut finished_up_to = None;
    while in_flight.front().is_some_and(|(_, c)| c.is_done()) {
        finished_up_to = in_flight.pop_front().map(|(seq, _)| seq);
    }
    if let Some(seq) = finished_up_to {
        store.mark_dispatched(seq, Utc::now()).await?;
    }
    Ok(())
}
