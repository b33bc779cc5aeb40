//! Delayed tasks at volume, on the shardjob runtime: millions of one-shot tasks in PostgreSQL,
//! each run once, on time, by the owner of its segment.
//!
//! A **queue** has S **segments**; a task's segment is a stable hash of its dedupe key or id.
//! The segments of queue `q` are the shards of the resident shardjob job `tasks.q`, so the
//! leader assigns them, a dead agent's segments move within its lease, and each segment's owner
//! is fenced twice: by shardjob (one owner key, one token) and in the store (the segment's
//! fence row holds the owner's token; every change is guarded by it).
//!
//! ```no_run
//! use std::time::Duration;
//! use shardjob_agent::Agent;
//! use shardjob_tasks::{AgentBuilderExt, NewTask, Tasks, TasksConfig, task_fn, TaskContext};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let tasks = Tasks::connect(TasksConfig::new(["postgres://app@db/app"])).await?;
//! let agent = Agent::builder()
//!     .endpoints(["http://127.0.0.1:2379"])
//!     .queue(tasks.queue("coupons", task_fn(|t: TaskContext| async move {
//!         println!("expiring {} (attempt {})", t.payload["coupon"], t.attempt);
//!         Ok(())
//!     })))?
//!     .start()
//!     .await?;
//! let id = tasks
//!     .submit("coupons", NewTask::after(Duration::from_secs(60)).payload(serde_json::json!({"coupon": "C-42"})))
//!     .await?
//!     .id;
//! println!("{:?}", tasks.get(id).await?);
//! # Ok(()) }
//! ```
//!
//! Where to start reading: [`worker`] (a segment owner's loop), then [`store::owner`] (its
//! fenced SQL), [`window`] and [`policy`] (pure: what is in memory, what follows an attempt),
//! [`tasks`] (the producer API) and [`schema`].

pub mod config;
pub mod error;
pub mod handler;
pub mod history;
pub mod http;
pub mod listen;
pub mod permits;
pub mod policy;
pub mod queue;
pub mod ratelimit;
pub mod schema;
pub mod segment;
pub mod store;
pub mod submit;
pub mod tasks;
pub mod window;
pub mod worker;

pub use config::TasksConfig;
pub use error::TasksError;
pub use handler::{FnTask, TaskContext, TaskHandler, task_fn};
pub use policy::RetryPolicy;
pub use queue::{AgentBuilderExt, QueueSpec};
pub use store::read::{AttemptRecord, CancelOutcome, Page, TaskRecord};
pub use submit::NewTask;
pub use tasks::{Submitted, TaskStatus, Tasks};
pub use uuid::Uuid;
