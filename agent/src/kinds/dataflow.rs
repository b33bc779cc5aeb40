//! [`Dataflow`]: a job that fetches a batch of its shard's work, processes it, and repeats until
//! a fetch returns nothing or the run is cancelled (ElasticJob's streaming dataflow job).
//!
//! ```
//! use shardjob_agent::{JobError, ShardContext};
//! use shardjob_agent::kinds::{Dataflow, DataflowJob};
//!
//! struct Outbox;
//!
//! impl DataflowJob for Outbox {
//!     type Item = u64;
//!     async fn fetch(&self, ctx: &ShardContext) -> Result<Vec<u64>, JobError> {
//!         Ok(vec![]) // e.g. SELECT id FROM outbox WHERE id % total = shard LIMIT 100
//!     }
//!     async fn process(&self, ctx: &ShardContext, items: Vec<u64>) -> Result<(), JobError> {
//!         Ok(())
//!     }
//! }
//! let job = Dataflow(Outbox);
//! ```

use std::future::Future;

use crate::job::{Job, JobError, ShardContext};

/// The two halves of a dataflow job.
pub trait DataflowJob: Send + Sync + 'static {
    /// One unit of work.
    type Item: Send;

    /// The next batch of this shard's work; empty means done for this fire.
    fn fetch(
        &self,
        ctx: &ShardContext,
    ) -> impl Future<Output = Result<Vec<Self::Item>, JobError>> + Send;

    /// Processes one batch.
    fn process(
        &self,
        ctx: &ShardContext,
        items: Vec<Self::Item>,
    ) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// Runs a [`DataflowJob`] as a [`Job`]: fetch, process, repeat until empty or cancelled.
#[derive(Debug, Clone)]
pub struct Dataflow<D>(pub D);

impl<D: DataflowJob> Job for Dataflow<D> {
    async fn run(&self, ctx: ShardContext) -> Result<(), JobError> {
        loop {
            if ctx.cancel.is_cancelled() {
                return Err(JobError::Cancelled);
            }
            let items = self.0.fetch(&ctx).await?;
            if items.is_empty() {
                return Ok(());
            }
            self.0.process(&ctx, items).await?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio_util::sync::CancellationToken;

    struct Queue {
        items: Mutex<Vec<u32>>,
        done: Mutex<Vec<u32>>,
        cancel_after_first: Option<CancellationToken>,
    }

    impl DataflowJob for Queue {
        type Item = u32;
        async fn fetch(&self, _ctx: &ShardContext) -> Result<Vec<u32>, JobError> {
            let mut q = self.items.lock().unwrap();
            let n = q.len().min(2);
            Ok(q.drain(..n).collect())
        }
        async fn process(&self, _ctx: &ShardContext, items: Vec<u32>) -> Result<(), JobError> {
            self.done.lock().unwrap().extend(items);
            if let Some(c) = &self.cancel_after_first {
                c.cancel();
            }
            Ok(())
        }
    }

    fn ctx(cancel: CancellationToken) -> ShardContext {
        ShardContext {
            job: "j".into(),
            shard: 0,
            total: 1,
            shard_param: String::new(),
            job_param: String::new(),
            fire_time: chrono::Utc::now(),
            token: 1,
            attempt: 1,
            is_failover: false,
            is_misfire: false,
            cancel,
            instance: "me".into(),
            owner_key: String::new(),
        }
    }

    #[tokio::test]
    async fn drains_in_batches_until_fetch_is_empty() {
        let q = Dataflow(Queue {
            items: Mutex::new(vec![1, 2, 3, 4, 5]),
            done: Mutex::default(),
            cancel_after_first: None,
        });
        q.run(ctx(CancellationToken::new())).await.unwrap();
        assert_eq!(*q.0.done.lock().unwrap(), [1, 2, 3, 4, 5]);
    }

    #[tokio::test]
    async fn stops_between_batches_when_cancelled() {
        let cancel = CancellationToken::new();
        let q = Dataflow(Queue {
            items: Mutex::new(vec![1, 2, 3, 4, 5]),
            done: Mutex::default(),
            cancel_after_first: Some(cancel.clone()),
        });
        assert_eq!(q.run(ctx(cancel)).await, Err(JobError::Cancelled));
        assert_eq!(*q.0.done.lock().unwrap(), [1, 2]);
    }
}
