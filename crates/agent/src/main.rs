//! `smon-agent`: the command line.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use smon_agent::collect::Collector;
use smon_agent::config::{AgentConfig, AgentState};
use smon_agent::http::{HttpLink, enroll};
use smon_agent::push::{PushSettings, run};
use tokio_util::sync::CancellationToken;

/// Collects this machine's metrics and inventory and pushes them to a Server Monitor hub.
///
/// Settings come from the defaults, then `--config FILE`, then the environment, then flags.
// No Debug: it holds the token.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "SMON_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// The hub's base URL.
    #[arg(long, env = "SMON_AGENT_HUB")]
    hub: Option<String>,
    /// The agent token (prefer SMON_AGENT_TOKEN or --token-file: flags are visible in ps).
    #[arg(long, env = "SMON_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the agent token.
    #[arg(long, env = "SMON_AGENT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Seconds between samples [default: 10].
    #[arg(long, env = "SMON_AGENT_INTERVAL")]
    interval: Option<u32>,
    /// Run tasks the hub sends [default: false].
    #[arg(long, env = "SMON_AGENT_ALLOW_TASKS")]
    allow_tasks: Option<bool>,
    /// With --allow-tasks true: only this command (or it followed by arguments); repeatable.
    #[arg(long = "task-allow")]
    task_allowlist: Vec<String>,
    /// Seconds of samples kept while the hub is unreachable [default: 7200].
    #[arg(long, env = "SMON_AGENT_BUFFER_SECS")]
    buffer_secs: Option<u64>,
    /// Longest wait between retries, in seconds [default: 60].
    #[arg(long, env = "SMON_AGENT_MAX_BACKOFF_SECS")]
    max_backoff_secs: Option<u64>,
    /// A PEM file of CA certificates to trust besides the built-in roots.
    #[arg(long, env = "SMON_AGENT_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// Where an enrolled agent keeps its token [default: /var/lib/smon-agent/state.json].
    #[arg(long, env = "SMON_AGENT_STATE_FILE")]
    state_file: Option<PathBuf>,
    /// Register with the hub using its enrollment token (once; the token it gets is kept in
    /// the state file).
    #[arg(long, env = "SMON_AGENT_ENROLL", hide_env_values = true)]
    enroll: Option<String>,
    /// Server name to enroll under [default: the hostname].
    #[arg(long, env = "SMON_AGENT_NAME")]
    name: Option<String>,
    /// Tag to enroll with (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// Print one sample and the inventory as JSON and exit.
    #[arg(long)]
    print: bool,
}

impl Cli {
    fn into_config(self) -> anyhow::Result<(AgentConfig, Option<String>, bool)> {
        let mut c = match &self.config {
            Some(path) => AgentConfig::from_file(path)?,
            None => AgentConfig::default(),
        };
        if let Some(v) = self.hub {
            c.hub = v;
        }
        if let Some(v) = self.token {
            c.token = v;
        }
        if let Some(v) = self.token_file {
            c.token_file = Some(v);
        }
        if let Some(v) = self.interval {
            c.interval_secs = v;
        }
        if !self.task_allowlist.is_empty() {
            c.task_allowlist = self.task_allowlist;
        }
        if let Some(v) = self.allow_tasks {
            c.allow_tasks = v;
        }
        if let Some(v) = self.buffer_secs {
            c.buffer_secs = v;
        }
        if let Some(v) = self.max_backoff_secs {
            c.max_backoff_secs = v;
        }
        if let Some(v) = self.ca_file {
            c.ca_file = Some(v);
        }
        if let Some(v) = self.state_file {
            c.state_file = v;
        }
        if let Some(v) = self.name {
            c.name = Some(v);
        }
        if !self.tags.is_empty() {
            c.tags = self.tags;
        }
        Ok((c, self.enroll, self.print))
    }
}

/// The token from the config, the token file, or the state file of an earlier enrollment;
/// enrolls when there is none and an enrollment token was given.
async fn resolve_token(config: &AgentConfig, enrollment: Option<String>) -> anyhow::Result<String> {
    if !config.token.is_empty() {
        return Ok(config.token.clone());
    }
    if let Some(path) = &config.token_file {
        let token = std::fs::read_to_string(path)
            .with_context(|| format!("token_file: cannot read {}", path.display()))?;
        return Ok(token.trim().to_string());
    }
    if let Some(state) = AgentState::load(&config.state_file)? {
        return Ok(state.agent_token);
    }
    let Some(enrollment_token) = enrollment else {
        anyhow::bail!(
            "token: no agent token (--token, SMON_AGENT_TOKEN or --token-file), no state file at {} and no --enroll",
            config.state_file.display()
        );
    };
    let name = match &config.name {
        Some(n) => n.clone(),
        None => {
            sysinfo::System::host_name().context("name: cannot read the hostname; pass --name")?
        }
    };
    let request = smon_proto::EnrollRequest {
        enrollment_token,
        name,
        tags: config.tags.clone(),
    };
    let answer = enroll(config, &request).await?;
    AgentState {
        server_id: answer.server_id.clone(),
        agent_token: answer.agent_token.clone(),
    }
    .save(&config.state_file)?;
    tracing::info!(server_id = %answer.server_id, name = %answer.name, state_file = %config.state_file.display(), "enrolled");
    Ok(answer.agent_token)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let (config, enrollment, print) = Cli::parse().into_config()?;
    if print {
        let mut collector = Collector::new();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let out =
            serde_json::json!({ "sample": collector.sample(), "inventory": collector.inventory() });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    config.validate()?;
    let token = resolve_token(&config, enrollment).await?;
    let link = HttpLink::new(&config, &token)?;
    let settings = PushSettings {
        interval: Duration::from_secs(u64::from(config.interval_secs)),
        buffer: Duration::from_secs(config.buffer_secs),
        max_backoff: Duration::from_secs(config.max_backoff_secs),
        initial_jitter: true,
        tasks: smon_agent::tasks::TaskPolicy {
            allow: config.allow_tasks,
            allowlist: config.task_allowlist.clone(),
        },
    };
    tracing::info!(hub = %config.hub, interval_secs = config.interval_secs, allow_tasks = config.allow_tasks, "agent starting");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        stop.cancel();
    });
    let collector = tokio::task::spawn_blocking(Collector::new).await?;
    run(link, collector, settings, shutdown).await;
    tracing::info!("agent stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
