//! Managed webhooks: validation, CRUD, secret rotation, tests, the delivery log and one
//! delivery attempt of a queued job (what the delivery workers run).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::send::{Attempt, Delivery, Verdict, WebhookClient, backoff};
use super::signing::{SECRET_PREFIX, generate_secret};
use crate::config::{NotificationsConfig, WebhooksConfig};
use crate::error::{Error, Result};
use crate::events::{Event, EventType, Origin, unknown_event_type};
use crate::notifications::Notifier;
use crate::notifications::service::{UNREADABLE_SETTINGS, open_config, routing_of};
use crate::secrets::SecretBox;
use crate::store::{
    AttemptEffects, ChannelFields, DeliveryRecord, JobRecord, Store, WebhookRecord,
};
use crate::wire::{opt_rfc3339_millis, rfc3339_millis};

/// Longest grace period of a rotated secret.
const MAX_GRACE_SECS: u64 = 7 * 24 * 3600;
/// Shown (and logged as the delivery error) when a stored secret cannot be decrypted.
const UNREADABLE_SECRET: &str = "the stored secret cannot be decrypted: restore the secret key (SMON_SECRET_KEY or secret.key) or set a new secret";
/// A claimed job is leased this much longer than its longest attempt.
const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// A new webhook.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// 1-100 characters.
    pub name: String,
    /// http or https, at most 2048 characters, not a private or local destination.
    pub url: String,
    /// Signing secret; omit (or use `generate_secret`) for none.
    #[serde(default)]
    pub secret: Option<String>,
    /// Have the hub generate a `whsec_` secret, returned once in the answer.
    #[serde(default)]
    pub generate_secret: bool,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Event types to deliver; `null` or `[]` for all.
    #[serde(default)]
    pub event_types: Option<Vec<String>>,
    /// Attempts per event, 1-10 (default 3).
    #[serde(default)]
    pub retry_max: Option<u32>,
    /// Seconds per attempt, 1-30 (default 10).
    #[serde(default)]
    pub timeout: Option<u32>,
}

fn yes() -> bool {
    true
}

/// A partial update: absent fields stay; `"secret": ""` clears the secret.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    pub name: Option<String>,
    pub url: Option<String>,
    pub secret: Option<String>,
    pub generate_secret: Option<bool>,
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "crate::wire::present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub event_types: Option<Option<Vec<String>>>,
    pub retry_max: Option<u32>,
    pub timeout: Option<u32>,
}

/// A webhook as the API shows it: the secret only as a hint.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookView {
    pub id: String,
    pub name: String,
    pub url: String,
    pub enabled: bool,
    /// `null` means every type.
    pub event_types: Option<Vec<String>>,
    pub retry_max: u32,
    pub timeout: u32,
    /// The secret's first and last characters, never the secret (`null` when unsigned).
    pub secret: Option<String>,
    pub has_secret: bool,
    /// Until then the previous secret signs too (after a rotation with a grace period).
    #[serde(serialize_with = "opt_rfc3339_millis")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
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
    /// Deliveries queued (waiting or being retried).
    pub pending_deliveries: u64,
}

/// One attempt in the delivery log.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: String,
    pub webhook_id: String,
    pub event_id: String,
    pub event_type: String,
    /// `success`, `failed` or `retrying`.
    pub status: &'static str,
    pub status_code: Option<u16>,
    /// The first KiB of the receiver's answer.
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub attempt: u32,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub delivered_at: DateTime<Utc>,
    pub duration_ms: u64,
}

impl From<DeliveryRecord> for DeliveryView {
    fn from(d: DeliveryRecord) -> Self {
        DeliveryView {
            id: d.id,
            webhook_id: d.webhook_id,
            event_id: d.event_id,
            event_type: d.event_type,
            status: d.status,
            status_code: d.status_code,
            response_body: d.response_body,
            error: d.error,
            attempt: d.attempt,
            delivered_at: d.delivered_at,
            duration_ms: d.duration_ms,
        }
    }
}

/// The real outcome of a test delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct TestOutcome {
    /// False when the receiver failed or could not be reached.
    pub success: bool,
    pub status_code: Option<u16>,
    pub duration_ms: u64,
    pub error: Option<String>,
    pub delivery_id: String,
    pub event_id: String,
}

/// Delivery counters for the metrics endpoint.
#[derive(Debug, Default)]
pub struct DeliveryMetrics {
    pub success: AtomicU64,
    pub failed: AtomicU64,
    pub retrying: AtomicU64,
    /// Attempts by duration: ≤ 100 ms, ≤ 500 ms, ≤ 1 s, ≤ 5 s, ≤ 10 s, longer.
    pub latency_buckets: [AtomicU64; 6],
    pub latency_ms_total: AtomicU64,
}

impl DeliveryMetrics {
    /// Upper bounds of the latency buckets, in milliseconds (the last is unbounded).
    pub const BUCKETS_MS: [u64; 5] = [100, 500, 1000, 5000, 10_000];

    fn record(&self, status: &str, duration_ms: u64) {
        let counter = match status {
            "success" => &self.success,
            "retrying" => &self.retrying,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let bucket = Self::BUCKETS_MS
            .iter()
            .position(|b| duration_ms <= *b)
            .unwrap_or(5);
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.latency_ms_total
            .fetch_add(duration_ms, Ordering::Relaxed);
    }
}

/// Managed webhooks.
#[derive(Clone)]
pub struct WebhookService {
    store: Arc<dyn Store>,
    secrets: SecretBox,
    client: WebhookClient,
    config: WebhooksConfig,
    metrics: Arc<DeliveryMetrics>,
    /// Renders and sends the jobs of notification channels.
    notifier: Arc<Notifier>,
    notifications: NotificationsConfig,
}

/// `value` when it lies in `range`, else a 400 naming `field`.
pub fn check_range(field: &str, value: u32, range: std::ops::RangeInclusive<u32>) -> Result<u32> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(Error::invalid(
            field,
            format!("must be between {} and {}", range.start(), range.end()),
        ))
    }
}

/// A target's name: 1 to 100 characters, trimmed.
pub fn check_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Error::invalid("name", "must be 1 to 100 characters"));
    }
    Ok(name.to_string())
}

/// Log a test attempt to one target (webhook or channel) with its test event, written as
/// already dispatched, and say what happened.
pub async fn record_test(
    store: &dyn Store,
    target_id: &str,
    event: &Event,
    attempt: Attempt,
) -> Result<TestOutcome> {
    let success = attempt.verdict == Verdict::Delivered;
    let delivery = DeliveryRecord {
        id: Uuid::now_v7().to_string(),
        webhook_id: target_id.to_string(),
        event_id: event.event_id.to_string(),
        event_type: event.event_type.clone(),
        status: if success { "success" } else { "failed" },
        status_code: attempt.status_code,
        response_body: attempt.response_body,
        error: attempt.error.clone(),
        attempt: 1,
        delivered_at: Utc::now(),
        duration_ms: attempt.duration_ms,
    };
    store.record_test(&delivery, event).await?;
    Ok(TestOutcome {
        success,
        status_code: attempt.status_code,
        duration_ms: attempt.duration_ms,
        error: attempt.error,
        delivery_id: delivery.id,
        event_id: delivery.event_id,
    })
}

/// The paging and status filter of a delivery log.
pub fn check_log_query(limit: u32, status: Option<&str>) -> Result<()> {
    if !(1..=1000).contains(&limit) {
        return Err(Error::invalid("limit", "must be between 1 and 1000"));
    }
    if status.is_some_and(|s| !matches!(s, "success" | "failed" | "retrying")) {
        return Err(Error::invalid(
            "status",
            "must be success, failed or retrying",
        ));
    }
    Ok(())
}

fn check_event_types(types: Option<Vec<String>>) -> Result<Option<Vec<String>>> {
    let Some(types) = types.filter(|t| !t.is_empty()) else {
        return Ok(None);
    };
    for t in &types {
        if EventType::parse(t).is_none() {
            let Error::Invalid { reason, .. } = unknown_event_type(t) else {
                unreachable!()
            };
            return Err(Error::invalid("event_types", reason));
        }
    }
    let mut types = types;
    types.sort();
    types.dedup();
    Ok(Some(types))
}

fn check_secret(secret: &str) -> Result<()> {
    if secret.len() > 256 || secret.chars().any(char::is_control) {
        return Err(Error::invalid(
            "secret",
            "must be at most 256 printable characters",
        ));
    }
    if let Some(b64) = secret.strip_prefix(SECRET_PREFIX) {
        let ok = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .is_ok_and(|raw| (24..=64).contains(&raw.len()));
        if !ok {
            return Err(Error::invalid(
                "secret",
                "a whsec_ secret must be whsec_ followed by base64 of 24 to 64 bytes",
            ));
        }
    }
    Ok(())
}

/// `whsec_…Ab12`: enough to tell secrets apart, too little to use.
fn hint(secret: &str) -> String {
    let prefix = if secret.starts_with(SECRET_PREFIX) {
        SECRET_PREFIX
    } else {
        ""
    };
    let tail: String = if secret.chars().count() >= 16 {
        secret
            .chars()
            .rev()
            .take(4)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect()
    } else {
        String::new()
    };
    format!("{prefix}…{tail}")
}

fn host_of(url: &str) -> String {
    reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default()
}

impl WebhookService {
    /// A service over `store`, sealing secrets with `secrets` and sending with `client`.
    pub fn new(
        store: Arc<dyn Store>,
        secrets: SecretBox,
        client: WebhookClient,
        config: WebhooksConfig,
        notifier: Arc<Notifier>,
        notifications: NotificationsConfig,
    ) -> Self {
        Self {
            store,
            secrets,
            client,
            config,
            metrics: Arc::default(),
            notifier,
            notifications,
        }
    }

    /// Delivery counters.
    pub fn metrics(&self) -> &DeliveryMetrics {
        &self.metrics
    }

    fn check_url(&self, url: &str) -> Result<String> {
        let url = url.trim();
        self.client
            .policy()
            .check_url(url)
            .map_err(|e| Error::invalid("url", e))?;
        Ok(url.to_string())
    }

    /// The API view of a webhook.
    pub async fn view(&self, w: WebhookRecord) -> Result<WebhookView> {
        // A secret sealed with another key stays listable: the hint says what is wrong.
        let secret = w.secret.as_deref().map(|s| match self.secrets.open(s) {
            Ok(plain) => hint(&plain),
            Err(_) => UNREADABLE_SECRET.to_string(),
        });
        let pending = self.store.pending_jobs(&w.id).await?;
        Ok(WebhookView {
            has_secret: secret.is_some(),
            secret,
            previous_secret_expires_at: w
                .previous_secret_expires_at
                .filter(|at| *at > Utc::now() && w.previous_secret.is_some()),
            id: w.id,
            name: w.name,
            url: w.url,
            enabled: w.enabled,
            event_types: w.event_types,
            retry_max: w.retry_max,
            timeout: w.timeout_secs,
            created_by: w.created_by,
            created_at: w.created_at,
            updated_at: w.updated_at,
            last_triggered_at: w.last_triggered_at,
            failing_since: w.failing_since,
            disabled_reason: w.disabled_reason,
            pending_deliveries: pending,
        })
    }

    /// Every webhook.
    pub async fn list(&self) -> Result<Vec<WebhookRecord>> {
        self.store.list_webhooks().await
    }

    /// One webhook.
    pub async fn get(&self, id: &str) -> Result<WebhookRecord> {
        self.store
            .webhook(id)
            .await?
            .filter(|w| w.channel.is_none())
            .ok_or_else(|| Error::NotFound(format!("webhook {id}")))
    }

    /// Create a webhook; the generated secret, if one was asked for, comes back once.
    pub async fn create(
        &self,
        origin: &Origin,
        new: NewWebhook,
    ) -> Result<(WebhookRecord, Option<String>)> {
        let name = check_name(&new.name)?;
        let url = self.check_url(&new.url)?;
        let event_types = check_event_types(new.event_types)?;
        let retry_max = check_range("retry_max", new.retry_max.unwrap_or(3), 1..=10)?;
        let timeout = check_range("timeout", new.timeout.unwrap_or(10), 1..=30)?;
        let (secret, generated) = match (new.secret.filter(|s| !s.is_empty()), new.generate_secret)
        {
            (Some(_), true) => {
                return Err(Error::invalid(
                    "secret",
                    "give a secret or generate_secret, not both",
                ));
            }
            (Some(s), false) => {
                check_secret(&s)?;
                (Some(s), None)
            }
            (None, true) => {
                let s = generate_secret();
                (Some(s.clone()), Some(s))
            }
            (None, false) => (None, None),
        };
        let now = Utc::now();
        let webhook = WebhookRecord {
            id: Uuid::now_v7().to_string(),
            name,
            url,
            secret: secret.map(|s| self.secrets.seal(&s)),
            previous_secret: None,
            previous_secret_expires_at: None,
            enabled: new.enabled,
            event_types,
            retry_max,
            timeout_secs: timeout,
            created_by: origin.username.clone(),
            created_at: now,
            updated_at: now,
            last_triggered_at: None,
            failing_since: None,
            disabled_reason: None,
            channel: None,
        };
        let event = Event::new(EventType::WebhookCreated, origin)
            .target("webhook", &webhook.id)
            .meta("name", webhook.name.clone())
            .meta("host", host_of(&webhook.url));
        self.store.insert_webhook(&webhook, &event).await?;
        Ok((webhook, generated))
    }

    /// Apply a partial update; a generated secret comes back once.
    pub async fn update(
        &self,
        origin: &Origin,
        id: &str,
        patch: WebhookPatch,
    ) -> Result<(WebhookRecord, Option<String>)> {
        let mut w = self.get(id).await?;
        let mut changes: Vec<&str> = Vec::new();
        if let Some(name) = patch.name {
            w.name = check_name(&name)?;
            changes.push("name");
        }
        if let Some(url) = patch.url {
            w.url = self.check_url(&url)?;
            changes.push("url");
        }
        if let Some(types) = patch.event_types {
            w.event_types = check_event_types(types)?;
            changes.push("event_types");
        }
        if let Some(n) = patch.retry_max {
            w.retry_max = check_range("retry_max", n, 1..=10)?;
            changes.push("retry_max");
        }
        if let Some(n) = patch.timeout {
            w.timeout_secs = check_range("timeout", n, 1..=30)?;
            changes.push("timeout");
        }
        let mut generated = None;
        match (patch.secret, patch.generate_secret.unwrap_or(false)) {
            (Some(_), true) => {
                return Err(Error::invalid(
                    "secret",
                    "give a secret or generate_secret, not both",
                ));
            }
            (Some(s), false) if s.is_empty() => {
                w.secret = None;
                w.previous_secret = None;
                w.previous_secret_expires_at = None;
                changes.push("secret");
            }
            // Replacing the secret outright also ends a rotation's grace period: an admin
            // replacing a leaked secret must not leave the old one signing.
            (Some(s), false) => {
                check_secret(&s)?;
                w.secret = Some(self.secrets.seal(&s));
                w.previous_secret = None;
                w.previous_secret_expires_at = None;
                changes.push("secret");
            }
            (None, true) => {
                let s = generate_secret();
                w.secret = Some(self.secrets.seal(&s));
                w.previous_secret = None;
                w.previous_secret_expires_at = None;
                generated = Some(s);
                changes.push("secret");
            }
            (None, false) => {}
        }
        if let Some(enabled) = patch.enabled {
            if enabled && !w.enabled {
                // A fresh start: the failure run that disabled it is forgiven.
                w.failing_since = None;
                w.disabled_reason = None;
            }
            w.enabled = enabled;
            changes.push("enabled");
        }
        w.updated_at = Utc::now();
        let event = Event::new(EventType::WebhookUpdated, origin)
            .target("webhook", &w.id)
            .meta("name", w.name.clone())
            .meta("changes", changes);
        self.store.update_webhook(&w, &event).await?;
        Ok((w, generated))
    }

    /// Delete a webhook with its queue and log.
    pub async fn delete(&self, origin: &Origin, id: &str) -> Result<()> {
        let w = self.get(id).await?;
        let event = Event::new(EventType::WebhookDeleted, origin)
            .target("webhook", id)
            .meta("name", w.name)
            .meta("host", host_of(&w.url));
        self.store.delete_webhook(id, &event).await
    }

    /// Replace the secret with a generated one; the old one keeps signing for `grace_secs`.
    pub async fn rotate_secret(
        &self,
        origin: &Origin,
        id: &str,
        grace_secs: u64,
    ) -> Result<(WebhookRecord, String)> {
        if grace_secs > MAX_GRACE_SECS {
            return Err(Error::invalid(
                "grace_period_seconds",
                format!("must be between 0 and {MAX_GRACE_SECS}"),
            ));
        }
        let mut w = self.get(id).await?;
        let now = Utc::now();
        let secret = generate_secret();
        let old = w.secret.replace(self.secrets.seal(&secret));
        (w.previous_secret, w.previous_secret_expires_at) = match old {
            Some(old) if grace_secs > 0 => (
                Some(old),
                Some(now + chrono::Duration::seconds(grace_secs as i64)),
            ),
            _ => (None, None),
        };
        w.updated_at = now;
        let event = Event::new(EventType::WebhookUpdated, origin)
            .target("webhook", &w.id)
            .meta("name", w.name.clone())
            .meta("changes", vec!["secret"])
            .meta("grace_period_seconds", grace_secs);
        self.store.update_webhook(&w, &event).await?;
        Ok((w, secret))
    }

    /// The secrets that sign now: the current one, then the previous during its grace period.
    fn signing_secrets(&self, w: &WebhookRecord) -> Result<Vec<String>> {
        let mut out = Vec::new();
        if let Some(s) = &w.secret {
            out.push(self.secrets.open(s)?);
        }
        if let (Some(s), Some(until)) = (&w.previous_secret, w.previous_secret_expires_at) {
            if until > Utc::now() {
                out.push(self.secrets.open(s)?);
            }
        }
        Ok(out)
    }

    async fn send(
        &self,
        w: &WebhookRecord,
        event_id: &str,
        event_type: &str,
        payload: &str,
    ) -> Result<Attempt> {
        if let Some(fields) = &w.channel {
            return Ok(self.send_to_channel(w, fields, event_id, payload).await);
        }
        let secrets = match self.signing_secrets(w) {
            Ok(secrets) => secrets,
            // Retrying cannot help until the operator restores the key or sets a new secret.
            Err(_) => {
                return Ok(Attempt {
                    verdict: Verdict::Failed,
                    status_code: None,
                    response_body: None,
                    error: Some(UNREADABLE_SECRET.into()),
                    duration_ms: 0,
                });
            }
        };
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let attempt = self
            .client
            .attempt(&Delivery {
                url: &w.url,
                body: payload.as_bytes(),
                event_id,
                event_type,
                secrets: &secrets,
                timeout: Duration::from_secs(u64::from(w.timeout_secs)),
                headers: &[],
            })
            .await;
        Ok(attempt)
    }

    /// A notification channel's job: its payload is the group of events for one message.
    async fn send_to_channel(
        &self,
        w: &WebhookRecord,
        fields: &ChannelFields,
        id: &str,
        payload: &str,
    ) -> Attempt {
        let refused = |error: String| Attempt {
            verdict: Verdict::Failed,
            status_code: None,
            response_body: None,
            error: Some(error),
            duration_ms: 0,
        };
        let config = match open_config(&self.secrets, fields) {
            Ok(c) => c,
            Err(_) => return refused(UNREADABLE_SETTINGS.into()),
        };
        let events: Vec<Event> = match serde_json::from_str(payload) {
            Ok(events) => events,
            Err(e) => return refused(format!("the queued message cannot be read: {e}")),
        };
        if events.is_empty() {
            return refused("the queued message has no event".into());
        }
        self.notifier
            .send(
                &config,
                &events,
                id,
                Duration::from_secs(u64::from(w.timeout_secs)),
            )
            .await
    }

    /// Send a `webhook.test` event to this webhook only and report what really happened.
    pub async fn test(&self, origin: &Origin, id: &str) -> Result<TestOutcome> {
        let w = self.get(id).await?;
        let event = Event::new(EventType::WebhookTest, origin)
            .target("webhook", &w.id)
            .meta("name", w.name.clone())
            .meta("message", "This is a test delivery from Server Monitor.");
        let payload = serde_json::to_string(&event).map_err(anyhow::Error::from)?;
        let event_id = event.event_id.to_string();
        let attempt = self
            .send(&w, &event_id, &event.event_type, &payload)
            .await?;
        let outcome = record_test(self.store.as_ref(), &w.id, &event, attempt).await?;
        self.metrics.record(
            if outcome.success { "success" } else { "failed" },
            outcome.duration_ms,
        );
        Ok(outcome)
    }

    /// A webhook's delivery log.
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

    /// Queue the event of a logged delivery again (same event id, attempts from 1).
    pub async fn redeliver(&self, id: &str, delivery_id: &str) -> Result<String> {
        let w = self.get(id).await?;
        let d = self
            .store
            .delivery(id, delivery_id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("delivery {delivery_id}")))?;
        let event = self.store.event_by_id(&d.event_id).await?.ok_or_else(|| {
            Error::NotFound(format!("event {} (no longer in the event log)", d.event_id))
        })?;
        let job = JobRecord {
            id: Uuid::now_v7().to_string(),
            webhook_id: w.id,
            event_id: d.event_id,
            event_type: d.event_type,
            payload: serde_json::to_string(&event).map_err(anyhow::Error::from)?,
            attempt: 0,
            next_attempt_at: Utc::now(),
        };
        self.store.enqueue_job(&job).await?;
        Ok(job.id)
    }

    /// Claim one due job and make one attempt. `false` when nothing was due.
    pub async fn deliver_next(&self) -> Result<bool> {
        let now = Utc::now();
        let Some((job, w)) = self
            .store
            .claim_job(now, LEASE_MARGIN, self.config.per_webhook_concurrency)
            .await?
        else {
            return Ok(false);
        };
        if let Some(fields) = &w.channel {
            // Over its rate the job waits, gathering further events of its group meanwhile.
            let routing = routing_of(fields, &self.notifications);
            if let Some(wait) = self.notifier.admit(&w.id, routing.rate_limit_per_minute) {
                let at = now + chrono::Duration::from_std(wait).unwrap_or_default();
                self.store.defer_job(&job.id, at).await?;
                return Ok(true);
            }
        }
        let attempt_no = job.attempt + 1;
        let outcome = self
            .send(&w, &job.event_id, &job.event_type, &job.payload)
            .await?;
        let done_at = Utc::now();
        let cap = Duration::from_secs(self.config.retry_cap_secs);
        let retry_at = match &outcome.verdict {
            Verdict::Retry { after } if attempt_no < w.retry_max => {
                let pause = after.map(|a| a.min(cap)).unwrap_or_else(|| {
                    backoff(
                        Duration::from_secs(self.config.retry_base_secs),
                        cap,
                        attempt_no,
                    )
                });
                Some(done_at + chrono::Duration::from_std(pause).unwrap_or_default())
            }
            _ => None,
        };
        let succeeded = outcome.verdict == Verdict::Delivered;
        let status = match (succeeded, retry_at) {
            (true, _) => "success",
            (false, Some(_)) => "retrying",
            (false, None) => "failed",
        };
        let failing_for = done_at - w.failing_since.unwrap_or(done_at);
        let reason = if outcome.verdict == Verdict::Gone {
            Some("the receiver answered 410 Gone".to_string())
        } else if !succeeded && failing_for.num_seconds() as u64 >= self.config.disable_after_secs {
            Some(format!(
                "every attempt failed for {} s",
                failing_for.num_seconds()
            ))
        } else {
            None
        };
        let (disabled_type, target_type) = match w.channel {
            Some(_) => (EventType::ChannelDisabled, "notification_channel"),
            None => (EventType::WebhookDisabled, "webhook"),
        };
        let disabled_event = reason.as_ref().map(|r| {
            Event::new(disabled_type, &Origin::default())
                .target(target_type, &w.id)
                .meta("name", w.name.clone())
                .meta("reason", r.clone())
        });
        let delivery = DeliveryRecord {
            id: Uuid::now_v7().to_string(),
            webhook_id: w.id.clone(),
            event_id: job.event_id.clone(),
            event_type: job.event_type.clone(),
            status,
            status_code: outcome.status_code,
            response_body: outcome.response_body,
            error: outcome.error,
            attempt: attempt_no,
            delivered_at: done_at,
            duration_ms: outcome.duration_ms,
        };
        self.metrics.record(status, delivery.duration_ms);
        let effects = AttemptEffects {
            retry_at,
            succeeded,
            disable: reason.as_deref().zip(disabled_event.as_ref()),
        };
        self.store.finish_attempt(&job, &delivery, effects).await?;
        if let Some(reason) = reason {
            tracing::warn!(webhook = %w.id, %reason, "webhook disabled");
        }
        Ok(true)
    }

    /// How long until the next queued job is due (zero when one is due now).
    pub async fn until_next_due(&self) -> Result<Option<Duration>> {
        Ok(self
            .store
            .next_due()
            .await?
            .map(|at| (at - Utc::now()).to_std().unwrap_or_default()))
    }

    /// Forget leases left by a previous run (a single hub owns its SQLite queue).
    pub async fn release_leases(&self) -> Result<u64> {
        self.store.release_leases().await
    }

    /// Delete delivery log rows past the retention period.
    pub async fn prune(&self) -> Result<u64> {
        let days =
            i64::try_from(self.config.delivery_retention_days).unwrap_or(i64::MAX / 86_400_000);
        self.store
            .prune_deliveries(Utc::now() - chrono::Duration::days(days))
            .await
    }

    /// Notified when jobs are queued.
    pub fn job_signal(&self) -> Arc<tokio::sync::Notify> {
        self.store.job_signal()
    }
}
