//! Agent configuration: defaults, then a TOML file, then environment, then flags.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Everything the agent reads at start.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The hub's base URL, e.g. `https://monitor.example.com`.
    pub hub: String,
    /// This server's agent token (prefer `token_file` or `SMON_AGENT_TOKEN`: flags show in `ps`).
    pub token: String,
    /// A file holding the agent token.
    pub token_file: Option<PathBuf>,
    /// Seconds between samples.
    pub interval_secs: u32,
    /// Whether this machine runs tasks the hub sends (never, unless set here).
    pub allow_tasks: bool,
    /// With `allow_tasks`: when not empty, only commands equal to an entry or starting with an
    /// entry and a space, without shell control characters (`;&|$` and the like).
    pub task_allowlist: Vec<String>,
    /// How many seconds of samples to keep while the hub cannot be reached.
    pub buffer_secs: u64,
    /// Longest wait between retries while the hub cannot be reached, in seconds.
    pub max_backoff_secs: u64,
    /// Where an enrolled agent keeps the token it was given.
    pub state_file: PathBuf,
    /// Server name to enroll under (default: the hostname).
    pub name: Option<String>,
    /// Tags to enroll with.
    pub tags: Vec<String>,
    /// Seconds before a request to the hub is abandoned.
    pub request_timeout_secs: u64,
    /// A PEM file of CA certificates to trust besides the built-in roots (a private CA).
    pub ca_file: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            hub: String::new(),
            token: String::new(),
            token_file: None,
            interval_secs: 10,
            allow_tasks: false,
            task_allowlist: Vec::new(),
            buffer_secs: 7200,
            max_backoff_secs: 60,
            state_file: PathBuf::from("/var/lib/smon-agent/state.json"),
            name: None,
            tags: Vec::new(),
            request_timeout_secs: 10,
            ca_file: None,
        }
    }
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("hub", &self.hub)
            .field(
                "token",
                &if self.token.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("token_file", &self.token_file)
            .field("interval_secs", &self.interval_secs)
            .field("allow_tasks", &self.allow_tasks)
            .field("buffer_secs", &self.buffer_secs)
            .field("state_file", &self.state_file)
            .finish_non_exhaustive()
    }
}

impl AgentConfig {
    /// Read a TOML file over the defaults.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text)
            .with_context(|| format!("invalid configuration in {}", path.display()))
    }

    /// Check the values, naming the key at fault.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.hub.is_empty() {
            bail!("hub: the hub URL is required (--hub or SMON_AGENT_HUB)");
        }
        let url = reqwest::Url::parse(&self.hub)
            .with_context(|| format!("hub: {:?} is not a URL", self.hub))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!("hub: must be an http:// or https:// URL");
        }
        if !(1..=3600).contains(&self.interval_secs) {
            bail!("interval_secs: must be between 1 and 3600");
        }
        if self.buffer_secs < 3600 {
            bail!("buffer_secs: must be at least 3600 (one hour of outage)");
        }
        if self.max_backoff_secs == 0 {
            bail!("max_backoff_secs: must be positive");
        }
        if !(1..=300).contains(&self.request_timeout_secs) {
            bail!("request_timeout_secs: must be between 1 and 300");
        }
        Ok(())
    }
}

/// What an enrolled agent remembers between starts.
#[derive(Serialize, Deserialize)]
pub struct AgentState {
    pub server_id: String,
    pub agent_token: String,
}

impl AgentState {
    /// Read the state file; `None` when it does not exist.
    pub fn load(path: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read_to_string(path) {
            Ok(text) => Ok(Some(serde_json::from_str(&text).with_context(|| {
                format!("corrupt agent state in {}", path.display())
            })?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Write the state file, readable by its owner only (it holds the token).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let tmp = path.with_extension("tmp");
        // A leftover from a crash keeps its mode when reopened: start from a new file.
        let _ = std::fs::remove_file(&tmp);
        {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options
                .open(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            file.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> AgentConfig {
        AgentConfig {
            hub: "https://hub.example.com".into(),
            ..AgentConfig::default()
        }
    }

    #[test]
    fn a_file_sets_keys_and_keeps_the_other_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(
            &path,
            "hub = \"http://10.0.0.1:9083\"\ninterval_secs = 30\n",
        )
        .unwrap();
        let c = AgentConfig::from_file(&path).unwrap();
        assert_eq!(c.hub, "http://10.0.0.1:9083");
        assert_eq!(c.interval_secs, 30);
        assert!(!c.allow_tasks, "tasks stay off unless set");
        c.validate().unwrap();

        std::fs::write(&path, "hub = \"x\"\nintervl = 3\n").unwrap();
        let e = AgentConfig::from_file(&path).unwrap_err();
        assert!(format!("{e:#}").contains("intervl"), "{e:#}");
    }

    #[test]
    fn bad_values_name_the_key() {
        for (c, key) in [
            (AgentConfig::default(), "hub"),
            (
                AgentConfig {
                    hub: "ftp://x".into(),
                    ..valid()
                },
                "hub",
            ),
            (
                AgentConfig {
                    interval_secs: 0,
                    ..valid()
                },
                "interval_secs",
            ),
            (
                AgentConfig {
                    buffer_secs: 60,
                    ..valid()
                },
                "buffer_secs",
            ),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(key), "{e}");
        }
    }

    #[test]
    fn the_token_is_redacted_and_the_state_file_is_private() {
        let c = AgentConfig {
            token: "smon_a_secret".into(),
            ..valid()
        };
        assert!(!format!("{c:?}").contains("smon_a_secret"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/state.json");
        assert!(AgentState::load(&path).unwrap().is_none());
        AgentState {
            server_id: "s1".into(),
            agent_token: "smon_a_t".into(),
        }
        .save(&path)
        .unwrap();
        assert_eq!(
            AgentState::load(&path).unwrap().unwrap().agent_token,
            "smon_a_t"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0);
        }
    }
}
