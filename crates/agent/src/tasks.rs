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

/// The tasks this agent knows about.
pub struct Tasks<L> {
    link: Arc<L>,
    policy: Arc<TaskPolicy>,
    shutdown: CancellationToken,
    state: Mutex<Known>,
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
        tracing::info!(task = %a.id, timeout_secs = a.timeout_secs, "running task");
        self.report(&a.id, update(TaskOutcome::Running, None)).await;
        let result = execute(&a, &cancel).await;
        self.report(&a.id, result).await;
    }

    /// Deliver an update, retrying while the hub is away (until the agent stops).
    async fn report(&self, id: &str, update: TaskUpdate) {
        let mut wait = Duration::from_secs(1);
        loop {
            match self.link.task_update(id, &update).await {
                Ok(()) => return,
                Err(PushError::Rejected(m)) => {
                    tracing::warn!(task = %id, message = %m, "the hub refused a task update");
                    return;
                }
                Err(e) => {
                    tracing::warn!(task = %id, error = %e, "cannot send a task update; retrying")
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
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

/// Read up to [`MAX_TASK_OUTPUT`] bytes and drain the rest (so the command never blocks on a
/// full pipe); returns the text and whether it was cut.
async fn read_bounded(stream: Option<impl AsyncRead + Unpin>) -> (String, bool) {
    let Some(mut stream) = stream else {
        return (String::new(), false);
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    let mut cut = false;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = MAX_TASK_OUTPUT - kept.len();
                kept.extend_from_slice(&buf[..n.min(room)]);
                cut |= n > room;
            }
        }
    }
    // Cutting may split a character; keep what decodes.
    (String::from_utf8_lossy(&kept).into_owned(), cut)
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
    let pid = child.id();
    let stdout = tokio::spawn(read_bounded(child.stdout.take()));
    let stderr = tokio::spawn(read_bounded(child.stderr.take()));
    let timeout = Duration::from_secs(u64::from(a.timeout_secs.max(1)));
    let (outcome, exit_code) = tokio::select! {
        status = child.wait() => (TaskOutcome::Exited, status.ok().and_then(|s| s.code())),
        _ = tokio::time::sleep(timeout) => (TaskOutcome::Timeout, None),
        _ = cancel.cancelled() => (TaskOutcome::Cancelled, None),
    };
    if outcome != TaskOutcome::Exited {
        kill_group(pid);
        let _ = child.wait().await;
    }
    // Everything in the group is gone or done; its pipes close. A daemonised grandchild that
    // left the group could hold them open, so do not wait for ever.
    let collect = |h: tokio::task::JoinHandle<(String, bool)>| async move {
        tokio::time::timeout(Duration::from_secs(2), h)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    };
    let (out, out_cut) = collect(stdout).await;
    let (err, err_cut) = collect(stderr).await;
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

/// The environment a task gets: the agent's, without its own settings (its token above all).
fn inherited_env(
    vars: impl Iterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    vars.filter(|(key, _)| !key.to_string_lossy().starts_with("SMON_AGENT_"))
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
            ("SMON_AGENT_HUB", "h"),
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
