//! `smon migrate-data`: copy a SQLite database into an empty PostgreSQL database, in one
//! transaction, then check the copy by counting every table on both sides.

use std::str::FromStr;

use anyhow::Context;
use futures_util::TryStreamExt;
use sqlx::sqlite::{SqliteConnectOptions, SqliteRow};
use sqlx::{Postgres, QueryBuilder, Row};

use super::postgres::PgStore;
use super::sqlite::SqliteStore;
use super::{Backend, Store};
use crate::error::{Error, Result};

/// Every table holding data, parents before children (the foreign keys are checked as rows
/// arrive). `health_probe` and `hub_leases` hold nothing worth keeping.
pub const TABLES: &[&str] = &[
    "users",
    "auth_tokens",
    "events",
    "webhooks",
    "webhook_jobs",
    "webhook_deliveries",
    "servers",
    "inventory",
    "metrics_raw",
    "metrics_1m",
    "metrics_1h",
    "tasks",
    "alert_rules",
    "alerts",
];

/// Most bind parameters in one PostgreSQL statement (the protocol's limit is 65,535).
const MAX_PARAMS: usize = 60_000;

/// One table's rows in the source and in the target after the copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    pub table: &'static str,
    pub source: i64,
    pub target: i64,
}

/// A column of the target and how its values are read from SQLite.
struct Column {
    name: String,
    kind: Kind,
}

#[derive(Clone, Copy)]
enum Kind {
    Int,
    Real,
    Bool,
    Text,
}

/// One value on its way from SQLite to PostgreSQL.
enum Cell {
    Int(Option<i64>),
    Real(Option<f64>),
    Bool(Option<bool>),
    Text(Option<String>),
}

/// Copy everything from the SQLite database at `from` into the empty PostgreSQL database at
/// `to` (migrated first), and return the counts of both. The hub must be stopped: what it
/// writes during the copy would be missed. Nothing is written to `to` unless all of it is
/// and every count matches.
pub async fn sqlite_to_postgres(from: &str, to: &str) -> Result<Vec<TableCount>> {
    if Backend::of_url(from) != Some(Backend::Sqlite) {
        return Err(Error::BadRequest(format!(
            "--from must be a sqlite:// URL, got {:?}",
            crate::config::redact_url(from)
        )));
    }
    if Backend::of_url(to) != Some(Backend::Postgres) {
        return Err(Error::BadRequest(format!(
            "--to must be a postgres:// URL, got {:?}",
            crate::config::redact_url(to)
        )));
    }
    let file = SqliteConnectOptions::from_str(from)
        .with_context(|| format!("invalid SQLite URL {from:?}"))?
        .get_filename()
        .to_path_buf();
    if !file.is_file() {
        return Err(Error::BadRequest(format!(
            "there is no SQLite database at {}",
            file.display()
        )));
    }
    // Opening applies this version's migrations to both, so their schemas match.
    let source = SqliteStore::open(from).await?;
    let target = PgStore::open(to).await?;
    let result = copy(&source, &target).await;
    source.close().await;
    target.close().await;
    result
}

async fn copy(source: &SqliteStore, target: &PgStore) -> Result<Vec<TableCount>> {
    check_tables_known(target).await?;
    let taken: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM users) + (SELECT COUNT(*) FROM events)
              + (SELECT COUNT(*) FROM servers) + (SELECT COUNT(*) FROM webhooks)",
    )
    .fetch_one(target.pool())
    .await?;
    if taken > 0 {
        return Err(Error::Conflict(
            "the target database is not empty: migrate into a new database".into(),
        ));
    }
    let mut tx = target.pool().begin().await?;
    // The migration's default alert rules give way to the source's (which may have edited or
    // deleted them).
    sqlx::query("DELETE FROM alert_rules")
        .execute(&mut *tx)
        .await?;
    for table in TABLES {
        let columns = target_columns(target, table).await?;
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        let select = format!("SELECT {} FROM {table}", names.join(", "));
        let per_batch = (MAX_PARAMS / columns.len()).max(1);
        let mut rows = sqlx::query(&select).fetch(source.read_pool());
        let mut batch = Vec::with_capacity(per_batch);
        while let Some(row) = rows.try_next().await? {
            batch.push(cells(&row, &columns).with_context(|| format!("reading {table}"))?);
            if batch.len() == per_batch {
                insert(&mut tx, table, &names, std::mem::take(&mut batch)).await?;
            }
        }
        if !batch.is_empty() {
            insert(&mut tx, table, &names, batch).await?;
        }
    }
    // New rows continue after the copied ones.
    for table in ["events", "servers"] {
        sqlx::query(&format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'seq'),
                           COALESCE((SELECT MAX(seq) FROM {table}), 0) + 1, false)"
        ))
        .execute(&mut *tx)
        .await?;
    }
    // Counted before the commit: a copy that does not match is rolled back, leaving the
    // target empty for another try.
    let mut counts = Vec::new();
    for table in TABLES {
        let sql = format!("SELECT COUNT(*) FROM {table}");
        counts.push(TableCount {
            table,
            source: sqlx::query_scalar(&sql)
                .fetch_one(source.read_pool())
                .await?,
            target: sqlx::query_scalar(&sql).fetch_one(&mut *tx).await?,
        });
    }
    if counts.iter().all(|c| c.source == c.target) {
        tx.commit().await?;
    }
    Ok(counts)
}

/// Refuse to copy when the schema has a table [`TABLES`] does not name: it would be left
/// behind without a word.
async fn check_tables_known(target: &PgStore) -> Result<()> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::TEXT FROM information_schema.tables
         WHERE table_schema = current_schema()
           AND table_name NOT IN ('_sqlx_migrations', 'health_probe', 'hub_leases')",
    )
    .fetch_all(target.pool())
    .await?;
    let unknown: Vec<&str> = tables
        .iter()
        .map(String::as_str)
        .filter(|t| !TABLES.contains(t))
        .collect();
    if !unknown.is_empty() {
        return Err(Error::Internal(anyhow::anyhow!(
            "migrate-data does not know the tables {}: this build cannot copy them",
            unknown.join(", ")
        )));
    }
    Ok(())
}

/// The target table's columns, in order, with the type their values are read as.
async fn target_columns(target: &PgStore, table: &str) -> Result<Vec<Column>> {
    let rows = sqlx::query(
        "SELECT column_name, data_type FROM information_schema.columns
         WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
    )
    .bind(table)
    .fetch_all(target.pool())
    .await?;
    rows.iter()
        .map(|r| {
            let name: String = r.try_get("column_name")?;
            let data_type: String = r.try_get("data_type")?;
            let kind = match data_type.as_str() {
                "bigint" | "integer" => Kind::Int,
                "double precision" => Kind::Real,
                "boolean" => Kind::Bool,
                "text" => Kind::Text,
                other => {
                    return Err(Error::Internal(anyhow::anyhow!(
                        "{table}.{name} has type {other}, which the copy does not know"
                    )));
                }
            };
            Ok(Column { name, kind })
        })
        .collect()
}

fn cells(row: &SqliteRow, columns: &[Column]) -> std::result::Result<Vec<Cell>, sqlx::Error> {
    columns
        .iter()
        .map(|c| {
            let name = c.name.as_str();
            Ok(match c.kind {
                Kind::Int => Cell::Int(row.try_get(name)?),
                Kind::Real => Cell::Real(row.try_get(name)?),
                Kind::Bool => Cell::Bool(row.try_get(name)?),
                Kind::Text => Cell::Text(row.try_get(name)?),
            })
        })
        .collect()
}

async fn insert(
    tx: &mut sqlx::PgConnection,
    table: &str,
    names: &[&str],
    rows: Vec<Vec<Cell>>,
) -> Result<()> {
    let mut q: QueryBuilder<Postgres> =
        QueryBuilder::new(format!("INSERT INTO {table} ({}) ", names.join(", ")));
    q.push_values(rows, |mut b, row| {
        for cell in row {
            match cell {
                Cell::Int(v) => b.push_bind(v),
                Cell::Real(v) => b.push_bind(v),
                Cell::Bool(v) => b.push_bind(v),
                Cell::Text(v) => b.push_bind(v),
            };
        }
    });
    q.build()
        .execute(tx)
        .await
        .map_err(|e| match Error::from(e) {
            Error::BadRequest(m) => Error::BadRequest(format!("{table}: {m}")),
            Error::Internal(e) => Error::Internal(e.context(format!("writing {table}"))),
            other => other,
        })?;
    Ok(())
}
