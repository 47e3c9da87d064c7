//! `jsonl`: append each event as one JSON line to a file, rotated by size.

use std::io::Write;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::Mutex;

use super::{Plugin, PluginContext, PluginError, check_event_types, parse_config};
use crate::events::Event;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonlConfig {
    /// The file; relative paths are under the data directory.
    path: PathBuf,
    /// Rotate when the file would grow past this size.
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
    /// Rotated files kept (`path.1` newest … `path.N`).
    #[serde(default = "default_keep")]
    keep: u32,
    #[serde(default)]
    event_types: Vec<String>,
}

fn default_max_bytes() -> u64 {
    10 * 1024 * 1024
}

fn default_keep() -> u32 {
    5
}

/// Appends events to a JSON Lines file.
pub struct JsonlPlugin {
    name: String,
    config: JsonlConfig,
    path: std::sync::OnceLock<PathBuf>,
    lock: Mutex<()>,
}

impl JsonlPlugin {
    /// Build from `{"path", "max_bytes", "keep", "event_types"}`.
    pub fn new(name: &str, config: &Value) -> Result<Self, String> {
        let config: JsonlConfig = parse_config(config)?;
        if config.path.as_os_str().is_empty() {
            return Err("path: must not be empty".into());
        }
        if config.max_bytes < 1024 {
            return Err("max_bytes: must be at least 1024".into());
        }
        check_event_types(&config.event_types)?;
        Ok(Self {
            name: name.to_string(),
            config,
            path: std::sync::OnceLock::new(),
            lock: Mutex::new(()),
        })
    }
}

fn rotate(path: &Path, keep: u32) -> std::io::Result<()> {
    let numbered = |n: u32| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    if keep == 0 {
        return std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(numbered(keep));
    for n in (1..keep).rev() {
        let from = numbered(n);
        if from.exists() {
            std::fs::rename(&from, numbered(n + 1))?;
        }
    }
    std::fs::rename(path, numbered(1))
}

fn append(path: &Path, line: &[u8], max_bytes: u64, keep: u32) -> std::io::Result<()> {
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    if size > 0 && size + line.len() as u64 > max_bytes {
        rotate(path, keep)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // One write per line so that concurrent readers never see half a line.
    file.write_all(line)
}

#[async_trait]
impl Plugin for JsonlPlugin {
    fn name(&self) -> &str {
        &self.name
    }

    fn event_types(&self) -> &[String] {
        &self.config.event_types
    }

    async fn on_startup(&self, ctx: &PluginContext) -> Result<(), PluginError> {
        let path = ctx.data_dir.join(&self.config.path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| PluginError::new(format!("cannot create {}: {e}", dir.display())))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| PluginError::new(format!("cannot open {}: {e}", path.display())))?;
        let _ = self.path.set(path);
        Ok(())
    }

    async fn handle_event(&self, event: &Event) -> Result<(), PluginError> {
        let path = self
            .path
            .get()
            .ok_or_else(|| PluginError::new("not started"))?
            .clone();
        let mut line = serde_json::to_vec(event).map_err(|e| PluginError::new(e.to_string()))?;
        line.push(b'\n');
        let (max_bytes, keep) = (self.config.max_bytes, self.config.keep);
        let _guard = self.lock.lock().await;
        tokio::task::spawn_blocking(move || append(&path, &line, max_bytes, keep))
            .await
            .map_err(|e| PluginError::new(e.to_string()))?
            .map_err(|e| PluginError::new(format!("cannot write: {e}")))
    }
}
