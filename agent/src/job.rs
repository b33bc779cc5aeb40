//! What users implement: a [`Job`] (handler) runs one shard of one fire, given a [`ShardContext`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

/// Everything a handler knows about the execution it is asked to do.
#[derive(Debug, Clone)]
pub struct ShardContext {
    /// The job's name.
    pub job: String,
    /// The shard to process, `0..total`.
    pub shard: u32,
    /// The job's shard count.
    pub total: u32,
    /// This shard's parameter (`""` when none is set).
    pub shard_param: String,
    /// The job's parameter.
    pub job_param: String,
    /// The scheduled instant of this fire (not when it started).
    pub fire_time: DateTime<Utc>,
    /// The fencing token: the owner key's create revision. It rises with every change of owner,
    /// so a store that remembers the highest token it has seen per shard can reject a stale
    /// writer (a process paused past its lease is the one case no lease can stop).
    pub token: i64,
    /// 1 for the first attempt, then 2, 3, ... on retries.
    pub attempt: u32,
    /// True when this run replays a fire whose owner died mid-execution.
    pub is_failover: bool,
    /// True when this run is a coalesced or caught-up fire rather than an on-time one.
    pub is_misfire: bool,
    /// Fires when the run must stop: timeout, lost lease, or shutdown.
    pub cancel: CancellationToken,
    /// This agent's instance id (the owner this execution runs for).
    pub instance: String,
    /// The shard's owner key in etcd (`<prefix>owners/<job>/<shard>`); see
    /// [`ShardContext::owner_compare`].
    pub owner_key: String,
}

impl ShardContext {
    /// The compare that holds only while this execution's owner still owns the shard: its
    /// owner key exists with this execution's token as its create revision (etcd's
    /// `Mutex.IsOwner()`). Put it in the `when` of your own etcd txns, and a stale owner (a
    /// process paused past its lease) writes nothing. The agent guards its own writes with the
    /// same compare.
    pub fn owner_compare(&self) -> etcd_client::Compare {
        crate::runtime::txn::is_owner(self.owner_key.clone(), self.token)
    }
}

/// How a run failed. Any error converts into it with `?` (as a retryable failure):
///
/// ```
/// use shardjob_agent::{JobError, ShardContext};
///
/// async fn run(ctx: ShardContext) -> Result<(), JobError> {
///     let n: u32 = ctx.job_param.parse()?; // a ParseIntError becomes JobError::Failed
///     if n == 0 {
///         return Err(JobError::permanent("the parameter must not be 0"));
///     }
///     Ok(())
/// }
/// ```
///
/// Like `anyhow::Error`, it does not implement `std::error::Error` itself: that is what lets
/// every error type convert into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobError {
    /// The handler failed; the text says why. Retried if the job has retries left.
    Failed(String),
    /// The handler failed in a way a retry cannot fix (bad input, a refused request): not
    /// retried.
    Permanent(String),
    /// The handler stopped because its context was cancelled.
    Cancelled,
}

impl JobError {
    /// A failure with `cause`'s text (retried if the job has retries left).
    pub fn failed(cause: impl fmt::Display) -> Self {
        Self::Failed(cause.to_string())
    }

    /// A failure no retry can fix, with `cause`'s text.
    pub fn permanent(cause: impl fmt::Display) -> Self {
        Self::Permanent(cause.to_string())
    }
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Failed(cause) => f.write_str(cause),
            JobError::Permanent(cause) => write!(f, "{cause} (permanent)"),
            JobError::Cancelled => f.write_str("cancelled"),
        }
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(e: E) -> Self {
        Self::Failed(e.to_string())
    }
}

/// A handler: the logic that processes one shard. Implement it with `async fn`:
///
/// ```
/// use shardjob_agent::{Job, JobError, ShardContext};
///
/// struct OrdersSync;
///
/// impl Job for OrdersSync {
///     async fn run(&self, ctx: ShardContext) -> Result<(), JobError> {
///         println!("orders of shard {} of {}", ctx.shard, ctx.total);
///         Ok(())
///     }
/// }
/// ```
///
/// or pass a closure through [`job_fn`].
pub trait Job: Send + Sync + 'static {
    /// Processes `ctx.shard` for the fire at `ctx.fire_time`.
    fn run(&self, ctx: ShardContext) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// A boxed, `'static` run future.
pub(crate) type RunFuture<'a> = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send + 'a>>;

/// Object-safe form of [`Job`], so handlers of different types share one table.
pub(crate) trait DynJob: Send + Sync + 'static {
    fn run_boxed(&self, ctx: ShardContext) -> RunFuture<'_>;
}

impl<J: Job> DynJob for J {
    fn run_boxed(&self, ctx: ShardContext) -> RunFuture<'_> {
        Box::pin(self.run(ctx))
    }
}

/// A [`Job`] made of a closure; see [`job_fn`].
pub struct FnJob<F>(F);

impl<F> fmt::Debug for FnJob<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnJob")
    }
}

/// Wraps a closure as a [`Job`]:
///
/// ```
/// use shardjob_agent::{job_fn, ShardContext};
///
/// let job = job_fn(|ctx: ShardContext| async move {
///     println!("shard {}", ctx.shard);
///     Ok(())
/// });
/// ```
pub fn job_fn<F, Fut>(f: F) -> FnJob<F>
where
    F: Fn(ShardContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    FnJob(f)
}

impl<F, Fut> Job for FnJob<F>
where
    F: Fn(ShardContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    fn run(&self, ctx: ShardContext) -> impl Future<Output = Result<(), JobError>> + Send {
        (self.0)(ctx)
    }
}
