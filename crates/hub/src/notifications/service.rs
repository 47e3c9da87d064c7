//! Notification channels: validation, CRUD, tests, routing events into grouped jobs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::channel::{ChannelConfig, DEFAULT_EVENT_TYPES, KINDS, Routing, parse_routing};
use super::transport::Notifier;
use crate::config::NotificationsConfig;
use crate::error::{Error, Result};
use crate::events::{Event, EventType, Origin, Severity, unknown_event_type};
use crate::fleet::FleetService;
use crate::secrets::SecretBox;
use crate::store::{ChannelFields, DeliveryRecord, NotificationItem, Store, WebhookRecord};
use crate::webhooks::send::Verdict;
use crate::webhooks::service::{
    TestOutcome, check_log_query, check_name, check_range, record_test,
};
use crate::webhooks::ssrf::SsrfPolicy;
use crate::wire::{opt_rfc3339_millis, rfc3339_millis};

/// Shown when a stored configuration cannot be decrypted.
pub const UNREADABLE_SETTINGS: &str = "the stored settings cannot be decrypted: restore the secret key (SMON_SECRET_KEY or secret.key) or give the settings again";

/// A new channel.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewChannel {
    /// 1-100 characters.
    pub name: String,
    /// `email`, `slack`, `discord`, `teams`, `telegram`, `ntfy` or `webhook`.
    pub kind: String,
    /// The kind's settings (see docs/NOTIFICATIONS.md); secrets are sealed and never returned.
    #[schema(value_type = Object)]
    pub config: Value,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Event types to send; omitted or `null` for the defaults (alerts, servers offline and
    /// online, disabled webhooks and channels).
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    /// `info` (default), `warning`, `error` or `critical`.
    #[serde(default)]
    pub min_severity: Option<String>,
    /// Only events about servers with one of these tags (events about no server pass).
    #[serde(default)]
    pub tags: Option<Vec<String>>,
    /// Events of one rule or type within this many seconds go out as one message, 0-3600.
    #[serde(default)]
    pub group_window_secs: Option<u32>,
    /// At most this many messages a minute, 1-600.
    #[serde(default)]
    pub rate_limit_per_minute: Option<u32>,
    /// Attempts per message, 1-10 (default 5).
    #[serde(default)]
    pub retry_max: Option<u32>,
    /// Seconds per attempt, 1-30 (default 10).
    #[serde(default)]
    pub timeout: Option<u32>,
}

fn yes() -> bool {
    true
}

/// A partial update: absent fields stay. In `config`, omitted secret settings (`url`,
/// `password`, `bot_token`, `token`, `secret`) keep their stored values.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelPatch {
    pub name: Option<String>,
    /// Must match the channel's kind when given (a kind cannot change).
    pub kind: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    pub enabled: Option<bool>,
    pub event_types: Option<Vec<String>>,
    pub min_severity: Option<String>,
    pub tags: Option<Vec<String>>,
    pub group_window_secs: Option<u32>,
    pub rate_limit_per_minute: Option<u32>,
    pub retry_max: Option<u32>,
    pub timeout: Option<u32>,
}

/// A channel as the API shows it: settings without their secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChannelView {
    pub id: String,
    pub name: String,
    pub kind: String,
    /// The settings, secrets replaced by `has_…` flags and token-bearing URLs cut to the host;
    /// `null` when they cannot be decrypted (see `error`).
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    /// Where messages go, without secrets.
    pub destination: String,
    pub enabled: bool,
    pub event_types: Vec<String>,
    pub min_severity: Severity,
    pub tags: Vec<String>,
    pub group_window_secs: u32,
    pub rate_limit_per_minute: u32,
    pub retry_max: u32,
    pub timeout: u32,
    pub created_by: Option<String>,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
    #[serde(serialize_with = "opt_rfc3339_millis")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_triggered_at: Option<DateTime<Utc>>,
    /// Since when every attempt has failed (`null` when the last one succeeded).
    #[serde(serialize_with = "opt_rfc3339_millis")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub failing_since: Option<DateTime<Utc>>,
    /// Why the hub disabled it, if it did.
    pub disabled_reason: Option<String>,
    /// Messages queued (gathering, waiting or being retried).
    pub pending_deliveries: u64,
    /// What is wrong with the stored settings, if anything.
    pub error: Option<String>,
}

/// The sealed settings of a channel row, opened.
pub fn open_config(secrets: &SecretBox, fields: &ChannelFields) -> Result<ChannelConfig> {
    let json = secrets.open(&fields.config)?;
    serde_json::from_str(&json)
        .map_err(|e| Error::Internal(anyhow::anyhow!("stored channel settings: {e}")))
}

/// The routing of a channel row.
pub fn routing_of(fields: &ChannelFields, defaults: &NotificationsConfig) -> Routing {
    serde_json::from_str(&fields.routing).unwrap_or_else(|_| default_routing(defaults))
}

fn default_routing(defaults: &NotificationsConfig) -> Routing {
    Routing {
        min_severity: Severity::Info,
        tags: Vec::new(),
        group_window_secs: defaults.group_window_secs,
        rate_limit_per_minute: defaults.rate_limit_per_minute,
    }
}

fn check_event_types(types: Option<Vec<String>>) -> Result<Vec<String>> {
    let Some(mut types) = types else {
        return Ok(DEFAULT_EVENT_TYPES
            .iter()
            .map(|t| t.as_str().to_string())
            .collect());
    };
    if types.is_empty() {
        return Err(Error::invalid(
            "event_types",
            "must name at least one type (omit it for the defaults)",
        ));
    }
    for t in &types {
        if EventType::parse(t).is_none() {
            let Error::Invalid { reason, .. } = unknown_event_type(t) else {
                unreachable!()
            };
            return Err(Error::invalid("event_types", reason));
        }
    }
    types.sort();
    types.dedup();
    Ok(types)
}

/// The severity a routing filter judges: a recovery counts as serious as what it ends, so a
/// channel that hears of a problem also hears that it is over.
fn effective_severity(e: &Event) -> Severity {
    match e.event_type.as_str() {
        "alert.resolved" | "alert.acknowledged" => e
            .meta
            .get("alert_severity")
            .and_then(Value::as_str)
            .and_then(Severity::parse)
            .unwrap_or(e.severity),
        // Back from offline: as serious as going offline. A first report is news, not a
        // recovery.
        "server.online"
            if e.meta.get("previous_status").and_then(Value::as_str) == Some("offline") =>
        {
            EventType::ServerOffline.severity()
        }
        _ => e.severity,
    }
}

fn is_alert_event(e: &Event) -> bool {
    matches!(
        e.event_type.as_str(),
        "alert.triggered" | "alert.resolved" | "alert.acknowledged"
    )
}

/// Notification channels.
#[derive(Clone)]
pub struct NotificationService {
    store: Arc<dyn Store>,
    secrets: SecretBox,
    notifier: Arc<Notifier>,
    policy: Arc<SsrfPolicy>,
    fleet: FleetService,
    config: NotificationsConfig,
}

impl NotificationService {
    /// A service over `store`, sealing settings with `secrets`, sending with `notifier`.
    pub fn new(
        store: Arc<dyn Store>,
        secrets: SecretBox,
        notifier: Arc<Notifier>,
        policy: Arc<SsrfPolicy>,
        fleet: FleetService,
        config: NotificationsConfig,
    ) -> Self {
        Self {
            store,
            secrets,
            notifier,
            policy,
            fleet,
            config,
        }
    }

    /// The API view of a channel.
    pub async fn view(&self, w: WebhookRecord) -> Result<ChannelView> {
        let fields = w.channel.as_ref().expect("a channel");
        let routing = routing_of(fields, &self.config);
        let (config, error) = match open_config(&self.secrets, fields) {
            Ok(c) => (Some(c.view()), None),
            Err(_) => (None, Some(UNREADABLE_SETTINGS.to_string())),
        };
        let pending = self.store.pending_jobs(&w.id).await?;
        Ok(ChannelView {
            kind: fields.kind.clone(),
            config,
            destination: w.url,
            id: w.id,
            name: w.name,
            enabled: w.enabled,
            event_types: w.event_types.unwrap_or_default(),
            min_severity: routing.min_severity,
            tags: routing.tags,
            group_window_secs: routing.group_window_secs,
            rate_limit_per_minute: routing.rate_limit_per_minute,
            retry_max: w.retry_max,
            timeout: w.timeout_secs,
            created_by: w.created_by,
            created_at: w.created_at,
            updated_at: w.updated_at,
            last_triggered_at: w.last_triggered_at,
            failing_since: w.failing_since,
            disabled_reason: w.disabled_reason,
            pending_deliveries: pending,
            error,
        })
    }

    /// Every channel.
    pub async fn list(&self) -> Result<Vec<WebhookRecord>> {
        self.store.list_channels().await
    }

    /// One channel.
    pub async fn get(&self, id: &str) -> Result<WebhookRecord> {
        self.store
            .webhook(id)
            .await?
            .filter(|w| w.channel.is_some())
            .ok_or_else(|| Error::NotFound(format!("notification channel {id}")))
    }

    fn seal(&self, config: &ChannelConfig) -> String {
        self.secrets
            .seal(&serde_json::to_string(config).expect("config serialises"))
    }

    /// Create a channel.
    pub async fn create(&self, origin: &Origin, new: NewChannel) -> Result<WebhookRecord> {
        let name = check_name(&new.name)?;
        if !KINDS.contains(&new.kind.as_str()) {
            return Err(Error::invalid(
                "kind",
                format!(
                    "unknown kind {:?}; use one of {}",
                    new.kind,
                    KINDS.join(", ")
                ),
            ));
        }
        let config = ChannelConfig::parse(&new.kind, &new.config, None, &self.policy)?;
        let event_types = check_event_types(new.event_types)?;
        let routing = parse_routing(
            new.min_severity.as_deref(),
            new.tags,
            new.group_window_secs,
            new.rate_limit_per_minute,
            default_routing(&self.config),
        )?;
        let retry_max = check_range("retry_max", new.retry_max.unwrap_or(5), 1..=10)?;
        let timeout = check_range("timeout", new.timeout.unwrap_or(10), 1..=30)?;
        let now = Utc::now();
        let record = WebhookRecord {
            id: Uuid::now_v7().to_string(),
            name,
            url: config.destination(),
            secret: None,
            previous_secret: None,
            previous_secret_expires_at: None,
            enabled: new.enabled,
            event_types: Some(event_types),
            retry_max,
            timeout_secs: timeout,
            created_by: origin.username.clone(),
            created_at: now,
            updated_at: now,
            last_triggered_at: None,
            failing_since: None,
            disabled_reason: None,
            channel: Some(ChannelFields {
                kind: config.kind().to_string(),
                config: self.seal(&config),
                routing: serde_json::to_string(&routing).expect("routing serialises"),
            }),
        };
        let event = Event::new(EventType::ChannelCreated, origin)
            .target("notification_channel", &record.id)
            .meta("name", record.name.clone())
            .meta("kind", config.kind());
        self.store.insert_webhook(&record, &event).await?;
        Ok(record)
    }

    /// Apply a partial update.
    pub async fn update(
        &self,
        origin: &Origin,
        id: &str,
        patch: ChannelPatch,
    ) -> Result<WebhookRecord> {
        let mut w = self.get(id).await?;
        let mut fields = w.channel.clone().expect("a channel");
        let mut changes: Vec<&str> = Vec::new();
        if let Some(kind) = patch.kind.filter(|k| *k != fields.kind) {
            return Err(Error::invalid(
                "kind",
                format!(
                    "a {} channel cannot become {kind:?}; create a new channel",
                    fields.kind
                ),
            ));
        }
        if let Some(name) = patch.name {
            w.name = check_name(&name)?;
            changes.push("name");
        }
        if let Some(config) = patch.config {
            // Secrets left out keep their stored values; unreadable ones must be given again.
            let previous = open_config(&self.secrets, &fields).ok();
            let config =
                ChannelConfig::parse(&fields.kind, &config, previous.as_ref(), &self.policy)?;
            w.url = config.destination();
            fields.config = self.seal(&config);
            changes.push("config");
        }
        if let Some(types) = patch.event_types {
            w.event_types = Some(check_event_types(Some(types))?);
            changes.push("event_types");
        }
        let routing = parse_routing(
            patch.min_severity.as_deref(),
            patch.tags,
            patch.group_window_secs,
            patch.rate_limit_per_minute,
            routing_of(&fields, &self.config),
        )?;
        let routing = serde_json::to_string(&routing).expect("routing serialises");
        if routing != fields.routing {
            fields.routing = routing;
            changes.push("routing");
        }
        if let Some(n) = patch.retry_max {
            w.retry_max = check_range("retry_max", n, 1..=10)?;
            changes.push("retry_max");
        }
        if let Some(n) = patch.timeout {
            w.timeout_secs = check_range("timeout", n, 1..=30)?;
            changes.push("timeout");
        }
        if let Some(enabled) = patch.enabled {
            if enabled && !w.enabled {
                w.failing_since = None;
                w.disabled_reason = None;
            }
            w.enabled = enabled;
            changes.push("enabled");
        }
        w.channel = Some(fields);
        w.updated_at = Utc::now();
        let event = Event::new(EventType::ChannelUpdated, origin)
            .target("notification_channel", &w.id)
            .meta("name", w.name.clone())
            .meta("changes", changes);
        self.store.update_webhook(&w, &event).await?;
        Ok(w)
    }

    /// Delete a channel with its queue and log. Refused while an alert rule names it: that
    /// rule's alerts would silently go nowhere.
    pub async fn delete(&self, origin: &Origin, id: &str) -> Result<()> {
        let w = self.get(id).await?;
        let naming: Vec<String> = self
            .store
            .list_rules()
            .await?
            .into_iter()
            .filter(|r| {
                r.channels
                    .as_ref()
                    .is_some_and(|c| c.iter().any(|c| c == id))
            })
            .map(|r| r.name)
            .collect();
        if !naming.is_empty() {
            return Err(Error::Conflict(format!(
                "alert rules {} send to this channel; change their channels first",
                naming.join(", ")
            )));
        }
        let event = Event::new(EventType::ChannelDeleted, origin)
            .target("notification_channel", id)
            .meta("name", w.name)
            .meta("kind", w.channel.map(|c| c.kind));
        self.store.delete_webhook(id, &event).await
    }

    /// Send a test message to this channel only and report what really happened.
    pub async fn test(&self, origin: &Origin, id: &str) -> Result<TestOutcome> {
        let w = self.get(id).await?;
        let fields = w.channel.as_ref().expect("a channel");
        let event = Event::new(EventType::ChannelTest, origin)
            .target("notification_channel", &w.id)
            .meta("name", w.name.clone())
            .meta(
                "message",
                format!(
                    "This is a test from Server Monitor: notification channel {} works.",
                    w.name
                ),
            );
        let event_id = event.event_id.to_string();
        let attempt = match open_config(&self.secrets, fields) {
            Ok(config) => {
                self.notifier
                    .send(
                        &config,
                        std::slice::from_ref(&event),
                        &event_id,
                        Duration::from_secs(u64::from(w.timeout_secs)),
                    )
                    .await
            }
            Err(_) => crate::webhooks::send::Attempt {
                verdict: Verdict::Failed,
                status_code: None,
                response_body: None,
                error: Some(UNREADABLE_SETTINGS.into()),
                duration_ms: 0,
            },
        };
        record_test(self.store.as_ref(), &w.id, &event, attempt).await
    }

    /// A channel's delivery log.
    pub async fn deliveries(
        &self,
        id: &str,
        status: Option<&str>,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<DeliveryRecord>, u64)> {
        self.get(id).await?;
        check_log_query(limit, status)?;
        self.store.deliveries(id, status, limit, offset).await
    }

    /// The notifications `events` make: one item per event and channel whose routing takes
    /// it, with its group. The dispatcher queues them with the events' webhook deliveries.
    pub async fn route(&self, events: &[Event]) -> Result<Vec<NotificationItem>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let channels: Vec<(WebhookRecord, Routing)> = self
            .store
            .list_channels()
            .await?
            .into_iter()
            .filter(|c| c.enabled)
            .map(|c| {
                let routing = routing_of(c.channel.as_ref().expect("a channel"), &self.config);
                (c, routing)
            })
            .collect();
        if channels.is_empty() {
            return Ok(Vec::new());
        }
        // The channels each alert rule names (rules are few; read once per batch).
        let rule_channels: HashMap<String, Vec<String>> = if events.iter().any(is_alert_event) {
            self.store
                .list_rules()
                .await?
                .into_iter()
                .filter_map(|r| r.channels.map(|c| (r.id, c)))
                .collect()
        } else {
            HashMap::new()
        };
        let mut items = Vec::new();
        for event in events {
            let rule_id = is_alert_event(event)
                .then(|| event.meta.get("rule_id").and_then(Value::as_str))
                .flatten();
            // The channels the rule names: from the event (written while the rule existed,
            // so a resolution after its deletion still goes there), else from the rule.
            let from_event: Option<Vec<String>> = event
                .meta
                .get("channels")
                .and_then(|c| serde_json::from_value(c.clone()).ok());
            let named = from_event
                .as_ref()
                .or_else(|| rule_id.and_then(|r| rule_channels.get(r)));
            for (channel, routing) in &channels {
                // A rule that names channels sends its alerts to those only; each channel still
                // takes only the event types it subscribes to.
                let subscribed = named.is_none_or(|ids| ids.contains(&channel.id))
                    && channel.wants(&event.event_type);
                if !subscribed || effective_severity(event) < routing.min_severity {
                    continue;
                }
                if !routing.tags.is_empty() {
                    if let Some(server) = &event.server_id {
                        let tags = self.fleet.server_tags(server).unwrap_or_default();
                        if !tags.iter().any(|t| routing.tags.contains(t)) {
                            continue;
                        }
                    }
                }
                let group_key = match rule_id {
                    Some(rule) => format!("{}:{rule}", event.event_type),
                    None => event.event_type.clone(),
                };
                items.push(NotificationItem {
                    channel_id: channel.id.clone(),
                    group_key,
                    window: chrono::Duration::seconds(i64::from(routing.group_window_secs)),
                    event: event.clone(),
                });
            }
        }
        Ok(items)
    }
}
