//! SQLite: managed webhooks, their delivery queue and log.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Row, SqliteConnection};
use std::sync::Arc;
use tokio::sync::Notify;
use uuid::Uuid;

use super::{SqliteStore, insert_event};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::store::rows::{
    delivery_from_row, from_ms, job_from_row, ms, types_json, webhook_from_row,
};
use crate::store::{
    AttemptEffects, DeliveryRecord, JobRecord, NotificationItem, WebhookRecord, WebhookStore,
};

async fn insert_delivery(conn: &mut SqliteConnection, d: &DeliveryRecord) -> Result<()> {
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, webhook_id, event_id, event_type, status, status_code,
            response_body, error, attempt, delivered_at, duration_ms)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
    conn: &mut SqliteConnection,
    j: &JobRecord,
    group_key: Option<&str>,
    now: DateTime<Utc>,
) -> Result<bool> {
    // A target deleted since the caller looked it up gets nothing (rather than failing the
    // whole batch on the foreign key).
    let done = sqlx::query(
        "INSERT OR IGNORE INTO webhook_jobs (id, webhook_id, event_id, event_type, payload, attempt,
            next_attempt_at, locked_until, created_at, group_key)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, ?8, ?9
         WHERE EXISTS (SELECT 1 FROM webhooks WHERE id = ?2)",
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
    tx: &mut SqliteConnection,
    items: &[NotificationItem],
    now: DateTime<Utc>,
) -> Result<u64> {
    let mut queued = 0;
    for item in items {
        let event_id = item.event.event_id.to_string();
        // The newest open group: when an older one is full, the one opened after it.
        let open = sqlx::query(
            "SELECT id, payload FROM webhook_jobs
             WHERE webhook_id = ? AND group_key = ? AND attempt = 0 AND locked_until IS NULL
               AND next_attempt_at > ?
             ORDER BY next_attempt_at DESC LIMIT 1",
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
                    sqlx::query("UPDATE webhook_jobs SET payload = ? WHERE id = ?")
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
impl WebhookStore for SqliteStore {
    async fn insert_webhook(&self, w: &WebhookRecord, event: &Event) -> Result<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO webhooks (id, name, url, secret, previous_secret, previous_secret_expires_at,
                enabled, event_types, retry_max, timeout, created_by, created_at, updated_at,
                last_triggered_at, failing_since, disabled_reason, channel_kind, channel_config,
                channel_routing)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        let row = sqlx::query("SELECT * FROM webhooks WHERE id = ?")
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
            "UPDATE webhook_jobs SET locked_until = NULL, next_attempt_at = ? WHERE id = ?",
        )
        .bind(ms(at))
        .bind(job_id)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn update_webhook(&self, w: &WebhookRecord, event: &Event) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let done = sqlx::query(
            "UPDATE webhooks SET name = ?, url = ?, secret = ?, previous_secret = ?,
                previous_secret_expires_at = ?, enabled = ?, event_types = ?, retry_max = ?,
                timeout = ?, updated_at = ?, failing_since = ?, disabled_reason = ?,
                channel_config = ?, channel_routing = ?
             WHERE id = ?",
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
        let mut tx = self.write.begin().await?;
        let done = sqlx::query("DELETE FROM webhooks WHERE id = ?")
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
        let row = sqlx::query(
            "UPDATE webhook_jobs SET locked_until = ?1 + ?2
                + 2000 * (SELECT timeout FROM webhooks w WHERE w.id = webhook_jobs.webhook_id)
             WHERE id = (
                SELECT j.id FROM webhook_jobs j JOIN webhooks w ON w.id = j.webhook_id
                WHERE w.enabled AND j.next_attempt_at <= ?1
                  AND (j.locked_until IS NULL OR j.locked_until <= ?1)
                  AND (SELECT COUNT(*) FROM webhook_jobs k
                       WHERE k.webhook_id = j.webhook_id AND k.locked_until > ?1) < ?3
                ORDER BY j.next_attempt_at, j.id LIMIT 1)
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
        let mut tx = self.write.begin().await?;
        insert_event(&mut tx, event).await?;
        sqlx::query("UPDATE events SET dispatched_at = ts WHERE event_id = ?")
            .bind(event.event_id.to_string())
            .execute(&mut *tx)
            .await?;
        insert_delivery(&mut tx, delivery).await?;
        sqlx::query("UPDATE webhooks SET last_triggered_at = ? WHERE id = ?")
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
            "SELECT * FROM webhook_deliveries WHERE webhook_id = ?1 AND (?2 IS NULL OR status = ?2)
             ORDER BY delivered_at DESC, id DESC LIMIT ?3 OFFSET ?4",
        )
        .bind(webhook_id)
        .bind(status)
        .bind(i64::from(limit))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.read)
        .await?;
        let total: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM webhook_deliveries WHERE webhook_id = ?1 AND (?2 IS NULL OR status = ?2)",
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
        let row = sqlx::query("SELECT * FROM webhook_deliveries WHERE webhook_id = ? AND id = ?")
            .bind(webhook_id)
            .bind(delivery_id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(delivery_from_row).transpose()
    }

    async fn pending_jobs(&self, webhook_id: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_jobs WHERE webhook_id = ?")
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

    async fn release_leases(&self) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE webhook_jobs SET locked_until = NULL WHERE locked_until IS NOT NULL",
        )
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected())
    }

    async fn prune_deliveries(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query("DELETE FROM webhook_deliveries WHERE delivered_at < ?")
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
/// batch committed goes into one transaction. Each attempt is several statements, and on
/// SQLite every statement is a hand-off to the connection's thread: batching is what lets
/// deliveries outpace that (a profile showed the hand-offs, not SQLite, as the limit).
pub(super) async fn run_finisher(
    store: SqliteStore,
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
fn settle(store: &SqliteStore, batch: Vec<Finish>, result: Result<(bool, bool)>) {
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

async fn finish_batch(store: &SqliteStore, batch: &[Finish]) -> Result<(bool, bool)> {
    let mut tx = store.write.begin().await?;
    let (mut wrote_event, mut retrying) = (false, false);
    for f in batch {
        insert_delivery(&mut tx, &f.delivery).await?;
        match f.retry_at {
            Some(at) => {
                retrying = true;
                sqlx::query(
                    "UPDATE webhook_jobs SET attempt = ?, next_attempt_at = ?, locked_until = NULL
                     WHERE id = ?",
                )
                .bind(i64::from(f.delivery.attempt))
                .bind(ms(at))
                .bind(&f.job.id)
                .execute(&mut *tx)
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM webhook_jobs WHERE id = ?")
                    .bind(&f.job.id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        let stamp = ms(f.delivery.delivered_at);
        let failing_since = if f.succeeded { None } else { Some(stamp) };
        sqlx::query(
            "UPDATE webhooks SET last_triggered_at = ?,
                failing_since = CASE WHEN ? IS NULL THEN NULL ELSE COALESCE(failing_since, ?) END
             WHERE id = ?",
        )
        .bind(stamp)
        .bind(failing_since)
        .bind(failing_since)
        .bind(&f.job.webhook_id)
        .execute(&mut *tx)
        .await?;
        if let Some((reason, event)) = &f.disable {
            let done = sqlx::query(
                "UPDATE webhooks SET enabled = FALSE, disabled_reason = ?, updated_at = ?
                 WHERE id = ? AND enabled",
            )
            .bind(reason)
            .bind(stamp)
            .bind(&f.job.webhook_id)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventType, Origin};
    use crate::store::ChannelFields;
    use serde_json::Value;

    fn webhook(id: &str) -> WebhookRecord {
        let now = Utc::now();
        WebhookRecord {
            id: id.into(),
            name: id.into(),
            url: "http://127.0.0.1:9/".into(),
            secret: None,
            previous_secret: None,
            previous_secret_expires_at: None,
            enabled: true,
            event_types: None,
            retry_max: 3,
            timeout_secs: 5,
            created_by: None,
            created_at: now,
            updated_at: now,
            last_triggered_at: None,
            failing_since: None,
            disabled_reason: None,
            channel: None,
        }
    }

    fn job(webhook_id: &str) -> (JobRecord, DeliveryRecord) {
        let job = JobRecord {
            id: format!("job-{webhook_id}"),
            webhook_id: webhook_id.into(),
            event_id: "e1".into(),
            event_type: "user.created".into(),
            payload: "{}".into(),
            attempt: 0,
            next_attempt_at: Utc::now(),
        };
        let delivery = DeliveryRecord {
            id: format!("delivery-{webhook_id}"),
            webhook_id: webhook_id.into(),
            event_id: "e1".into(),
            event_type: "user.created".into(),
            status: "success",
            status_code: Some(200),
            response_body: None,
            error: None,
            attempt: 1,
            delivered_at: Utc::now(),
            duration_ms: 3,
        };
        (job, delivery)
    }

    #[tokio::test]
    async fn one_failing_attempt_does_not_fail_the_others_of_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("w.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        for id in ["kept", "gone"] {
            let created = Event::new(EventType::WebhookCreated, &Origin::default());
            store.insert_webhook(&webhook(id), &created).await.unwrap();
            store.enqueue_job(&job(id).0).await.unwrap();
        }
        // Deleted while its attempt was in flight: recording that attempt must fail alone.
        let deleted = Event::new(EventType::WebhookDeleted, &Origin::default());
        store.delete_webhook("gone", &deleted).await.unwrap();
        let effects = || AttemptEffects {
            retry_at: None,
            succeeded: true,
            disable: None,
        };
        let ((kept_job, kept), (gone_job, gone)) = (job("kept"), job("gone"));
        // Both reach the finisher before it runs, so they share a batch.
        let (a, b) = tokio::join!(
            store.finish_attempt(&kept_job, &kept, effects()),
            store.finish_attempt(&gone_job, &gone, effects()),
        );
        a.expect("the good attempt is recorded");
        assert!(
            b.is_err(),
            "the attempt of a deleted webhook cannot be recorded"
        );
        let (log, _) = store.deliveries("kept", None, 10, 0).await.unwrap();
        assert_eq!(log.len(), 1);
        assert_eq!(store.pending_jobs("kept").await.unwrap(), 0);
    }

    fn item(channel: &str, key: &str, window_secs: i64) -> NotificationItem {
        NotificationItem {
            channel_id: channel.into(),
            group_key: key.into(),
            window: chrono::Duration::seconds(window_secs),
            event: Event::new(EventType::ServerOffline, &Origin::default()),
        }
    }

    fn group_sizes(jobs: &[(String, String)]) -> Vec<usize> {
        let mut sizes: Vec<usize> = jobs
            .iter()
            .map(|(_, p)| serde_json::from_str::<Vec<Value>>(p).unwrap().len())
            .collect();
        sizes.sort();
        sizes
    }

    async fn jobs_of(store: &SqliteStore, channel: &str) -> Vec<(String, String)> {
        sqlx::query_as("SELECT id, payload FROM webhook_jobs WHERE webhook_id = ?")
            .bind(channel)
            .fetch_all(&store.read)
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn events_of_one_group_gather_in_one_job_until_it_falls_due() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("n.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let mut channel = webhook("ch");
        channel.channel = Some(ChannelFields {
            kind: "slack".into(),
            config: String::new(),
            routing: "{}".into(),
        });
        let created = Event::new(EventType::ChannelCreated, &Origin::default());
        store.insert_webhook(&channel, &created).await.unwrap();
        assert!(
            store.list_webhooks().await.unwrap().is_empty(),
            "not a managed webhook"
        );
        assert_eq!(store.list_channels().await.unwrap().len(), 1);

        let now = Utc::now();
        let mut items: Vec<NotificationItem> =
            (0..5).map(|_| item("ch", "server.offline", 30)).collect();
        items.push(item("ch", "server.online", 30));
        // Dispatched again after a crash: an event already in its group is not added twice.
        items.push(items[0].clone());
        assert_eq!(store.enqueue_for_events(&[], &items, now).await.unwrap(), 6);
        assert_eq!(group_sizes(&jobs_of(&store, "ch").await), [1, 5]);

        // Both groups are due once the window has passed. The first claimed is deferred by
        // the rate limit: it is open again and keeps gathering its group's events.
        let later = now + chrono::Duration::seconds(31);
        let (claimed, _) = store
            .claim_job(later, std::time::Duration::from_secs(90), 4)
            .await
            .unwrap()
            .expect("a due job");
        assert_eq!(claimed.event_type, "server.offline", "oldest first");
        store
            .defer_job(&claimed.id, later + chrono::Duration::seconds(60))
            .await
            .unwrap();
        let next = later + chrono::Duration::seconds(1);
        store
            .enqueue_for_events(&[], &[item("ch", "server.offline", 30)], next)
            .await
            .unwrap();
        // The other group fell due unsent: closed, so a new event opens a new group.
        store
            .enqueue_for_events(&[], &[item("ch", "server.online", 30)], next)
            .await
            .unwrap();
        assert_eq!(group_sizes(&jobs_of(&store, "ch").await), [1, 1, 6]);
    }
}
