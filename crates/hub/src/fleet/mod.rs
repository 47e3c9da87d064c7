//! The fleet: servers, agent reports, the latest state in memory, history and inventory.

pub mod ingest;
pub mod metric;
pub mod state;
pub mod validate;
pub mod workers;

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use smon_proto::{
    EnrollRequest, EnrollResponse, REQUEST_INVENTORY, Report, ReportResponse, Sample,
};
use tokio::sync::{mpsc, oneshot};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::token;
use crate::config::FleetConfig;
use crate::error::{Error, Result};
use crate::events::{Event, EventType, Origin};
use crate::store::{FleetWrite, ReportWrite, ServerRecord, ServerStatus, Store, Tier};
use crate::wire::{opt_rfc3339_millis, rfc3339_millis};
use ingest::{IngestMetrics, WriterItem};
use metric::Metric;
use state::{Entry, FleetState};

/// A new server.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewServer {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Interval the agent is asked to keep (1–3600 s); absent leaves it to the agent.
    #[serde(default)]
    pub interval_secs: Option<u32>,
}

/// A change to a server: absent fields stay, `null` clears `description` and `interval_secs`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerPatch {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "crate::wire::present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    pub tags: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::wire::present")]
    #[schema(value_type = Option<u32>)]
    pub interval_secs: Option<Option<u32>>,
}

/// The latest values of a server, as lists show them.
#[derive(Debug, Serialize, ToSchema)]
pub struct MetricsSummary {
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String)]
    pub ts: DateTime<Utc>,
    pub cpu_percent: f64,
    pub memory_percent: Option<f64>,
    pub swap_percent: Option<f64>,
    /// The fullest filesystem.
    pub disk_percent: Option<f64>,
    pub load1: f64,
    pub load5: f64,
    pub load15: f64,
    pub net_rx_bps: f64,
    pub net_tx_bps: f64,
    pub disk_read_bps: f64,
    pub disk_write_bps: f64,
    /// The hottest sensor.
    pub temperature: Option<f64>,
    pub uptime_secs: u64,
    pub process_count: u32,
}

/// A server as the API shows it (never its token).
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerView {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub status: ServerStatus,
    #[serde(serialize_with = "opt_rfc3339_millis")]
    #[schema(value_type = Option<String>)]
    pub last_seen: Option<DateTime<Utc>>,
    /// The interval in force: the one set on the server, else the agent's.
    pub interval_secs: Option<u32>,
    pub agent_version: Option<String>,
    /// The hub's own machine.
    pub local: bool,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String)]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String)]
    pub updated_at: DateTime<Utc>,
    pub metrics: Option<MetricsSummary>,
}

/// One server with its full latest sample (per core, per filesystem, per interface, sensors).
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerDetail {
    #[serde(flatten)]
    pub server: ServerView,
    #[schema(value_type = Option<Object>)]
    pub latest: Option<Arc<Sample>>,
}

/// How to list servers.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ServerQuery {
    /// Only servers with this tag.
    pub tag: Option<String>,
    /// `online`, `offline` or `unknown`.
    pub status: Option<String>,
    /// Part of the name, any case.
    pub search: Option<String>,
    /// `name`, `status`, `last_seen`, `cpu`, `memory`, `disk` or `created`; `-` before it sorts
    /// descending. Default `name`.
    pub sort: Option<String>,
    /// 1–1000, default 100.
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

/// A page of servers.
#[derive(Debug, Serialize, ToSchema)]
pub struct ServerPage {
    pub servers: Vec<ServerView>,
    /// Servers on this page.
    pub count: usize,
    /// Servers matching the filters.
    pub total: usize,
    pub limit: u32,
    pub offset: u64,
}

/// A server's inventory.
#[derive(Debug, Serialize, ToSchema)]
pub struct InventoryView {
    pub server_id: String,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String)]
    pub received_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String)]
    pub changed_at: DateTime<Utc>,
    #[schema(value_type = Object)]
    pub inventory: serde_json::Value,
}

/// One point of history.
#[derive(Debug, Serialize, ToSchema)]
pub struct PointView {
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String)]
    pub ts: DateTime<Utc>,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
    pub last: f64,
}

/// A metric's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryView {
    pub server_id: String,
    pub metric: &'static str,
    pub unit: &'static str,
    /// `raw`, `1m` or `1h`.
    pub tier: Tier,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String)]
    pub from: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String)]
    pub to: DateTime<Utc>,
    pub points: Vec<PointView>,
}

/// Fleet-wide numbers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Overview {
    pub total_servers: usize,
    pub online_servers: usize,
    pub offline_servers: usize,
    pub unknown_servers: usize,
    /// Averages over online servers that reported the value.
    pub avg_cpu_percent: Option<f64>,
    pub avg_memory_percent: Option<f64>,
    pub avg_disk_percent: Option<f64>,
    /// Servers per tag.
    pub tags: std::collections::BTreeMap<String, usize>,
}

/// Longest range a raw-tier answer covers when the caller lets the hub choose.
const RAW_SPAN: Duration = Duration::hours(3);
/// Longest range a 1-minute answer covers when the caller lets the hub choose.
const MINUTE_SPAN: Duration = Duration::days(3);

/// Choose the tier for a range: the finest whose span and retention cover it.
pub fn pick_tier(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    now: DateTime<Utc>,
    c: &FleetConfig,
) -> Tier {
    let span = to - from;
    let raw_kept = now - Duration::hours(c.raw_retention_hours as i64);
    let minute_kept = now - Duration::days(c.minute_retention_days as i64);
    if span <= RAW_SPAN && from >= raw_kept {
        Tier::Raw
    } else if span <= MINUTE_SPAN && from >= minute_kept {
        Tier::Minute
    } else {
        Tier::Hour
    }
}

/// What the fleet tells alert evaluation, once it is committed.
#[derive(Debug, Clone)]
pub enum Observation {
    /// A report was stored; `sample` is the server's newest.
    Report {
        server_id: String,
        server_name: String,
        tags: Vec<String>,
        sample: Arc<Sample>,
    },
    /// The server went online or offline.
    Status {
        server_id: String,
        server_name: String,
        tags: Vec<String>,
        status: ServerStatus,
        at: DateTime<Utc>,
    },
    /// The server was deleted.
    Removed { server_id: String },
}

/// What the fleet observes, as [`FleetService::observe`] hands it out.
pub struct Observations {
    pub reports: mpsc::Receiver<Observation>,
    pub changes: mpsc::UnboundedReceiver<Observation>,
}

/// How many observations may wait for the evaluator before new ones are dropped (and
/// counted).
const OBSERVATION_QUEUE: usize = 16_384;

struct Inner {
    /// Held by each server change from reading the server to updating memory: two changes of
    /// one server (an edit and a token rotation, say) must not each write back the other's
    /// old values.
    changes: tokio::sync::Mutex<()>,
    /// Bumped whenever what lists and the overview show changes, other than metrics values:
    /// servers added, changed or removed, and status changes. Caches key on it.
    generation: std::sync::atomic::AtomicU64,
    observer: std::sync::OnceLock<(
        mpsc::Sender<Observation>,
        mpsc::UnboundedSender<Observation>,
    )>,
    store: Arc<dyn Store>,
    state: RwLock<FleetState>,
    tx: mpsc::Sender<WriterItem>,
    config: FleetConfig,
    enrollment_digest: Option<String>,
    started_at: DateTime<Utc>,
    metrics: Arc<IngestMetrics>,
}

/// Servers and their reports.
#[derive(Clone)]
pub struct FleetService {
    inner: Arc<Inner>,
}

fn server_event(kind: EventType, origin: &Origin, e: &ServerRecord) -> Event {
    let mut event = Event::new(kind, origin).target("server", &e.id);
    event.server_id = Some(e.id.clone());
    event.server_name = Some(e.name.clone());
    event
}

fn interval(v: Option<u32>) -> Result<Option<u32>> {
    match v {
        Some(s) if !(1..=3600).contains(&s) => Err(Error::invalid(
            "interval_secs",
            "must be between 1 and 3600",
        )),
        other => Ok(other),
    }
}

fn description(v: Option<String>) -> Result<Option<String>> {
    match v.map(|d| d.trim().to_string()).filter(|d| !d.is_empty()) {
        Some(d) if d.chars().count() > 500 => {
            Err(Error::invalid("description", "at most 500 characters"))
        }
        other => Ok(other),
    }
}

impl FleetService {
    /// Load every server into memory. The returned receiver feeds [`ingest::run_writer`].
    pub async fn load(
        store: Arc<dyn Store>,
        config: FleetConfig,
        enrollment_token: &str,
    ) -> Result<(Self, mpsc::Receiver<WriterItem>)> {
        let mut state = FleetState::default();
        for record in store.list_servers().await? {
            state.insert(Entry::from_record(record));
        }
        let (tx, rx) = mpsc::channel(config.ingest_queue);
        let service = FleetService {
            inner: Arc::new(Inner {
                changes: tokio::sync::Mutex::new(()),
                generation: Default::default(),
                observer: std::sync::OnceLock::new(),
                store,
                state: RwLock::new(state),
                tx,
                enrollment_digest: (!enrollment_token.is_empty())
                    .then(|| token::digest(enrollment_token)),
                config,
                started_at: Utc::now(),
                metrics: Arc::default(),
            }),
        };
        Ok((service, rx))
    }

    /// Receive what the fleet observes from now on (one receiver per hub: alert evaluation):
    /// reports on a bounded queue that drops (and counts) when the evaluator falls behind, and
    /// status changes and removals, which are rare and never dropped, on their own.
    pub fn observe(&self) -> Observations {
        let (reports_tx, reports) = mpsc::channel(OBSERVATION_QUEUE);
        let (changes_tx, changes) = mpsc::unbounded_channel();
        if self.inner.observer.set((reports_tx, changes_tx)).is_err() {
            panic!("the fleet has one observer");
        }
        Observations { reports, changes }
    }

    fn publish(&self, observation: Observation) {
        let Some((reports, changes)) = self.inner.observer.get() else {
            return;
        };
        if !matches!(observation, Observation::Report { .. }) {
            let _ = changes.send(observation);
            return;
        }
        if reports.try_send(observation).is_err() {
            let dropped = self
                .inner
                .metrics
                .observations_dropped
                .fetch_add(1, Ordering::Relaxed);
            if dropped.is_power_of_two() || dropped == 0 {
                tracing::warn!(
                    dropped = dropped + 1,
                    "alert evaluation is behind; reports skipped (status changes are not)"
                );
            }
        }
    }

    /// A server's newest sample, if it exists and has reported.
    pub fn latest(&self, id: &str) -> Option<Arc<Sample>> {
        self.read().by_id.get(id).and_then(|e| e.latest.clone())
    }

    /// `NotFound` unless the server exists.
    pub fn exists(&self, id: &str) -> Result<()> {
        if self.read().by_id.contains_key(id) {
            Ok(())
        } else {
            Err(Error::NotFound(format!("server {id}")))
        }
    }

    /// A server's tags, if it exists.
    pub fn server_tags(&self, id: &str) -> Option<Vec<String>> {
        self.read().by_id.get(id).map(|e| e.record.tags.clone())
    }

    /// Every server's current status, for an evaluator that starts.
    pub fn statuses(&self) -> Vec<Observation> {
        let now = Utc::now();
        self.read()
            .by_id
            .values()
            .map(|e| Observation::Status {
                server_id: e.record.id.clone(),
                server_name: e.record.name.clone(),
                tags: e.record.tags.clone(),
                status: e.record.status,
                at: e
                    .record
                    .last_seen_at
                    .unwrap_or(now)
                    .max(self.inner.started_at),
            })
            .collect()
    }

    /// The current generation of the fleet's shape (read it before reading the fleet).
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Call once a change is in memory (or under the write lock that makes it): a reader that
    /// sees the new generation must see the change.
    fn changed(&self) {
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Ingest counters.
    pub fn metrics(&self) -> Arc<IngestMetrics> {
        self.inner.metrics.clone()
    }

    /// Reports waiting for the writer.
    pub fn queue_depth(&self) -> usize {
        self.inner.config.ingest_queue - self.inner.tx.capacity()
    }

    /// Servers online, offline and never seen.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.read().counts()
    }

    /// The fleet settings.
    pub fn config(&self) -> &FleetConfig {
        &self.inner.config
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, FleetState> {
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, FleetState> {
        self.inner.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn entry(&self, id: &str) -> Result<Entry> {
        self.read()
            .by_id
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("server {id}")))
    }

    /// Create a server; returns it and its agent token (shown this once).
    pub async fn create(&self, origin: &Origin, new: NewServer) -> Result<(ServerView, String)> {
        let this = self.clone();
        let origin = origin.clone();
        crate::to_completion(async move { this.create_now(&origin, new).await }).await
    }

    /// The change itself (see the public method).
    async fn create_now(&self, origin: &Origin, new: NewServer) -> Result<(ServerView, String)> {
        let _one_at_a_time = self.inner.changes.lock().await;
        let now = Utc::now();
        let secret = token::generate(token::AGENT_PREFIX);
        let record = ServerRecord {
            description: description(new.description)?,
            tags: validate::tags(&new.tags)?,
            interval_secs: interval(new.interval_secs)?,
            created_by: origin.user_id.clone(),
            ..ServerRecord::new(
                Uuid::now_v7().to_string(),
                validate::server_name(&new.name)?,
                token::digest(&secret),
                now,
            )
        };
        let event = server_event(EventType::ServerCreated, origin, &record)
            .meta("tags", record.tags.clone());
        let entry = self.insert(record, event).await?;
        Ok((view(&entry), secret))
    }

    async fn insert(&self, mut record: ServerRecord, event: Event) -> Result<Entry> {
        record.seq = self.inner.store.insert_server(&record, &event).await?;
        let entry = Entry::from_record(record);
        self.write().insert(entry.clone());
        self.changed();
        Ok(entry)
    }

    /// The hub's own server, created on first start (named after the machine).
    pub async fn ensure_local(&self, hostname: &str) -> Result<String> {
        if let Some(e) = self.read().by_id.values().find(|e| e.record.is_local) {
            return Ok(e.record.id.clone());
        }
        let taken = |name: &str| self.read().by_id.values().any(|e| e.record.name == name);
        let base: String = validate::server_name(hostname)
            .unwrap_or_else(|_| "hub".into())
            .chars()
            .take(80)
            .collect();
        let name = std::iter::once(base.clone())
            .chain((1..).map(|n| format!("{base} (hub {n})")))
            .find(|n| !taken(n))
            .expect("an unused name exists");
        let now = Utc::now();
        let record = ServerRecord {
            description: Some(
                "The machine the hub runs on, reported by its embedded agent.".into(),
            ),
            tags: vec!["hub".into()],
            is_local: true,
            // Nobody holds this token: the embedded agent reports in-process.
            ..ServerRecord::new(
                Uuid::now_v7().to_string(),
                name,
                token::digest(&token::generate(token::AGENT_PREFIX)),
                now,
            )
        };
        let event =
            server_event(EventType::ServerCreated, &Origin::default(), &record).meta("local", true);
        Ok(self.insert(record, event).await?.record.id)
    }

    /// Register a server for an agent holding the enrollment token.
    pub async fn enroll(&self, origin: &Origin, req: EnrollRequest) -> Result<EnrollResponse> {
        let Some(expected) = &self.inner.enrollment_digest else {
            return Err(Error::Forbidden(
                "enrollment is turned off on this hub (enrollment_token)".into(),
            ));
        };
        // Comparing digests leaks nothing about the token through timing.
        if token::digest(req.enrollment_token.trim()) != *expected {
            return Err(Error::Unauthorized("wrong enrollment token".into()));
        }
        let (server, agent_token) = self
            .create(
                origin,
                NewServer {
                    name: req.name,
                    description: None,
                    tags: req.tags,
                    interval_secs: None,
                },
            )
            .await?;
        Ok(EnrollResponse {
            server_id: server.id,
            name: server.name,
            agent_token,
        })
    }

    /// A server's name, if it exists.
    pub fn server_name(&self, id: &str) -> Option<String> {
        self.read().by_id.get(id).map(|e| e.record.name.clone())
    }

    /// The ids of the servers with this tag, by name.
    pub fn ids_with_tag(&self, tag: &str) -> Vec<String> {
        let tag = tag.to_lowercase();
        let state = self.read();
        let mut found: Vec<&Entry> = state
            .by_id
            .values()
            .filter(|e| e.record.tags.contains(&tag))
            .collect();
        found.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        found.into_iter().map(|e| e.record.id.clone()).collect()
    }

    /// One server's view.
    pub fn get(&self, id: &str) -> Result<ServerDetail> {
        let e = self.entry(id)?;
        Ok(ServerDetail {
            server: view(&e),
            latest: e.latest.clone(),
        })
    }

    /// A filtered, sorted page of servers, from memory.
    pub fn list(&self, q: &ServerQuery) -> Result<ServerPage> {
        let limit = q.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(Error::invalid("limit", "must be between 1 and 1000"));
        }
        let offset = q.offset.unwrap_or(0);
        let status = q
            .status
            .as_deref()
            .map(|s| {
                ServerStatus::parse(s)
                    .ok_or_else(|| Error::invalid("status", "must be online, offline or unknown"))
            })
            .transpose()?;
        let sort = q.sort.as_deref().unwrap_or("name");
        let (key, descending) = match sort.strip_prefix('-') {
            Some(k) => (k, true),
            None => (sort, false),
        };
        if ![
            "name",
            "status",
            "last_seen",
            "cpu",
            "memory",
            "disk",
            "created",
        ]
        .contains(&key)
        {
            return Err(Error::invalid(
                "sort",
                "must be name, status, last_seen, cpu, memory, disk or created, optionally prefixed by -",
            ));
        }
        let tag = q.tag.as_deref().map(str::to_lowercase);
        let search = q.search.as_deref().map(str::to_lowercase);
        let state = self.read();
        let mut rows: Vec<&Entry> = state
            .by_id
            .values()
            .filter(|e| status.is_none_or(|s| e.record.status == s))
            .filter(|e| tag.as_ref().is_none_or(|t| e.record.tags.contains(t)))
            .filter(|e| {
                search
                    .as_ref()
                    .is_none_or(|s| e.record.name.to_lowercase().contains(s.as_str()))
            })
            .collect();
        use std::cmp::Ordering;
        // Descending reverses the order of the key, never where servers without a value go:
        // they stay last. Ties are broken by name, ascending.
        let directed = |o: Ordering| if descending { o.reverse() } else { o };
        let by_value = |a: &Entry, b: &Entry, m: Metric| match (a.value(m), b.value(m)) {
            (Some(x), Some(y)) => directed(x.total_cmp(&y)),
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (None, None) => Ordering::Equal,
        };
        rows.sort_by(|a, b| {
            let (ra, rb) = (&a.record, &b.record);
            let primary = match key {
                "status" => directed(ra.status.as_str().cmp(rb.status.as_str())),
                "last_seen" => match (ra.last_seen_at, rb.last_seen_at) {
                    (Some(x), Some(y)) => directed(x.cmp(&y)),
                    (x, y) => y.is_none().cmp(&x.is_none()).reverse(),
                },
                "cpu" => by_value(a, b, Metric::Cpu),
                "memory" => by_value(a, b, Metric::Memory),
                "disk" => by_value(a, b, Metric::Disk),
                "created" => directed(ra.created_at.cmp(&rb.created_at)),
                _ => directed(ra.name.cmp(&rb.name)),
            };
            primary.then_with(|| ra.name.cmp(&rb.name))
        });
        let total = rows.len();
        let servers: Vec<ServerView> = rows
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(limit as usize)
            .map(view)
            .collect();
        Ok(ServerPage {
            count: servers.len(),
            servers,
            total,
            limit,
            offset,
        })
    }

    /// Change a server's settings.
    pub async fn update(
        &self,
        origin: &Origin,
        id: &str,
        patch: ServerPatch,
    ) -> Result<ServerView> {
        let this = self.clone();
        let (origin, id) = (origin.clone(), id.to_string());
        crate::to_completion(async move { this.update_now(&origin, &id, patch).await }).await
    }

    /// The change itself (see the public method).
    async fn update_now(
        &self,
        origin: &Origin,
        id: &str,
        patch: ServerPatch,
    ) -> Result<ServerView> {
        let _one_at_a_time = self.inner.changes.lock().await;
        let before = self.entry(id)?.record;
        let mut record = before.clone();
        let mut changes = Vec::new();
        if let Some(name) = patch.name {
            record.name = validate::server_name(&name)?;
        }
        if let Some(d) = patch.description {
            record.description = description(d)?;
        }
        if let Some(tags) = patch.tags {
            record.tags = validate::tags(&tags)?;
        }
        if let Some(i) = patch.interval_secs {
            record.interval_secs = interval(i)?;
        }
        for (field, changed) in [
            ("name", record.name != before.name),
            ("description", record.description != before.description),
            ("tags", record.tags != before.tags),
            (
                "interval_secs",
                record.interval_secs != before.interval_secs,
            ),
        ] {
            if changed {
                changes.push(field);
            }
        }
        if changes.is_empty() {
            return Ok(view(&self.entry(id)?));
        }
        record.updated_at = Utc::now();
        let event =
            server_event(EventType::ServerUpdated, origin, &record).meta("changes", changes);
        self.inner.store.update_server(&record, &event).await?;
        self.apply(id, |e| {
            e.record.name = record.name.clone();
            e.record.description = record.description.clone();
            e.record.tags = record.tags.clone();
            e.record.interval_secs = record.interval_secs;
            e.record.updated_at = record.updated_at;
        })
    }

    fn apply(&self, id: &str, f: impl FnOnce(&mut Entry)) -> Result<ServerView> {
        let mut state = self.write();
        let entry = state
            .by_id
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(format!("server {id}")))?;
        f(entry);
        let answer = view(entry);
        drop(state);
        self.changed();
        Ok(answer)
    }

    /// Replace a server's agent token; the old one stops working at once.
    pub async fn rotate_token(&self, origin: &Origin, id: &str) -> Result<String> {
        let this = self.clone();
        let (origin, id) = (origin.clone(), id.to_string());
        crate::to_completion(async move { this.rotate_token_now(&origin, &id).await }).await
    }

    /// The change itself (see the public method).
    async fn rotate_token_now(&self, origin: &Origin, id: &str) -> Result<String> {
        let _one_at_a_time = self.inner.changes.lock().await;
        let mut record = self.entry(id)?.record;
        let secret = token::generate(token::AGENT_PREFIX);
        let old_hash = std::mem::replace(&mut record.token_hash, token::digest(&secret));
        record.updated_at = Utc::now();
        let event = server_event(EventType::ServerUpdated, origin, &record)
            .meta("changes", vec!["agent_token"]);
        self.inner.store.update_server(&record, &event).await?;
        let mut state = self.write();
        state.by_token.remove(&old_hash);
        state
            .by_token
            .insert(record.token_hash.clone(), id.to_string());
        if let Some(e) = state.by_id.get_mut(id) {
            e.record.token_hash = record.token_hash;
            e.record.updated_at = record.updated_at;
        }
        // After the change, so that no answer of the old state is filed under the new
        // generation.
        drop(state);
        self.changed();
        Ok(secret)
    }

    /// Delete a server with its history.
    pub async fn delete(&self, origin: &Origin, id: &str) -> Result<()> {
        let this = self.clone();
        let (origin, id) = (origin.clone(), id.to_string());
        crate::to_completion(async move { this.delete_now(&origin, &id).await }).await
    }

    /// The change itself (see the public method).
    async fn delete_now(&self, origin: &Origin, id: &str) -> Result<()> {
        let _one_at_a_time = self.inner.changes.lock().await;
        let record = self.entry(id)?.record;
        let event = server_event(EventType::ServerDeleted, origin, &record);
        self.inner.store.delete_server(record.seq, &event).await?;
        self.write().remove(id);
        self.changed();
        self.publish(Observation::Removed {
            server_id: id.to_string(),
        });
        Ok(())
    }

    /// Take in what other hubs on the database wrote: servers added, edited or deleted there,
    /// reports they received (newer than this hub's), and the leader's offline verdicts.
    /// Memory stays the source of what this hub answers; this keeps it within one sync of the
    /// database. Changes are published like local ones, so the leader's alert evaluation sees
    /// the whole fleet. Returns how many servers changed.
    pub async fn sync_from_store(&self, leading: bool) -> Result<usize> {
        // Local creations, edits and deletions wait: none can slip between the read and the
        // merge and be undone by it.
        let _one_at_a_time = self.inner.changes.lock().await;
        let marks = self.inner.store.server_marks().await?;
        let (stale, gone) = {
            let state = self.read();
            let mut stale = Vec::new();
            for m in &marks {
                let Some(e) = state.by_id.get(&m.id) else {
                    stale.push(m.id.clone());
                    continue;
                };
                let newer_report = millis(m.last_seen_at) > millis(e.record.last_seen_at);
                let newer_settings =
                    m.updated_at.timestamp_millis() > e.record.updated_at.timestamp_millis();
                // Only the leader marks servers offline; the others adopt its verdict once
                // nothing of theirs is on the way.
                let verdict = !leading
                    && m.status != e.record.status
                    && millis(m.last_seen_at) == millis(e.record.last_seen_at)
                    && e.in_flight == 0;
                if newer_report || newer_settings || verdict {
                    stale.push(m.id.clone());
                }
            }
            let listed: std::collections::HashSet<&str> =
                marks.iter().map(|m| m.id.as_str()).collect();
            let gone: Vec<String> = state
                .by_id
                .keys()
                .filter(|id| !listed.contains(id.as_str()))
                .cloned()
                .collect();
            (stale, gone)
        };
        if stale.is_empty() && gone.is_empty() {
            return Ok(0);
        }
        let rows = if stale.is_empty() {
            Vec::new()
        } else {
            self.inner.store.servers_with_ids(&stale).await?
        };
        let mut observed = Vec::new();
        let changed = {
            let mut state = self.write();
            for id in &gone {
                state.remove(id);
                observed.push(Observation::Removed {
                    server_id: id.clone(),
                });
            }
            for row in rows {
                let mut fresh = Entry::from_record(row);
                if let Some(old) = state.remove(&fresh.record.id) {
                    fresh.inventory_requested = old.inventory_requested;
                    fresh.in_flight = old.in_flight;
                    if millis(old.record.last_seen_at) > millis(fresh.record.last_seen_at) {
                        // This hub's own report is newer than what the database has yet.
                        fresh.record.status = old.record.status;
                        fresh.record.last_seen_at = old.record.last_seen_at;
                        fresh.record.agent_version = old.record.agent_version.clone();
                        fresh.record.agent_interval_secs = old.record.agent_interval_secs;
                        fresh.latest = old.latest.clone();
                        fresh.values = old.values;
                    }
                    let r = &fresh.record;
                    if r.status != old.record.status {
                        observed.push(Observation::Status {
                            server_id: r.id.clone(),
                            server_name: r.name.clone(),
                            tags: r.tags.clone(),
                            status: r.status,
                            at: r.last_seen_at.unwrap_or_else(Utc::now),
                        });
                    }
                    if millis(r.last_seen_at) > millis(old.record.last_seen_at)
                        && let Some(sample) = &fresh.latest
                    {
                        observed.push(Observation::Report {
                            server_id: r.id.clone(),
                            server_name: r.name.clone(),
                            tags: r.tags.clone(),
                            sample: sample.clone(),
                        });
                    }
                }
                state.insert(fresh);
            }
            gone.len() + stale.len()
        };
        self.changed();
        for o in observed {
            self.publish(o);
        }
        Ok(changed)
    }

    /// Ask the agent for its inventory with its next report.
    pub async fn request_inventory(&self, origin: &Origin, id: &str) -> Result<()> {
        let this = self.clone();
        let (origin, id) = (origin.clone(), id.to_string());
        crate::to_completion(async move { this.request_inventory_now(&origin, &id).await }).await
    }

    /// The change itself (see the public method).
    async fn request_inventory_now(&self, origin: &Origin, id: &str) -> Result<()> {
        let record = self.entry(id)?.record;
        let event = server_event(EventType::InventoryRefresh, origin, &record);
        self.inner.store.append_event(&event).await?;
        self.apply(id, |e| e.inventory_requested = true)?;
        Ok(())
    }

    /// A server's inventory as last received.
    pub async fn inventory(&self, id: &str) -> Result<InventoryView> {
        let seq = self.entry(id)?.record.seq;
        let (received_at, changed_at, data) =
            self.inner.store.inventory(seq).await?.ok_or_else(|| {
                Error::NotFound(format!(
                    "inventory of server {id} (the agent has not sent one yet)"
                ))
            })?;
        let inventory = serde_json::from_str(&data)
            .map_err(|e| Error::Internal(anyhow::anyhow!("corrupt inventory of {id}: {e}")))?;
        Ok(InventoryView {
            server_id: id.to_string(),
            received_at,
            changed_at,
            inventory,
        })
    }

    /// A metric's history over `[from, to]`; the tier is chosen by range unless given.
    pub async fn history(
        &self,
        id: &str,
        metric: &str,
        from: Option<DateTime<Utc>>,
        to: Option<DateTime<Utc>>,
        tier: Option<&str>,
    ) -> Result<HistoryView> {
        let seq = self.entry(id)?.record.seq;
        let metric = Metric::parse(metric).ok_or_else(|| {
            Error::invalid(
                "metric",
                format!("unknown metric {metric:?}; known: {}", Metric::names()),
            )
        })?;
        let now = Utc::now();
        let to = to.unwrap_or(now);
        let from = from.unwrap_or(to - Duration::hours(1));
        if from > to {
            return Err(Error::invalid("from", "must not be after to"));
        }
        let tier = match tier {
            None => pick_tier(from, to, now, &self.inner.config),
            Some("raw") => Tier::Raw,
            Some("1m") => Tier::Minute,
            Some("1h") => Tier::Hour,
            Some(_) => return Err(Error::invalid("tier", "must be raw, 1m or 1h")),
        };
        // At most about 20,000 points in one answer.
        let width = match tier {
            Tier::Raw => Duration::seconds(1),
            Tier::Minute => Duration::minutes(1),
            Tier::Hour => Duration::hours(1),
        };
        if (to - from).num_seconds() / width.num_seconds() > 20_000 {
            return Err(Error::invalid(
                "from",
                "the range holds too many points for this tier; narrow it or choose a coarser tier",
            ));
        }
        let points = self
            .inner
            .store
            .history(seq, tier, metric, from, to)
            .await?
            .into_iter()
            .map(|p| PointView {
                ts: p.ts,
                min: p.min,
                max: p.max,
                avg: p.avg,
                last: p.last,
            })
            .collect();
        Ok(HistoryView {
            server_id: id.to_string(),
            metric: metric.name(),
            unit: metric.unit(),
            tier,
            from,
            to,
            points,
        })
    }

    /// Fleet-wide numbers, from memory.
    pub fn overview(&self) -> Overview {
        let state = self.read();
        let (online, offline, unknown) = state.counts();
        let mut tags = std::collections::BTreeMap::new();
        let mut sums = [(0.0, 0usize); 3];
        for e in state.by_id.values() {
            for t in &e.record.tags {
                *tags.entry(t.clone()).or_insert(0) += 1;
            }
            if e.record.status == ServerStatus::Online {
                for (slot, m) in sums
                    .iter_mut()
                    .zip([Metric::Cpu, Metric::Memory, Metric::Disk])
                {
                    if let Some(v) = e.value(m) {
                        slot.0 += v;
                        slot.1 += 1;
                    }
                }
            }
        }
        let avg = |(sum, n): (f64, usize)| (n > 0).then(|| sum / n as f64);
        Overview {
            total_servers: state.by_id.len(),
            online_servers: online,
            offline_servers: offline,
            unknown_servers: unknown,
            avg_cpu_percent: avg(sums[0]),
            avg_memory_percent: avg(sums[1]),
            avg_disk_percent: avg(sums[2]),
            tags,
        }
    }

    /// The server an agent token belongs to.
    pub fn authenticate_agent(&self, agent_token: &str) -> Result<String> {
        let hash = token::digest(agent_token);
        self.read().by_token.get(&hash).cloned().ok_or_else(|| {
            Error::Unauthorized(
                "unknown agent token (was it rotated or the server deleted?)".into(),
            )
        })
    }

    /// Accept a report from the agent of server `id`: validate all of it, update the latest
    /// state, and answer once it is committed.
    pub async fn ingest(&self, id: &str, report: Report) -> Result<ReportResponse> {
        let metrics = &self.inner.metrics;
        let now = Utc::now();
        let oldest = now - Duration::hours(self.inner.config.raw_retention_hours as i64);
        if let Err(e) = validate::report(&report, now, oldest) {
            metrics.reports_rejected.fetch_add(1, Ordering::Relaxed);
            return Err(e);
        }
        let inventory = match &report.inventory {
            Some(inv) => Some(serde_json::to_string(inv).map_err(|e| Error::Internal(e.into()))?),
            None => None,
        };
        let newest = report.samples.iter().max_by_key(|s| s.ts).cloned();
        let samples = report
            .samples
            .iter()
            .map(|s| (s.ts, metric::values(s)))
            .collect();
        // Reserve room first: a full queue answers 503 before anything changes.
        let permit = self.inner.tx.try_reserve().map_err(|_| {
            metrics.reports_shed.fetch_add(1, Ordering::Relaxed);
            Error::Unavailable("the hub is busy storing reports; retry later".into())
        })?;
        let (ack, done) = oneshot::channel();
        let (answer_interval, requests, came_online) = {
            let mut state = self.write();
            let entry = state
                .by_id
                .get_mut(id)
                .ok_or_else(|| Error::Unauthorized("this agent's server was deleted".into()))?;
            let mut writes = Vec::with_capacity(2);
            let came_online =
                (entry.record.status != ServerStatus::Online).then_some(entry.record.status);
            if came_online.is_some() {
                let event =
                    server_event(EventType::ServerOnline, &Origin::default(), &entry.record)
                        .meta("previous_status", entry.record.status.as_str())
                        .meta("agent_version", report.agent_version.clone());
                entry.record.status = ServerStatus::Online;
                self.changed();
                writes.push(FleetWrite::Status {
                    seq: entry.record.seq,
                    status: ServerStatus::Online,
                    event: Box::new(event),
                });
            }
            let latest = match newest {
                Some(s) if entry.latest.as_ref().is_none_or(|l| s.ts >= l.ts) => {
                    let json = serde_json::to_string(&s).map_err(|e| Error::Internal(e.into()))?;
                    entry.values = metric::values(&s);
                    let ts = s.ts;
                    entry.latest = Some(Arc::new(s));
                    Some((ts, json))
                }
                _ => None,
            };
            entry.record.last_seen_at = Some(entry.record.last_seen_at.map_or(now, |t| t.max(now)));
            entry.record.agent_version = Some(report.agent_version.clone());
            entry.record.agent_interval_secs = Some(report.interval_secs);
            let mut requests = Vec::new();
            if report.inventory.is_some() {
                entry.inventory_requested = false;
            } else if std::mem::take(&mut entry.inventory_requested) {
                requests.push(REQUEST_INVENTORY.to_string());
            }
            writes.push(FleetWrite::Report(ReportWrite {
                seq: entry.record.seq,
                samples,
                latest,
                seen_at: now,
                agent_version: report.agent_version.clone(),
                agent_interval_secs: report.interval_secs,
                inventory,
            }));
            entry.in_flight += 1;
            // Sent under the lock, so the writer sees status changes in the order they happened.
            permit.send(WriterItem {
                writes,
                ack: Some(ack),
            });
            let interval = entry
                .record
                .interval_secs
                .or(report.default_interval_secs)
                .unwrap_or(report.interval_secs);
            (interval, requests, came_online)
        };
        // If the agent hangs up meanwhile, this future is dropped: the guard still lets offline
        // detection see the server again.
        let mut pending = InFlightGuard {
            fleet: self,
            id,
            armed: true,
        };
        let stored = match done.await {
            Ok(result) => result,
            Err(_) => Err(Error::Unavailable(
                "the hub is stopping; retry later".into(),
            )),
        };
        pending.armed = false;
        {
            let mut state = self.write();
            if let Some(entry) = state.by_id.get_mut(id) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
                if stored.is_ok() {
                    let r = &entry.record;
                    if came_online.is_some() {
                        self.publish(Observation::Status {
                            server_id: r.id.clone(),
                            server_name: r.name.clone(),
                            tags: r.tags.clone(),
                            status: ServerStatus::Online,
                            at: now,
                        });
                    }
                    if let Some(sample) = &entry.latest {
                        self.publish(Observation::Report {
                            server_id: r.id.clone(),
                            server_name: r.name.clone(),
                            tags: r.tags.clone(),
                            sample: sample.clone(),
                        });
                    }
                }
                // Nothing was written: undo what the answer would have told, so the agent's
                // retry brings the server online (with its event) and gets the inventory
                // request again.
                if stored.is_err() {
                    if let Some(previous) = came_online {
                        if entry.record.status == ServerStatus::Online {
                            entry.record.status = previous;
                            self.changed();
                        }
                    }
                    if !requests.is_empty() {
                        entry.inventory_requested = true;
                    }
                }
            }
        }
        match stored {
            Ok(()) => {
                metrics.reports_accepted.fetch_add(1, Ordering::Relaxed);
                Ok(ReportResponse {
                    accepted: report.samples.len(),
                    interval_secs: answer_interval,
                    requests,
                    tasks: Vec::new(),
                    cancel: Vec::new(),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Mark servers that missed their reports offline; returns how many.
    pub async fn detect_offline(&self) -> usize {
        let Ok(permit) = self.inner.tx.reserve().await else {
            return 0;
        };
        let now = Utc::now();
        let threshold = self.inner.config.offline_after_intervals;
        let started = self.inner.started_at;
        let grace = Duration::seconds(self.inner.config.startup_grace_secs as i64);
        // The scan of the whole fleet under the read lock: ingest is held up only when some
        // server is due, and the write lock then finds those again.
        if self
            .read()
            .overdue(now, started, started + grace, threshold)
            .is_empty()
        {
            return 0;
        }
        let (ack, done) = oneshot::channel();
        let went_offline: Vec<String> = {
            let mut state = self.write();
            let mut writes = Vec::new();
            let mut ids = Vec::new();
            for id in state.overdue(now, started, started + grace, threshold) {
                let Some(e) = state.by_id.get_mut(&id) else {
                    continue;
                };
                let silent = e.record.last_seen_at.map(|t| (now - t).num_seconds());
                let event = server_event(EventType::ServerOffline, &Origin::default(), &e.record)
                    .meta("last_seen_secs_ago", silent)
                    .meta("missed_intervals", threshold);
                e.record.status = ServerStatus::Offline;
                self.changed();
                writes.push(FleetWrite::Status {
                    seq: e.record.seq,
                    status: ServerStatus::Offline,
                    event: Box::new(event),
                });
                ids.push(id);
            }
            if ids.is_empty() {
                return 0;
            }
            // Sent under the lock, like reports: the writer keeps the order of status changes.
            permit.send(WriterItem {
                writes,
                ack: Some(ack),
            });
            ids
        };
        if !matches!(done.await, Ok(Ok(()))) {
            // Not recorded: let the next check find them again.
            let mut state = self.write();
            for id in &went_offline {
                if let Some(e) = state.by_id.get_mut(id) {
                    if e.record.status == ServerStatus::Offline {
                        e.record.status = ServerStatus::Online;
                        self.changed();
                    }
                }
            }
            return 0;
        }
        let state = self.read();
        for id in &went_offline {
            // A report may have brought it back meanwhile (and published that).
            if let Some(e) = state
                .by_id
                .get(id)
                .filter(|e| e.record.status == ServerStatus::Offline)
            {
                self.publish(Observation::Status {
                    server_id: e.record.id.clone(),
                    server_name: e.record.name.clone(),
                    tags: e.record.tags.clone(),
                    status: ServerStatus::Offline,
                    at: now,
                });
            }
        }
        went_offline.len()
    }

    /// Delete history older than each tier's retention.
    pub async fn prune(&self, now: DateTime<Utc>) -> Result<u64> {
        let seqs: Vec<i64> = self.read().by_id.values().map(|e| e.record.seq).collect();
        let c = &self.inner.config;
        let mut deleted = 0;
        for (tier, keep) in [
            (Tier::Raw, Duration::hours(c.raw_retention_hours as i64)),
            (Tier::Minute, Duration::days(c.minute_retention_days as i64)),
            (Tier::Hour, Duration::days(c.hour_retention_days as i64)),
        ] {
            // In chunks, so ingest commits between them.
            for chunk in seqs.chunks(200) {
                deleted += self
                    .inner
                    .store
                    .prune_history(chunk, tier, now - keep)
                    .await?;
            }
        }
        Ok(deleted)
    }
}

/// Counts a report as committed-or-not once its request ends, however it ends.
struct InFlightGuard<'a> {
    fleet: &'a FleetService,
    id: &'a str,
    armed: bool,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Some(entry) = self.fleet.write().by_id.get_mut(self.id) {
                entry.in_flight = entry.in_flight.saturating_sub(1);
            }
        }
    }
}

/// A server's public view.
pub fn view(e: &Entry) -> ServerView {
    let r = &e.record;
    let metrics = e.latest.as_deref().map(|s| MetricsSummary {
        ts: s.ts,
        cpu_percent: s.cpu_percent,
        memory_percent: e.value(Metric::Memory),
        swap_percent: e.value(Metric::Swap),
        disk_percent: e.value(Metric::Disk),
        load1: s.load[0],
        load5: s.load[1],
        load15: s.load[2],
        net_rx_bps: s.network_total.rx_bps,
        net_tx_bps: s.network_total.tx_bps,
        disk_read_bps: s.disk_io.read_bps,
        disk_write_bps: s.disk_io.write_bps,
        temperature: e.value(Metric::Temperature),
        uptime_secs: s.uptime_secs,
        process_count: s.process_count,
    });
    ServerView {
        id: r.id.clone(),
        name: r.name.clone(),
        description: r.description.clone(),
        tags: r.tags.clone(),
        status: r.status,
        last_seen: r.last_seen_at,
        interval_secs: e.interval_secs(),
        agent_version: r.agent_version.clone(),
        local: r.is_local,
        created_at: r.created_at,
        updated_at: r.updated_at,
        metrics,
    }
}

/// The command that starts an agent for a server, for the hub at `hub_url`.
pub fn agent_command(hub_url: &str, agent_token: &str) -> String {
    format!("SMON_AGENT_TOKEN={agent_token} smon-agent --hub {hub_url}")
}

/// A time as the database keeps it (milliseconds), to compare memory with the database.
fn millis(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp_millis())
}
