//! Remote tasks: created by operators, handed to agents in their report answers, run only
//! where the agent's own configuration allows, reported back and recorded with events.

pub mod policy;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use smon_proto::{MAX_TASK_OUTPUT, ReportResponse, TaskAssignment, TaskOutcome, TaskUpdate};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::Caller;
use crate::auth::roles::Role;
use crate::config::TasksConfig;
use crate::error::{Error, Result};
use crate::events::{Event, EventType, Origin};
use crate::fleet::FleetService;
use crate::store::{Store, TaskFilter, TaskRecord, TaskStatus};
use crate::wire::{opt_rfc3339_millis, rfc3339_millis};
use policy::CommandPolicy;

/// Longest command, in characters.
pub const MAX_COMMAND: usize = 10_000;
/// Most servers one fleet task may target.
pub const MAX_FLEET_SERVERS: usize = 1000;

/// A task for one server.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTask {
    /// Run with `sh -c` on the server; at most 10,000 characters.
    pub command: String,
    /// 1–600, default 60.
    pub timeout_seconds: Option<u32>,
    /// Keep stdout and stderr (each cut at 64 KiB); default true.
    pub store_output: Option<bool>,
}

/// A task for several servers: by id or by tag (one of the two).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewFleetTask {
    pub command: String,
    pub timeout_seconds: Option<u32>,
    pub store_output: Option<bool>,
    pub server_ids: Option<Vec<String>>,
    pub tag: Option<String>,
}

/// A task as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    pub id: String,
    pub server_id: String,
    pub server_name: Option<String>,
    pub command: String,
    pub timeout_seconds: u32,
    pub store_output: bool,
    pub status: TaskStatus,
    /// A cancel was asked for and the agent has not confirmed it yet.
    pub cancel_requested: bool,
    /// Who cancelled it (or asked to).
    pub cancelled_by: Option<String>,
    pub created_by: Option<String>,
    pub created_by_name: Option<String>,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String)]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "opt_rfc3339_millis")]
    #[schema(value_type = Option<String>)]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "opt_rfc3339_millis")]
    #[schema(value_type = Option<String>)]
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    /// Output was cut at 64 KiB.
    pub output_truncated: bool,
    pub error: Option<String>,
}

/// How to list tasks.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    pub server_id: Option<String>,
    /// queued, running, finished, failed, timeout, cancelled or interrupted.
    pub status: Option<String>,
    /// 1–1000, default 50.
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

/// A page of tasks.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskView>,
    pub count: usize,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// Tasks.
#[derive(Clone)]
pub struct TaskService {
    store: Arc<dyn Store>,
    fleet: FleetService,
    policy: Arc<CommandPolicy>,
    /// Servers that have queued or running tasks: only their reports query the tasks table.
    open: Arc<Mutex<HashSet<String>>>,
    grace: Duration,
    queued_ttl: Duration,
    retention: Duration,
    /// When this hub started: a task counts as silent only from then.
    started: DateTime<Utc>,
    /// When finished tasks were last pruned (unix seconds).
    last_prune: Arc<std::sync::atomic::AtomicI64>,
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_TASK_OUTPUT {
        let mut end = MAX_TASK_OUTPUT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl TaskService {
    /// The service, knowing which servers have unfinished tasks.
    pub async fn load(
        store: Arc<dyn Store>,
        fleet: FleetService,
        config: &TasksConfig,
    ) -> Result<Self> {
        let open = store.servers_with_open_tasks().await?.into_iter().collect();
        Ok(TaskService {
            store,
            fleet,
            policy: Arc::new(CommandPolicy::new(config)),
            open: Arc::new(Mutex::new(open)),
            grace: Duration::seconds(config.result_grace_secs as i64),
            queued_ttl: Duration::seconds(config.queued_ttl_secs as i64),
            retention: Duration::days(config.retention_days as i64),
            last_prune: Arc::default(),
            started: Utc::now(),
        })
    }

    /// Several hubs on one database: servers given tasks (or cancels) through another hub get
    /// them with their next report to this one. Only adds: a report that finds nothing open
    /// takes its server out again.
    pub async fn sync_from_store(&self) -> Result<()> {
        let servers = self.store.servers_with_open_tasks().await?;
        self.open().extend(servers);
        Ok(())
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A task's view.
    pub fn view(&self, t: TaskRecord) -> TaskView {
        TaskView {
            server_name: self.fleet.server_name(&t.server_id),
            id: t.id,
            server_id: t.server_id,
            command: t.command,
            timeout_seconds: t.timeout_secs,
            store_output: t.store_output,
            status: t.status,
            cancel_requested: t.cancel_requested,
            cancelled_by: t.cancelled_by,
            created_by: t.created_by,
            created_by_name: t.created_by_name,
            created_at: t.created_at,
            started_at: t.started_at,
            finished_at: t.finished_at,
            exit_code: t.exit_code,
            stdout: t.stdout,
            stderr: t.stderr,
            output_truncated: t.output_truncated,
            error: t.error,
        }
    }

    fn event(&self, kind: EventType, origin: &Origin, t: &TaskRecord) -> Event {
        let mut e = Event::new(kind, origin)
            .target("task", &t.id)
            .meta("command", t.command.chars().take(500).collect::<String>())
            .meta("timeout_seconds", t.timeout_secs);
        e.server_id = Some(t.server_id.clone());
        e.server_name = self.fleet.server_name(&t.server_id);
        e
    }

    /// The creator as the origin of events the agent causes.
    fn creator(t: &TaskRecord) -> Origin {
        Origin {
            user_id: t.created_by.clone(),
            username: t.created_by_name.clone(),
            ..Origin::default()
        }
    }

    /// Create the same task on each server (all exist, the command passes the policy).
    pub async fn create(
        &self,
        caller: &Caller,
        server_ids: &[String],
        command: String,
        timeout_seconds: Option<u32>,
        store_output: Option<bool>,
    ) -> Result<Vec<TaskView>> {
        if command.trim().is_empty() {
            return Err(Error::invalid("command", "must not be empty"));
        }
        if command.chars().count() > MAX_COMMAND {
            return Err(Error::invalid(
                "command",
                format!("at most {MAX_COMMAND} characters"),
            ));
        }
        if command.contains('\0') {
            return Err(Error::invalid("command", "must not contain NUL"));
        }
        let timeout = timeout_seconds.unwrap_or(60);
        if !(1..=600).contains(&timeout) {
            return Err(Error::invalid(
                "timeout_seconds",
                "must be between 1 and 600",
            ));
        }
        self.policy.check(&command)?;
        for id in server_ids {
            if self.fleet.server_name(id).is_none() {
                return Err(Error::NotFound(format!("server {id}")));
            }
        }
        let now = Utc::now();
        let tasks: Vec<(TaskRecord, Event)> = server_ids
            .iter()
            .map(|server_id| {
                let t = TaskRecord {
                    id: Uuid::now_v7().to_string(),
                    server_id: server_id.clone(),
                    command: command.clone(),
                    timeout_secs: timeout,
                    store_output: store_output.unwrap_or(true),
                    status: TaskStatus::Queued,
                    cancel_requested: false,
                    cancelled_by: None,
                    created_by: Some(caller.user_id.clone()),
                    created_by_name: Some(caller.username.clone()),
                    created_at: now,
                    started_at: None,
                    finished_at: None,
                    exit_code: None,
                    stdout: None,
                    stderr: None,
                    output_truncated: false,
                    error: None,
                };
                let event = self.event(EventType::TaskCreated, &caller.origin, &t);
                (t, event)
            })
            .collect();
        // Marked open however this ends (after the commit, or on a dropped request): marking
        // a server whose insert failed costs one empty lookup.
        let _mark = MarkOpen {
            tasks: self,
            server_ids,
        };
        self.store.insert_tasks(&tasks).await?;
        Ok(tasks.into_iter().map(|(t, _)| self.view(t)).collect())
    }

    /// The servers a fleet task targets: the listed ids, or every server with the tag.
    pub fn targets(
        &self,
        server_ids: Option<Vec<String>>,
        tag: Option<String>,
    ) -> Result<Vec<String>> {
        let ids = match (server_ids, tag) {
            (Some(ids), None) => {
                // The bound first: the body is the client's to size.
                if ids.len() > MAX_FLEET_SERVERS {
                    return Err(Error::invalid(
                        "server_ids",
                        format!("at most {MAX_FLEET_SERVERS} servers per request"),
                    ));
                }
                let mut seen = HashSet::new();
                ids.into_iter()
                    .filter(|id| seen.insert(id.clone()))
                    .collect()
            }
            (None, Some(tag)) => {
                let ids = self.fleet.ids_with_tag(&tag);
                if ids.is_empty() {
                    return Err(Error::invalid(
                        "tag",
                        format!("no server has the tag {tag:?}"),
                    ));
                }
                ids
            }
            _ => {
                return Err(Error::invalid(
                    "server_ids",
                    "give either server_ids or tag",
                ));
            }
        };
        if ids.is_empty() {
            return Err(Error::invalid(
                "server_ids",
                "must name at least one server",
            ));
        }
        if ids.len() > MAX_FLEET_SERVERS {
            return Err(Error::invalid(
                "server_ids",
                format!("at most {MAX_FLEET_SERVERS} servers per request"),
            ));
        }
        Ok(ids)
    }

    /// Tasks the caller may see (admins: all; others: their own).
    pub async fn list(&self, caller: &Caller, q: &TaskQuery) -> Result<TaskList> {
        let limit = q.limit.unwrap_or(50);
        if !(1..=1000).contains(&limit) {
            return Err(Error::invalid("limit", "must be between 1 and 1000"));
        }
        let status = q
            .status
            .as_deref()
            .map(|s| {
                TaskStatus::parse(s).ok_or_else(|| {
                    Error::invalid("status", "must be queued, running, finished, failed, timeout, cancelled or interrupted")
                })
            })
            .transpose()?;
        let filter = TaskFilter {
            server_id: q.server_id.clone(),
            status,
            created_by: (caller.role != Role::Admin).then(|| caller.user_id.clone()),
            limit,
            offset: q.offset.unwrap_or(0),
        };
        let (tasks, total) = self.store.list_tasks(&filter).await?;
        // Output (up to 128 KiB a task) only with the task itself.
        let tasks: Vec<TaskView> = tasks
            .into_iter()
            .map(|mut t| {
                t.stdout = None;
                t.stderr = None;
                self.view(t)
            })
            .collect();
        Ok(TaskList {
            count: tasks.len(),
            tasks,
            total,
            limit,
            offset: filter.offset,
        })
    }

    async fn visible(&self, caller: &Caller, id: &str) -> Result<TaskRecord> {
        self.store
            .task(id)
            .await?
            .filter(|t| {
                caller.role == Role::Admin
                    || t.created_by.as_deref() == Some(caller.user_id.as_str())
            })
            .ok_or_else(|| Error::NotFound(format!("task {id}")))
    }

    /// One task the caller may see.
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<TaskView> {
        Ok(self.view(self.visible(caller, id).await?))
    }

    /// Cancel: a queued task at once; a running one when its agent confirms.
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<TaskView> {
        for _ in 0..3 {
            let mut t = self.visible(caller, id).await?;
            let expected = t.status;
            let event = match expected {
                TaskStatus::Queued => {
                    t.status = TaskStatus::Cancelled;
                    t.cancelled_by = Some(caller.username.clone());
                    t.finished_at = Some(Utc::now());
                    t.error = Some(format!(
                        "cancelled by {} before it started",
                        caller.username
                    ));
                    Some(self.event(EventType::TaskCancelled, &caller.origin, &t))
                }
                TaskStatus::Running if !t.cancel_requested => {
                    t.cancel_requested = true;
                    t.cancelled_by = Some(caller.username.clone());
                    None
                }
                TaskStatus::Running => return Ok(self.view(t)),
                _ => {
                    return Err(Error::Conflict(format!(
                        "the task is already {}",
                        t.status.as_str()
                    )));
                }
            };
            if self
                .store
                .transition_task(&t, expected, event.as_ref())
                .await?
            {
                if t.cancel_requested {
                    self.open().insert(t.server_id.clone());
                }
                return Ok(self.view(t));
            }
        }
        Err(Error::Conflict("the task changed meanwhile; retry".into()))
    }

    /// Add the server's queued tasks and pending cancels to a report's answer.
    pub async fn attach(&self, server_id: &str, answer: &mut ReportResponse) -> Result<()> {
        // Taken out before the read and put back if anything is open, so a task created
        // meanwhile (which adds its server after its commit) is never forgotten. The guard
        // puts it back on every way out, a dropped request included, unless nothing is open.
        if !self.open().remove(server_id) {
            return Ok(());
        }
        let mut keep = KeepOpen {
            tasks: self,
            server_id,
            armed: true,
        };
        let open = self.store.open_tasks(server_id).await?;
        keep.armed = !open.is_empty();
        for t in open {
            match t.status {
                TaskStatus::Queued => answer.tasks.push(TaskAssignment {
                    id: t.id,
                    command: t.command,
                    timeout_secs: t.timeout_secs,
                }),
                TaskStatus::Running if t.cancel_requested => answer.cancel.push(t.id),
                _ => {}
            }
        }
        Ok(())
    }

    /// Record what the agent of `server_id` says about one of its tasks. Repeated updates are
    /// accepted and change nothing.
    pub async fn agent_update(&self, server_id: &str, task_id: &str, u: TaskUpdate) -> Result<()> {
        let limit = MAX_TASK_OUTPUT * 4;
        if u.stdout.len() > limit || u.stderr.len() > limit {
            return Err(Error::invalid("stdout", "output over the 64 KiB bound"));
        }
        for _ in 0..3 {
            let mut t = self
                .store
                .task(task_id)
                .await?
                .filter(|t| t.server_id == server_id)
                .ok_or_else(|| Error::NotFound(format!("task {task_id}")))?;
            let expected = t.status;
            // The hub's clock, not the agent's: an agent's update may arrive late (the hub
            // was down) and its clock may be off, and the reconciler counts from this.
            let now = Utc::now();
            let kind = match (u.outcome, expected) {
                (TaskOutcome::Running, TaskStatus::Queued) => {
                    t.status = TaskStatus::Running;
                    t.started_at = Some(now);
                    EventType::TaskStarted
                }
                (TaskOutcome::Running, TaskStatus::Running) => return Ok(()),
                // Cancelled (or failed) before the agent started it: it must not run.
                (TaskOutcome::Running, status) => {
                    return Err(Error::Conflict(format!(
                        "the task is already {}; do not run it",
                        status.as_str()
                    )));
                }
                (_, TaskStatus::Queued | TaskStatus::Running | TaskStatus::Interrupted) => {
                    let (status, kind) = match u.outcome {
                        TaskOutcome::Exited if u.exit_code == Some(0) => {
                            (TaskStatus::Finished, EventType::TaskFinished)
                        }
                        TaskOutcome::Timeout => (TaskStatus::Timeout, EventType::TaskTimeout),
                        TaskOutcome::Cancelled => (TaskStatus::Cancelled, EventType::TaskCancelled),
                        _ => (TaskStatus::Failed, EventType::TaskFailed),
                    };
                    t.status = status;
                    t.cancel_requested = false;
                    t.finished_at = Some(now);
                    t.exit_code = u.exit_code;
                    t.output_truncated = u.truncated
                        || u.stdout.len() > MAX_TASK_OUTPUT
                        || u.stderr.len() > MAX_TASK_OUTPUT;
                    if t.store_output {
                        t.stdout = Some(cut(u.stdout.clone()));
                        t.stderr = Some(cut(u.stderr.clone()));
                    }
                    t.error = match u.outcome {
                        TaskOutcome::Exited if u.exit_code != Some(0) => Some(match u.exit_code {
                            Some(code) => format!("exited with code {code}"),
                            None => "killed by a signal".into(),
                        }),
                        _ => u.error.clone().map(|e| e.chars().take(1000).collect()),
                    };
                    kind
                }
                // Already over: a repeated final update.
                _ => return Ok(()),
            };
            let mut event = self.event(kind, &Self::creator(&t), &t);
            if let Some(code) = t.exit_code {
                event = event.meta("exit_code", code);
            }
            if let Some(error) = &t.error {
                event = event.meta("error", error.clone());
            }
            if let (Some(s), Some(f)) = (t.started_at, t.finished_at) {
                event = event.meta("duration_ms", (f - s).num_milliseconds());
            }
            if let (TaskStatus::Cancelled, Some(by)) = (t.status, &t.cancelled_by) {
                event = event.meta("cancelled_by", by.clone());
            }
            if self
                .store
                .transition_task(&t, expected, Some(&event))
                .await?
            {
                return Ok(());
            }
        }
        Err(Error::Unavailable(
            "the task changed meanwhile; retry".into(),
        ))
    }

    /// Mark running tasks interrupted when no result came within their timeout and the
    /// grace period (the agent or the hub restarted meanwhile); returns how many.
    pub async fn reconcile(&self, now: DateTime<Utc>) -> Result<usize> {
        let mut n = 0;
        for mut t in self
            .store
            .queued_tasks_created_before(now - self.queued_ttl)
            .await?
        {
            t.status = TaskStatus::Failed;
            t.finished_at = Some(now);
            t.error = Some(format!(
                "no agent picked it up within {} s (tasks.queued_ttl_secs)",
                self.queued_ttl.num_seconds()
            ));
            let event = self
                .event(EventType::TaskFailed, &Self::creator(&t), &t)
                .meta("error", "not picked up");
            if self
                .store
                .transition_task(&t, TaskStatus::Queued, Some(&event))
                .await?
            {
                n += 1;
            }
        }
        // Old finished tasks go, once an hour.
        let last = self.last_prune.load(std::sync::atomic::Ordering::Relaxed);
        if now.timestamp() - last >= 3600 {
            self.last_prune
                .store(now.timestamp(), std::sync::atomic::Ordering::Relaxed);
            let pruned = self.store.prune_tasks(now - self.retention).await?;
            if pruned > 0 {
                tracing::info!(tasks = pruned, "old finished tasks deleted");
            }
        }
        for mut t in self
            .store
            .running_tasks_started_before(now - self.grace)
            .await?
        {
            // An agent cannot deliver while the hub is down: count from the hub's start.
            let started = t.started_at.unwrap_or(t.created_at).max(self.started);
            if started + Duration::seconds(i64::from(t.timeout_secs)) + self.grace > now {
                continue;
            }
            t.status = TaskStatus::Interrupted;
            t.finished_at = Some(now);
            t.error = Some("interrupted: no result from the agent within the timeout".into());
            let event = self
                .event(EventType::TaskFailed, &Self::creator(&t), &t)
                .meta("error", "interrupted");
            if self
                .store
                .transition_task(&t, TaskStatus::Running, Some(&event))
                .await?
            {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Marks servers as having open tasks when dropped.
struct MarkOpen<'a> {
    tasks: &'a TaskService,
    server_ids: &'a [String],
}

impl Drop for MarkOpen<'_> {
    fn drop(&mut self) {
        self.tasks.open().extend(self.server_ids.iter().cloned());
    }
}

/// Puts a server back among those with open tasks when dropped, unless disarmed.
struct KeepOpen<'a> {
    tasks: &'a TaskService,
    server_id: &'a str,
    armed: bool,
}

impl Drop for KeepOpen<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.tasks.open().insert(self.server_id.to_string());
        }
    }
}

/// Every 10 seconds, mark running tasks whose result never came as interrupted.
pub async fn run_reconciler(
    tasks: TaskService,
    leadership: std::sync::Arc<crate::leader::Leadership>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    // Often enough for the grace period to mean what it says.
    let every = tasks.grace.num_seconds().clamp(1, 10) as u64;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(every));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // Leadership is asked at each tick (not as a `select!` guard, read only once).
            _ = tick.tick() => if leadership.is_leader() {
                match tasks.reconcile(Utc::now()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(tasks = n, "tasks failed: no result within their timeout, or never picked up"),
                    Err(e) => tracing::warn!(error = %e, "task reconciliation failed"),
                }
            },
        }
    }
}
