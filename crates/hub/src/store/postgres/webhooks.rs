//! PostgreSQL: managed webhooks, their delivery queue and log.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};
use std::sync::Arc;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{PgStore, insert_event};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::store::rows::{
    delivery_from_row, from_ms, job_from_row, ms, types_json, webhook_from_row,
};
use crate::store::{
    AttemptEffects, DeliveryRecord, JobRecord, NotificationItem, WebhookRecord, WebhookStore,
};

async fn insert_delivery(conn: &mut PgConnection, d: &DeliveryRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, status, status_code,
            response_body, error, attempt, delivered_at, duration_ms)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&d.id)
    .bind(&d.webhook_id)
    .bind(&d.event_id)
    .bind(&d.event_type)
    .bind(d.status)
    .bind(d.status_code.map(i64::from))
    .bind(&d.response_body)
    .bind(&d.error)
    .bind(i64::from(d.attempt))
    .bind(ms(d.delivered_at))
    .bind(d.duration_ms as i64)
    .execute(conn)
    .await?;
    Ok(())
}

/// Events one message gathers at most; more open a new group.
const MAX_GROUP_EVENTS: usize = 200;

async fn insert_job(
    conn: &mut PgConnection,
    j: &JobRecord,
    group_key: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool> {
    // A target deleted since the caller looked it up gets nothing (rather than failing the
    // whole batch on the foreign key).
    let done = sqlx::query(
        "INSERT INTO webhook_jobs (id, webhook_id, event_id, event_type, payload, attempt,
            next_attempt_at, locked_until, created_at, group_key)
         SELECT $1, $2, $3, $4, $5, $6, $7, NULL, $8, $9
         WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = $2)
         ON CONFLICT DO NOTHING",
    )
    .bind(&j.id)
    .bind(&j.webhook_id)
    .bind(&j.event_id)
    .bind(&j.event_type)
    .bind(&j.payload)
    .bind(i64::from(j.attempt))
    .bind(ms(j.next_attempt_at))
    .bind(ms(now))
    .bind(group_key)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Add each item to its channel's open group, or open a group due after its window.
async fn append_notifications(
    tx: &mut PgConnection,
    items: &[NotificationItem],
    now: DateTime<Utc>,
) -> Result<u64> {
    let mut queued = 0;
    for item in items {
        let event_id = item.event.event_id.to_string();
        // The newest open group: when an older one is full, the one opened after it. Locked
        // until commit: a worker on any hub skips it meanwhile, and one that claimed it first
        // makes it not open any more (the event then opens a new group).
        let open = sqlx::query(
            "SELECT id, payload FROM webhook_jobs
             WHERE webhook_id = $1 AND group_key = $2 AND attempt = 0 AND locked_until IS NULL
               AND next_attempt_at > $3
             ORDER BY next_attempt_at DESC LIMIT 1
             FOR UPDATE",
        )
        .bind(&item.channel_id)
        .bind(&item.group_key)
        .bind(ms(now))
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = open {
            let id: String = row.try_get("id")?;
            let payload: String = row.try_get("payload")?;
            // An unreadable payload (never written so) is left alone: a new group opens.
            let mut events: Vec<serde_json::Value> =
                serde_json::from_str(&payload).unwrap_or_else(|_| {
                    tracing::warn!(job = %id, "unreadable notification group; opening another");
                    vec![serde_json::Value::Null; MAX_GROUP_EVENTS]
                });
            if events.len() < MAX_GROUP_EVENTS {
                // A re-dispatched event (after a crash) is already in its group.
                if !events.iter().any(|e| e["event_id"] == event_id.as_str()) {
                    events.push(serde_json::to_value(&item.event).map_err(anyhow::Error::from)?);
                    sqlx::query("UPDATE webhook_jobs SET payload = $1 WHERE id = $2")
                        .bind(serde_json::to_string(&events).map_err(anyhow::Error::from)?)
                        .bind(&id)
                        .execute(&mut *tx)
                        .await?;
                    queued += 1;
                }
                continue;
            }
        }
        let job = JobRecord {
            id: Uuid::now_v7().to_string(),
            webhook_id: item.channel_id.clone(),
            event_id,
            event_type: item.event.event_type.clone(),
            payload: serde_json::to_string(&[&item.event]).map_err(anyhow::Error::from)?,
            attempt: 0,
            next_attempt_at: now + item.window,
        };
        if insert_job(tx, &job, Some(&item.group_key), now).await? {
            queued += 1;
        }
    }
    Ok(queued)
}

#[async_trait]
impl WebhookStore for PgStore {
    async fn insert_webhook(&self, w: &WebhookRecord, event: &Event) -> Result<()> {
        let mut tx = self.begin_events().await?;
        sqlx::query(
            "INSERT INTO webhooks (id, name, url, secret, previous_secret, previous_secret_expires_at,
                enabled, event_types, retry_max, timeout, created_by, created_at, updated_at,
                last_triggered_at, failing_since, disabled_reason, channel_kind, channel_config,
                channel_routing)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)",
        )
        .bind(&w.id)
        .bind(&w.name)
        .bind(&w.url)
        .bind(&w.secret)
        .bind(&w.previous_secret)
        .bind(w.previous_secret_expires_at.map(ms))
        .bind(w.enabled)
        .bind(types_json(&w.event_types))
        .bind(i64::from(w.retry_max))
        .bind(i64::from(w.timeout_secs))
        .bind(&w.created_by)
        .bind(ms(w.created_at))
        .bind(ms(w.updated_at))
        .bind(w.last_triggered_at.map(ms))
        .bind(w.failing_since.map(ms))
        .bind(&w.disabled_reason)
        .bind(w.channel.as_ref().map(|c| &c.kind))
        .bind(w.channel.as_ref().map(|c| &c.config))
        .bind(w.channel.as_ref().map(|c| &c.routing))
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }

    async fn webhook(&self, id: &str) -> Result<Option<WebhookRecord>> {
        let row = sqlx::query("SELECT * FROM webhooks WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(webhook_from_row).transpose()
    }

    async fn list_webhooks(&self) -> Result<Vec<WebhookRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM webhooks WHERE channel_kind IS NULL ORDER BY created_at, id",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(webhook_from_row).collect()
    }

    async fn list_channels(&self) -> Result<Vec<WebhookRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM webhooks WHERE channel_kind IS NOT NULL ORDER BY created_at, id",
        )
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(webhook_from_row).collect()
    }

    async fn defer_job(&self, job_id: &str, at: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE webhook_jobs SET locked_until = NULL, next_attempt_at = $1 WHERE id = $2",
        )
        .bind(ms(at))
        .bind(job_id)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn update_webhook(&self, w: &WebhookRecord, event: &Event) -> Result<()> {
        let mut tx = self.begin_events().await?;
        let done = sqlx::query(
            "UPDATE webhooks SET name = $1, url = $2, secret = $3, previous_secret = $4,
                previous_secret_expires_at = $5, enabled = $6, event_types = $7, retry_max = $8,
                timeout = $9, updated_at = $10, failing_since = $11, disabled_reason = $12,
                channel_config = $13, channel_routing = $14
             WHERE id = $15",
        )
        .bind(&w.name)
        .bind(&w.url)
        .bind(&w.secret)
        .bind(&w.previous_secret)
        .bind(w.previous_secret_expires_at.map(ms))
        .bind(w.enabled)
        .bind(types_json(&w.event_types))
        .bind(i64::from(w.retry_max))
        .bind(i64::from(w.timeout_secs))
        .bind(ms(w.updated_at))
        .bind(w.failing_since.map(ms))
        .bind(&w.disabled_reason)
        .bind(w.channel.as_ref().map(|c| &c.config))
        .bind(w.channel.as_ref().map(|c| &c.routing))
        .bind(&w.id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(format!("webhook {}", w.id)));
        }
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        self.new_jobs.notify_waiters();
        Ok(())
    }

    async fn delete_webhook(&self, id: &str, event: &Event) -> Result<()> {
        let mut tx = self.begin_events().await?;
        let done = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(format!("webhook {id}")));
        }
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }

    async fn enqueue_for_events(
        &self,
        events: &[Event],
        notifications: &[NotificationItem],
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let webhooks: Vec<WebhookRecord> = self
            .list_webhooks()
            .await?
            .into_iter()
            .filter(|w| w.enabled)
            .collect();
        if (webhooks.is_empty() || events.is_empty()) && notifications.is_empty() {
            return Ok(0);
        }
        // One transaction for both: a batch is queued whole or not at all, so retrying it
        // never queues a managed delivery twice.
        let mut tx = self.write.begin().await?;
        let mut queued = append_notifications(&mut tx, notifications, now).await?;
        for event in events {
            let payload = serde_json::to_string(event).map_err(anyhow::Error::from)?;
            for w in webhooks.iter().filter(|w| w.wants(&event.event_type)) {
                let job = JobRecord {
                    id: Uuid::now_v7().to_string(),
                    webhook_id: w.id.clone(),
                    event_id: event.event_id.to_string(),
                    event_type: event.event_type.clone(),
                    payload: payload.clone(),
                    attempt: 0,
                    next_attempt_at: now,
                };
                queued += u64::from(insert_job(&mut tx, &job, None, now).await?);
            }
        }
        tx.commit().await?;
        if queued > 0 {
            self.new_jobs.notify_waiters();
        }
        Ok(queued)
    }

    async fn enqueue_job(&self, job: &JobRecord) -> Result<()> {
        let mut conn = self.write.acquire().await?;
        if !insert_job(&mut conn, job, None, Utc::now()).await? {
            return Err(Error::Conflict(format!(
                "event {} is already queued for this webhook",
                job.event_id
            )));
        }
        self.new_jobs.notify_waiters();
        Ok(())
    }

    async fn claim_job(
        &self,
        now: DateTime<Utc>,
        lease_margin: std::time::Duration,
        per_webhook: usize,
    ) -> Result<Option<(JobRecord, WebhookRecord)>> {
        // The webhooks at their limit are counted once, not once per candidate job: when every
        // webhook was busy, a correlated count made a claim read the whole queue (100 ms at
        // 8,000 jobs), and idle workers of several hubs kept PostgreSQL busy with it.
        let row = sqlx::query(
            "UPDATE webhook_jobs SET locked_until = $1 + $2
                + 2000 * (SELECT timeout FROM webhooks w WHERE w.id = webhook_jobs.webhook_id)
             WHERE id = (
                SELECT j.id FROM webhook_jobs j JOIN webhooks w ON w.id = j.webhook_id
                WHERE w.enabled AND j.next_attempt_at <= $1
                  AND (j.locked_until IS NULL OR j.locked_until <= $1)
                  AND j.webhook_id NOT IN (
                       SELECT k.webhook_id FROM webhook_jobs k WHERE k.locked_until > $1
                       GROUP BY k.webhook_id HAVING COUNT(*) >= $3)
                ORDER BY j.next_attempt_at, j.id LIMIT 1
                FOR UPDATE OF j SKIP LOCKED)
             RETURNING *",
        )
        .bind(ms(now))
        .bind(i64::try_from(lease_margin.as_millis()).unwrap_or(i64::MAX / 2))
        .bind(per_webhook as i64)
        .fetch_optional(&self.write)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let job = job_from_row(&row)?;
        match self.webhook(&job.webhook_id).await? {
            Some(w) => Ok(Some((job, w))),
            None => Ok(None),
        }
    }

    async fn finish_attempt(
        &self,
        job: &JobRecord,
        delivery: &DeliveryRecord,
        effects: AttemptEffects<'_>,
    ) -> Result<()> {
        let (ack, done) = tokio::sync::oneshot::channel();
        let request = Finish {
            job: job.clone(),
            delivery: delivery.clone(),
            retry_at: effects.retry_at,
            succeeded: effects.succeeded,
            disable: effects
                .disable
                .map(|(reason, event)| (reason.to_string(), event.clone())),
            ack,
        };
        if self.finishes.send(request).is_err() {
            return Err(Error::Unavailable("the store is closing".into()));
        }
        done.await
            .unwrap_or_else(|_| Err(Error::Unavailable("the store is closing".into())))
    }

    async fn record_test(&self, delivery: &DeliveryRecord, event: &Event) -> Result<()> {
        let mut tx = self.begin_events().await?;
        insert_event(&mut tx, event).await?;
        sqlx::query("UPDATE events SET dispatched_at = ts WHERE event_id = $1")
            .bind(event.event_id.to_string())
            .execute(&mut *tx)
            .await?;
        insert_delivery(&mut tx, delivery).await?;
        sqlx::query("UPDATE webhooks SET last_triggered_at = $1 WHERE id = $2")
            .bind(ms(delivery.delivered_at))
            .bind(&delivery.webhook_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        // Its event is already dispatched; the bump is for the caches of event reads.
        self.events_committed();
        Ok(())
    }

    async fn deliveries(
        &self,
        webhook_id: &str,
        status: Option<&str>,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<DeliveryRecord>, u64)> {
        let rows = sqlx::query(
            "SELECT * FROM webhook_deliveries WHERE webhook_id = $1 AND ($2 IS NULL OR status = $2)
             ORDER BY delivered_at DESC, id DESC LIMIT $3 OFFSET $4",
        )
        .bind(webhook_id)
        .bind(status)
        .bind(i64::from(limit))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = $1 AND ($2 IS NULL OR status = $2)",
        )
        .bind(webhook_id)
        .bind(status)
        .fetch_one(&self.read)
        .await?;
        let deliveries = rows
            .iter()
            .map(delivery_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok((deliveries, total as u64))
    }

    async fn delivery(
        &self,
        webhook_id: &str,
        delivery_id: &str,
    ) -> Result<Option<DeliveryRecord>> {
        let row = sqlx::query("SELECT * FROM webhook_deliveries WHERE webhook_id = $1 AND id = $2")
            .bind(webhook_id)
            .bind(delivery_id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    async fn pending_jobs(&self, webhook_id: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_jobs WHERE webhook_id = $1")
            .bind(webhook_id)
            .fetch_one(&self.read)
            .await?;
        Ok(n as u64)
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>> {
        let at: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(j.next_attempt_at) FROM webhook_jobs j JOIN webhooks w ON w.id = j.webhook_id
             WHERE w.enabled",
        )
        .fetch_one(&self.read)
        .await?;
        Ok(at.map(from_ms))
    }

    /// Nothing: other hubs on this database may hold live leases. A crashed hub's jobs are
    /// claimable once their lease runs out (the webhook's timeout twice, plus a margin).
    async fn release_leases(&self) -> Result<u64> {
        Ok(0)
    }

    async fn prune_deliveries(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM webhook_deliveries WHERE delivered_at < $1")
            .bind(ms(before))
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected())
    }

    fn job_signal(&self) -> Arc<Notify> {
        self.new_jobs.clone()
    }
}

/// One attempt to record, waiting for its batch to commit.
pub(super) struct Finish {
    job: JobRecord,
    delivery: DeliveryRecord,
    retry_at: Option<DateTime<Utc>>,
    succeeded: bool,
    disable: Option<(String, Event)>,
    ack: tokio::sync::oneshot::Sender<Result<()>>,
}

/// Most attempts recorded in one transaction.
const FINISH_BATCH: usize = 128;

/// Record attempts in batches: whatever the delivery workers finished while the previous
/// batch committed goes into one transaction, so many attempts share one commit (one WAL
/// flush) instead of each waiting for its own.
pub(super) async fn run_finisher(
    store: PgStore,
    mut requests: tokio::sync::mpsc::UnboundedReceiver<Finish>,
) {
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        while batch.len() < FINISH_BATCH {
            match requests.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let result = finish_batch(&store, &batch).await;
        if result.is_err() && batch.len() > 1 {
            // One bad attempt (its webhook deleted meanwhile, say) must not fail the others:
            // record them one by one.
            for one in batch {
                let result = finish_batch(&store, std::slice::from_ref(&one)).await;
                settle(&store, vec![one], result);
            }
            continue;
        }
        settle(&store, batch, result);
    }
}

/// Tell the workers how their attempts' batch went, and wake whoever waits on its effects.
fn settle(store: &PgStore, batch: Vec<Finish>, result: Result<(bool, bool)>) {
    match result {
        Ok((wrote_event, retrying)) => {
            if wrote_event {
                store.events_committed();
            }
            if retrying {
                store.new_jobs.notify_waiters();
            }
            for r in batch {
                let _ = r.ack.send(Ok(()));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, attempts = batch.len(), "cannot record delivery attempts");
            for r in batch {
                let _ = r.ack.send(Err(Error::Internal(anyhow::anyhow!(
                    "cannot record the attempt: {e}"
                ))));
            }
        }
    }
}

/// What a batch of attempts does to one webhook's row: its latest attempt, whether one
/// succeeded, the first failure since the last success, and a verdict to disable it.
#[derive(Default)]
struct Touched<'a> {
    last: i64,
    succeeded: bool,
    failing_since: Option<i64>,
    disable: Option<(&'a (String, Event), i64)>,
}

async fn finish_batch(store: &PgStore, batch: &[Finish]) -> Result<(bool, bool)> {
    let mut tx = if batch.iter().any(|f| f.disable.is_some()) {
        store.begin_events().await?
    } else {
        store.write.begin().await?
    };
    let (mut wrote_event, mut retrying) = (false, false);
    let mut touched: std::collections::BTreeMap<&str, Touched> = Default::default();
    for f in batch {
        insert_delivery(&mut tx, &f.delivery).await?;
        match f.retry_at {
            Some(at) => {
                retrying = true;
                sqlx::query(
                    "UPDATE webhook_jobs SET attempt = $1, next_attempt_at = $2, locked_until = NULL
                     WHERE id = $3",
                )
                .bind(i64::from(f.delivery.attempt))
                .bind(ms(at))
                .bind(&f.job.id)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM webhook_jobs WHERE id = $1")
                    .bind(&f.job.id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let stamp = ms(f.delivery.delivered_at);
        let webhook = touched.entry(f.job.webhook_id.as_str()).or_default();
        webhook.last = webhook.last.max(stamp);
        if f.succeeded {
            webhook.succeeded = true;
            webhook.failing_since = None;
        } else {
            webhook.failing_since.get_or_insert(stamp);
        }
        if let Some(disable) = &f.disable {
            webhook.disable.get_or_insert((disable, stamp));
        }
    }
    // Each webhook's row once, in id order: two hubs recording attempts for the same webhooks
    // take the row locks in the same order, so they queue instead of deadlocking.
    for (id, w) in &touched {
        sqlx::query(
            "UPDATE webhooks SET last_triggered_at = GREATEST(last_triggered_at, $1),
                failing_since = CASE WHEN $2 THEN $3 ELSE COALESCE(failing_since, $3) END
             WHERE id = $4",
        )
        .bind(w.last)
        .bind(w.succeeded)
        .bind(w.failing_since)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if let Some(((reason, event), stamp)) = w.disable {
            let done = sqlx::query(
                "UPDATE webhooks SET enabled = FALSE, disabled_reason = $1, updated_at = $2
                 WHERE id = $3 AND enabled",
            )
            .bind(reason)
            .bind(stamp)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            // Several workers may conclude the same: only the first disables and tells.
            if done.rows_affected() == 1 {
                insert_event(&mut tx, event).await?;
                wrote_event = true;
            }
        }
    }
    tx.commit().await?;
    Ok((wrote_event, retrying))
}
