//! The segment worker: the resident run of one segment on its owner.
//!
//! ```text
//!  claim of shard s (token t) ─▶ raise the fence to t ─▶ recover what was left running
//!       ┌──────────────────────────────────────────────────────────┐
//!       ▼                                                          │
//!   refill the window (every refill_every, on a nudge) ─▶ claim what is due (fenced batch)
//!   ─▶ run handlers (bounded) ─▶ write outcomes (fenced batch) ───┘
//!  stop (hand-off) ─▶ no more claims; running tasks get the stop grace, then are cancelled
//!                     (interrupted: pending again for the next owner); outcomes written
//! ```
//! Database errors are retried (the segment is kept; nothing is lost: an unwritten outcome
//! leaves its task `running`, which the next owner recovers). A fence that moved on ends the
//! run: another owner has the segment.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use shardjob_agent::{Job, JobError, ShardContext};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::error::TasksError;
use crate::handler::TaskContext;
use crate::listen::{Nudge, Rung};
use crate::permits::Permits;
use crate::policy::{Attempted, next};
use crate::queue::QueueSpec;
use crate::segment::server_of;
use crate::store::owner::{Claimed, Finished};
use crate::window::Window;

/// How long a failed database request waits before it is tried again.
const DB_RETRY: Duration = Duration::from_millis(500);

/// Outcomes wait up to this long to be written together (or until a claim batch's worth
/// gathered): at 20k tasks/s over 64 segments, one statement per outcome would be most of the
/// database's work.
const WRITE_COALESCE: Duration = Duration::from_millis(50);

/// The resident job of a queue: one run per held segment.
#[derive(Clone)]
pub struct SegmentWorker {
    spec: Arc<QueueSpec>,
    permits: Permits,
    dispatch: Option<Dispatch>,
    registered: Arc<tokio::sync::OnceCell<()>>,
}

/// A queue's dispatch limit on this agent: tasks started per second, shared by its segments.
pub(crate) type Dispatch = Arc<std::sync::Mutex<crate::ratelimit::TokenBucket>>;

impl std::fmt::Debug for SegmentWorker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentWorker")
            .field("queue", &self.spec.name)
            .finish()
    }
}

impl SegmentWorker {
    pub(crate) fn new(spec: QueueSpec, permits: Permits, dispatch: Option<Dispatch>) -> Self {
        Self {
            spec: Arc::new(spec),
            permits,
            dispatch,
            registered: Arc::new(tokio::sync::OnceCell::new()),
        }
    }
}

impl Job for SegmentWorker {
    async fn run(&self, ctx: ShardContext) -> Result<(), JobError> {
        // The queue's row, once per process (retried while the segment is held).
        let spec = self.spec.clone();
        let cancel = ctx.cancel.clone();
        let registered = self.registered.get_or_try_init(|| async {
            loop {
                match spec.tasks.ensure_queue(&spec.name, spec.segments).await {
                    Ok(_) => return Ok(()),
                    Err(e @ TasksError::BadQueue { .. }) => return Err(e),
                    Err(e) => warn!(queue = %spec.name, error = %e, "registering the queue failed; retrying"),
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Err(TasksError::db("registering", 0, "cancelled")),
                    _ = tokio::time::sleep(DB_RETRY) => {}
                }
            }
        });
        if let Err(e) = registered.await {
            return Err(JobError::permanent(e));
        }
        let servers = self.spec.tasks.store().servers.len();
        let server = server_of(ctx.shard, self.spec.segments, servers);
        let nudge = self
            .spec
            .tasks
            .inner
            .nudges
            .register(&self.spec.name, ctx.shard, server);
        let mut seg = Segment {
            spec: self.spec.clone(),
            permits: self.permits.clone(),
            dispatch: self.dispatch.clone(),
            dispatch_wait: None,
            segment: ctx.shard,
            token: ctx.token,
            instance: ctx.instance.clone(),
            server,
            cancel: ctx.cancel.clone(),
            stop_all: CancellationToken::new(),
            nudge: nudge.clone(),
            window: Window::default(),
            running: JoinSet::new(),
            in_flight: HashMap::new(),
            unwritten: Vec::new(),
            unwritten_since: None,
            db_wait: None,
        };
        let result = seg.run().await;
        self.spec
            .tasks
            .inner
            .nudges
            .unregister(&self.spec.name, ctx.shard, &nudge);
        result.map_err(|e| match e {
            e @ TasksError::Fenced { .. } => JobError::permanent(e),
            e => JobError::failed(e),
        })
    }
}

/// How one attempt ended, from its task.
struct Ended {
    id: Uuid,
    result: Attempted,
    /// When the handler started (claims run a little ahead of the due time).
    started_at: DateTime<Utc>,
    ended_at: DateTime<Utc>,
}

/// One segment's run on its owner.
struct Segment {
    spec: Arc<QueueSpec>,
    permits: Permits,
    dispatch: Option<Dispatch>,
    /// Over the dispatch rate: no claim before this instant.
    dispatch_wait: Option<Instant>,
    segment: u32,
    token: i64,
    instance: String,
    server: usize,
    /// The agent's stop (hand-off, shutdown) of this run.
    cancel: CancellationToken,
    /// Cancels every running handler (the end of a hand-off's grace).
    stop_all: CancellationToken,
    nudge: Arc<Nudge>,
    window: Window,
    running: JoinSet<Ended>,
    in_flight: HashMap<Uuid, Claimed>,
    unwritten: Vec<Finished>,
    /// When the oldest unwritten outcome ended.
    unwritten_since: Option<Instant>,
    /// After a failed request: no request before this instant.
    db_wait: Option<Instant>,
}

impl Segment {
    async fn run(&mut self) -> Result<(), TasksError> {
        let queue = self.spec.name.clone();
        let store = self.spec.tasks.store();
        self.until_ok("raising the fence", || {
            store.raise_fence(
                self.server,
                &queue,
                self.segment,
                self.token,
                &self.instance,
            )
        })
        .await?;
        let recovered = self
            .until_ok("recovering", || {
                store.recover(self.server, &queue, self.segment, self.token)
            })
            .await?;
        info!(
            queue,
            segment = self.segment,
            token = self.token,
            recovered,
            "segment worker started"
        );
        let mut next_refill = Instant::now();
        while !self.cancel.is_cancelled() {
            let now = Instant::now();
            if self.db_wait.is_some_and(|t| t > now) {
                // Waiting out a failed request.
            } else {
                self.db_wait = None;
                let rung = self.nudge.take();
                if now >= next_refill || rung == Some(Rung::All) {
                    if let Some(next) = self.refill(None).await {
                        next_refill = next;
                    }
                } else if let Some(Rung::From(from)) = rung {
                    if self.window.covers(from) {
                        self.refill(Some(from)).await;
                    }
                }
                self.claim_due().await?;
                self.collect_ready();
                self.write().await?;
            }
            let ahead = chrono::Duration::from_std(self.spec.claim_ahead).unwrap_or_default();
            // Wake half the claim-ahead before the next due task, so each claim takes at least
            // half of it in one batch.
            let half = ahead / 2;
            let wake = [
                self.window.next_due().map(|d| to_instant(d - half)),
                Some(next_refill),
                self.db_wait,
                self.unwritten_since.map(|t| t + WRITE_COALESCE),
                self.dispatch_wait,
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(next_refill);
            let starved = self.permits.available() == 0
                && self
                    .window
                    .next_due()
                    .is_some_and(|d| d - half <= Utc::now());
            let has_running = !self.running.is_empty();
            let done = tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep_until(wake), if !starved => None,
                _ = self.nudge.notify.notified() => None,
                Some(done) = self.running.join_next(), if has_running => done.ok(),
                _ = self.permits.changed(), if starved => None,
            };
            if let Some(ended) = done {
                self.ended(ended);
            }
        }
        self.hand_off().await
    }

    /// Tries `op` until it works or the run is stopped; a fence that moved on ends the run.
    async fn until_ok<T, F, Fut>(&self, what: &'static str, mut op: F) -> Result<T, TasksError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, TasksError>>,
    {
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e @ TasksError::Fenced { .. }) => return Err(e),
                Err(e) => {
                    warn!(queue = %self.spec.name, segment = self.segment, error = %e, "{what} failed; retrying")
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(TasksError::db(what, self.server, "stopped before it worked")),
                _ = tokio::time::sleep(DB_RETRY) => {}
            }
        }
    }

    /// Reloads the window (from `from` on, after a nudge; all of it otherwise). Returns when
    /// the next full refill is due, or `None` after an error.
    async fn refill(&mut self, from: Option<DateTime<Utc>>) -> Option<Instant> {
        let now = Utc::now();
        let until = now + chrono::Duration::from_std(self.spec.window).unwrap_or_default();
        let limit = self
            .spec
            .max_in_memory
            .saturating_sub(self.window.len())
            .max(1);
        let store = self.spec.tasks.store();
        let rows = store
            .due_between(
                self.server,
                &self.spec.name,
                self.segment,
                from.unwrap_or_else(crate::store::far_past),
                until,
                limit as i64,
            )
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => {
                warn!(queue = %self.spec.name, segment = self.segment, error = %e, "refilling the window failed; retrying");
                self.db_wait = Some(Instant::now() + DB_RETRY);
                return None;
            }
        };
        let truncated = rows.len() >= limit;
        let last = rows.last().map(|r| r.1);
        let mut added = 0;
        for (id, due) in rows {
            if !self.in_flight.contains_key(&id) && self.window.insert(id, due) {
                added += 1;
            }
        }
        debug!(queue = %self.spec.name, segment = self.segment, added, truncated, "window refilled");
        if from.is_some() {
            return None;
        }
        // A full window stops at its last row: refill again when time reaches it.
        let loaded = if truncated {
            last.unwrap_or(now)
        } else {
            until
        };
        self.window.loaded(loaded);
        let next = Instant::now() + self.spec.refill();
        Some(if truncated {
            next.min(to_instant(loaded))
        } else {
            next
        })
    }

    /// Claims what is due, as far as permits allow, and starts it.
    async fn claim_due(&mut self) -> Result<(), TasksError> {
        loop {
            let free = self.permits.available();
            if self.dispatch_wait.is_some_and(|t| t > Instant::now()) {
                return Ok(());
            }
            self.dispatch_wait = None;
            // Claimed a little ahead, started on time: the claim's round trip is not lateness.
            let horizon =
                Utc::now() + chrono::Duration::from_std(self.spec.claim_ahead).unwrap_or_default();
            let mut due = self
                .window
                .pop_due(horizon, self.spec.claim_batch.min(free));
            if let (Some(bucket), false) = (&self.dispatch, due.is_empty()) {
                let now = std::time::Instant::now();
                let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
                let n = b.take_up_to(due.len(), now);
                if n < due.len() {
                    // Over the queue's dispatch rate: the rest waits for its tokens.
                    metrics::counter!("shardjob_task_dispatch_limited_total", "queue" => self.spec.name.clone())
                        .increment(1);
                    for (id, at) in due.split_off(n) {
                        self.window.insert(id, at);
                    }
                    let wait = b.take(1.0, now).err().unwrap_or(Duration::from_millis(1));
                    self.dispatch_wait = Some(Instant::now() + wait);
                }
            }
            if due.is_empty() {
                return Ok(());
            }
            let store = self.spec.tasks.store();
            let claimed = store
                .claim(
                    self.server,
                    &self.spec.name,
                    self.segment,
                    self.token,
                    &self.instance,
                    &due,
                )
                .await;
            match claimed {
                Ok(claimed) => {
                    if claimed.is_empty() {
                        if let Some(e) = self.fenced().await {
                            return Err(e);
                        }
                    }
                    for c in claimed {
                        self.start(c);
                    }
                }
                Err(e) => {
                    warn!(queue = %self.spec.name, segment = self.segment, error = %e, "claiming failed; retrying");
                    for (id, at) in due {
                        self.window.insert(id, at);
                    }
                    self.db_wait = Some(Instant::now() + DB_RETRY);
                    return Ok(());
                }
            }
        }
    }

    fn start(&mut self, c: Claimed) {
        let queue_label = self.spec.name.clone();
        let ctx = TaskContext {
            id: c.id,
            queue: self.spec.name.clone(),
            segment: self.segment,
            payload: c.payload.clone(),
            attempt: c.attempt,
            max_attempts: c.max_attempts.unwrap_or(self.spec.retry.max_attempts),
            due_at: c.due_at,
            token: self.token,
            is_recovery: c.is_recovery,
            cancel: self.stop_all.child_token(),
            instance: self.instance.clone(),
        };
        let handler = self.spec.handler.clone();
        let permits = self.permits.clone();
        let (timeout, stop_all) = (self.spec.timeout, self.stop_all.clone());
        let id = c.id;
        self.in_flight.insert(id, c);
        let due_at = ctx.due_at;
        self.running.spawn(async move {
            tokio::time::sleep_until(to_instant(due_at)).await;
            let _permit = permits.acquire().await;
            // Held while the handler runs: what the concurrency limits allow, as a gauge.
            let _running = Running::enter(&queue_label);
            let started_at = Utc::now();
            let lateness = (started_at - due_at).to_std().unwrap_or_default();
            metrics::histogram!("shardjob_task_lateness_seconds", "queue" => queue_label.clone())
                .record(lateness.as_secs_f64());
            let cancel = ctx.cancel.clone();
            let mut run = handler.run_boxed(ctx);
            let result = tokio::select! {
                r = &mut run => match r {
                    Ok(()) => Attempted::Ok,
                    Err(_) if stop_all.is_cancelled() => Attempted::Interrupted,
                    Err(JobError::Failed(e)) => Attempted::Failed(e),
                    Err(JobError::Permanent(e)) => Attempted::Permanent(e),
                    Err(JobError::Cancelled) => Attempted::Failed("the handler gave up (cancelled)".into()),
                },
                _ = tokio::time::sleep(timeout) => {
                    cancel.cancel();
                    let _ = tokio::time::timeout(Duration::from_secs(1), &mut run).await;
                    Attempted::TimedOut
                }
            };
            Ended {
                id,
                result,
                started_at,
                ended_at: Utc::now(),
            }
        });
    }

    fn collect_ready(&mut self) {
        while let Some(done) = self.running.try_join_next() {
            if let Ok(ended) = done {
                self.ended(ended);
            }
        }
    }

    /// An attempt ended: what to write.
    fn ended(&mut self, e: Ended) {
        let Some(c) = self.in_flight.remove(&e.id) else {
            return;
        };
        let counted = c.attempt.saturating_sub(c.lost);
        let n = next(
            &self.spec.retry,
            c.id,
            (c.attempt, counted),
            c.max_attempts.unwrap_or(self.spec.retry.max_attempts),
            &e.result,
            e.ended_at,
        );
        metrics::counter!("shardjob_task_attempts_total", "queue" => self.spec.name.clone(),
            "outcome" => e.result.outcome())
        .increment(1);
        self.unwritten_since.get_or_insert_with(Instant::now);
        self.unwritten.push(Finished {
            id: c.id,
            attempt: c.attempt,
            due_at: c.due_at,
            status: n.status(),
            retry_at: match n {
                crate::policy::Next::Retry(at) => Some(at),
                _ => None,
            },
            outcome: e.result.outcome(),
            error: e.result.error(),
            started_at: e.started_at,
            ended_at: e.ended_at,
        });
    }

    /// Writes the outcomes gathered so far.
    async fn write(&mut self) -> Result<(), TasksError> {
        self.write_if(false).await
    }

    /// Writes the outcomes gathered if the oldest waited [`WRITE_COALESCE`], a batch's worth
    /// gathered, or `now`.
    async fn write_if(&mut self, now: bool) -> Result<(), TasksError> {
        let due = self
            .unwritten_since
            .is_some_and(|t| t.elapsed() >= WRITE_COALESCE);
        if self.unwritten.is_empty()
            || !(now || due || self.unwritten.len() >= self.spec.claim_batch)
        {
            return Ok(());
        }
        self.unwritten_since = None;
        let batch = std::mem::take(&mut self.unwritten);
        let store = self.spec.tasks.store();
        match store
            .finish(
                self.server,
                &self.spec.name,
                self.segment,
                self.token,
                &self.instance,
                &batch,
            )
            .await
        {
            Ok(written) => {
                if written.len() < batch.len() {
                    if let Some(e) = self.fenced().await {
                        return Err(e);
                    }
                    // Not fenced, yet a row was not ours to finish (it is no longer running
                    // under this token and attempt). Nothing here changed it; say so loudly.
                    warn!(queue = %self.spec.name, segment = self.segment,
                        asked = batch.len(), written = written.len(),
                        "some outcomes matched no running task of this owner");
                }
                for f in &batch {
                    if let Some(at) = f.retry_at.filter(|at| self.window.covers(*at)) {
                        self.window.insert(f.id, at);
                    }
                }
                Ok(())
            }
            Err(e) => {
                warn!(queue = %self.spec.name, segment = self.segment, error = %e, "writing outcomes failed; retrying");
                self.unwritten = batch;
                self.unwritten_since.get_or_insert_with(Instant::now);
                self.db_wait = Some(Instant::now() + DB_RETRY);
                Ok(())
            }
        }
    }

    /// The fence's error when the fence has moved on from this owner's token (one read);
    /// `None` while it is still ours or could not be read.
    async fn fenced(&self) -> Option<TasksError> {
        let store = self.spec.tasks.store();
        let current = match store
            .fence(self.server, &self.spec.name, self.segment)
            .await
        {
            Ok(t) if t != Some(self.token) => t,
            _ => return None,
        };
        metrics::counter!("shardjob_task_fenced_total", "queue" => self.spec.name.clone())
            .increment(1);
        warn!(queue = %self.spec.name, segment = self.segment, token = self.token, ?current,
            "fenced out: another owner has this segment; stopping");
        Some(TasksError::Fenced {
            queue: self.spec.name.clone(),
            segment: self.segment,
            mine: self.token,
            current,
        })
    }

    /// The hand-off: running tasks get the grace, then are cancelled (pending again for the
    /// next owner); every outcome is written before the run ends.
    async fn hand_off(&mut self) -> Result<(), TasksError> {
        let deadline = Instant::now() + self.spec.stop_grace;
        let n = self.running.len();
        if n > 0 {
            info!(queue = %self.spec.name, segment = self.segment, running = n, "handing off: waiting for running tasks");
        }
        while !self.running.is_empty() {
            let done = tokio::select! {
                Some(done) = self.running.join_next() => done.ok(),
                _ = tokio::time::sleep_until(deadline) => break,
            };
            if let Some(e) = done {
                self.ended(e);
            }
        }
        if !self.running.is_empty() {
            self.stop_all.cancel();
            let cut = Instant::now() + Duration::from_secs(1);
            while !self.running.is_empty() {
                let done = tokio::select! {
                    Some(done) = self.running.join_next() => done.ok(),
                    _ = tokio::time::sleep_until(cut) => break,
                };
                if let Some(e) = done {
                    self.ended(e);
                }
            }
            self.running.abort_all();
            let now = Utc::now();
            let left: Vec<Uuid> = self.in_flight.keys().copied().collect();
            for id in left {
                let started_at = self.in_flight.get(&id).map_or(now, |c| c.started_at);
                self.ended(Ended {
                    id,
                    result: Attempted::Interrupted,
                    started_at,
                    ended_at: now,
                });
            }
        }
        // A few tries: what stays unwritten stays `running`, and the next owner recovers it.
        for _ in 0..3 {
            self.db_wait = None;
            self.write_if(true).await?;
            if self.unwritten.is_empty() {
                break;
            }
            tokio::time::sleep(DB_RETRY).await;
        }
        Ok(())
    }
}

/// One running task in `shardjob_tasks_running{queue}`, for as long as it lives.
struct Running(String);

impl Running {
    fn enter(queue: &str) -> Self {
        metrics::gauge!("shardjob_tasks_running", "queue" => queue.to_owned()).increment(1.0);
        Self(queue.to_owned())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        metrics::gauge!("shardjob_tasks_running", "queue" => std::mem::take(&mut self.0))
            .decrement(1.0);
    }
}

fn to_instant(at: DateTime<Utc>) -> Instant {
    let ahead = (at - Utc::now()).to_std().unwrap_or_default();
    Instant::now() + ahead
}
