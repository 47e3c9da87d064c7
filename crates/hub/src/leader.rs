//! Leadership: of the hubs sharing one database, one runs the work that must happen once
//! (the event dispatcher, offline detection, alert evaluation, task reconciliation; retention
//! and pruning are idempotent and run everywhere). It holds a lease in the database and renews
//! it; a clean stop hands it over at once, and when a hub dies another takes the lease once it
//! has run out. A hub alone (SQLite) simply always holds it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// The lease's name in `hub_leases`.
const LEASE: &str = "leader";
/// How long a lease lasts without renewal: how long the hubs may go without a leader after
/// one dies.
pub const LEASE_TTL: Duration = Duration::from_secs(15);
/// How often the lease is renewed (or sought): several renewals fit in one TTL, so a slow
/// database round trip does not lose it.
const RENEW_EVERY: Duration = Duration::from_secs(3);

/// This hub's view of the lease.
pub struct Leadership {
    /// This hub's name in the lease (unique per process).
    pub holder: String,
    leading: AtomicBool,
    /// When the lease last taken runs out (Unix ms; 0 when none).
    held_until: AtomicI64,
}

impl Leadership {
    /// A hub not (yet) leading, with a fresh holder name.
    pub fn new() -> Arc<Self> {
        Arc::new(Leadership {
            holder: format!(
                "{}/{}",
                sysinfo::System::host_name().unwrap_or_default(),
                uuid::Uuid::now_v7()
            ),
            leading: AtomicBool::new(false),
            held_until: AtomicI64::new(0),
        })
    }

    /// Whether this hub holds the lease now.
    pub fn is_leader(&self) -> bool {
        self.leading.load(Ordering::Acquire)
    }

    /// Take or renew the lease once; whether this hub leads afterwards. When the database
    /// cannot be asked, a lease already held still counts until shortly before it runs out
    /// (by then another hub may take it).
    pub async fn renew(&self, store: &dyn Store) -> bool {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(LEASE_TTL).expect("small");
        let leading = match store.try_lease(LEASE, &self.holder, now, until).await {
            Ok(true) => {
                self.held_until
                    .store(until.timestamp_millis(), Ordering::Release);
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(error = %e, "cannot renew the leader lease");
                let margin = RENEW_EVERY.as_millis() as i64;
                Utc::now().timestamp_millis() + margin < self.held_until.load(Ordering::Acquire)
            }
        };
        let was = self.leading.swap(leading, Ordering::AcqRel);
        if leading != was {
            tracing::info!(holder = %self.holder, leading, "leadership changed");
        }
        leading
    }

    /// Hand the lease over (at a clean stop).
    pub async fn resign(&self, store: &dyn Store) {
        self.leading.store(false, Ordering::Release);
        self.held_until.store(0, Ordering::Release);
        if let Err(e) = store.release_lease(LEASE, &self.holder).await {
            tracing::warn!(error = %e, "cannot release the leader lease");
        }
    }
}

/// Renew the lease until `shutdown`. The hub resigns later, once its dispatcher has stopped
/// and marked what its plugins finished: resigning first would let another hub dispatch
/// those events again.
pub async fn run(leadership: Arc<Leadership>, store: Arc<dyn Store>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RENEW_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {
                leadership.renew(store.as_ref()).await;
            }
        }
    }
}
