//! Plugins: the trait, the registry of kinds, and the manager that runs each plugin behind its
//! own bounded queue with panics caught, a per-event timeout and failures counted.

pub mod exec;
pub mod jsonl;
pub mod manager;
pub mod webhook;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use manager::{PluginManager, PluginStatus};

use crate::events::{Event, EventType};
use crate::webhooks::send::WebhookClient;

/// What a plugin learns about the hub at start.
#[derive(Debug, Clone)]
pub struct PluginContext {
    pub version: &'static str,
    pub listen: String,
    pub data_dir: PathBuf,
}

/// A plugin's failure, in words (it ends up in logs, counters and `plugin.error` events).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PluginError(pub String);

impl PluginError {
    /// A failure with this message.
    pub fn new(message: impl Into<String>) -> Self {
        PluginError(message.into())
    }
}

/// An extension that receives events. Implement it, then register a factory for it in a
/// [`PluginRegistry`] under a kind name.
#[async_trait]
pub trait Plugin: Send + Sync + 'static {
    /// The configured name (unique among loaded plugins).
    fn name(&self) -> &str;
    /// The event types it wants; empty means all.
    fn event_types(&self) -> &[String] {
        &[]
    }
    /// How many events it may handle at once (1 keeps them in order).
    fn concurrency(&self) -> usize {
        1
    }
    /// Longest it may take per event, when it needs more than the configured default.
    fn event_timeout(&self) -> Option<Duration> {
        None
    }
    /// Called once before the first event; an error leaves the plugin stopped.
    async fn on_startup(&self, _ctx: &PluginContext) -> Result<(), PluginError> {
        Ok(())
    }
    /// Called once at shutdown, after its queue has drained (or the drain timed out).
    async fn on_shutdown(&self) {}
    /// Handle one event. Errors are counted; the event is not offered again.
    async fn handle_event(&self, event: &Event) -> Result<(), PluginError>;
}

/// What factories may need from the hub.
#[derive(Clone)]
pub struct PluginDeps {
    /// The SSRF-safe, signing webhook client shared with managed webhooks.
    pub webhooks: WebhookClient,
}

/// Builds a plugin named `name` from its JSON configuration; the error says what is wrong.
pub type PluginFactory =
    Arc<dyn Fn(&str, &Value, &PluginDeps) -> Result<Arc<dyn Plugin>, String> + Send + Sync>;

/// The plugin kinds the hub knows, by kind name.
#[derive(Clone, Default)]
pub struct PluginRegistry {
    factories: BTreeMap<String, PluginFactory>,
}

impl PluginRegistry {
    /// The built-in kinds: `jsonl`, `exec`, `webhook`.
    pub fn builtin() -> Self {
        let mut r = Self::default();
        r.register("jsonl", |name, cfg, _| {
            Ok(Arc::new(jsonl::JsonlPlugin::new(name, cfg)?))
        });
        r.register("exec", |name, cfg, _| {
            Ok(Arc::new(exec::ExecPlugin::new(name, cfg)?))
        });
        r.register("webhook", |name, cfg, deps| {
            Ok(Arc::new(webhook::WebhookPlugin::new(
                name,
                cfg,
                deps.webhooks.clone(),
            )?))
        });
        r
    }

    /// Add (or replace) a kind.
    pub fn register(
        &mut self,
        kind: &str,
        factory: impl Fn(&str, &Value, &PluginDeps) -> Result<Arc<dyn Plugin>, String>
        + Send
        + Sync
        + 'static,
    ) {
        self.factories.insert(kind.to_string(), Arc::new(factory));
    }

    /// Build the plugin `name` from its configuration. Its kind is `"type"` in the
    /// configuration, or the name itself.
    pub fn build(
        &self,
        name: &str,
        config: &Value,
        deps: &PluginDeps,
    ) -> Result<(String, Arc<dyn Plugin>), String> {
        let kind = match config.get("type") {
            None => name.to_string(),
            Some(Value::String(k)) => k.clone(),
            Some(_) => return Err("\"type\" must be a string".into()),
        };
        let factory = self.factories.get(&kind).ok_or_else(|| {
            let known: Vec<&str> = self.factories.keys().map(String::as_str).collect();
            format!(
                "unknown plugin kind {kind:?}; known kinds: {}",
                known.join(", ")
            )
        })?;
        Ok((kind, factory(name, config, deps)?))
    }
}

/// Deserialize a plugin's configuration, ignoring the `type` key, with the field named on error.
pub fn parse_config<T: DeserializeOwned>(config: &Value) -> Result<T, String> {
    let mut config = config.clone();
    if let Value::Object(map) = &mut config {
        map.remove("type");
    }
    serde_path_to_error::deserialize(config).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{path}: {}", e.inner())
        }
    })
}

/// Check a configured list of event types against the catalog.
pub fn check_event_types(types: &[String]) -> Result<(), String> {
    for t in types {
        if EventType::parse(t).is_none() {
            let valid: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
            return Err(format!(
                "event_types: unknown event type {t:?}; valid types: {}",
                valid.join(", ")
            ));
        }
    }
    Ok(())
}
