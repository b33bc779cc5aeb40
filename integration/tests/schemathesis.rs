//! schemathesis (from PyPI, installed by `scripts/setup` into `target/schemathesis`) against the
//! live task API with its own OpenAPI document: no 5xx, every response matches the document.
//! Real agent, etcd and PostgreSQL; never skipped — without schemathesis the test fails and
//! says how to install it.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use shardjob_integration::EtcdCluster;
use shardjob_integration::postgres::PgServer;
use shardjob_integration::taskkit::*;
use shardjob_tasks::http::ApiState;
use tokio::sync::mpsc;

fn schemathesis() -> PathBuf {
    std::env::var_os("SCHEMATHESIS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/schemathesis/bin/schemathesis")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_api_matches_its_openapi_document() {
    let bin = schemathesis();
    assert!(
        bin.exists(),
        "{} is missing: run scripts/setup (it installs schemathesis into target/schemathesis), or set SCHEMATHESIS",
        bin.display()
    );
    let (etcd, pg) = (EtcdCluster::single().unwrap(), PgServer::start().unwrap());
    let tasks = connect(&[&pg]).await;
    let rec = Recorder::default();
    let (tx, _rx) = mpsc::unbounded_channel();
    let spec = recording_queue(&tasks, "web", &rec, tx)
        .segments(2)
        .window(Duration::from_secs(5));
    let agent = agent_with(&etcd.endpoints(), "schemathesis", "a", spec).await;
    tasks.ensure_queue("web", 2).await.unwrap();
    let keys = shardjob_coordinator::keys::Keys::new("schemathesis").unwrap();
    let state = ApiState {
        cluster: Some((etcd.client().await.unwrap(), keys)),
        token: Some(std::sync::Arc::from("schemathesis-token")),
        ..ApiState::new(tasks)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(shardjob_tasks::http::serve(
        listener,
        state,
        std::future::pending(),
    ));
    let report = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["run", &format!("http://{addr}/openapi.json")])
            .args(["--header", "Authorization: Bearer schemathesis-token"])
            // Every check but two. `positive_data_acceptance`: the server refuses some
            // schema-valid input on purpose — a due time past the configured maximum delay or
            // a payload over the size limit cannot be written in the schema (both are relative
            // to the server's settings). `use_after_free`: DELETE /v1/tasks/{id} cancels; the
            // task and its attempts stay readable on purpose (every attempt is visible).
            .args([
                "--checks",
                "all",
                "--exclude-checks",
                "positive_data_acceptance,use_after_free",
            ])
            .args(["--max-examples", "40", "--workers", "1"])
            .args([
                "--seed",
                &std::env::var("SCHEMATHESIS_SEED").unwrap_or_else(|_| "7".into()),
            ])
            .args(["--request-timeout", "10", "--max-time", "60"])
            .arg("--report-dir")
            .arg(report.path())
            .env("NO_COLOR", "1")
            .output()
    })
    .await
    .unwrap()
    .unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "schemathesis found problems:\n{text}");
    agent.shutdown().await.unwrap();
}
