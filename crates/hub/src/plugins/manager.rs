//! The plugin manager: loading from the allowlist, one bounded queue and worker per plugin,
//! isolation (panics, errors, timeouts) and the counters behind `GET /api/plugins`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};
use utoipa::ToSchema;

use super::{Plugin, PluginContext, PluginDeps, PluginRegistry};
use crate::config::PluginsConfig;
use crate::events::{Event, EventType, Origin};
use crate::store::Store;
use crate::wire::opt_rfc3339_millis;

/// At most one `plugin.error` event per plugin in this interval; the rest are counted.
const ERROR_EVENT_INTERVAL: Duration = Duration::from_secs(10);
/// Longest `on_startup` may take.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Counts down as plugins finish with one event; the dispatcher marks the event dispatched
/// when it reaches zero.
#[derive(Clone)]
pub struct Completion {
    remaining: Arc<AtomicUsize>,
    notify: Arc<Notify>,
}

impl Completion {
    fn finish_one(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.notify.notify_one();
        }
    }

    /// Whether every plugin is done with the event.
    pub fn is_done(&self) -> bool {
        self.remaining.load(Ordering::Acquire) == 0
    }
}

struct Job {
    event: Arc<Event>,
    done: Completion,
}

#[derive(Default)]
struct Stats {
    handled: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
    last_error: Mutex<Option<(String, DateTime<Utc>)>>,
    /// When the last `plugin.error` event was written, and how many were held back since.
    error_events: Mutex<(Option<Instant>, u64)>,
}

/// One loaded plugin.
struct Slot {
    name: String,
    kind: String,
    plugin: Arc<dyn Plugin>,
    state: Mutex<&'static str>,
    sender: Mutex<Option<mpsc::Sender<Job>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    stats: Stats,
}

/// A plugin's state and counters, as served by `GET /api/plugins`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginStatus {
    pub name: String,
    /// The built-in (or registered) kind it is an instance of.
    pub kind: String,
    /// Whether it is on the allowlist and loaded.
    pub enabled: bool,
    /// `running`, `failed` (did not start), `stopped`, or `disabled` (not on the allowlist).
    pub state: String,
    /// Subscribed event types; `null` means all.
    pub event_types: Option<Vec<String>>,
    pub queue_capacity: usize,
    /// Events waiting in its queue now.
    pub queued: usize,
    pub handled: u64,
    pub failed: u64,
    /// Events not offered because its queue was full.
    pub dropped: u64,
    pub last_error: Option<String>,
    #[serde(serialize_with = "opt_rfc3339_millis")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_error_at: Option<DateTime<Utc>>,
}

/// Runs the allowlisted plugins.
pub struct PluginManager {
    slots: Vec<Arc<Slot>>,
    /// Configured or built-in plugins that are not loaded, by (name, kind).
    disabled: Vec<(String, String)>,
    store: Arc<dyn Store>,
    completed: Arc<Notify>,
    config: PluginsConfig,
}

impl PluginManager {
    /// Build every allowlisted plugin, start them and their workers. A plugin whose
    /// configuration is invalid is an error naming it (the hub refuses to start); a plugin
    /// whose `on_startup` fails stays stopped and is reported through `plugin.error`.
    pub async fn start(
        config: &PluginsConfig,
        registry: &PluginRegistry,
        deps: &PluginDeps,
        ctx: &PluginContext,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Self>, String> {
        let mut slots = Vec::new();
        let mut loaded = BTreeSet::new();
        // Names are matched without case: PLUGIN_<NAME>_CONFIG arrives in upper case.
        let configs: BTreeMap<String, &Value> = config
            .config
            .iter()
            .map(|(k, v)| (k.trim().to_lowercase(), v))
            .collect();
        if config.enabled {
            for name in &config.allowlist {
                let name = &name.trim().to_lowercase();
                if name.is_empty() || !loaded.insert(name.clone()) {
                    continue;
                }
                let empty = Value::Object(Default::default());
                let plugin_config = configs.get(name).copied().unwrap_or(&empty);
                let (kind, plugin) = registry
                    .build(name, plugin_config, deps)
                    .map_err(|e| format!("plugin {name:?}: {e}"))?;
                slots.push(Arc::new(Slot {
                    name: name.clone(),
                    kind,
                    plugin,
                    state: Mutex::new("starting"),
                    sender: Mutex::new(None),
                    worker: Mutex::new(None),
                    stats: Stats::default(),
                }));
            }
        }
        let mut disabled: Vec<(String, String)> = Vec::new();
        for (name, cfg) in &configs {
            if !loaded.contains(name) {
                let kind = cfg.get("type").and_then(Value::as_str).unwrap_or(name);
                tracing::info!(plugin = %name, "plugin configured but not on the allowlist; not loaded");
                disabled.push((name.clone(), kind.to_string()));
            }
        }
        for kind in registry.factories.keys() {
            if !loaded.contains(kind) && !configs.contains_key(kind) {
                disabled.push((kind.clone(), kind.clone()));
            }
        }
        let manager = Arc::new(PluginManager {
            slots,
            disabled,
            store,
            completed: Arc::new(Notify::new()),
            config: config.clone(),
        });
        for slot in &manager.slots {
            manager.start_slot(slot, ctx).await;
        }
        Ok(manager)
    }

    async fn start_slot(self: &Arc<Self>, slot: &Arc<Slot>, ctx: &PluginContext) {
        let started = tokio::time::timeout(STARTUP_TIMEOUT, slot.plugin.on_startup(ctx)).await;
        let failure = match started {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!(
                "on_startup took longer than {} s",
                STARTUP_TIMEOUT.as_secs()
            )),
        };
        if let Some(error) = failure {
            tracing::error!(plugin = %slot.name, %error, "plugin failed to start; it stays stopped");
            *slot.state.lock().unwrap() = "failed";
            self.record_failure(slot, None, &format!("startup: {error}"))
                .await;
            return;
        }
        let (tx, rx) = mpsc::channel(self.config.queue_capacity);
        *slot.sender.lock().unwrap() = Some(tx);
        *slot.state.lock().unwrap() = "running";
        let worker = tokio::spawn(self.clone().run_worker(slot.clone(), rx));
        *slot.worker.lock().unwrap() = Some(worker);
        tracing::info!(plugin = %slot.name, kind = %slot.kind, "plugin started");
    }

    /// Notified whenever an event's [`Completion`] reaches zero.
    pub fn completed_signal(&self) -> Arc<Notify> {
        self.completed.clone()
    }

    /// Offer an event to every running plugin subscribed to its type, without waiting.
    pub fn dispatch(&self, event: Arc<Event>) -> Completion {
        let targets: Vec<(&Arc<Slot>, mpsc::Sender<Job>)> = self
            .slots
            .iter()
            .filter(|s| {
                let types = s.plugin.event_types();
                types.is_empty() || types.iter().any(|t| *t == event.event_type)
            })
            .filter_map(|s| s.sender.lock().unwrap().clone().map(|tx| (s, tx)))
            .collect();
        let done = Completion {
            remaining: Arc::new(AtomicUsize::new(targets.len())),
            notify: self.completed.clone(),
        };
        for (slot, tx) in targets {
            let job = Job {
                event: event.clone(),
                done: done.clone(),
            };
            if let Err(e) = tx.try_send(job) {
                if matches!(e, mpsc::error::TrySendError::Full(_)) {
                    let dropped = slot.stats.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                    if dropped.is_power_of_two() {
                        tracing::warn!(plugin = %slot.name, dropped, "plugin queue full; events dropped");
                    }
                }
                done.finish_one();
            }
        }
        done
    }

    async fn run_worker(self: Arc<Self>, slot: Arc<Slot>, mut rx: mpsc::Receiver<Job>) {
        let permits = Arc::new(Semaphore::new(slot.plugin.concurrency().max(1)));
        let mut running = JoinSet::new();
        while let Some(job) = rx.recv().await {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let (manager, slot) = (self.clone(), slot.clone());
            running.spawn(async move {
                manager.handle(&slot, &job.event).await;
                job.done.finish_one();
                drop(permit);
            });
            while running.try_join_next().is_some() {}
        }
        while running.join_next().await.is_some() {}
    }

    /// Run one event through one plugin in its own task, so a panic or a hang stays there.
    async fn handle(&self, slot: &Slot, event: &Arc<Event>) {
        let limit = slot
            .plugin
            .event_timeout()
            .unwrap_or(Duration::from_secs(self.config.event_timeout_secs));
        let (plugin, ev) = (slot.plugin.clone(), event.clone());
        let mut task = AbortOnDrop(tokio::spawn(async move { plugin.handle_event(&ev).await }));
        let outcome = match tokio::time::timeout(limit, &mut task.0).await {
            Ok(Ok(Ok(()))) => Ok(()),
            Ok(Ok(Err(e))) => Err(e.to_string()),
            Ok(Err(join)) if join.is_panic() => {
                Err(format!("panicked: {}", panic_text(join.into_panic())))
            }
            Ok(Err(_)) => Err("cancelled".to_string()),
            Err(_) => {
                task.0.abort();
                Err(format!("timed out after {} s", limit.as_secs_f32()))
            }
        };
        match outcome {
            Ok(()) => {
                slot.stats.handled.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => {
                slot.stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(plugin = %slot.name, event_id = %event.event_id, %error, "plugin failed on an event");
                self.record_failure(slot, Some(event), &error).await;
            }
        }
    }

    /// Remember the error and emit `plugin.error`, at most once per interval per plugin, and
    /// never for a failure on a `plugin.error` event (no errors about errors).
    async fn record_failure(&self, slot: &Slot, event: Option<&Event>, error: &str) {
        *slot.stats.last_error.lock().unwrap() = Some((error.to_string(), Utc::now()));
        if event.is_some_and(|e| e.event_type == EventType::PluginError.as_str()) {
            return;
        }
        let suppressed = {
            let mut throttle = slot.stats.error_events.lock().unwrap();
            let now = Instant::now();
            if throttle
                .0
                .is_some_and(|last| now.duration_since(last) < ERROR_EVENT_INTERVAL)
            {
                throttle.1 += 1;
                return;
            }
            let suppressed = throttle.1;
            *throttle = (Some(now), 0);
            suppressed
        };
        let mut report = Event::new(EventType::PluginError, &Origin::default())
            .target("plugin", &slot.name)
            .meta("plugin", slot.name.clone())
            .meta("kind", slot.kind.clone())
            .meta("error", error.chars().take(1000).collect::<String>())
            .meta("suppressed", suppressed);
        if let Some(e) = event {
            report = report
                .meta("failed_event_id", e.event_id.to_string())
                .meta("failed_event_type", e.event_type.clone());
        }
        if let Err(e) = self.store.append_event(&report).await {
            tracing::error!(plugin = %slot.name, error = %e, "cannot record plugin.error");
        }
    }

    /// Every plugin: loaded ones with their counters, then the ones not on the allowlist.
    pub fn statuses(&self) -> Vec<PluginStatus> {
        let mut out: Vec<PluginStatus> = self
            .slots
            .iter()
            .map(|s| {
                let types = s.plugin.event_types();
                let last_error = s.stats.last_error.lock().unwrap().clone();
                let queued = s
                    .sender
                    .lock()
                    .unwrap()
                    .as_ref()
                    .map_or(0, |tx| tx.max_capacity() - tx.capacity());
                PluginStatus {
                    name: s.name.clone(),
                    kind: s.kind.clone(),
                    enabled: true,
                    state: s.state.lock().unwrap().to_string(),
                    event_types: (!types.is_empty()).then(|| types.to_vec()),
                    queue_capacity: self.config.queue_capacity,
                    queued,
                    handled: s.stats.handled.load(Ordering::Relaxed),
                    failed: s.stats.failed.load(Ordering::Relaxed),
                    dropped: s.stats.dropped.load(Ordering::Relaxed),
                    last_error_at: last_error.as_ref().map(|(_, at)| *at),
                    last_error: last_error.map(|(e, _)| e),
                }
            })
            .collect();
        out.extend(self.disabled.iter().map(|(name, kind)| PluginStatus {
            name: name.clone(),
            kind: kind.clone(),
            enabled: false,
            state: "disabled".into(),
            event_types: None,
            queue_capacity: self.config.queue_capacity,
            queued: 0,
            handled: 0,
            failed: 0,
            dropped: 0,
            last_error: None,
            last_error_at: None,
        }));
        out
    }

    /// Close the queues, let the workers finish what is queued (bounded by the configured
    /// drain time), then call every plugin's `on_shutdown`.
    pub async fn shutdown(&self) {
        for slot in &self.slots {
            slot.sender.lock().unwrap().take();
        }
        let deadline = tokio::time::Instant::now()
            + Duration::from_millis(self.config.shutdown_timeout_millis);
        for slot in &self.slots {
            let worker = slot.worker.lock().unwrap().take();
            if let Some(mut worker) = worker {
                if tokio::time::timeout_at(deadline, &mut worker)
                    .await
                    .is_err()
                {
                    tracing::warn!(plugin = %slot.name, "plugin did not drain its queue in time");
                    worker.abort();
                }
            }
            let budget = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(Duration::from_millis(200));
            if tokio::time::timeout(budget, slot.plugin.on_shutdown())
                .await
                .is_err()
            {
                tracing::warn!(plugin = %slot.name, "plugin on_shutdown timed out");
            }
            let mut state = slot.state.lock().unwrap();
            if *state == "running" {
                *state = "stopped";
            }
        }
    }
}

/// A task that is aborted when its handle goes away (a worker aborted at shutdown must not
/// leave a plugin call running).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic".into())
}
