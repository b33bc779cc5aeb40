//! [`QueueSpec`]: a queue's worker side — its handler and options — and
//! [`AgentBuilderExt::queue`], which registers it on an agent as a resident job whose shards
//! are the queue's segments.

use std::sync::Arc;
use std::time::Duration;

use shardjob_agent::{AgentBuilder, JobSpec};
use tokio::sync::Semaphore;

use crate::error::TasksError;
use crate::handler::{DynTaskHandler, TaskHandler};
use crate::permits::Permits;
use crate::policy::RetryPolicy;
use crate::ratelimit::TokenBucket;
use crate::segment::{DEFAULT_SEGMENTS, job_name};
use crate::submit::check_queue_name;
use crate::tasks::Tasks;
use crate::worker::SegmentWorker;

/// A queue's worker side.
///
/// ```no_run
/// use shardjob_agent::Agent;
/// use shardjob_tasks::{AgentBuilderExt, Tasks, TasksConfig, task_fn, TaskContext};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let tasks = Tasks::connect(TasksConfig::new(["postgres://app@db/app"])).await?;
/// let agent = Agent::builder()
///     .queue(tasks.queue("coupons", task_fn(|t: TaskContext| async move {
///         println!("expire {}", t.payload);
///         Ok(())
///     })).segments(64))?
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct QueueSpec {
    pub(crate) tasks: Tasks,
    pub(crate) name: String,
    pub(crate) segments: u32,
    pub(crate) window: Duration,
    pub(crate) refill_every: Option<Duration>,
    pub(crate) claim_batch: usize,
    pub(crate) claim_ahead: Duration,
    pub(crate) max_in_memory: usize,
    pub(crate) concurrency: usize,
    pub(crate) dispatch_rate: Option<f64>,
    pub(crate) timeout: Duration,
    pub(crate) stop_grace: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) handler: Arc<dyn DynTaskHandler>,
}

impl std::fmt::Debug for QueueSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueSpec")
            .field("name", &self.name)
            .field("segments", &self.segments)
            .field("window", &self.window)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl Tasks {
    /// The worker side of `queue`, run by `handler`, with defaults: 64 segments, a 30 s
    /// window refilled every 10 s, batches of 256, 64 tasks at once per agent, a 5 min
    /// timeout, retries 1 s doubling to 10 min, 5 attempts.
    pub fn queue(&self, queue: impl Into<String>, handler: impl TaskHandler) -> QueueSpec {
        QueueSpec {
            tasks: self.clone(),
            name: queue.into(),
            segments: DEFAULT_SEGMENTS,
            window: Duration::from_secs(30),
            refill_every: None,
            claim_batch: 256,
            claim_ahead: Duration::from_millis(250),
            max_in_memory: 50_000,
            concurrency: 64,
            dispatch_rate: None,
            timeout: Duration::from_secs(300),
            stop_grace: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            handler: Arc::new(handler),
        }
    }
}

impl QueueSpec {
    /// Segments: the queue's shards (default 64). Fixed once tasks exist.
    pub fn segments(mut self, n: u32) -> Self {
        self.segments = n;
        self
    }

    /// How far ahead an owner keeps its segments' tasks in memory (default 30 s).
    pub fn window(mut self, d: Duration) -> Self {
        self.window = d;
        self
    }

    /// How often the window is reloaded from the store (default a third of the window). This
    /// bounds how late a task whose notification was lost can be.
    pub fn refill_every(mut self, d: Duration) -> Self {
        self.refill_every = Some(d);
        self
    }

    /// Tasks marked running per statement (default 256).
    pub fn claim_batch(mut self, n: usize) -> Self {
        self.claim_batch = n;
        self
    }

    /// How far ahead of its due time a task is marked running (default 250 ms); its handler
    /// still starts at the due time. Hides the claim's round trip and makes claims batches
    /// (a segment claims at most twice per claim-ahead); a task cannot be cancelled in that
    /// last moment.
    pub fn claim_ahead(mut self, d: Duration) -> Self {
        self.claim_ahead = d;
        self
    }

    /// Tasks of one segment kept in memory at most (default 50 000).
    pub fn max_in_memory(mut self, n: usize) -> Self {
        self.max_in_memory = n;
        self
    }

    /// Tasks of this queue running at once on one agent (default 64).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n;
        self
    }

    /// At most this many of this queue's tasks started per second on one agent (a token
    /// bucket with one second's burst; default unlimited). Tasks over it wait, in due order.
    pub fn dispatch_rate(mut self, per_second: f64) -> Self {
        self.dispatch_rate = Some(per_second);
        self
    }

    /// An attempt running longer is cancelled and counts as failed (default 5 min).
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = d;
        self
    }

    /// How long a hand-off waits for running tasks before it cancels them (default 10 s).
    pub fn stop_grace(mut self, d: Duration) -> Self {
        self.stop_grace = d;
        self
    }

    /// The retry policy (default 1 s doubling to 10 min, 5 attempts).
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    fn refill_interval(&self) -> Duration {
        self.refill_every.unwrap_or(self.window / 3)
    }

    /// Checks every option; the error names the queue and the field.
    pub fn validate(&self) -> Result<(), TasksError> {
        check_queue_name(&self.name)?;
        let bad = |field, reason: String| {
            Err(TasksError::BadQueue {
                queue: self.name.clone(),
                field,
                reason,
            })
        };
        let horizon = self.tasks.inner.config.notify_horizon;
        if self.window < Duration::from_secs(1) || self.window >= horizon {
            return bad(
                "window",
                format!(
                    "{:?} is outside 1s..{horizon:?} (the notify horizon)",
                    self.window
                ),
            );
        }
        let refill = self.refill_interval();
        if refill.is_zero() || refill >= self.window {
            return bad(
                "refill_every",
                format!(
                    "{refill:?} must be shorter than the window {:?}",
                    self.window
                ),
            );
        }
        if self.claim_batch == 0 || self.claim_batch > 10_000 {
            return bad(
                "claim_batch",
                format!("{} is outside 1..=10000", self.claim_batch),
            );
        }
        if self
            .dispatch_rate
            .is_some_and(|r| !(r.is_finite() && r > 0.0))
        {
            return bad(
                "dispatch_rate",
                format!("{:?} must be a positive number", self.dispatch_rate),
            );
        }
        if self.claim_ahead > Duration::from_secs(1) {
            return bad("claim_ahead", format!("{:?} is above 1s", self.claim_ahead));
        }
        if self.concurrency == 0 {
            return bad("concurrency", "0 would never run a task".into());
        }
        if self.max_in_memory < self.claim_batch {
            return bad(
                "max_in_memory",
                format!(
                    "{} is below the claim batch {}",
                    self.max_in_memory, self.claim_batch
                ),
            );
        }
        if self.timeout.is_zero() {
            return bad("timeout", "must be above 0".into());
        }
        if self.retry.max_attempts == 0 {
            return bad("retry.max_attempts", "must be at least 1".into());
        }
        if self.stop_grace < Duration::from_secs(2) {
            return bad("stop_grace", format!("{:?} is below 2s", self.stop_grace));
        }
        Ok(())
    }

    pub(crate) fn refill(&self) -> Duration {
        self.refill_interval()
    }
}

/// Adds [`AgentBuilderExt::queue`] to the agent's builder.
pub trait AgentBuilderExt: Sized {
    /// Runs `spec`'s queue on this agent: the queue is the resident job `tasks.<queue>`, one
    /// shard per segment; the owner of a segment runs its tasks.
    fn queue(self, spec: QueueSpec) -> Result<Self, TasksError>;
}

impl AgentBuilderExt for AgentBuilder {
    fn queue(self, spec: QueueSpec) -> Result<Self, TasksError> {
        spec.validate()?;
        // The worker's stop is the hand-off: the grace for running tasks, then a margin to
        // write their outcomes before the agent drops it.
        let job = JobSpec::resident(job_name(&spec.name))
            .map_err(|e| TasksError::BadQueue {
                queue: spec.name.clone(),
                field: "name",
                reason: e.to_string(),
            })?
            .shards(spec.segments)
            .timeout(spec.stop_grace + Duration::from_secs(5))
            .description(format!(
                "delayed-task queue {} (segments are shards)",
                spec.name
            ));
        let permits = Permits {
            queue: Arc::new(Semaphore::new(spec.concurrency)),
            agent: spec.tasks.inner.running.clone(),
        };
        let dispatch = spec.dispatch_rate.map(|r| {
            Arc::new(std::sync::Mutex::new(TokenBucket::new(
                r,
                r.max(1.0),
                std::time::Instant::now(),
            )))
        });
        Ok(self.job(job, SegmentWorker::new(spec, permits, dispatch)))
    }
}
