//! Response caches for the hottest reads: answers kept as JSON bytes for a short TTL, keyed by
//! everything that changes them, and by a generation that writes bump so that no answer is
//! stale once the write that changed it has returned.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use moka::sync::Cache;

use crate::config::CacheConfig;
use crate::error::Result;

/// Most bytes of answers one cache holds: query strings (and so entries) are the client's to
/// choose, and a page of 1,000 servers is large.
const CAPACITY_BYTES: u64 = 32 * 1024 * 1024;

/// One cached endpoint.
pub struct ResponseCache {
    pub name: &'static str,
    entries: Option<Cache<String, Bytes>>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
}

impl ResponseCache {
    fn new(name: &'static str, enabled: bool, ttl_secs: u64) -> Self {
        ResponseCache {
            name,
            entries: (enabled && ttl_secs > 0).then(|| {
                Cache::builder()
                    .weigher(|key: &String, value: &Bytes| {
                        u32::try_from(key.len() + value.len()).unwrap_or(u32::MAX)
                    })
                    .max_capacity(CAPACITY_BYTES)
                    .time_to_live(Duration::from_secs(ttl_secs))
                    .build()
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// The cached answer for `key`, or the one `compute` makes (kept unless it failed).
    pub async fn get_or_compute<F, Fut>(&self, key: String, compute: F) -> Result<Bytes>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Bytes>>,
    {
        if let Some(hit) = self.entries.as_ref().and_then(|c| c.get(&key)) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        let fresh = compute().await?;
        if let Some(c) = &self.entries {
            c.insert(key, fresh.clone());
        }
        Ok(fresh)
    }

    /// Entries held now.
    pub fn entries(&self) -> u64 {
        self.entries.as_ref().map_or(0, |c| c.entry_count())
    }
}

/// The caches of the API.
pub struct Caches {
    /// `GET /api/stats/overview`.
    pub overview: ResponseCache,
    /// `GET /api/servers`.
    pub servers: ResponseCache,
    /// `GET /api/activity/recent`.
    pub activity: ResponseCache,
}

impl Caches {
    /// Caches sized from the configuration.
    pub fn new(c: &CacheConfig) -> Self {
        Caches {
            overview: ResponseCache::new("overview", c.enabled, c.overview_ttl_secs),
            servers: ResponseCache::new("servers", c.enabled, c.servers_ttl_secs),
            activity: ResponseCache::new("activity", c.enabled, c.activity_ttl_secs),
        }
    }

    /// Every cache, for metrics.
    pub fn all(&self) -> [&ResponseCache; 3] {
        [&self.overview, &self.servers, &self.activity]
    }
}

/// Serialise an answer once, for the cache and the client alike.
pub fn json<T: serde::Serialize>(value: &T) -> Result<Bytes> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(|e| crate::error::Error::Internal(e.into()))
}
