//! Liveness and readiness.

use std::sync::Arc;

use crate::error::Result;
use crate::store::Store;

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

    /// `Unavailable` unless the database answers a read and accepts a write.
    pub async fn readiness(&self) -> Result<()> {
        self.store.check_ready().await
    }
}
