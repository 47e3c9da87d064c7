//! The event log: the event model, the catalog and the queries behind the audit log.

pub mod catalog;
pub mod dispatcher;
pub mod model;

use std::sync::Arc;

use chrono::{DateTime, Utc};

pub use catalog::{EventType, EventTypeInfo};
pub use model::{Event, Origin, Severity};

use crate::error::{Error, Result};
use crate::store::Store;

/// Largest page of events one request may ask for.
pub const MAX_PAGE: u32 = 1000;

/// Which events to return, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub event_type: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub server_id: Option<String>,
    pub severity: Option<Severity>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    pub limit: u32,
    pub offset: u64,
}

/// Reads of the event log.
#[derive(Clone)]
pub struct EventService {
    store: Arc<dyn Store>,
}

impl EventService {
    /// A service over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Changes whenever events are written (read it before reading events, to key caches).
    pub fn generation(&self) -> u64 {
        self.store.event_commits()
    }

    /// Events matching `filter`, newest first, and the total matching.
    pub async fn query(&self, filter: &EventFilter) -> Result<(Vec<Event>, u64)> {
        if filter.limit == 0 || filter.limit > MAX_PAGE {
            return Err(Error::invalid(
                "limit",
                format!("must be between 1 and {MAX_PAGE}"),
            ));
        }
        if let Some(t) = &filter.event_type {
            if EventType::parse(t).is_none() {
                return Err(unknown_event_type(t));
            }
        }
        if let (Some(since), Some(until)) = (filter.since, filter.until) {
            if since > until {
                return Err(Error::invalid("since", "must not be after until"));
            }
        }
        self.store.query_events(filter).await
    }

    /// The most recent events. Without `client_details` the addresses, user agents and task
    /// commands are left out: they belong to the audit log, not to every dashboard viewer
    /// (commands may hold secrets, and non-admins see only their own tasks).
    pub async fn recent(&self, limit: u32, client_details: bool) -> Result<Vec<Event>> {
        let filter = EventFilter {
            limit,
            ..Default::default()
        };
        let mut events = self.query(&filter).await?.0;
        if !client_details {
            for e in &mut events {
                e.ip = None;
                e.user_agent = None;
                e.meta.remove("command");
            }
        }
        Ok(events)
    }
}

/// The 400 for an event type outside the catalog, listing the valid ones.
pub fn unknown_event_type(name: &str) -> Error {
    let valid: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
    Error::invalid(
        "event_type",
        format!(
            "unknown event type {name:?}; valid types: {}",
            valid.join(", ")
        ),
    )
}
