//! The fleet in memory: every server's settings and latest state, so lists, the overview and
//! agent authentication never read the database.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use smon_proto::Sample;

use crate::fleet::metric::{self, Metric};
use crate::store::{MetricValues, ServerRecord, ServerStatus};

/// One server as the hub knows it now.
#[derive(Clone)]
pub struct Entry {
    /// Settings and status; `latest_sample` is left empty (see `latest`).
    pub record: ServerRecord,
    pub latest: Option<Arc<Sample>>,
    pub values: MetricValues,
    /// The hub wants the inventory with the next report.
    pub inventory_requested: bool,
    /// Reports accepted in memory whose commit has not been confirmed yet: offline detection
    /// leaves such a server alone.
    pub in_flight: u32,
}

impl Entry {
    /// An entry from its database row.
    pub fn from_record(mut record: ServerRecord) -> Self {
        let latest = record
            .latest_sample
            .take()
            .and_then(|json| serde_json::from_str::<Sample>(&json).ok())
            .map(Arc::new);
        let values = latest
            .as_deref()
            .map_or([None; Metric::COUNT], metric::values);
        Entry {
            record,
            latest,
            values,
            inventory_requested: false,
            in_flight: 0,
        }
    }

    /// The interval the agent is asked to keep, else the one it reports.
    pub fn interval_secs(&self) -> Option<u32> {
        self.record
            .interval_secs
            .or(self.record.agent_interval_secs)
    }

    /// One history metric's latest value.
    pub fn value(&self, m: Metric) -> Option<f64> {
        let i = Metric::ALL.iter().position(|x| *x == m).expect("listed");
        self.values[i]
    }
}

/// Every server, by id and by agent token hash.
#[derive(Default)]
pub struct FleetState {
    pub by_id: HashMap<String, Entry>,
    pub by_token: HashMap<String, String>,
}

impl FleetState {
    /// Add or replace an entry.
    pub fn insert(&mut self, entry: Entry) {
        self.by_token
            .insert(entry.record.token_hash.clone(), entry.record.id.clone());
        self.by_id.insert(entry.record.id.clone(), entry);
    }

    /// Remove a server; returns its entry.
    pub fn remove(&mut self, id: &str) -> Option<Entry> {
        let entry = self.by_id.remove(id)?;
        self.by_token.remove(&entry.record.token_hash);
        Some(entry)
    }

    /// Counts by status.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut counts = (0, 0, 0);
        for e in self.by_id.values() {
            match e.record.status {
                ServerStatus::Online => counts.0 += 1,
                ServerStatus::Offline => counts.1 += 1,
                ServerStatus::Unknown => counts.2 += 1,
            }
        }
        counts
    }

    /// When a server stops being online: `offline_after` of its intervals after it was last
    /// seen, counted from `since` at the earliest (the hub's start), and not before
    /// `not_before` (agents back off while the hub is down and need time to come back).
    pub fn overdue(
        &self,
        now: DateTime<Utc>,
        since: DateTime<Utc>,
        not_before: DateTime<Utc>,
        offline_after: u32,
    ) -> Vec<String> {
        if now < not_before {
            return Vec::new();
        }
        self.by_id
            .values()
            .filter(|e| e.record.status == ServerStatus::Online && e.in_flight == 0)
            .filter(|e| {
                let interval = i64::from(e.interval_secs().unwrap_or(10));
                let seen = e.record.last_seen_at.unwrap_or(since).max(since);
                now - seen > chrono::Duration::seconds(interval * i64::from(offline_after))
            })
            .map(|e| e.record.id.clone())
            .collect()
    }
}
