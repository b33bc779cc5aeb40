//! [`Tasks`]: the handle producers and workers share — connects, migrates, and offers submit,
//! cancel, get, list and requeue.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::config::TasksConfig;
use crate::error::TasksError;
use crate::listen::Nudges;
use crate::segment::{segment_of, server_of};
use crate::store::Store;
use crate::store::read::{AttemptRecord, CancelOutcome, Page, TaskRecord};
use crate::store::submit::NewRow;
use crate::submit::{NewTask, check_queue_name};

/// Advisory lock that makes one agent at a time run the retention ("sjmaint").
const MAINTENANCE_LOCK: i64 = 0x0073_6a6d_6169_6e74;

/// What a submit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Submitted {
    pub id: Uuid,
    /// The dedupe key was taken: `id` is the existing task's.
    pub duplicate: bool,
}

/// A task and its attempts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskStatus {
    pub task: TaskRecord,
    pub attempts: Vec<AttemptRecord>,
}

pub(crate) struct Inner {
    pub store: Store,
    pub config: TasksConfig,
    /// Segments per queue, as stored.
    pub queues: RwLock<HashMap<String, u32>>,
    pub nudges: Arc<Nudges>,
    /// The process-wide limit of running tasks, if set.
    pub running: Option<Arc<tokio::sync::Semaphore>>,
    /// The listener and retention tasks: they end with the last handle.
    background: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self
            .background
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            t.abort();
        }
    }
}

/// The delayed-task store; cheap to clone. See the crate docs for an example.
#[derive(Clone)]
pub struct Tasks {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Tasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .inner
            .store
            .servers
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        f.debug_struct("Tasks").field("servers", &names).finish()
    }
}

impl Tasks {
    /// Connects to every server, runs the migrations, and starts the listener (new tasks due
    /// soon reach their owner at once) and the hourly retention. Fails when a server cannot be
    /// reached or migrated.
    pub async fn connect(config: TasksConfig) -> Result<Self, TasksError> {
        if config.retention_days == 0 {
            return Err(TasksError::BadQueue {
                queue: String::new(),
                field: "retention_days",
                reason: "must be at least 1".into(),
            });
        }
        let store = Store::new(&config.urls, config.pool_size.max(2), config.timeout)?;
        for (i, s) in store.servers.iter().enumerate() {
            crate::schema::migrate(&s.pool, i).await?;
        }
        let nudges = Arc::new(Nudges::default());
        let run_background = config.background;
        let mut background: Vec<tokio::task::AbortHandle> = store
            .servers
            .iter()
            .enumerate()
            .filter(|_| run_background)
            .map(|(i, s)| {
                tokio::spawn(crate::listen::listen(i, s.config.clone(), nudges.clone()))
                    .abort_handle()
            })
            .collect();
        if config.max_running == Some(0) {
            return Err(TasksError::BadQueue {
                queue: String::new(),
                field: "max_running",
                reason: "0 would never run a task".into(),
            });
        }
        let running = config
            .max_running
            .map(|n| Arc::new(tokio::sync::Semaphore::new(n)));
        let inner = Arc::new(Inner {
            store,
            running,
            config,
            queues: RwLock::new(HashMap::new()),
            nudges,
            background: std::sync::Mutex::new(Vec::new()),
        });
        // Retention holds a weak handle: it must not keep the store alive.
        if run_background {
            background.push(tokio::spawn(maintenance(Arc::downgrade(&inner))).abort_handle());
        }
        *inner.background.lock().unwrap_or_else(|p| p.into_inner()) = background;
        Ok(Self { inner })
    }

    /// Creates `queue` with `segments` segments unless it exists; returns its stored segment
    /// count. A different stored count is an error: changing it moves every pending task and
    /// is an explicit operation (docs/OPERATIONS.md).
    pub async fn ensure_queue(&self, queue: &str, segments: u32) -> Result<u32, TasksError> {
        check_queue_name(queue)?;
        if !(1..=shardjob_coordinator::model::MAX_TOTAL).contains(&segments) {
            return Err(TasksError::BadQueue {
                queue: queue.to_owned(),
                field: "segments",
                reason: format!(
                    "{segments} is outside 1..={}",
                    shardjob_coordinator::model::MAX_TOTAL
                ),
            });
        }
        let mut stored = None;
        for server in 0..self.inner.store.servers.len() {
            let client = self.inner.store.conn(server, "registering a queue").await?;
            let err = crate::store::db_err("registering a queue", server);
            let row = client
                .query_one(
                    "WITH i AS (INSERT INTO task_queues (name, segments) VALUES ($1, $2)
                                ON CONFLICT (name) DO NOTHING RETURNING segments)
                     SELECT coalesce((SELECT segments FROM i), (SELECT segments FROM task_queues WHERE name = $1))",
                    &[&queue, &(segments as i32)],
                )
                .await
                .map_err(&err)?;
            let s = match row.try_get::<_, Option<i32>>(0).map_err(&err)? {
                Some(s) => s,
                // Another instance's insert of this queue committed while ours waited for it:
                // the statement's snapshot is older than that row, so it read nothing. A new
                // statement sees it (the demo's three agents starting together found this as a
                // panic on a NULL).
                None => client
                    .query_one(
                        "SELECT segments FROM task_queues WHERE name = $1",
                        &[&queue],
                    )
                    .await
                    .and_then(|row| row.try_get::<_, i32>(0))
                    .map_err(&err)?,
            };
            stored.get_or_insert(s);
        }
        let stored = stored.unwrap_or(segments as i32).max(1) as u32;
        if stored != segments {
            return Err(TasksError::BadQueue {
                queue: queue.to_owned(),
                field: "segments",
                reason: format!(
                    "the store has {stored} segments for this queue, the code says {segments}; changing it is an explicit operation (docs/OPERATIONS.md)"
                ),
            });
        }
        self.cache_queue(queue, stored);
        Ok(stored)
    }

    fn cache_queue(&self, queue: &str, segments: u32) {
        self.inner
            .queues
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(queue.to_owned(), segments);
    }

    /// The segment count of `queue`, from the cache or the store.
    async fn segments(&self, queue: &str) -> Result<u32, TasksError> {
        let cached = self
            .inner
            .queues
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(queue)
            .copied();
        if let Some(s) = cached {
            return Ok(s);
        }
        check_queue_name(queue)?;
        let client = self.inner.store.conn(0, "reading a queue").await?;
        let row = client
            .query_opt(
                "SELECT segments FROM task_queues WHERE name = $1",
                &[&queue],
            )
            .await
            .map_err(crate::store::db_err("reading a queue", 0))?;
        let s: i32 = row
            .ok_or_else(|| TasksError::UnknownQueue(queue.to_owned()))?
            .get(0);
        let s = s.max(1) as u32;
        self.cache_queue(queue, s);
        Ok(s)
    }

    /// Submits one task.
    pub async fn submit(&self, queue: &str, task: NewTask) -> Result<Submitted, TasksError> {
        let mut out = self.submit_batch(queue, vec![task]).await?;
        out.pop()
            .ok_or_else(|| TasksError::db("submitting", 0, "the store answered nothing"))
    }

    /// Submits tasks in one statement per server; all or nothing per server. Results are in
    /// the order given.
    pub async fn submit_batch(
        &self,
        queue: &str,
        tasks: Vec<NewTask>,
    ) -> Result<Vec<Submitted>, TasksError> {
        let segments = self.segments(queue).await?;
        let cfg = &self.inner.config;
        let now = Utc::now();
        let servers = self.inner.store.servers.len();
        let mut by_server: BTreeMap<usize, Vec<(usize, NewRow)>> = BTreeMap::new();
        for (i, t) in tasks.into_iter().enumerate() {
            t.check(cfg.max_payload)?;
            let due_at = t.due_at(now, cfg.max_delay)?;
            let id = Uuid::now_v7();
            let key = t.dedupe_key.clone().unwrap_or_else(|| id.to_string());
            let segment = segment_of(&key, segments);
            let server = server_of(segment, segments, servers);
            by_server.entry(server).or_default().push((
                i,
                NewRow {
                    id,
                    segment,
                    due_at,
                    payload: t.payload,
                    max_attempts: t.max_attempts,
                    dedupe_key: t.dedupe_key,
                },
            ));
        }
        let horizon =
            now + chrono::Duration::from_std(cfg.notify_horizon).unwrap_or(chrono::Duration::MAX);
        let mut out: Vec<Option<Submitted>> = Vec::new();
        for (server, rows) in by_server {
            let (index, rows): (Vec<usize>, Vec<NewRow>) = rows.into_iter().unzip();
            let ids = self
                .inner
                .store
                .insert(server, queue, &rows, horizon)
                .await?;
            for (i, (id, duplicate)) in index.into_iter().zip(ids) {
                if out.len() <= i {
                    out.resize(i + 1, None);
                }
                out[i] = Some(Submitted { id, duplicate });
            }
            metrics::counter!("shardjob_tasks_submitted_total", "queue" => queue.to_owned())
                .increment(rows.len() as u64);
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Cancels a pending task.
    pub async fn cancel(&self, id: Uuid) -> Result<CancelOutcome, TasksError> {
        self.inner.store.cancel(id).await
    }

    /// A task without its attempts (one read), or `None` for an unknown id.
    pub async fn task(&self, id: Uuid) -> Result<Option<TaskRecord>, TasksError> {
        Ok(self.inner.store.get(id).await?.map(|(_, t)| t))
    }

    /// A task and its attempts, or `None` for an unknown id.
    pub async fn get(&self, id: Uuid) -> Result<Option<TaskStatus>, TasksError> {
        let Some((server, task)) = self.inner.store.get(id).await? else {
            return Ok(None);
        };
        let attempts = self.inner.store.attempts(server, id).await?;
        Ok(Some(TaskStatus { task, attempts }))
    }

    /// A page of `queue`'s tasks with `status` (any when `None`), due before `due_before`,
    /// in due order, after `cursor` (from the previous page). At most 1000 per page.
    pub async fn list(
        &self,
        queue: &str,
        status: Option<&str>,
        due_before: Option<DateTime<Utc>>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, TasksError> {
        if let Some(s) = status {
            if !STATUSES.contains(&s) {
                return Err(TasksError::BadTask {
                    field: "status",
                    reason: format!("{s:?} is not one of {STATUSES:?}"),
                });
            }
        }
        self.segments(queue).await?;
        self.inner
            .store
            .list(queue, status, due_before, cursor, limit.clamp(1, 1000))
            .await
    }

    /// Puts a failed or cancelled task back, due now, with `extra_attempts` more attempts.
    /// `None` when the task is not failed or cancelled.
    pub async fn requeue(
        &self,
        id: Uuid,
        extra_attempts: u32,
    ) -> Result<Option<TaskRecord>, TasksError> {
        self.inner.store.requeue(id, extra_attempts).await
    }

    /// The latest `limit` attempts (at most 1000) that `instance` ran, newest first.
    pub async fn executions(
        &self,
        instance: &str,
        limit: usize,
    ) -> Result<Vec<AttemptRecord>, TasksError> {
        self.inner
            .store
            .executions(instance, limit.clamp(1, 1000))
            .await
    }

    /// Every queue's numbers: tasks per status, pending by due bucket, lateness and
    /// throughput of the last minutes.
    pub async fn queue_stats(&self) -> Result<Vec<crate::store::read::QueueStats>, TasksError> {
        self.inner.store.queue_stats().await
    }

    /// Runs the retention once now on every server (what the hourly task does); returns the
    /// partitions dropped.
    pub async fn maintain(&self) -> Result<Vec<String>, TasksError> {
        run_maintenance(&self.inner, Utc::now()).await
    }

    /// The store (for the worker and the crate's tests).
    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }
}

/// Task statuses.
pub const STATUSES: [&str; 5] = ["pending", "running", "done", "failed", "cancelled"];

async fn run_maintenance(inner: &Inner, now: DateTime<Utc>) -> Result<Vec<String>, TasksError> {
    let mut dropped = Vec::new();
    for server in 0..inner.store.servers.len() {
        // One agent at a time per server: the others skip this round.
        let client = inner.store.conn(server, "retention").await?;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&MAINTENANCE_LOCK])
            .await
            .map_err(crate::store::db_err("retention", server))?
            .get(0);
        if !locked {
            continue;
        }
        let result = inner
            .store
            .maintain(
                server,
                now,
                inner.config.retention_days,
                inner.config.partitions_ahead,
            )
            .await;
        let _ = client
            .query_one("SELECT pg_advisory_unlock($1)", &[&MAINTENANCE_LOCK])
            .await;
        dropped.extend(result?);
    }
    Ok(dropped)
}

async fn maintenance(inner: std::sync::Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let every = strong.config.maintenance_every;
        if let Err(e) = run_maintenance(&strong, Utc::now()).await {
            tracing::warn!(error = %e, "task retention failed; trying again at the next round");
        }
        drop(strong);
        tokio::time::sleep(every).await;
    }
}
