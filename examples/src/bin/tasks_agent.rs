//! tasks_agent: an agent that runs one delayed-task queue (default `demo`, 16 segments). Its
//! handler takes the payload's `sleep_ms` (default 0) and succeeds; each run is one JSON line
//! in `SHARDJOB_TASK_LOG` (if set), so a checker can see every run, also one the store refused.
//! The demo, the delayed-task fault tests and `bench-tasks` start it.
//!
//! Configured by the usual `SHARDJOB_*` variables and `SHARDJOB_PG_URL` (comma separated),
//! `SHARDJOB_QUEUE`, `SHARDJOB_SEGMENTS`, `SHARDJOB_CONCURRENCY` (default 256),
//! `SHARDJOB_CLAIM_AHEAD_MS` (default: the queue's, 250).

use std::process::ExitCode;
use std::time::Duration;

use shardjob_examples::{
    builder_from_env, exit, init_logging, logging_task_handler, shutdown_signal, tasks_from_env,
};
use shardjob_tasks::AgentBuilderExt;

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    exit("tasks_agent", run().await)
}

fn var(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn number<T: std::str::FromStr>(name: &str, default: &str) -> Result<T, String> {
    let text = var(name, default);
    text.parse()
        .map_err(|_| format!("{name}={text:?} is not a number"))
}

async fn run() -> Result<(), String> {
    let Some((tasks, log)) = tasks_from_env().await? else {
        return Err("set SHARDJOB_PG_URL to the PostgreSQL URL(s) of the task store".into());
    };
    let queue = var("SHARDJOB_QUEUE", "demo");
    let segments: u32 = number("SHARDJOB_SEGMENTS", "16")?;
    let concurrency: usize = number("SHARDJOB_CONCURRENCY", "256")?;
    let mut spec = tasks
        .queue(queue, logging_task_handler(log))
        .segments(segments)
        .concurrency(concurrency);
    if let Ok(ms) = std::env::var("SHARDJOB_CLAIM_AHEAD_MS") {
        let ms: u64 = ms
            .parse()
            .map_err(|_| format!("SHARDJOB_CLAIM_AHEAD_MS={ms:?} is not a number"))?;
        spec = spec.claim_ahead(std::time::Duration::from_millis(ms));
    }
    let agent = builder_from_env()?
        .shutdown_timeout(Duration::from_secs(20))
        .queue(spec)
        .map_err(|e| e.to_string())?
        .start()
        .await
        .map_err(|e| e.to_string())?;
    agent
        .run_until(shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}
