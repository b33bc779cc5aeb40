//! Runnable shardjob examples. Every example process is configured by environment variables:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `SHARDJOB_ENDPOINTS` | etcd endpoints, comma separated | `http://127.0.0.1:2379` |
//! | `SHARDJOB_NAMESPACE` | namespace | `default` |
//! | `SHARDJOB_INSTANCE_ID` | instance id | `<host>-<pid>-<random>` |
//! | `SHARDJOB_TTL` | lease TTL in seconds | `10` |
//! | `SHARDJOB_EXEC_LOG` | append one JSON line per finished execution to this file | none |
//! | `SHARDJOB_LOG` | log filter (`info`, `shardjob_agent=debug`, ...) | `warn` |
//! | `SHARDJOB_PG_URL` | delayed tasks: PostgreSQL URLs, comma separated | none |
//!
//! `cargo run -p shardjob-examples --bin quickstart` starts one agent of a 12-shard job.

use std::time::Duration;

use shardjob_agent::{Agent, AgentBuilder};

/// An agent builder configured from the `SHARDJOB_*` variables (see the crate docs).
pub fn builder_from_env() -> Result<AgentBuilder, String> {
    let mut b = Agent::builder();
    if let Ok(e) = std::env::var("SHARDJOB_ENDPOINTS") {
        b = b.endpoints(
            e.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        );
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
