//! Runnable shardjob examples. Every example process is configured by environment variables:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `SHARDJOB_ENDPOINTS` | etcd endpoints, comma separated | `http://127.0.0.1:2379` |
//! | `SHARDJOB_NAMESPACE` | namespace | `default` |
//! | `SHARDJOB_INSTANCE_ID` | instance id | `<host>-<pid>-<random>` |
//! | `SHARDJOB_TTL` | lease TTL in seconds | `10` |
//! | `SHARDJOB_EXEC_LOG` | append one JSON line per finished execution to this file | none |
//! | `SHARDJOB_LIVENESS` | liveness stream: listen here (`127.0.0.1:0`) and stream to the leader | off |
//! | `SHARDJOB_LIVENESS_ADVERTISE` | liveness stream: the address others connect to | the bound one |
//! | `SHARDJOB_LOG` | log filter (`info`, `shardjob_agent=debug`, ...) | `warn` |
//! | `SHARDJOB_PG_URL` | delayed tasks: PostgreSQL URLs, comma separated | none |
//! | `SHARDJOB_TASK_LOG` | delayed tasks: append one JSON line per handler run to this file | none |
//! | `SHARDJOB_PG_POOL` | delayed tasks: connections per PostgreSQL server | `16` |
//!
//! `cargo run -p shardjob-examples --bin quickstart` starts one agent of a 12-shard job.

use std::time::Duration;

use shardjob_agent::{Agent, AgentBuilder};

/// The comma-separated list in variable `name`, trimmed; `None` when unset or empty.
pub fn env_list(name: &str) -> Option<Vec<String>> {
    let list: Vec<String> = std::env::var(name)
        .ok()?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    (!list.is_empty()).then_some(list)
}

/// An agent builder configured from the `SHARDJOB_*` variables (see the crate docs).
pub fn builder_from_env() -> Result<AgentBuilder, String> {
    let mut b = Agent::builder();
    if let Some(endpoints) = env_list("SHARDJOB_ENDPOINTS") {
        b = b.endpoints(endpoints);
    }
    if let Ok(ns) = std::env::var("SHARDJOB_NAMESPACE") {
        b = b.namespace(ns);
    }
    if let Ok(id) = std::env::var("SHARDJOB_INSTANCE_ID") {
        b = b.instance_id(id);
    }
    if let Ok(ttl) = std::env::var("SHARDJOB_TTL") {
        let secs: u64 = ttl
            .parse()
            .map_err(|_| format!("SHARDJOB_TTL={ttl:?} is not a whole number of seconds"))?;
        b = b.ttl(Duration::from_secs(secs));
    }
    if let Ok(path) = std::env::var("SHARDJOB_EXEC_LOG") {
        b = b.exec_log(path);
    }
    if let Ok(listen) = std::env::var("SHARDJOB_LIVENESS") {
        let addr = listen.parse().map_err(|_| {
            format!("SHARDJOB_LIVENESS={listen:?} is not an address like 127.0.0.1:0")
        })?;
        let mut options = shardjob_agent::LivenessOptions::new(addr);
        options.advertise = std::env::var("SHARDJOB_LIVENESS_ADVERTISE").ok();
        b = b.liveness(options);
    }
    Ok(b)
}

/// Logs to stderr, filtered by `SHARDJOB_LOG` (default `warn`).
pub fn init_logging() {
    let filter = std::env::var("SHARDJOB_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
}

/// The end of every example's `main`: success, or the error on one line and exit code 1.
pub fn exit(program: &str, result: Result<(), String>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM (what `kill` and process supervisors send).
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}

/// The example task handler: takes the payload's `sleep_ms` (default 0), succeeds, and appends
/// one JSON line per run to `log` (if any): `{"task","instance","token","attempt","due",
/// "start","end","outcome"}` — what the delayed-task checker reads.
pub fn logging_task_handler(
    log: Option<std::sync::Arc<std::sync::Mutex<std::fs::File>>>,
) -> impl shardjob_tasks::TaskHandler {
    use std::io::Write;
    shardjob_tasks::task_fn(move |t: shardjob_tasks::TaskContext| {
        let log = log.clone();
        async move {
            let start = chrono::Utc::now();
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
                    "due": t.due_at, "start": start, "end": chrono::Utc::now(),
                    "outcome": if cut { "cancelled" } else { "ok" },
                });
                // One write per line: agents share the file (O_APPEND keeps a single write
                // whole; `writeln!` would write the newline separately).
                let text = format!("{line}\n");
                let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
                let _ = f.write_all(text.as_bytes());
            }
            if cut {
                return Err(shardjob_agent::JobError::Cancelled);
            }
            Ok(())
        }
    })
}

/// The task store and log from `SHARDJOB_PG_URL` (comma separated) and `SHARDJOB_TASK_LOG`;
/// `None` when no URL is set.
pub async fn tasks_from_env() -> Result<
    Option<(
        shardjob_tasks::Tasks,
        Option<std::sync::Arc<std::sync::Mutex<std::fs::File>>>,
    )>,
    String,
> {
    let Some(urls) = env_list("SHARDJOB_PG_URL") else {
        return Ok(None);
    };
    let log = match std::env::var("SHARDJOB_TASK_LOG") {
        Ok(path) => Some(std::sync::Arc::new(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| format!("opening SHARDJOB_TASK_LOG={path}: {e}"))?,
        ))),
        Err(_) => None,
    };
    let pool: usize = std::env::var("SHARDJOB_PG_POOL")
        .unwrap_or_else(|_| "16".into())
        .parse()
        .map_err(|_| "SHARDJOB_PG_POOL must be a number".to_owned())?;
    let config = shardjob_tasks::TasksConfig::new(urls).pool_size(pool);
    let tasks = shardjob_tasks::Tasks::connect(config)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some((tasks, log)))
}
