//! prometheus: an agent whose metrics are served for Prometheus to scrape.
//!
//! ```sh
//! SHARDJOB_METRICS_ADDR=127.0.0.1:9898 cargo run -p shardjob-examples --bin prometheus
//! curl -s http://127.0.0.1:9898/metrics | grep shardjob_
//! ```
//! Exported: `shardjob_fires_total{job}`, `shardjob_executions_total{outcome,job}`,
//! `shardjob_execution_seconds{job}`, `shardjob_fire_lateness_seconds{job}` (the `job` label
//! unless the builder's `metrics_job_label(false)`), `shardjob_etcd_request_seconds{op}`,
//! `shardjob_lease_remaining_seconds`, `shardjob_garbage_values_total{kind}`, `shardjob_misfires_total`,
//! `shardjob_fires_coalesced_total`, `shardjob_owned_shards`, `shardjob_shard_claims_total`,
//! `shardjob_shard_moves_total`, `shardjob_rebalances_total`,
//! `shardjob_is_leader`, `shardjob_lease_keepalive_failures_total`,
//! `shardjob_lease_lapses_total`, `shardjob_session_losses_total`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use shardjob_agent::{JobSpec, ShardContext, job_fn};
use shardjob_examples::{builder_from_env, exit, init_logging, shutdown_signal};

#[tokio::main]
async fn main() -> ExitCode {
    init_logging();
    exit("prometheus", run().await)
}

async fn run() -> Result<(), String> {
    let addr: SocketAddr = std::env::var("SHARDJOB_METRICS_ADDR")
        .unwrap_or_else(|_| "127.0.0.1:9898".into())
        .parse()
        .map_err(|e| format!("SHARDJOB_METRICS_ADDR: {e}"))?;
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("starting the exporter on {addr}: {e}"))?;
    let spec = JobSpec::every("metered", Duration::from_secs(1))
        .map_err(|e| e.to_string())?
        .shards(8);
    let agent = builder_from_env()?
        .job(spec, job_fn(|_ctx: ShardContext| async { Ok(()) }))
        .start()
        .await
        .map_err(|e| e.to_string())?;
    println!("{}: metrics at http://{addr}/metrics", agent.instance_id());
    agent
        .run_until(shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}
