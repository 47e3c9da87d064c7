//! Agent reports: authenticate, validate, update the in-memory state, and commit through one
//! writer that batches many reports per transaction. A report is answered only once its
//! samples are committed, so an agent never drops samples the hub did not keep.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::store::{FleetWrite, Store};

/// A group of writes that must stay in order, and who waits for them.
pub struct WriterItem {
    pub writes: Vec<FleetWrite>,
    pub ack: Option<oneshot::Sender<Result<()>>>,
}

/// Ingest counters for `/api/metrics`.
#[derive(Default)]
pub struct IngestMetrics {
    pub reports_accepted: AtomicU64,
    pub reports_rejected: AtomicU64,
    pub reports_shed: AtomicU64,
    pub samples_stored: AtomicU64,
    pub batches: AtomicU64,
    pub batch_items: AtomicU64,
    pub write_errors: AtomicU64,
    /// Observations alert evaluation could not keep up with.
    pub observations_dropped: AtomicU64,
}

/// Run the writer until `stop`, then commit what is queued and return.
pub async fn run_writer(
    mut rx: mpsc::Receiver<WriterItem>,
    store: Arc<dyn Store>,
    metrics: Arc<IngestMetrics>,
    batch_max: usize,
    stop: CancellationToken,
) {
    let mut stopping = false;
    loop {
        let first = if stopping {
            match rx.try_recv() {
                Ok(item) => item,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => item,
                    None => break,
                },
                _ = stop.cancelled() => {
                    stopping = true;
                    continue;
                }
            }
        };
        // Whatever queued while the last batch committed goes into this one.
        let mut items = vec![first];
        while items.len() < batch_max {
            match rx.try_recv() {
                Ok(item) => items.push(item),
                Err(_) => break,
            }
        }
        let writes: Vec<FleetWrite> = items.iter_mut().flat_map(|i| i.writes.drain(..)).collect();
        let result = store.write_fleet(&writes).await;
        metrics.batches.fetch_add(1, Ordering::Relaxed);
        metrics
            .batch_items
            .fetch_add(items.len() as u64, Ordering::Relaxed);
        match &result {
            Ok(stored) => {
                metrics.samples_stored.fetch_add(*stored, Ordering::Relaxed);
            }
            Err(e) => {
                metrics.write_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, reports = items.len(), "cannot store agent reports");
            }
        }
        for item in items {
            if let Some(ack) = item.ack {
                let _ = ack.send(match &result {
                    Ok(_) => Ok(()),
                    Err(_) => Err(Error::Unavailable(
                        "the hub cannot store reports right now; retry later".into(),
                    )),
                });
            }
        }
    }
}
