//! `webhook`: post each event to one static URL from the configuration, signed, SSRF-checked
//! and retried with the same code as managed webhooks.

use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;

use super::{Plugin, PluginError, check_event_types, parse_config};
use crate::events::Event;
use crate::webhooks::send::{Delivery, Verdict, WebhookClient, backoff};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookConfig {
    url: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    event_types: Vec<String>,
    /// Seconds per attempt.
    #[serde(default = "default_timeout")]
    timeout: u64,
    /// Attempts in all.
    #[serde(default = "default_retry_max")]
    retry_max: u32,
}

fn default_timeout() -> u64 {
    10
}

fn default_retry_max() -> u32 {
    3
}

/// Longest pause between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Posts events to a configured URL.
pub struct WebhookPlugin {
    name: String,
    config: WebhookConfig,
    client: WebhookClient,
}

impl WebhookPlugin {
    /// Build from `{"url", "secret", "event_types", "timeout", "retry_max"}`.
    pub fn new(name: &str, config: &Value, client: WebhookClient) -> Result<Self, String> {
        let config: WebhookConfig = parse_config(config)?;
        client
            .policy()
            .check_url(&config.url)
            .map_err(|e| format!("url: {e}"))?;
        if !(1..=30).contains(&config.timeout) {
            return Err("timeout: must be between 1 and 30 seconds".into());
        }
        if !(1..=10).contains(&config.retry_max) {
            return Err("retry_max: must be between 1 and 10".into());
        }
        check_event_types(&config.event_types)?;
        Ok(Self {
            name: name.to_string(),
            config,
            client,
        })
    }
}

#[async_trait]
impl Plugin for WebhookPlugin {
    fn name(&self) -> &str {
        &self.name
    }

    fn event_types(&self) -> &[String] {
        &self.config.event_types
    }

    fn event_timeout(&self) -> Option<Duration> {
        let per_attempt =
            Duration::from_secs(self.config.timeout) + MAX_BACKOFF + Duration::from_secs(1);
        Some(per_attempt * self.config.retry_max)
    }

    async fn handle_event(&self, event: &Event) -> Result<(), PluginError> {
        let body = serde_json::to_vec(event).map_err(|e| PluginError::new(e.to_string()))?;
        let event_id = event.event_id.to_string();
        let secrets: Vec<&str> = self
            .config
            .secret
            .as_deref()
            .filter(|s| !s.is_empty())
            .into_iter()
            .collect();
        let delivery = Delivery {
            url: &self.config.url,
            body: &body,
            event_id: &event_id,
            event_type: &event.event_type,
            secrets: &secrets,
            timeout: Duration::from_secs(self.config.timeout),
            headers: &[],
        };
        for attempt in 1..=self.config.retry_max {
            let outcome = self.client.attempt(&delivery).await;
            let error = outcome.error.unwrap_or_default();
            match outcome.verdict {
                Verdict::Delivered => return Ok(()),
                Verdict::Failed | Verdict::Gone => {
                    return Err(PluginError::new(format!("attempt {attempt}: {error}")));
                }
                Verdict::Retry { .. } if attempt == self.config.retry_max => {
                    return Err(PluginError::new(format!(
                        "gave up after {attempt} attempts: {error}"
                    )));
                }
                Verdict::Retry { after } => {
                    let pause = after
                        .unwrap_or_else(|| backoff(Duration::from_secs(1), MAX_BACKOFF, attempt))
                        .min(MAX_BACKOFF);
                    tracing::debug!(plugin = %self.name, attempt, %error, ?pause, "webhook attempt failed; retrying");
                    tokio::time::sleep(pause).await;
                }
            }
        }
        unreachable!("retry_max is at least 1")
    }
}
