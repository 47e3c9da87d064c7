//! PostgreSQL: remote tasks.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};

use super::{PgStore, insert_event};
use crate::error::Result;
use crate::events::Event;
use crate::store::rows::{ms, task_from_row};
use crate::store::{TaskFilter, TaskRecord, TaskStatus, TaskStore};

fn push_filter<'a>(q: &mut QueryBuilder<'a, Postgres>, f: &'a TaskFilter) {
    q.push(" WHERE 1 = 1");
    if let Some(s) = &f.server_id {
        q.push(" AND server_id = ").push_bind(s);
    }
    if let Some(s) = f.status {
        q.push(" AND status = ").push_bind(s.as_str());
    }
    if let Some(u) = &f.created_by {
        q.push(" AND created_by = ").push_bind(u);
    }
}

impl PgStore {
    /// Unfinished tasks in `status` whose `column` (a time) is before `before`, oldest first.
    /// The repeated status test lets the partial index of unfinished tasks serve the query.
    async fn open_tasks_before(
        &self,
        status: &'static str,
        column: &'static str,
        before: DateTime<Utc>,
    ) -> Result<Vec<TaskRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT * FROM tasks WHERE status IN ('queued', 'running') AND status = $1
                AND {column} < $2 ORDER BY {column}"
        ))
        .bind(status)
        .bind(ms(before))
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(task_from_row).collect()
    }
}

#[async_trait]
impl TaskStore for PgStore {
    async fn insert_tasks(&self, tasks: &[(TaskRecord, Event)]) -> Result<()> {
        let mut tx = self.begin_events().await?;
        for (t, event) in tasks {
            sqlx::query(
                "INSERT INTO tasks (id, server_id, command, timeout_secs, store_output, status,
                    created_by, created_by_name, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(&t.id)
            .bind(&t.server_id)
            .bind(&t.command)
            .bind(i64::from(t.timeout_secs))
            .bind(t.store_output)
            .bind(t.status.as_str())
            .bind(&t.created_by)
            .bind(&t.created_by_name)
            .bind(ms(t.created_at))
            .execute(&mut *tx)
            .await?;
            insert_event(&mut tx, event).await?;
        }
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }

    async fn task(&self, id: &str) -> Result<Option<TaskRecord>> {
        let row = sqlx::query("SELECT * FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn list_tasks(&self, f: &TaskFilter) -> Result<(Vec<TaskRecord>, u64)> {
        let mut count = QueryBuilder::new("SELECT COUNT(*) FROM tasks");
        push_filter(&mut count, f);
        let total: i64 = count.build_query_scalar().fetch_one(&self.read).await?;
        let mut q = QueryBuilder::new("SELECT * FROM tasks");
        push_filter(&mut q, f);
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(i64::from(f.limit))
            .push(" OFFSET ")
            .push_bind(i64::try_from(f.offset).unwrap_or(i64::MAX));
        let rows = q.build().fetch_all(&self.read).await?;
        let tasks = rows.iter().map(task_from_row).collect::<Result<_>>()?;
        Ok((tasks, total as u64))
    }

    async fn open_tasks(&self, server_id: &str) -> Result<Vec<TaskRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM tasks WHERE server_id = $1 AND status IN ('queued', 'running')
             ORDER BY created_at, id",
        )
        .bind(server_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(task_from_row).collect()
    }

    async fn servers_with_open_tasks(&self) -> Result<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT server_id FROM tasks WHERE status IN ('queued', 'running')",
        )
        .fetch_all(&self.read)
        .await?)
    }

    async fn running_tasks_started_before(
        &self,
        started_before: DateTime<Utc>,
    ) -> Result<Vec<TaskRecord>> {
        self.open_tasks_before("running", "started_at", started_before)
            .await
    }

    async fn queued_tasks_created_before(
        &self,
        created_before: DateTime<Utc>,
    ) -> Result<Vec<TaskRecord>> {
        self.open_tasks_before("queued", "created_at", created_before)
            .await
    }

    async fn prune_tasks(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM tasks WHERE created_at < $1 AND status NOT IN ('queued', 'running')",
        )
        .bind(ms(before))
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected())
    }

    async fn transition_task(
        &self,
        t: &TaskRecord,
        expected: TaskStatus,
        event: Option<&Event>,
    ) -> Result<bool> {
        // The event log's lock only when there is an event: output updates need not queue.
        let mut tx = if event.is_some() {
            self.begin_events().await?
        } else {
            self.write.begin().await?
        };
        let done = sqlx::query(
            "UPDATE tasks SET status = $1, cancel_requested = $2, cancelled_by = $3, started_at = $4,
                finished_at = $5, exit_code = $6, stdout = $7, stderr = $8, output_truncated = $9,
                error = $10
             WHERE id = $11 AND status = $12",
        )
        .bind(t.status.as_str())
        .bind(t.cancel_requested)
        .bind(&t.cancelled_by)
        .bind(t.started_at.map(ms))
        .bind(t.finished_at.map(ms))
        .bind(t.exit_code)
        .bind(&t.stdout)
        .bind(&t.stderr)
        .bind(t.output_truncated)
        .bind(&t.error)
        .bind(&t.id)
        .bind(expected.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        if let Some(event) = event {
            insert_event(&mut tx, event).await?;
        }
        tx.commit().await?;
        if event.is_some() {
            self.events_committed();
        }
        Ok(true)
    }
}
