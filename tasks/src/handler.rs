//! What users implement: a [`TaskHandler`] runs one attempt of one task, given a
//! [`TaskContext`]. It returns the agent's [`JobError`]: `Failed` is retried by the queue's
//! policy, `Permanent` fails the task at once.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use shardjob_agent::JobError;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Everything a handler knows about the attempt it runs.
#[derive(Debug, Clone)]
pub struct TaskContext {
    pub id: Uuid,
    pub queue: String,
    pub segment: u32,
    pub payload: serde_json::Value,
    /// 1 for the first attempt.
    pub attempt: u32,
    pub max_attempts: u32,
    /// When it was due (not when it started).
    pub due_at: DateTime<Utc>,
    /// The segment's fencing token: guard your own writes with it (a row that remembers the
    /// highest token it saw rejects a stale owner).
    pub token: i64,
    /// True when an earlier attempt was lost with its owner (a crash) — the task may have
    /// partly run.
    pub is_recovery: bool,
    /// Fires at the queue's timeout, and when the segment is handed off or lost.
    pub cancel: CancellationToken,
    /// The instance running it.
    pub instance: String,
}

/// A task handler. Implement it with `async fn`, or pass a closure through [`task_fn`].
pub trait TaskHandler: Send + Sync + 'static {
    /// Runs one attempt.
    fn run(&self, task: TaskContext) -> impl Future<Output = Result<(), JobError>> + Send;
}

pub(crate) type TaskFuture<'a> = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send + 'a>>;

/// Object-safe form of [`TaskHandler`].
pub(crate) trait DynTaskHandler: Send + Sync + 'static {
    fn run_boxed(&self, task: TaskContext) -> TaskFuture<'_>;
}

impl<H: TaskHandler> DynTaskHandler for H {
    fn run_boxed(&self, task: TaskContext) -> TaskFuture<'_> {
        Box::pin(self.run(task))
    }
}

/// A [`TaskHandler`] made of a closure; see [`task_fn`]. Cloneable when the closure is (one
/// handler for several queues).
#[derive(Clone)]
pub struct FnTask<F>(F);

impl<F> fmt::Debug for FnTask<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnTask")
    }
}

/// Wraps a closure as a [`TaskHandler`]:
///
/// ```
/// use shardjob_tasks::{task_fn, TaskContext};
/// let h = task_fn(|t: TaskContext| async move {
///     println!("expiring coupon {}", t.payload["coupon"]);
///     Ok(())
/// });
/// ```
pub fn task_fn<F, Fut>(f: F) -> FnTask<F>
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    FnTask(f)
}

impl<F, Fut> TaskHandler for FnTask<F>
where
    F: Fn(TaskContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    fn run(&self, task: TaskContext) -> impl Future<Output = Result<(), JobError>> + Send {
        (self.0)(task)
    }
}
