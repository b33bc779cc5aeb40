//! The shardjob side of `bench-tasks`: `tasks_agent` processes run the queue `bench`; the bench
//! submits through the Rust API and measures from the store (each task's first attempt's
//! start minus its due time; `ok` attempts per task; tasks not done).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use shardjob_tasks::{NewTask, Tasks};

use super::{Line, rss_mib};
use crate::EtcdCluster;
use crate::campaign::AgentProc;
use crate::postgres::PgServer;

/// The queue every case uses (so the far-ahead backlog sits in the same index).
pub const QUEUE: &str = "bench";
/// Its segments.
pub const SEGMENTS: u32 = 64;

/// The agents and the store of a run.
pub struct Bench<'a> {
    pub pg: &'a PgServer,
    pub etcd: &'a EtcdCluster,
    pub tasks: Tasks,
    pub db: tokio_postgres::Client,
    pub agents: Vec<AgentProc>,
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub pending: u64,
    /// Passed to the agents as `SHARDJOB_CLAIM_AHEAD_MS`, if set.
    pub claim_ahead_ms: Option<u64>,
}

impl std::fmt::Debug for Bench<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bench")
            .field("agents", &self.agents.len())
            .finish()
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Submits `tasks` in batches of `batch` from `clients` concurrent submitters; returns tasks/s.
pub async fn submit_all(
    tasks: &Tasks,
    all: Vec<NewTask>,
    batch: usize,
    clients: usize,
) -> Result<f64, String> {
    let n = all.len();
    let chunks: Vec<Vec<NewTask>> = all.chunks(batch.max(1)).map(<[NewTask]>::to_vec).collect();
    let queue = std::sync::Arc::new(tokio::sync::Mutex::new(chunks));
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..clients.max(1) {
        let (tasks, queue) = (tasks.clone(), queue.clone());
        set.spawn(async move {
            loop {
                let Some(chunk) = queue.lock().await.pop() else {
                    return Ok::<(), String>(());
                };
                if chunk.len() == 1 {
                    let t = chunk.into_iter().next().ok_or("empty chunk")?;
                    tasks.submit(QUEUE, t).await.map_err(err)?;
                } else {
                    tasks.submit_batch(QUEUE, chunk).await.map_err(err)?;
                }
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.map_err(err)??;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

impl Bench<'_> {
    /// Starts agent `id`.
    pub fn start_agent(&mut self, id: &str) -> Result<(), String> {
        let envs = vec![
            (
                "SHARDJOB_ENDPOINTS".to_owned(),
                self.etcd.endpoints().join(","),
            ),
            ("SHARDJOB_NAMESPACE".to_owned(), "bench-tasks".to_owned()),
            ("SHARDJOB_TTL".to_owned(), "2".to_owned()),
            ("SHARDJOB_PG_URL".to_owned(), self.pg.url()),
            ("SHARDJOB_QUEUE".to_owned(), QUEUE.to_owned()),
            ("SHARDJOB_SEGMENTS".to_owned(), SEGMENTS.to_string()),
            ("SHARDJOB_CONCURRENCY".to_owned(), "1024".to_owned()),
        ];
        let mut envs = envs;
        if let Some(ms) = self.claim_ahead_ms {
            envs.push(("SHARDJOB_CLAIM_AHEAD_MS".to_owned(), ms.to_string()));
        }
        let mut a = AgentProc::new(id, &self.bin, envs, &self.dir);
        a.start()?;
        self.agents.push(a);
        Ok(())
    }

    /// Waits until every segment's fence names one of the running agents.
    pub async fn wait_owned(&self, alive: &[&str]) -> Result<(), String> {
        let alive: Vec<String> = alive.iter().map(|s| s.to_string()).collect();
        let start = Instant::now();
        loop {
            let n: i64 = self
                .db
                .query_one(
                    "SELECT count(*) FROM segment_fences WHERE queue = $1 AND instance = ANY($2)",
                    &[&QUEUE, &alive],
                )
                .await
                .map_err(err)?
                .get(0);
            if n == i64::from(SEGMENTS) {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(60) {
                return Err(format!("only {n} of {SEGMENTS} segments owned after 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Measures the tasks due in `[from, to)` once all are done (or `patience` passed).
    pub async fn measure(
        &self,
        case: &str,
        rate: f64,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        patience: Duration,
    ) -> Result<Line, String> {
        let start = Instant::now();
        let (total, _) = loop {
            let row = self
                .db
                .query_one(
                    "SELECT count(*), count(*) FILTER (WHERE status = 'done') FROM tasks
                      WHERE queue = $1 AND due_at >= $2 AND due_at < $3",
                    &[&QUEUE, &from, &to],
                )
                .await
                .map_err(err)?;
            let (total, done): (i64, i64) = (row.get(0), row.get(1));
            if done == total || start.elapsed() > patience {
                break (total, done);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let row = self
            .db
            .query_one(
                "WITH t AS (SELECT id, due_at, status FROM tasks WHERE queue = $1 AND due_at >= $2 AND due_at < $3),
                      a AS (SELECT a.task, min(a.started_at) AS first, max(a.ended_at) AS last,
                                   count(*) FILTER (WHERE a.outcome = 'ok') AS oks
                              FROM attempts a JOIN t ON t.id = a.task GROUP BY a.task),
                      l AS (SELECT extract(epoch FROM a.first - t.due_at) * 1000 AS ms, a.oks, a.first, a.last
                              FROM t JOIN a ON a.task = t.id)
                 SELECT coalesce(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), 0)::float8,
                        coalesce(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), 0)::float8,
                        coalesce(max(ms), 0)::float8,
                        count(*) FILTER (WHERE oks > 1),
                        (SELECT count(*) FROM t WHERE status <> 'done'),
                        coalesce(extract(epoch FROM max(last) - min(first)), 0)::float8
                   FROM l",
                &[&QUEUE, &from, &to],
            )
            .await
            .map_err(err)?;
        let span: f64 = row.get(5);
        let rss = self
            .agents
            .iter()
            .filter_map(AgentProc::pid)
            .map(rss_mib)
            .fold(0.0, f64::max);
        Ok(Line {
            implementation: "shardjob",
            case: case.to_owned(),
            pending: self.pending,
            rate,
            p50_ms: row.get(0),
            p99_ms: row.get(1),
            max_ms: row.get(2),
            completed_per_s: if span > 0.0 { total as f64 / span } else { 0.0 },
            duplicates: row.get::<_, i64>(3) as u64,
            lost: row.get::<_, i64>(4) as u64,
            rss_mib: rss,
        })
    }

    /// Submits `n` tasks due evenly over `secs` seconds from `lead` ahead; returns the range.
    pub async fn schedule(
        &self,
        n: u64,
        secs: f64,
        lead: Duration,
    ) -> Result<(DateTime<Utc>, DateTime<Utc>), String> {
        let from = Utc::now() + chrono::Duration::from_std(lead).map_err(err)?;
        let step_us = (secs * 1e6 / n.max(1) as f64) as i64;
        let all: Vec<NewTask> = (0..n as i64)
            .map(|i| NewTask::at(from + chrono::Duration::microseconds(i * step_us)))
            .collect();
        submit_all(&self.tasks, all, 1000, 4).await?;
        let to = from
            + chrono::Duration::microseconds(n as i64 * step_us)
            + chrono::Duration::milliseconds(1);
        if Utc::now() > from {
            return Err(format!(
                "submitting {n} tasks took longer than the lead of {lead:?}: raise it"
            ));
        }
        Ok((from, to))
    }
}
