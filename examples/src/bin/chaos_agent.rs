//! chaos_agent: the agent process the fault campaign (`chaos`) starts, kills, pauses and cuts
//! off. Two jobs: `fast` (16 shards, every second) and `fo` (5 shards, every 2 s, failover on).
//! Handlers take 20–300 ms, so an overlap between two owners would show in the execution log
//! (`SHARDJOB_EXEC_LOG`). Configured by the usual `SHARDJOB_*` variables.

use std::process::ExitCode;
use std::time::Duration;

use shardjob_agent::{JobSpec, ShardContext, job_fn};
use shardjob_examples::{builder_from_env, exit, init_logging, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    exit("chaos_agent", run().await)
}

/// Some work that takes `base` plus a spread that depends on shard and fire.
fn work(
    base: u64,
) -> impl Fn(
    ShardContext,
) -> std::pin::Pin<Box<dyn Future<Output = Result<(), shardjob_agent::JobError>> + Send>>
+ Send
+ Sync
+ 'static {
    move |ctx: ShardContext| {
        let spread = (u64::from(ctx.shard) * 37 + ctx.fire_time.timestamp() as u64 * 11) % 100;
        Box::pin(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(base + spread)) => Ok(()),
                _ = ctx.cancel.cancelled() => Err(shardjob_agent::JobError::Cancelled),
            }
        })
    }
}

async fn run() -> Result<(), String> {
    let fast = JobSpec::every("fast", Duration::from_secs(1))
        .map_err(|e| e.to_string())?
        .shards(16);
    let fo = JobSpec::every("fo", Duration::from_secs(2))
        .map_err(|e| e.to_string())?
        .shards(5)
        .failover(true);
    let agent = builder_from_env()?
        .shutdown_timeout(Duration::from_secs(10))
        .job(fast, job_fn(work(20)))
        .job(fo, job_fn(work(200)))
        .start()
        .await
        .map_err(|e| e.to_string())?;
    agent
        .run_until(shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}
