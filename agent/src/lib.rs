//! The shardjob agent: what a service embeds to run sharded, cron-scheduled jobs coordinated
//! through etcd.
//!
//! ```no_run
//! use shardjob_agent::{Agent, JobSpec, job_fn, ShardContext};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let agent = Agent::builder()
//!     .endpoints(["http://127.0.0.1:2379"])
//!     .namespace("prod")
//!     .job(
//!         JobSpec::new("orders-sync", "*/5 * * * * *")?.shards(8),
//!         job_fn(|ctx: ShardContext| async move {
//!             println!("syncing orders of shard {}/{}", ctx.shard, ctx.total);
//!             Ok(())
//!         }),
//!     )
//!     .start()
//!     .await?;
//! agent.run_until(tokio::signal::ctrl_c()).await?;
//! # Ok(()) }
//! ```
//!
//! Where to start reading: [`builder`] (configuration), [`job`] (what you implement), then the
//! pure decision logic in [`engine`] (every rule of the protocol: `step(input, now) ->
//! commands`) and [`schedule`], and the runtime that carries it out (`runtime/`, private: one
//! event loop per agent that does the I/O).

pub mod builder;
pub mod engine;
pub mod execlog;
pub mod handle;
mod hash;
pub mod job;
pub mod kinds;
mod runtime;
pub mod schedule;
pub mod spec;
#[doc(hidden)]
pub mod testing;

pub use builder::{AgentBuilder, AgentError};
pub use handle::{AgentHandle, AgentStatus};
pub use job::{FnJob, Job, JobError, ShardContext, job_fn};
/// How the liveness stream is kept (see [`AgentBuilder::liveness`]).
pub use shardjob_coordinator::liveness::LivenessOptions;
pub use spec::JobSpec;

pub use shardjob_coordinator as coordinator;

/// Entry point: `Agent::builder()`.
#[derive(Debug)]
pub struct Agent;

impl Agent {
    /// A builder with defaults (endpoint `http://127.0.0.1:2379`, namespace `default`, TTL 10 s).
    pub fn builder() -> AgentBuilder {
        AgentBuilder::default()
    }
}
