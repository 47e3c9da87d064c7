//! PostgreSQL: alert rules and alerts.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};

use super::{PgStore, insert_event};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::store::rows::{
    alert_from_row, channels_json, conflict_if_taken, is_unique_violation, ms, rule_from_row,
};
use crate::store::{AlertFilter, AlertRecord, AlertStore, RuleRecord};

fn name_taken(e: sqlx::Error) -> Error {
    conflict_if_taken(e, "an alert rule with this name already exists")
}

fn push_filter<'a>(q: &mut QueryBuilder<'a, Postgres>, f: &'a AlertFilter) {
    q.push(" WHERE 1 = 1");
    if let Some(s) = &f.status {
        q.push(" AND status = ").push_bind(s);
    }
    if let Some(s) = &f.server_id {
        q.push(" AND server_id = ").push_bind(s);
    }
    if let Some(r) = &f.rule_id {
        q.push(" AND rule_id = ").push_bind(r);
    }
    if let Some(s) = f.severity {
        q.push(" AND severity = ").push_bind(s.as_str());
    }
}

#[async_trait]
impl AlertStore for PgStore {
    async fn list_rules(&self) -> Result<Vec<RuleRecord>> {
        let rows = sqlx::query("SELECT * FROM alert_rules ORDER BY name")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(rule_from_row).collect()
    }

    async fn insert_rule(&self, r: &RuleRecord, event: &Event) -> Result<()> {
        let mut tx = self.begin_events().await?;
        sqlx::query(
            "INSERT INTO alert_rules (id, name, metric, mount, comparison, threshold,
                recovery_threshold, for_secs, severity, scope, scope_value, enabled, created_by,
                created_at, updated_at, channels)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)",
        )
        .bind(&r.id)
        .bind(&r.name)
        .bind(&r.metric)
        .bind(&r.mount)
        .bind(&r.comparison)
        .bind(r.threshold)
        .bind(r.recovery_threshold)
        .bind(i64::from(r.for_secs))
        .bind(r.severity.as_str())
        .bind(&r.scope)
        .bind(&r.scope_value)
        .bind(r.enabled)
        .bind(&r.created_by)
        .bind(ms(r.created_at))
        .bind(ms(r.updated_at))
        .bind(channels_json(r))
        .execute(&mut *tx)
        .await
        .map_err(name_taken)?;
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }

    async fn update_rule(&self, r: &RuleRecord, event: &Event) -> Result<()> {
        let mut tx = self.begin_events().await?;
        let done = sqlx::query(
            "UPDATE alert_rules SET name = $1, metric = $2, mount = $3, comparison = $4, threshold = $5,
                recovery_threshold = $6, for_secs = $7, severity = $8, scope = $9, scope_value = $10,
                enabled = $11, updated_at = $12, channels = $13
             WHERE id = $14",
        )
        .bind(&r.name)
        .bind(&r.metric)
        .bind(&r.mount)
        .bind(&r.comparison)
        .bind(r.threshold)
        .bind(r.recovery_threshold)
        .bind(i64::from(r.for_secs))
        .bind(r.severity.as_str())
        .bind(&r.scope)
        .bind(&r.scope_value)
        .bind(r.enabled)
        .bind(ms(r.updated_at))
        .bind(channels_json(r))
        .bind(&r.id)
        .execute(&mut *tx)
        .await
        .map_err(name_taken)?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(format!("alert rule {}", r.id)));
        }
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }

    async fn delete_rule(&self, id: &str, event: &Event) -> Result<()> {
        let mut tx = self.begin_events().await?;
        let done = sqlx::query("DELETE FROM alert_rules WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(format!("alert rule {id}")));
        }
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }

    async fn insert_alert(&self, a: &AlertRecord, event: &Event) -> Result<bool> {
        let mut tx = self.begin_events().await?;
        let inserted = sqlx::query(
            "INSERT INTO alerts (id, rule_id, rule_name, server_id, server_name, metric, severity,
                status, value, threshold, pending_since, fired_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, 'firing', $8, $9, $10, $11)",
        )
        .bind(&a.id)
        .bind(&a.rule_id)
        .bind(&a.rule_name)
        .bind(&a.server_id)
        .bind(&a.server_name)
        .bind(&a.metric)
        .bind(a.severity.as_str())
        .bind(a.value)
        .bind(a.threshold)
        .bind(ms(a.pending_since))
        .bind(ms(a.fired_at))
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => return Ok(false),
            other => other?,
        };
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(true)
    }

    async fn resolve_alert(&self, a: &AlertRecord, event: &Event) -> Result<bool> {
        let mut tx = self.begin_events().await?;
        let done = sqlx::query(
            "UPDATE alerts SET status = 'resolved', resolved_at = $1, resolved_value = $2,
                resolution = $3
             WHERE id = $4 AND status = 'firing'",
        )
        .bind(a.resolved_at.map(ms))
        .bind(a.resolved_value)
        .bind(&a.resolution)
        .bind(&a.id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(true)
    }

    async fn firing_alerts(&self) -> Result<Vec<AlertRecord>> {
        let rows = sqlx::query("SELECT * FROM alerts WHERE status = 'firing' ORDER BY fired_at")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(alert_from_row).collect()
    }

    async fn list_alerts(&self, f: &AlertFilter) -> Result<(Vec<AlertRecord>, u64)> {
        let mut count = QueryBuilder::new("SELECT COUNT(*) FROM alerts");
        push_filter(&mut count, f);
        let total: i64 = count.build_query_scalar().fetch_one(&self.read).await?;
        let mut q = QueryBuilder::new("SELECT * FROM alerts");
        push_filter(&mut q, f);
        q.push(" ORDER BY fired_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(f.limit))
            .push(" OFFSET ")
            .push_bind(i64::try_from(f.offset).unwrap_or(i64::MAX));
        let rows = q.build().fetch_all(&self.read).await?;
        let alerts = rows.iter().map(alert_from_row).collect::<Result<_>>()?;
        Ok((alerts, total as u64))
    }

    async fn alert(&self, id: &str) -> Result<Option<AlertRecord>> {
        let row = sqlx::query("SELECT * FROM alerts WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(alert_from_row).transpose()
    }

    async fn acknowledge_alert(
        &self,
        id: &str,
        by: &str,
        at: DateTime<Utc>,
        event: &Event,
    ) -> Result<bool> {
        let mut tx = self.begin_events().await?;
        let done = sqlx::query(
            "UPDATE alerts SET acknowledged_by = $1, acknowledged_at = $2
             WHERE id = $3 AND acknowledged_at IS NULL",
        )
        .bind(by)
        .bind(ms(at))
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(true)
    }
}
