//! The outbox dispatcher: undispatched events, in order, to the managed webhooks' delivery
//! queue, the notification channels' groups and the plugin manager; an event is
//! marked dispatched once every plugin is done with it, so a crash at any point loses nothing
//! (at worst a plugin sees an event twice, with the same event id).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::leader::Leadership;
use crate::notifications::NotificationService;
use crate::plugins::PluginManager;
use crate::plugins::manager::Completion;
use crate::store::Store;

/// Events fetched per query.
const BATCH: u32 = 256;
/// Events handed out since the oldest one a plugin has not finished, at most. Past this a slow
/// plugin's oldest events are marked dispatched anyway (with a warning), so that one plugin can
/// never stall the others: bounded memory, at the price of at-most-once for that plugin.
const MAX_IN_FLIGHT: usize = 65_536;
/// Poll interval for events written by other processes (the CLI, other hubs) that send no
/// signal.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Events handed to the plugins and not yet marked dispatched, in log order.
#[derive(Default)]
pub struct InFlight(VecDeque<(i64, Completion)>);

impl InFlight {
    /// Mark the finished prefix dispatched: in order, never past an unfinished event.
    pub async fn mark_finished(&mut self, store: &dyn Store) -> crate::error::Result<()> {
        let mut finished_up_to = None;
        while self.0.front().is_some_and(|(_, c)| c.is_done()) {
            finished_up_to = self.0.pop_front().map(|(seq, _)| seq);
        }
        if let Some(seq) = finished_up_to {
            store.mark_dispatched(seq, Utc::now()).await?;
        }
        Ok(())
    }

    /// Give up waiting for the oldest events when too many are pending behind them.
    async fn shed_excess(&mut self, store: &dyn Store) -> crate::error::Result<()> {
        let excess = self.0.len().saturating_sub(MAX_IN_FLIGHT - BATCH as usize);
        if excess == 0 {
            return Ok(());
        }
        let unfinished = self
            .0
            .iter()
            .take(excess)
            .filter(|(_, c)| !c.is_done())
            .count();
        let last = self.0.drain(..excess).next_back().map(|(seq, _)| seq);
        tracing::warn!(
            unfinished,
            "a plugin is far behind; its oldest events are marked dispatched without waiting"
        );
        if let Some(seq) = last {
            store.mark_dispatched(seq, Utc::now()).await?;
        }
        Ok(())
    }
}

/// Run until `shutdown`, then hand back what is still in flight: the caller marks what the
/// plugins finish while draining, and the rest is dispatched again after the next start.
pub async fn run(
    store: Arc<dyn Store>,
    plugins: Arc<PluginManager>,
    notifications: NotificationService,
    leadership: Arc<Leadership>,
    shutdown: CancellationToken,
) -> InFlight {
    let new_events = store.event_signal();
    let completed = plugins.completed_signal();
    let mut cursor: i64 = 0;
    let mut in_flight = InFlight::default();
    while !shutdown.is_cancelled() {
        if !leadership.is_leader() {
            // Another hub dispatches; this one finishes marking what it handed out before.
            if let Err(e) = in_flight.mark_finished(store.as_ref()).await {
                tracing::warn!(error = %e, "event dispatcher: database error; retrying");
            }
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
            continue;
        }
        let mut more_waiting = false;
        let step: crate::error::Result<()> = async {
            in_flight.mark_finished(store.as_ref()).await?;
            in_flight.shed_excess(store.as_ref()).await?;
            let batch = store.undispatched_events(cursor, BATCH).await?;
            more_waiting = batch.len() == BATCH as usize;
            // Webhook deliveries and notifications are durable jobs: queued before the events
            // can be marked.
            let events: Vec<_> = batch.iter().map(|(_, e)| e.clone()).collect();
            let notes = notifications.route(&events).await?;
            store
                .enqueue_for_events(&events, &notes, Utc::now())
                .await?;
            for (seq, event) in batch {
                cursor = seq;
                in_flight
                    .0
                    .push_back((seq, plugins.dispatch(Arc::new(event))));
            }
            Ok(())
        }
        .await;
        if let Err(e) = step {
            tracing::warn!(error = %e, "event dispatcher: database error; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if more_waiting || in_flight.0.front().is_some_and(|(_, c)| c.is_done()) {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = new_events.notified() => {}
            _ = completed.notified() => {}
            _ = tokio::time::sleep(IDLE_POLL) => {}
        }
    }
    in_flight
}
