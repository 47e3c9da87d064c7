//! `exec`: run a program per event with the event JSON on stdin — plugins in any language.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{Plugin, PluginError, check_event_types, parse_config};
use crate::events::Event;

/// Output kept per stream for the log; the rest is read and discarded.
const OUTPUT_LIMIT: usize = 4096;
/// Variables of the hub's environment a program inherits; everything else is withheld.
const PASSED_THROUGH: [&str; 5] = ["PATH", "HOME", "LANG", "TZ", "TMPDIR"];

/// Kill the program's whole process group (it leads one: see `process_group(0)`).
fn kill_group(child: &tokio::process::Child) {
    #[cfg(unix)]
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is shared.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecConfig {
    command: String,
    #[serde(default)]
    args: Vec<String>,
    /// Seconds the program may run per event before it is killed.
    #[serde(default = "default_timeout")]
    timeout: u64,
    #[serde(default = "default_concurrency")]
    max_concurrency: usize,
    #[serde(default)]
    event_types: Vec<String>,
    /// Extra environment variables for the program.
    #[serde(default)]
    env: BTreeMap<String, String>,
}

fn default_timeout() -> u64 {
    10
}

fn default_concurrency() -> usize {
    4
}

/// Runs an external program for each event.
pub struct ExecPlugin {
    name: String,
    config: ExecConfig,
}

impl ExecPlugin {
    /// Build from `{"command", "args", "timeout", "max_concurrency", "event_types", "env"}`.
    pub fn new(name: &str, config: &Value) -> Result<Self, String> {
        let config: ExecConfig = parse_config(config)?;
        if config.command.trim().is_empty() {
            return Err("command: must not be empty".into());
        }
        if !(1..=3600).contains(&config.timeout) {
            return Err("timeout: must be between 1 and 3600 seconds".into());
        }
        if !(1..=64).contains(&config.max_concurrency) {
            return Err("max_concurrency: must be between 1 and 64".into());
        }
        check_event_types(&config.event_types)?;
        Ok(Self {
            name: name.to_string(),
            config,
        })
    }
}

/// Read up to [`OUTPUT_LIMIT`] bytes, then keep draining so the program never blocks on a full pipe.
async fn read_bounded(mut reader: impl AsyncRead + Unpin) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = reader.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = OUTPUT_LIMIT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    String::from_utf8_lossy(&kept).trim().to_string()
}

#[async_trait]
impl Plugin for ExecPlugin {
    fn name(&self) -> &str {
        &self.name
    }

    fn event_types(&self) -> &[String] {
        &self.config.event_types
    }

    fn concurrency(&self) -> usize {
        self.config.max_concurrency
    }

    fn event_timeout(&self) -> Option<Duration> {
        // Our own timeout kills the program and reports it; the manager's is a backstop.
        Some(Duration::from_secs(self.config.timeout + 2))
    }

    async fn handle_event(&self, event: &Event) -> Result<(), PluginError> {
        let input = serde_json::to_vec(event).map_err(|e| PluginError::new(e.to_string()))?;
        let mut command = Command::new(&self.config.command);
        // The hub's own environment may hold secrets (SMON_ADMIN_PASSWORD, plugin settings):
        // the program gets only what it needs to run plus its configured variables.
        command.env_clear();
        for name in PASSED_THROUGH {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        // Its own process group, so that a timeout kills everything it started.
        #[cfg(unix)]
        command.process_group(0);
        let mut child = command
            .args(&self.config.args)
            .envs(&self.config.env)
            .env("SMON_EVENT_TYPE", &event.event_type)
            .env("SMON_EVENT_ID", event.event_id.to_string())
            .env("SMON_PLUGIN_NAME", &self.name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| PluginError::new(format!("cannot run {:?}: {e}", self.config.command)))?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = tokio::spawn(read_bounded(child.stdout.take().expect("piped")));
        let stderr = tokio::spawn(read_bounded(child.stderr.take().expect("piped")));
        let run = async {
            // A program that does not read its input must not hang us: ignore a broken pipe.
            let _ = stdin.write_all(&input).await;
            let _ = stdin.write_all(b"\n").await;
            drop(stdin);
            child.wait().await
        };
        let limit = Duration::from_secs(self.config.timeout);
        let status = match tokio::time::timeout(limit, run).await {
            Ok(status) => {
                status.map_err(|e| PluginError::new(format!("waiting for the program: {e}")))?
            }
            Err(_) => {
                kill_group(&child);
                let _ = child.kill().await;
                return Err(PluginError::new(format!(
                    "timed out after {} s; the program was killed",
                    self.config.timeout
                )));
            }
        };
        let stdout = stdout.await.unwrap_or_default();
        let stderr = stderr.await.unwrap_or_default();
        if !stdout.is_empty() || !stderr.is_empty() {
            tracing::info!(plugin = %self.name, event_id = %event.event_id, %stdout, %stderr, "exec plugin output");
        }
        if status.success() {
            Ok(())
        } else {
            let code = status
                .code()
                .map_or("a signal".to_string(), |c| c.to_string());
            let tail: String = stderr
                .chars()
                .rev()
                .take(200)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Err(PluginError::new(format!("exited with {code}: {tail}")))
        }
    }
}
