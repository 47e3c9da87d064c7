//! Running the tasks the hub sends: only when this machine's configuration allows, each in its
//! own process group with a timeout, output bounded, results retried until the hub has them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use smon_proto::{MAX_TASK_OUTPUT, TaskAssignment, TaskOutcome, TaskUpdate};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use crate::push::{HubLink, PushError};

/// What this machine lets the hub run.
#[derive(Debug, Clone, Default)]
pub struct TaskPolicy {
    /// Run tasks at all (`allow_tasks`).
    pub allow: bool,
    /// When not empty, only these commands: a command must equal an entry or start with an
    /// entry followed by a space, and contain no shell control characters.
    pub allowlist: Vec<String>,
}

/// Characters that would let an allowed prefix smuggle in another command.
const SHELL_CONTROL: &[char] = &[
    ';', '&', '|', '$', '`', '>', '<', '(', ')', '{', '}', '\n', '\r',
];

impl TaskPolicy {
    /// Why this command may not run, if it may not.
    pub fn refuse(&self, command: &str) -> Option<String> {
        if !self.allow {
            return Some(
                "rejected by agent policy: tasks are disabled on this server (allow_tasks = false)"
                    .into(),
            );
        }
        if self.allowlist.is_empty() {
            return None;
        }
        let listed = self.allowlist.iter().any(|a| {
            command == a
                || command
                    .strip_prefix(a.as_str())
                    .is_some_and(|rest| rest.starts_with(' '))
        });
        if !listed || command.contains(SHELL_CONTROL) {
            return Some(
                "rejected by agent policy: the command is not in this server's task_allowlist"
                    .into(),
            );
        }
        None
    }
}

/// How many finished task ids are remembered, so a task the hub repeats is not run twice.
const REMEMBERED: usize = 4096;
/// Tasks running at once; more wait their turn (queued on the hub until they start).
const CONCURRENT_TASKS: usize = 8;

/// The tasks this agent knows about.
pub struct Tasks<L> {
    link: Arc<L>,
    policy: Arc<TaskPolicy>,
    shutdown: CancellationToken,
    state: Mutex<Known>,
    slots: tokio::sync::Semaphore,
}

#[derive(Default)]
struct Known {
    running: HashMap<String, CancellationToken>,
    seen: HashSet<String>,
    order: VecDeque<String>,
}

impl<L: HubLink> Tasks<L> {
    /// No tasks yet.
    pub fn new(link: Arc<L>, policy: TaskPolicy, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Tasks {
            link,
            policy: Arc::new(policy),
            shutdown,
            state: Mutex::default(),
            slots: tokio::sync::Semaphore::new(CONCURRENT_TASKS),
        })
    }

    /// Whether tasks may run here.
    pub fn enabled(&self) -> bool {
        self.policy.allow
    }

    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Start the assignments not seen before.
    pub fn accept(self: &Arc<Self>, assignments: Vec<TaskAssignment>) {
        for a in assignments {
            let cancel = CancellationToken::new();
            {
                let mut known = self.known();
                if !known.seen.insert(a.id.clone()) {
                    continue;
                }
                known.order.push_back(a.id.clone());
                if known.order.len() > REMEMBERED {
                    if let Some(old) = known.order.pop_front() {
                        if !known.running.contains_key(&old) {
                            known.seen.remove(&old);
                        }
                    }
                }
                known.running.insert(a.id.clone(), cancel.clone());
            }
            let this = self.clone();
            tokio::spawn(async move {
                let id = a.id.clone();
                this.run(a, cancel).await;
                this.known().running.remove(&id);
            });
        }
    }

    /// Cancel running tasks by id.
    pub fn cancel(&self, ids: &[String]) {
        let known = self.known();
        for id in ids {
            if let Some(token) = known.running.get(id) {
                token.cancel();
            }
        }
    }

    async fn run(&self, a: TaskAssignment, cancel: CancellationToken) {
        if let Some(reason) = self.policy.refuse(&a.command) {
            tracing::warn!(task = %a.id, "task refused by the local policy");
            self.report(&a.id, update(TaskOutcome::Rejected, Some(reason)))
                .await;
            return;
        }
        // Its turn first: the hub keeps it queued (and cancellable) until it starts.
        let _slot = tokio::select! {
            _ = self.shutdown.cancelled() => return,
            slot = self.slots.acquire() => match slot {
                Ok(slot) => slot,
                Err(_) => return,
            },
        };
        // Run only once the hub has agreed: it refuses when the task was cancelled meanwhile.
        if !self.report(&a.id, update(TaskOutcome::Running, None)).await {
            return;
        }
        tracing::info!(task = %a.id, timeout_secs = a.timeout_secs, "running task");
        let result = execute(&a, &cancel).await;
        self.report(&a.id, result).await;
    }

    /// Deliver an update, retrying while the hub is away; false when the hub refused it or
    /// the agent is stopping.
    async fn report(&self, id: &str, update: TaskUpdate) -> bool {
        let mut wait = Duration::from_secs(1);
        loop {
            match self.link.task_update(id, &update).await {
                Ok(()) => return true,
                Err(PushError::Rejected(m)) => {
                    tracing::warn!(task = %id, message = %m, "the hub refused a task update");
                    return false;
                }
                Err(e) => {
                    tracing::warn!(task = %id, error = %e, "cannot send a task update; retrying")
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }
}

fn update(outcome: TaskOutcome, error: Option<String>) -> TaskUpdate {
    TaskUpdate {
        outcome,
        exit_code: None,
        stdout: String::new(),
        stderr: String::new(),
        truncated: false,
        error,
        at: Utc::now(),
    }
}

/// Output read so far, shared with the reader so that what arrived is kept even when the
/// reader has to be abandoned.
type Captured = Arc<Mutex<(Vec<u8>, bool)>>;

/// Read up to [`MAX_TASK_OUTPUT`] bytes into `into` and drain the rest (so the command never
/// blocks on a full pipe), marking whether it was cut.
async fn read_bounded(stream: Option<impl AsyncRead + Unpin>, into: Captured) {
    let Some(mut stream) = stream else { return };
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let mut captured = into.lock().unwrap_or_else(|p| p.into_inner());
                let room = MAX_TASK_OUTPUT - captured.0.len();
                captured.0.extend_from_slice(&buf[..n.min(room)]);
                captured.1 |= n > room;
            }
        }
    }
}

fn text_of(captured: &Captured) -> (String, bool) {
    let captured = captured.lock().unwrap_or_else(|p| p.into_inner());
    // Cutting may split a character; keep what decodes.
    (
        String::from_utf8_lossy(&captured.0).into_owned(),
        captured.1,
    )
}

/// Kills the task's process group when dropped, however the task ends (the agent stopping
/// included): nothing a task started outlives it.
struct GroupGuard(Option<u32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        kill_group(self.0);
    }
}

/// Run the command with `sh -c` in its own process group; kill the group at the timeout or on
/// cancel.
pub async fn execute(a: &TaskAssignment, cancel: &CancellationToken) -> TaskUpdate {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&a.command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.env_clear().envs(inherited_env(std::env::vars_os()));
    #[cfg(unix)]
    cmd.process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return update(TaskOutcome::Error, Some(format!("cannot start sh: {e}"))),
    };
    let guard = GroupGuard(child.id());
    let (out, err): (Captured, Captured) = (Arc::default(), Arc::default());
    let stdout = tokio::spawn(read_bounded(child.stdout.take(), out.clone()));
    let stderr = tokio::spawn(read_bounded(child.stderr.take(), err.clone()));
    let timeout = Duration::from_secs(u64::from(a.timeout_secs.max(1)));
    let (outcome, exit_code) = tokio::select! {
        status = child.wait() => (TaskOutcome::Exited, status.ok().and_then(|s| s.code())),
        _ = tokio::time::sleep(timeout) => (TaskOutcome::Timeout, None),
        _ = cancel.cancelled() => (TaskOutcome::Cancelled, None),
    };
    // The task is over when its shell is: background jobs it left go with its group, which
    // also closes the pipes they held.
    drop(guard);
    let _ = child.wait().await;
    // A process that left the group (setsid) could still hold a pipe: keep what arrived.
    for reader in [stdout, stderr] {
        let _ = tokio::time::timeout(Duration::from_secs(2), reader).await;
    }
    let (out, out_cut) = text_of(&out);
    let (err, err_cut) = text_of(&err);
    TaskUpdate {
        outcome,
        exit_code,
        stdout: out,
        stderr: err,
        truncated: out_cut || err_cut,
        error: match outcome {
            TaskOutcome::Timeout => Some(format!("killed after {} s", a.timeout_secs)),
            TaskOutcome::Cancelled => Some("cancelled".into()),
            _ => None,
        },
        at: Utc::now(),
    }
}

/// The environment a task gets: the agent's, without Server Monitor settings (the agent's token,
/// or the hub's secrets for the hub's own agent).
fn inherited_env(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    // SMON_ covers the hub's own settings too, for the hub's embedded agent.
    vars.filter(|(key, _)| !key.to_string_lossy().starts_with("SMON_"))
        .collect()
}

fn kill_group(pid: Option<u32>) {
    #[cfg(unix)]
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    #[cfg(not(unix))]
    let _ = pid;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(command: &str, timeout_secs: u32) -> TaskAssignment {
        TaskAssignment {
            id: "t".into(),
            command: command.into(),
            timeout_secs,
        }
    }

    #[test]
    fn the_local_policy_refuses_unless_allowed_and_listed() {
        let off = TaskPolicy::default();
        assert!(off.refuse("echo hi").unwrap().contains("allow_tasks"));
        let on = TaskPolicy {
            allow: true,
            allowlist: vec![],
        };
        assert!(on.refuse("anything at all").is_none());
        let listed = TaskPolicy {
            allow: true,
            allowlist: vec!["systemctl status".into(), "uptime".into()],
        };
        assert!(listed.refuse("uptime").is_none());
        assert!(listed.refuse("systemctl status nginx").is_none());
        assert!(listed.refuse("systemctl restart nginx").is_some());
        assert!(listed.refuse("uptimex").is_some());
        assert!(listed.refuse("uptime; rm -rf /tmp/x").is_some());
        assert!(listed.refuse("systemctl status $(reboot)").is_some());
    }

    #[tokio::test]
    async fn a_command_runs_with_its_output_and_exit_code() {
        let r = execute(
            &task("echo hi; echo oops >&2; exit 3", 10),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(r.outcome, TaskOutcome::Exited);
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.stdout, "hi\n");
        assert_eq!(r.stderr, "oops\n");
        assert!(!r.truncated);
    }

    #[tokio::test]
    async fn output_is_bounded_and_the_command_still_finishes() {
        let r = execute(
            &task("head -c 200000 /dev/zero | tr '\\0' x", 10),
            &CancellationToken::new(),
        )
        .await;
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.stdout.len(), MAX_TASK_OUTPUT);
        assert!(r.truncated);
    }

    #[tokio::test]
    async fn background_jobs_end_with_the_task_and_its_output_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let cmd = format!("(sleep 2; touch {}) & echo started", marker.display());
        let started = std::time::Instant::now();
        let r = execute(&task(&cmd, 10), &CancellationToken::new()).await;
        assert_eq!(r.exit_code, Some(0));
        assert_eq!(r.stdout, "started\n");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!marker.exists(), "a background job outlived its task");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        // A child of the shell that would write the marker if it outlived the kill.
        let cmd = format!("(sleep 2; touch {}) & sleep 100", marker.display());
        let started = std::time::Instant::now();
        let r = execute(&task(&cmd, 1), &CancellationToken::new()).await;
        assert_eq!(r.outcome, TaskOutcome::Timeout);
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            !marker.exists(),
            "a process of the group survived the timeout"
        );
    }

    #[test]
    fn the_agent_settings_and_token_are_not_passed_to_tasks() {
        let vars = [
            ("SMON_AGENT_TOKEN", "smon_a_x"),
            ("SMON_SECRET_KEY", "k"),
            ("PATH", "/bin"),
            ("HOME", "/root"),
        ];
        let kept = inherited_env(vars.iter().map(|(k, v)| (k.into(), v.into())));
        let names: Vec<_> = kept
            .iter()
            .map(|(k, _)| k.to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["PATH", "HOME"]);
    }
}
