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

const COLUMNS: &str = "id, queue, segment, due_at, payload, status, attempt, max_attempts, dedupe_key, \
                       created_at, updated_at, started_at, finished_at, last_error, token, instance";

fn record(r: &tokio_postgres::Row) -> TaskRecord {
    TaskRecord {
        id: r.get(0),
        queue: r.get(1),
        segment: r.get::<_, i32>(2).max(0) as u32,
        due_at: r.get(3),
        payload: r.get(4),
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
