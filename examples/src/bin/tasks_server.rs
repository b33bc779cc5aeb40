//! tasks_server: an agent running the delayed-task queue `demo` (its handler logs and
//! succeeds) and the task API over HTTP (`shardjob_tasks::http`).
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `SHARDJOB_ENDPOINTS`, `SHARDJOB_NAMESPACE`, ... | the agent, as every example | |
//! | `SHARDJOB_PG_URL` | the task store (comma separated) | required |
//! | `SHARDJOB_HTTP_ADDR` | where the API listens | `127.0.0.1:8080` |
//! | `SHARDJOB_API_TOKEN` | bearer token every `/v1` request must carry; required unless the address is loopback | none |
//! | `SHARDJOB_SUBMIT_RATE` | tasks per second one client may submit (burst: one second's worth) | unlimited |
//!
//! ```sh
//! SHARDJOB_PG_URL=postgres://postgres@127.0.0.1:5432/postgres cargo run -p shardjob-examples --bin tasks_server
//! curl -s localhost:8080/v1/tasks -d '{"queue":"demo","delay_ms":1000,"payload":{"hello":1}}' -H 'content-type: application/json'
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use shardjob_examples::{
    builder_from_env, env_list, exit, init_logging, logging_task_handler, shutdown_signal,
    tasks_from_env,
};
use shardjob_tasks::AgentBuilderExt;
use shardjob_tasks::http::{ApiState, Limits};
use shardjob_tasks::ratelimit::KeyedBuckets;

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    exit("tasks_server", run().await)
}

async fn run() -> Result<(), String> {
    let addr: SocketAddr = std::env::var("SHARDJOB_HTTP_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:8080".into())
        .parse()
        .map_err(|e| format!("SHARDJOB_HTTP_ADDR: {e}"))?;
    let token = std::env::var("SHARDJOB_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(format!(
            "SHARDJOB_HTTP_ADDR={addr} is not loopback: set SHARDJOB_API_TOKEN (without a token the API binds to loopback only)"
        ));
    }
    let submits = match std::env::var("SHARDJOB_SUBMIT_RATE") {
        Ok(r) => {
            let rate: f64 =
                r.parse().ok().filter(|r: &f64| *r > 0.0).ok_or_else(|| {
                    format!("SHARDJOB_SUBMIT_RATE={r:?} is not a positive number")
                })?;
            Some(KeyedBuckets::new(rate, rate))
        }
        Err(_) => None,
    };
    let Some((tasks, log)) = tasks_from_env().await? else {
        return Err("set SHARDJOB_PG_URL to the PostgreSQL URL(s) of the task store".into());
    };
    let endpoints =
        env_list("SHARDJOB_ENDPOINTS").unwrap_or_else(|| vec!["http://127.0.0.1:2379".into()]);
    let namespace = std::env::var("SHARDJOB_NAMESPACE").unwrap_or_else(|_| "default".into());
    let keys =
        shardjob_agent::coordinator::keys::Keys::new(&namespace).map_err(|e| e.to_string())?;
    let client = etcd_client::Client::connect(endpoints, None)
        .await
        .map_err(|e| format!("connecting to etcd: {e}"))?;
    tasks
        .ensure_queue("demo", 16)
        .await
        .map_err(|e| e.to_string())?;
    let agent = builder_from_env()?
        .queue(tasks.queue("demo", logging_task_handler(log)).segments(16))
        .map_err(|e| e.to_string())?
        .start()
        .await
        .map_err(|e| e.to_string())?;
    let state = ApiState {
        cluster: Some((client, keys)),
        token: token.map(Arc::from),
        limits: Arc::new(Limits { submits }),
        ..ApiState::new(tasks)
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    println!("tasks_server: listening on http://{bound}");
    let server = tokio::spawn(shardjob_tasks::http::serve(
        listener,
        state,
        shutdown_signal(),
    ));
    agent
        .run_until(shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    server.abort();
    Ok(())
}
