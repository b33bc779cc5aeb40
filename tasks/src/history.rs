//! The execution history of cron jobs in PostgreSQL: [`PgHistory`] is an agent
//! [`ExecSink`]; records are queued and inserted in batches into `executions` (server 0 of the
//! task store), partitioned by day and dropped after the store's retention like attempts.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use shardjob_agent::execlog::{ExecRecord, ExecSink};
use tokio::sync::mpsc;

use crate::error::TasksError;
use crate::store::{Store, db_err};
use crate::tasks::Tasks;

/// Records waiting beyond this are dropped (and counted): a database down for long must not
/// grow the agent's memory without bound.
const MAX_QUEUED: usize = 100_000;

/// One execution, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExecutionRecord {
    pub job: String,
    pub shard: u32,
    pub fire_time: DateTime<Utc>,
    pub instance: String,
    pub token: i64,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// `ok`, `failed`, `timeout`, `cancelled`, `aborted`.
    pub outcome: String,
}

/// The sink: give it to `Agent::builder().exec_sink(Arc::new(PgHistory::start(&tasks)))`.
#[derive(Debug)]
pub struct PgHistory {
    tx: mpsc::Sender<ExecRecord>,
}

impl PgHistory {
    /// Starts the writer task (needs a tokio runtime).
    pub fn start(tasks: &Tasks) -> Self {
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        tokio::spawn(writer(tasks.clone(), rx));
        Self { tx }
    }
}

impl ExecSink for PgHistory {
    fn record(&self, record: &ExecRecord) {
        if self.tx.try_send(record.clone()).is_err() {
            metrics::counter!("shardjob_history_dropped_total").increment(1);
        }
    }
}

async fn writer(tasks: Tasks, mut rx: mpsc::Receiver<ExecRecord>) {
    let mut batch: Vec<ExecRecord> = Vec::new();
    loop {
        if batch.is_empty() {
            match rx.recv().await {
                Some(r) => batch.push(r),
                None => return,
            }
        }
        // Gather what came in the next moment, then write it in one statement.
        tokio::time::sleep(Duration::from_millis(100)).await;
        while let Ok(r) = rx.try_recv() {
            batch.push(r);
        }
        match insert(tasks.store(), &batch).await {
            Ok(()) => batch.clear(),
            Err(e) => {
                tracing::warn!(error = %e, queued = batch.len(), "writing the execution history failed; retrying");
                if batch.len() > MAX_QUEUED {
                    let drop = batch.len() - MAX_QUEUED;
                    batch.drain(..drop);
                    metrics::counter!("shardjob_history_dropped_total").increment(drop as u64);
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn insert(store: &Store, batch: &[ExecRecord]) -> Result<(), TasksError> {
    let days: Vec<_> = batch
        .iter()
        .map(|r| crate::store::partitions::day_of(r.start))
        .collect();
    store.ensure_days(0, "executions", days).await?;
    let client = store.conn(0, "writing history").await?;
    let jobs: Vec<&str> = batch.iter().map(|r| r.job.as_str()).collect();
    let shards: Vec<i32> = batch.iter().map(|r| r.shard as i32).collect();
    let fires: Vec<DateTime<Utc>> = batch.iter().map(|r| r.fire_time).collect();
    let instances: Vec<&str> = batch.iter().map(|r| r.instance.as_str()).collect();
    let tokens: Vec<i64> = batch.iter().map(|r| r.token).collect();
    let starts: Vec<DateTime<Utc>> = batch.iter().map(|r| r.start).collect();
    let ends: Vec<DateTime<Utc>> = batch.iter().map(|r| r.end).collect();
    let outcomes: Vec<&str> = batch.iter().map(|r| r.outcome.as_str()).collect();
    client
        .execute(
            "INSERT INTO executions (job, shard, fire_time, instance, token, started_at, ended_at, outcome)
             SELECT * FROM unnest($1::text[], $2::int4[], $3::timestamptz[], $4::text[], $5::int8[],
                                  $6::timestamptz[], $7::timestamptz[], $8::text[])",
            &[&jobs, &shards, &fires, &instances, &tokens, &starts, &ends, &outcomes],
        )
        .await
        .map_err(db_err("writing history", 0))?;
    Ok(())
}

impl Tasks {
    /// The latest `limit` executions of `job` (of `shard` only, if given; since `since`, if
    /// given), newest first.
    pub async fn history(
        &self,
        job: &str,
        shard: Option<u32>,
        since: Option<DateTime<Utc>>,
        limit: usize,
    ) -> Result<Vec<ExecutionRecord>, TasksError> {
        let client = self.store().conn(0, "reading history").await?;
        let shard = shard.map(|s| s as i32);
        let since = since.unwrap_or_else(crate::store::far_past);
        let rows = client
            .query(
                "SELECT job, shard, fire_time, instance, token, started_at, ended_at, outcome
                   FROM executions WHERE job = $1 AND ($2::int4 IS NULL OR shard = $2) AND started_at >= $3
                  ORDER BY started_at DESC LIMIT $4",
                &[&job, &shard, &since, &(limit.clamp(1, 1000) as i64)],
            )
            .await
            .map_err(db_err("reading history", 0))?;
        Ok(rows
            .iter()
            .map(|r| ExecutionRecord {
                job: r.get(0),
                shard: r.get::<_, i32>(1).max(0) as u32,
                fire_time: r.get(2),
                instance: r.get(3),
                token: r.get(4),
                started_at: r.get(5),
                ended_at: r.get(6),
                outcome: r.get(7),
            })
            .collect())
    }
}
