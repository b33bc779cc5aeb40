//! The dashboard in headless Chromium (Debian's `chromium`, installed by `scripts/setup`),
//! against a real cluster: the page loads without console errors and shows the leader, the
//! instances, each job's shard map and the task queues; after an agent is killed its shards
//! show on the other. A screenshot is saved as `target/dashboard.png` for people to look at.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shardjob_agent::{JobSpec, ShardContext, job_fn};
use shardjob_integration::EtcdCluster;
use shardjob_integration::agents::{builder, wait_owned};
use shardjob_integration::postgres::PgServer;
use shardjob_integration::taskkit::*;
use shardjob_tasks::http::ApiState;
use shardjob_tasks::{AgentBuilderExt, NewTask};
use tokio::sync::mpsc;

fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".into())
}

/// Loads `url` in headless Chromium, lets its scripts run for a few (virtual) seconds, and
/// returns the DOM and the console lines; with `screenshot`, saves one there instead.
fn browse(url: &str, screenshot: Option<&Path>) -> (String, Vec<String>) {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=4000",
        "--window-size=1280,1100",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(path) => cmd.arg(format!("--screenshot={}", path.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().unwrap_or_else(|e| {
        panic!(
            "{}: {e} (scripts/setup installs Debian's chromium, or set CHROMIUM)",
            chromium()
        )
    });
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains("CONSOLE"))
        .map(str::to_owned)
        .collect();
    (String::from_utf8_lossy(&out.stdout).into_owned(), console)
}

fn cron_agent(
    etcd: &EtcdCluster,
    id: &str,
    tasks: &shardjob_tasks::Tasks,
) -> shardjob_agent::AgentBuilder {
    let rec = Recorder::default();
    let (tx, _rx) = mpsc::unbounded_channel();
    let spec = JobSpec::every("tick", Duration::from_secs(1))
        .unwrap()
        .shards(4);
    builder(&etcd.endpoints(), "dashboard", id)
        .exec_sink(std::sync::Arc::new(
            shardjob_tasks::history::PgHistory::start(tasks),
        ))
        .job(spec, job_fn(|_ctx: ShardContext| async { Ok(()) }))
        .queue(
            recording_queue(tasks, "web", &rec, tx)
                .segments(2)
                .window(Duration::from_secs(5)),
        )
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_cluster_and_follows_a_failover() {
    let (etcd, pg) = (EtcdCluster::single().unwrap(), PgServer::start().unwrap());
    let tasks = connect(&[&pg]).await;
    tasks.ensure_queue("web", 2).await.unwrap();
    let a = cron_agent(&etcd, "a", &tasks).start().await.unwrap();
    let b = cron_agent(&etcd, "b", &tasks).start().await.unwrap();
    wait_owned(&[a.status(), b.status()], "tick", 4, |m| {
        m.values().all(|s| s.len() == 2)
    })
    .await;
    let ids: Vec<_> = tasks
        .submit_batch(
            "web",
            (0..10)
                .map(|_| NewTask::after(Duration::from_millis(100)))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    wait_status(&tasks, &ids, "done").await;
    let state = ApiState {
        cluster: Some((
            etcd.client().await.unwrap(),
            shardjob_coordinator::keys::Keys::new("dashboard").unwrap(),
        )),
        ..ApiState::new(tasks)
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    tokio::spawn(shardjob_tasks::http::serve(
        listener,
        state,
        std::future::pending(),
    ));

    let u = url.clone();
    let (dom, console) = tokio::task::spawn_blocking(move || browse(&u, None))
        .await
        .unwrap();
    let errors: Vec<&String> = console
        .iter()
        .filter(|l| l.contains("Uncaught") || l.contains("Error") || l.contains("Failed to load"))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}");
    assert!(
        dom.contains("data-loaded=\"yes\""),
        "the page never finished a refresh:\n{dom}"
    );
    // The cron history has rows by now (the sink writes within 100 ms; the fires ran above).
    for needle in ["tick", "tasks.web", "web", "resident", "every 1s"] {
        assert!(dom.contains(needle), "{needle} missing:\n{dom}");
    }
    assert!(
        dom.contains(" a · ") && dom.contains(" b · "),
        "both owners on the shard map:\n{dom}"
    );

    // b dies; once its lease is gone its shards are a's, and the page says so.
    b.crash_switch().cancel();
    wait_owned(&[a.status()], "tick", 4, |_| true).await;
    let u = url.clone();
    let (dom, _) = tokio::task::spawn_blocking(move || browse(&u, None))
        .await
        .unwrap();
    assert!(
        dom.contains(" a · ") && !dom.contains(" b · "),
        "b's shards still shown as b's:\n{dom}"
    );
    let shot = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard.png");
    let s = shot.clone();
    tokio::task::spawn_blocking(move || browse(&url, Some(&s)))
        .await
        .unwrap();
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot at {}",
        shot.display()
    );
    a.shutdown().await.unwrap();
}
