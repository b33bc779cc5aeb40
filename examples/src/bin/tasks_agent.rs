//! tasks_agent: an agent that runs one delayed-task queue (default `demo`, 16 segments). Its
//! handler takes the payload's `sleep_ms` (default 0) and succeeds; each run is one JSON line
//! in `SHARDJOB_TASK_LOG` (if set), so a checker can see every run, also one the store refused.
//! The demo, the delayed-task fault tests and `bench-tasks` start it.
//!
//! Configured by the usual `SHARDJOB_*` variables and `SHARDJOB_PG_URL` (comma separated),
//! `SHARDJOB_QUEUE`, `SHARDJOB_SEGMENTS`, `SHARDJOB_CONCURRENCY` (default 256).

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use shardjob_examples::{builder_from_env, exit, init_logging, shutdown_signal};
use shardjob_tasks::{AgentBuilderExt, TaskContext, Tasks, TasksConfig, task_fn};

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
    let urls: Vec<String> = var("SHARDJOB_PG_URL", "")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if urls.is_empty() {
        return Err("set SHARDJOB_PG_URL to the PostgreSQL URL(s) of the task store".into());
    }
    let queue = var("SHARDJOB_QUEUE", "demo");
    let segments: u32 = number("SHARDJOB_SEGMENTS", "16")?;
    let concurrency: usize = number("SHARDJOB_CONCURRENCY", "256")?;
    let log = match std::env::var("SHARDJOB_TASK_LOG") {
        Ok(path) => Some(Arc::new(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("opening SHARDJOB_TASK_LOG={path}: {e}"))?,
        ))),
        Err(_) => None,
    };
    let tasks = Tasks::connect(TasksConfig::new(urls))
        .await
        .map_err(|e| e.to_string())?;
    let handler = task_fn(move |t: TaskContext| {
        let log = log.clone();
        async move {
            let start = Utc::now();
            let ms = t
                .payload
                .get("sleep_ms")
                .and_then(|v| v.as_u64())
                .unwrap_or(0);
            let cut = if ms > 0 {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(ms)) => false,
                    _ = t.cancel.cancelled() => true,
                }
            } else {
                false
            };
            if let Some(log) = &log {
                let line = serde_json::json!({
                    "task": t.id, "instance": t.instance, "token": t.token, "attempt": t.attempt,
                    "due": t.due_at, "start": start, "end": Utc::now(),
                    "outcome": if cut { "cancelled" } else { "ok" },
                });
                // One write per line: the agents of a test share the file (O_APPEND keeps a
                // single write whole; `writeln!` would write the newline separately).
                let text = format!("{line}\n");
                let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
                let _ = f.write_all(text.as_bytes());
            }
            if cut {
                return Err(shardjob_agent::JobError::Cancelled);
            }
            Ok(())
        }
    });
    let spec = tasks
        .queue(queue, handler)
        .segments(segments)
        .concurrency(concurrency);
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
