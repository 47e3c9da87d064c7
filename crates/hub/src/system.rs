//! Liveness and readiness.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::store::{QueueDepths, Store};

/// A load balancer asking for readiness wants an answer quickly, not after the lock timeout.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Health checks of the hub's dependencies.
#[derive(Clone)]
pub struct SystemService {
    store: Arc<dyn Store>,
}

impl SystemService {
    /// A service over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// The outbox and webhook delivery queue sizes.
    pub async fn queue_depths(&self) -> Result<QueueDepths> {
        self.store.queue_depths().await
    }

    /// `Unavailable` unless the database answers a read and accepts a write in time.
    pub async fn readiness(&self) -> Result<()> {
        tokio::time::timeout(READY_TIMEOUT, self.store.check_ready())
            .await
            .map_err(|_| Error::Unavailable("database did not answer within 2 s".into()))?
    }
}
