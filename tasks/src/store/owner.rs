//! What a segment's owner does, and only while its token is the segment's fence.
//!
//! Every statement below that changes a task reads the fence row `FOR SHARE` with
//! `token = mine`: a raise by a newer owner (an `UPDATE` of that row) waits for the statements
//! in flight and, once committed, makes every later one of the old owner change nothing. So a
//! paused or partitioned ex-owner can start, finish or retry no task of a segment it lost.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{Store, db_err};
use crate::error::TasksError;

/// The fence check every fenced statement starts with: `$1` queue, `$2` segment, `$3` token.
macro_rules! fence {
    () => {
        "f AS (SELECT 1 FROM segment_fences WHERE queue = $1 AND segment = $2 AND token = $3 FOR SHARE)"
    };
}

/// Attempts of one task that may be lost (its owner died mid-run) or interrupted (a hand-off)
/// without counting against its `max_attempts`; one more and it fails: a task that kills every
/// process that runs it must not go round the cluster for ever.
pub const MAX_LOST: i32 = 5;

/// A task claimed to run.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    pub payload: serde_json::Value,
    pub attempt: u32,
    /// `None`: the queue's retry policy decides.
    pub max_attempts: Option<u32>,
    /// Attempts lost or interrupted so far (they do not count against `max_attempts`).
    pub lost: u32,
    pub due_at: DateTime<Utc>,
    pub is_recovery: bool,
    pub started_at: DateTime<Utc>,
}

/// How one attempt of a claimed task ended, to write.
#[derive(Debug, Clone)]
pub struct Finished {
    pub id: Uuid,
    pub attempt: u32,
    /// The due time it was claimed at (finds its partition).
    pub due_at: DateTime<Utc>,
    pub status: &'static str,
    /// For a retry: the new due time.
    pub retry_at: Option<DateTime<Utc>>,
    pub outcome: &'static str,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
}

const CLAIM: &str = concat!(
    "\nWITH ",
    fence!(),
    "
UPDATE tasks SET status = 'running', attempt = attempt + 1, started_at = now(), updated_at = now(),
       token = $3, instance = $4
 WHERE queue = $1 AND segment = $2 AND id = ANY($5) AND due_at >= $6 AND due_at <= $7
   AND status = 'pending' AND EXISTS (SELECT 1 FROM f)
RETURNING id, payload::text, attempt, max_attempts, due_at, recovery, started_at, lost"
);

const FINISH: &str = concat!(
    "\nWITH ",
    fence!(),
    ",
u AS (SELECT * FROM unnest($5::uuid[], $6::int4[], $7::timestamptz[], $8::text[], $9::timestamptz[],
                           $10::text[], $11::text[], $12::timestamptz[], $13::timestamptz[])
        AS u(id, attempt, due_at, status, retry_at, outcome, error, started, ended)),
w AS (
    UPDATE tasks t SET status = u.status, due_at = coalesce(u.retry_at, t.due_at),
           last_error = coalesce(u.error, t.last_error), updated_at = now(), recovery = false,
           lost = t.lost + CASE WHEN u.outcome = 'interrupted' THEN 1 ELSE 0 END,
           finished_at = CASE WHEN u.status IN ('done', 'failed', 'cancelled') THEN u.ended END
      FROM u
     WHERE t.id = u.id AND t.due_at = u.due_at AND t.due_at >= $14 AND t.due_at <= $15
       AND t.queue = $1 AND t.segment = $2 AND t.status = 'running' AND t.token = $3
       AND t.attempt = u.attempt AND EXISTS (SELECT 1 FROM f)
    RETURNING t.id
)
INSERT INTO attempts (task, attempt, queue, segment, instance, token, started_at, ended_at, outcome, error)
SELECT u.id, u.attempt, $1, $2, $4, $3, u.started, u.ended, u.outcome, u.error FROM u JOIN w ON w.id = u.id
RETURNING task"
);

const RECOVER: &str = concat!(
    "\nWITH ",
    fence!(),
    ",
r AS (
    UPDATE tasks SET
        status = CASE WHEN lost >= $4 THEN 'failed' ELSE 'pending' END,
        finished_at = CASE WHEN lost >= $4 THEN now() END,
        lost = lost + 1, recovery = true, updated_at = now(),
        last_error = 'attempt ' || attempt || ' was lost with its owner ' || coalesce(instance, '?')
     WHERE queue = $1 AND segment = $2 AND status = 'running' AND EXISTS (SELECT 1 FROM f)
    RETURNING id, attempt, instance, token, started_at
)
INSERT INTO attempts (task, attempt, queue, segment, instance, token, started_at, ended_at, outcome, error)
SELECT id, attempt, $1, $2, coalesce(instance, ''), coalesce(token, 0), coalesce(started_at, now()), now(),
       'lost', 'its owner stopped before it ended' FROM r
RETURNING task"
);

impl Store {
    /// Raises the fence of `queue`/`segment` to `token` (a new owner). Fails with `Fenced` when
    /// the fence is already higher: this owner is stale.
    pub async fn raise_fence(
        &self,
        server: usize,
        queue: &str,
        segment: u32,
        token: i64,
        instance: &str,
    ) -> Result<(), TasksError> {
        let client = self.conn(server, "raising the fence").await?;
        let err = db_err("raising the fence", server);
        let seg = segment as i32;
        let raised = client
            .query_opt(
                "INSERT INTO segment_fences (queue, segment, token, instance) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (queue, segment) DO UPDATE
                    SET token = EXCLUDED.token, instance = EXCLUDED.instance, raised_at = now()
                  WHERE segment_fences.token < EXCLUDED.token
                 RETURNING token",
                &[&queue, &seg, &token, &instance],
            )
            .await
            .map_err(&err)?;
        if raised.is_some() {
            return Ok(());
        }
        let current = self.fence(server, queue, segment).await?;
        if current == Some(token) {
            return Ok(()); // this owner raised it before (its worker restarted)
        }
        Err(TasksError::Fenced {
            queue: queue.to_owned(),
            segment,
            mine: token,
            current,
        })
    }

    /// The token of the segment's fence row.
    pub async fn fence(
        &self,
        server: usize,
        queue: &str,
        segment: u32,
    ) -> Result<Option<i64>, TasksError> {
        let client = self.conn(server, "reading the fence").await?;
        let row = client
            .query_opt(
                "SELECT token FROM segment_fences WHERE queue = $1 AND segment = $2",
                &[&queue, &(segment as i32)],
            )
            .await
            .map_err(db_err("reading the fence", server))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Puts back the tasks an earlier owner left running (its attempt is recorded as `lost`),
    /// or fails those without attempts left. Returns how many. Called when a segment worker
    /// starts: no run of this segment is going on in this process then (an earlier worker's
    /// handlers died with it), so every `running` row is a lost one, this token's included.
    pub async fn recover(
        &self,
        server: usize,
        queue: &str,
        segment: u32,
        token: i64,
    ) -> Result<usize, TasksError> {
        let client = self.conn(server, "recovering").await?;
        let n = client
            .query(RECOVER, &[&queue, &(segment as i32), &token, &MAX_LOST])
            .await
            .map_err(db_err("recovering", server))?
            .len();
        Ok(n)
    }

    /// The pending tasks of the segment due in `[from, until)`, earliest first, at most
    /// `limit`.
    pub async fn due_between(
        &self,
        server: usize,
        queue: &str,
        segment: u32,
        from: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: i64,
    ) -> Result<Vec<(Uuid, DateTime<Utc>)>, TasksError> {
        let client = self.conn(server, "loading the window").await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, due_at FROM tasks WHERE queue = $1 AND segment = $2 AND status = 'pending'
                   AND due_at >= $3 AND due_at < $4 ORDER BY due_at LIMIT $5",
            )
            .await
            .map_err(db_err("loading the window", server))?;
        let rows = client
            .query(&stmt, &[&queue, &(segment as i32), &from, &until, &limit])
            .await
            .map_err(db_err("loading the window", server))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Marks `due` tasks running under `token`, skipping any no longer pending (cancelled, run
    /// by an earlier owner). Nothing is claimed once the fence has moved on.
    pub async fn claim(
        &self,
        server: usize,
        queue: &str,
        segment: u32,
        token: i64,
        instance: &str,
        due: &[(Uuid, DateTime<Utc>)],
    ) -> Result<Vec<Claimed>, TasksError> {
        let (Some(lo), Some(hi)) = (due.iter().map(|d| d.1).min(), due.iter().map(|d| d.1).max())
        else {
            return Ok(Vec::new());
        };
        let client = self.conn(server, "claiming").await?;
        let err = db_err("claiming", server);
        let ids: Vec<Uuid> = due.iter().map(|d| d.0).collect();
        let stmt = client.prepare_cached(CLAIM).await.map_err(&err)?;
        let rows = client
            .query(
                &stmt,
                &[&queue, &(segment as i32), &token, &instance, &ids, &lo, &hi],
            )
            .await
            .map_err(&err)?;
        Ok(rows
            .iter()
            .map(|r| Claimed {
                id: r.get(0),
                payload: super::payload(r.try_get(1)),
                attempt: r.get::<_, i32>(2).max(0) as u32,
                max_attempts: r.get::<_, Option<i32>>(3).map(|m| m.max(1) as u32),
                due_at: r.get(4),
                is_recovery: r.get(5),
                started_at: r.get(6),
                lost: r.get::<_, i32>(7).max(0) as u32,
            })
            .collect())
    }

    /// Writes how attempts ended (task state and an attempts row each), fenced. Returns the ids
    /// written; the others were not this owner's to write any more.
    pub async fn finish(
        &self,
        server: usize,
        queue: &str,
        segment: u32,
        token: i64,
        instance: &str,
        done: &[Finished],
    ) -> Result<Vec<Uuid>, TasksError> {
        let (Some(lo), Some(hi)) = (
            done.iter().map(|d| d.due_at).min(),
            done.iter().map(|d| d.due_at).max(),
        ) else {
            return Ok(Vec::new());
        };
        // Retries move to their new day; attempts go to their start's day.
        let retry_days: Vec<_> = done
            .iter()
            .filter_map(|d| d.retry_at)
            .map(super::partitions::day_of)
            .collect();
        let attempt_days: Vec<_> = done
            .iter()
            .map(|d| super::partitions::day_of(d.started_at))
            .collect();
        self.ensure_days(server, "tasks", retry_days).await?;
        self.ensure_days(server, "attempts", attempt_days).await?;
        let client = self.conn(server, "finishing").await?;
        let err = db_err("finishing", server);
        let ids: Vec<Uuid> = done.iter().map(|d| d.id).collect();
        let attempts: Vec<i32> = done.iter().map(|d| d.attempt as i32).collect();
        let dues: Vec<DateTime<Utc>> = done.iter().map(|d| d.due_at).collect();
        let statuses: Vec<&str> = done.iter().map(|d| d.status).collect();
        let retry: Vec<Option<DateTime<Utc>>> = done.iter().map(|d| d.retry_at).collect();
        let outcomes: Vec<&str> = done.iter().map(|d| d.outcome).collect();
        let errors: Vec<Option<&str>> = done.iter().map(|d| d.error.as_deref()).collect();
        let started: Vec<DateTime<Utc>> = done.iter().map(|d| d.started_at).collect();
        let ended: Vec<DateTime<Utc>> = done.iter().map(|d| d.ended_at).collect();
        let stmt = client.prepare_cached(FINISH).await.map_err(&err)?;
        let rows = client
            .query(
                &stmt,
                &[
                    &queue,
                    &(segment as i32),
                    &token,
                    &instance,
                    &ids,
                    &attempts,
                    &dues,
                    &statuses,
                    &retry,
                    &outcomes,
                    &errors,
                    &started,
                    &ended,
                    &lo,
                    &hi,
                ],
            )
            .await
            .map_err(&err)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_changing_statement_is_fenced() {
        for sql in [super::CLAIM, super::FINISH, super::RECOVER] {
            assert!(sql.contains(fence!()), "{sql}");
            assert!(sql.contains("EXISTS (SELECT 1 FROM f)"), "{sql}");
        }
    }
}
