//! Producers' and operators' reads and changes: get, attempts, list, cancel, requeue. A task
//! is found by id on whichever server holds it (ids do not say their segment).

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Store, db_err};
use crate::error::TasksError;

/// A task as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRecord {
    pub id: Uuid,
    pub queue: String,
    pub segment: u32,
    pub due_at: DateTime<Utc>,
    pub payload: serde_json::Value,
    pub status: String,
    pub attempt: u32,
    /// `None`: the queue's retry policy decides.
    pub max_attempts: Option<u32>,
    pub dedupe_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// The owner's fencing token of the last attempt.
    pub token: Option<i64>,
    pub instance: Option<String>,
}

/// One attempt of a task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttemptRecord {
    pub task: Uuid,
    pub attempt: u32,
    pub instance: String,
    pub token: i64,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// `ok`, `failed`, `timeout`, `interrupted` (a hand-off), `lost` (its owner died).
    pub outcome: String,
    pub error: Option<String>,
}

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelOutcome {
    /// It was pending; it will not run.
    Cancelled,
    /// An attempt is running now; it goes on.
    AlreadyRunning,
    /// It had ended (done, failed or cancelled before).
    AlreadyFinished,
    /// No such task.
    Unknown,
}

const COLUMNS: &str = "id, queue, segment, due_at, payload::text, status, attempt, max_attempts, dedupe_key, \
                       created_at, updated_at, started_at, finished_at, last_error, token, instance";

fn record(r: &tokio_postgres::Row) -> TaskRecord {
    TaskRecord {
        id: r.get(0),
        queue: r.get(1),
        segment: r.get::<_, i32>(2).max(0) as u32,
        due_at: r.get(3),
        payload: super::payload(r.try_get(4)),
        status: r.get(5),
        attempt: r.get::<_, i32>(6).max(0) as u32,
        max_attempts: r.get::<_, Option<i32>>(7).map(|m| m.max(0) as u32),
        dedupe_key: r.get(8),
        created_at: r.get(9),
        updated_at: r.get(10),
        started_at: r.get(11),
        finished_at: r.get(12),
        last_error: r.get(13),
        token: r.get(14),
        instance: r.get(15),
    }
}

fn attempt(r: &tokio_postgres::Row) -> AttemptRecord {
    AttemptRecord {
        task: r.get(0),
        attempt: r.get::<_, i32>(1).max(0) as u32,
        instance: r.get(2),
        token: r.get(3),
        started_at: r.get(4),
        ended_at: r.get(5),
        outcome: r.get(6),
        error: r.get(7),
    }
}

/// One queue at a glance (the dashboard's numbers), over every server.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct QueueStats {
    pub queue: String,
    pub segments: u32,
    /// Tasks per status.
    pub by_status: std::collections::BTreeMap<String, i64>,
    /// Pending tasks by when they are due: `overdue`, `1m`, `1h`, `1d`, `later`.
    pub pending_due: std::collections::BTreeMap<String, i64>,
    /// First-attempt start minus due time over the attempts of the last 5 minutes, ms.
    pub lateness_p50_ms: f64,
    pub lateness_p99_ms: f64,
    /// Attempts ended per second over the last minute.
    pub throughput_per_s: f64,
}

/// A page of tasks and the cursor of the next one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page {
    pub tasks: Vec<TaskRecord>,
    /// Pass to the next `list` call; `None` at the end.
    pub next: Option<String>,
}

/// A list cursor: the (due_at, id) of the last task of the previous page.
pub fn encode_cursor(due: DateTime<Utc>, id: Uuid) -> String {
    format!("{}_{}", due.timestamp_micros(), id.simple())
}

/// Parses a cursor made by [`encode_cursor`].
pub fn decode_cursor(cursor: &str) -> Result<(DateTime<Utc>, Uuid), TasksError> {
    let bad = || TasksError::BadTask {
        field: "cursor",
        reason: format!("{cursor:?} is not a cursor returned by list"),
    };
    let (micros, id) = cursor.split_once('_').ok_or_else(bad)?;
    let due = DateTime::<Utc>::from_timestamp_micros(micros.parse().map_err(|_| bad())?)
        .ok_or_else(bad)?;
    Ok((due, Uuid::parse_str(id).map_err(|_| bad())?))
}

impl Store {
    /// The task `id`, from whichever server holds it.
    pub async fn get(&self, id: Uuid) -> Result<Option<(usize, TaskRecord)>, TasksError> {
        for server in 0..self.servers.len() {
            let client = self.conn(server, "reading a task").await?;
            let row = client
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM tasks WHERE id = $1"),
                    &[&id],
                )
                .await
                .map_err(db_err("reading a task", server))?;
            if let Some(row) = row {
                return Ok(Some((server, record(&row))));
            }
        }
        Ok(None)
    }

    /// The attempts of task `id` on `server`, in order.
    pub async fn attempts(
        &self,
        server: usize,
        id: Uuid,
    ) -> Result<Vec<AttemptRecord>, TasksError> {
        let client = self.conn(server, "reading attempts").await?;
        let rows = client
            .query(
                "SELECT task, attempt, instance, token, started_at, ended_at, outcome, error
                   FROM attempts WHERE task = $1 ORDER BY started_at, attempt",
                &[&id],
            )
            .await
            .map_err(db_err("reading attempts", server))?;
        Ok(rows.iter().map(attempt).collect())
    }

    /// The latest `limit` attempts `instance` ran, newest first, over every server.
    pub async fn executions(
        &self,
        instance: &str,
        limit: usize,
    ) -> Result<Vec<AttemptRecord>, TasksError> {
        let mut all = Vec::new();
        for server in 0..self.servers.len() {
            let client = self.conn(server, "reading executions").await?;
            let rows = client
                .query(
                    "SELECT task, attempt, instance, token, started_at, ended_at, outcome, error
                       FROM attempts WHERE instance = $1 ORDER BY started_at DESC LIMIT $2",
                    &[&instance, &(limit as i64)],
                )
                .await
                .map_err(db_err("reading executions", server))?;
            all.extend(rows.iter().map(attempt));
        }
        all.sort_by_key(|a| std::cmp::Reverse(a.started_at));
        all.truncate(limit);
        Ok(all)
    }

    /// Every queue's numbers (the store's `task_queues`), summed over the servers (lateness:
    /// the worst server's).
    pub async fn queue_stats(&self) -> Result<Vec<QueueStats>, TasksError> {
        let mut by_queue: std::collections::BTreeMap<String, QueueStats> = Default::default();
        for server in 0..self.servers.len() {
            let client = self.conn(server, "reading queue stats").await?;
            let err = db_err("reading queue stats", server);
            for r in client
                .query("SELECT name, segments FROM task_queues", &[])
                .await
                .map_err(&err)?
            {
                let (name, segments): (String, i32) = (r.get(0), r.get(1));
                by_queue.entry(name.clone()).or_insert_with(|| QueueStats {
                    queue: name,
                    segments: segments.max(0) as u32,
                    ..QueueStats::default()
                });
            }
            for r in client
                .query(
                    "SELECT queue, status, count(*),
                            CASE WHEN status <> 'pending' THEN NULL
                                 WHEN due_at <= now() THEN 'overdue'
                                 WHEN due_at <= now() + interval '1 minute' THEN '1m'
                                 WHEN due_at <= now() + interval '1 hour' THEN '1h'
                                 WHEN due_at <= now() + interval '1 day' THEN '1d'
                                 ELSE 'later' END AS bucket
                       FROM tasks GROUP BY 1, 2, 4",
                    &[],
                )
                .await
                .map_err(&err)?
            {
                let (queue, status, n, bucket): (String, String, i64, Option<String>) =
                    (r.get(0), r.get(1), r.get(2), r.get(3));
                let q = by_queue.entry(queue.clone()).or_insert_with(|| QueueStats {
                    queue,
                    ..QueueStats::default()
                });
                *q.by_status.entry(status).or_default() += n;
                if let Some(b) = bucket {
                    *q.pending_due.entry(b).or_default() += n;
                }
            }
            for r in client
                .query(
                    "SELECT a.queue,
                            coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM a.started_at - t.due_at) * 1000)
                                     FILTER (WHERE a.attempt = 1), 0)::float8,
                            coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM a.started_at - t.due_at) * 1000)
                                     FILTER (WHERE a.attempt = 1), 0)::float8,
                            (count(*) FILTER (WHERE a.ended_at > now() - interval '1 minute'))::float8 / 60
                       FROM attempts a JOIN tasks t ON t.id = a.task
                      WHERE a.started_at > now() - interval '5 minutes'
                      GROUP BY a.queue",
                    &[],
                )
                .await
                .map_err(&err)?
            {
                let queue: String = r.get(0);
                if let Some(q) = by_queue.get_mut(&queue) {
                    q.lateness_p50_ms = q.lateness_p50_ms.max(r.get(1));
                    q.lateness_p99_ms = q.lateness_p99_ms.max(r.get(2));
                    q.throughput_per_s += r.get::<_, f64>(3);
                }
            }
        }
        Ok(by_queue.into_values().collect())
    }

    /// Tasks of `queue` with `status` (any when `None`), due before `due_before`, ordered by
    /// (due_at, id) after `cursor`, at most `limit`, merged over every server.
    pub async fn list(
        &self,
        queue: &str,
        status: Option<&str>,
        due_before: Option<DateTime<Utc>>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, TasksError> {
        let after = cursor.map(decode_cursor).transpose()?;
        let (after_due, after_id) = after.unwrap_or((super::far_past(), Uuid::nil()));
        let until = due_before.unwrap_or_else(super::far_future);
        let lim = (limit + 1) as i64;
        let mut all = Vec::new();
        for server in 0..self.servers.len() {
            let client = self.conn(server, "listing tasks").await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM tasks WHERE queue = $1 AND ($2::text IS NULL OR status = $2)
                           AND due_at < $3 AND (due_at, id) > ($4, $5) ORDER BY due_at, id LIMIT $6"
                    ),
                    &[&queue, &status, &until, &after_due, &after_id, &lim],
                )
                .await
                .map_err(db_err("listing tasks", server))?;
            all.extend(rows.iter().map(record));
        }
        all.sort_by_key(|t| (t.due_at, t.id));
        let more = all.len() > limit;
        all.truncate(limit);
        let next = if more {
            all.last().map(|t| encode_cursor(t.due_at, t.id))
        } else {
            None
        };
        Ok(Page { tasks: all, next })
    }

    /// Cancels task `id` if it is still pending.
    pub async fn cancel(&self, id: Uuid) -> Result<CancelOutcome, TasksError> {
        for server in 0..self.servers.len() {
            let client = self.conn(server, "cancelling").await?;
            let err = db_err("cancelling", server);
            let row = client
                .query_opt(
                    "WITH c AS (UPDATE tasks SET status = 'cancelled', updated_at = now(), finished_at = now()
                                 WHERE id = $1 AND status = 'pending' RETURNING 1)
                     SELECT (SELECT count(*) FROM c), (SELECT status FROM tasks WHERE id = $1)",
                    &[&id],
                )
                .await
                .map_err(&err)?;
            let Some(row) = row else { continue };
            let (changed, status): (i64, Option<String>) = (row.get(0), row.get(1));
            let outcome = match (changed, status.as_deref()) {
                (1.., _) => CancelOutcome::Cancelled,
                (_, Some("running")) => CancelOutcome::AlreadyRunning,
                // Claimed between the two reads of one snapshot cannot happen; a row seen as
                // pending here was cancelled by a concurrent call.
                (_, Some("pending")) => CancelOutcome::Cancelled,
                (_, Some(_)) => CancelOutcome::AlreadyFinished,
                (_, None) => continue,
            };
            return Ok(outcome);
        }
        Ok(CancelOutcome::Unknown)
    }

    /// Puts a failed (dead-letter) or cancelled task back to pending, due now, with `extra`
    /// more attempts. Returns its record, or `None` when it is not failed or cancelled.
    pub async fn requeue(&self, id: Uuid, extra: u32) -> Result<Option<TaskRecord>, TasksError> {
        let Some((server, _)) = self.get(id).await? else {
            return Err(TasksError::BadTask {
                field: "id",
                reason: format!("no task {id}"),
            });
        };
        let now = Utc::now();
        self.ensure_days(server, "tasks", [super::partitions::day_of(now)])
            .await?;
        let client = self.conn(server, "requeueing").await?;
        let row = client
            .query_opt(
                &format!(
                    "UPDATE tasks SET status = 'pending', due_at = $2, max_attempts = attempt - lost + $3,
                            finished_at = NULL, updated_at = now(), recovery = false
                      WHERE id = $1 AND status IN ('failed', 'cancelled') RETURNING {COLUMNS}"
                ),
                &[&id, &now, &(extra.clamp(1, 1000) as i32)],
            )
            .await
            .map_err(db_err("requeueing", server))?;
        let requeued = row.map(|r| record(&r));
        if let Some(t) = &requeued {
            // Due now: tell its owner at once rather than at its next refill.
            let note = format!("{}|{}:{}", t.queue, t.segment, t.due_at.timestamp_millis());
            let _ = client
                .execute("SELECT pg_notify($1, $2)", &[&super::CHANNEL, &note])
                .await;
        }
        Ok(requeued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_names_the_field() {
        let due: DateTime<Utc> = "2026-12-01T10:00:00.123456Z".parse().unwrap();
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(due, id)).unwrap(), (due, id));
        for bad in ["", "x", "1_notauuid", "abc_0000"] {
            let e = decode_cursor(bad).unwrap_err();
            assert!(e.to_string().starts_with("task cursor:"), "{e}");
        }
    }
}
