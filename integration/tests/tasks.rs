//! Delayed tasks against real PostgreSQL and etcd: on time and once, every attempt recorded,
//! retries and dead letters, cancel, dedupe, bad input, fencing, a lost notification, two
//! servers, a crashed agent and a restarted database.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::json;
use shardjob_integration::EtcdCluster;
use shardjob_integration::postgres::PgServer;
use shardjob_integration::taskkit::*;
use shardjob_tasks::{CancelOutcome, NewTask, TasksError};
use tokio::sync::mpsc;

/// Logs with `RUST_LOG=...` (off by default).
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn soon(ms: u64) -> NewTask {
    NewTask::after(Duration::from_millis(ms))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_once_on_time_and_every_attempt_is_recorded() {
    logs();
    let (etcd, pg) = (EtcdCluster::single().unwrap(), PgServer::start().unwrap());
    let tasks = connect(&[&pg]).await;
    let rec = Recorder::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = recording_queue(&tasks, "q", &rec, tx)
        .segments(4)
        .window(Duration::from_secs(5));
    let agent = agent_with(&etcd.endpoints(), "tasks-once", "a", spec).await;
    tasks.ensure_queue("q", 4).await.unwrap();
    let batch: Vec<NewTask> = (0..20)
        .map(|i| soon(300 + 50 * i).payload(json!({"n": i})))
        .collect();
    let ids: Vec<_> = tasks
        .submit_batch("q", batch)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let mut seen = Vec::new();
    runs_until(&mut rx, &mut seen, 20, |_| true).await;
    wait_status(&tasks, &ids, "done").await;
    for id in &ids {
        let st = tasks.get(*id).await.unwrap().unwrap();
        assert_eq!(st.attempts.len(), 1, "{st:?}");
        assert_eq!(st.attempts[0].outcome, "ok");
        assert_eq!(st.attempts[0].instance, "a");
        assert!(st.task.finished_at.is_some());
    }
    for r in &seen {
        assert!(r.start >= r.due_at, "started before due: {r:?}");
        assert_eq!((r.attempt, r.is_recovery), (1, false));
    }
    assert!(rec.overlaps.lock().unwrap().is_empty());
    let page = tasks.list("q", Some("done"), None, None, 15).await.unwrap();
    assert_eq!(page.tasks.len(), 15);
    let rest = tasks
        .list("q", Some("done"), None, page.next.as_deref(), 15)
        .await
        .unwrap();
    assert_eq!(rest.tasks.len(), 5);
    assert!(rest.next.is_none());
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_with_backoff_then_dead_letter_and_requeue_runs_again() {
    logs();
    let (etcd, pg) = (EtcdCluster::single().unwrap(), PgServer::start().unwrap());
    let tasks = connect(&[&pg]).await;
    let rec = Recorder::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = recording_queue(&tasks, "r", &rec, tx)
        .segments(2)
        .window(Duration::from_secs(5))
        .retry(quick_retries(5));
    let agent = agent_with(&etcd.endpoints(), "tasks-retry", "a", spec).await;
    tasks.ensure_queue("r", 2).await.unwrap();
    let flaky = tasks
        .submit("r", soon(100).payload(json!({"fail": 2})))
        .await
        .unwrap()
        .id;
    let doomed = tasks
        .submit("r", soon(100).payload(json!({"fail": 99})).max_attempts(2))
        .await
        .unwrap()
        .id;
    wait_status(&tasks, &[flaky], "done").await;
    wait_status(&tasks, &[doomed], "failed").await;
    let f = tasks.get(flaky).await.unwrap().unwrap();
    let outcomes: Vec<&str> = f.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["failed", "failed", "ok"]);
    let gaps: Vec<_> = f
        .attempts
        .windows(2)
        .map(|w| w[1].started_at - w[0].ended_at)
        .collect();
    assert!(
        gaps.iter().all(|g| g.num_milliseconds() >= 25),
        "backoff between attempts: {gaps:?}"
    );
    let d = tasks.get(doomed).await.unwrap().unwrap();
    assert_eq!(d.attempts.len(), 2);
    assert_eq!(d.task.last_error.as_deref(), Some("failing attempt 2"));
    // A dead letter goes back with one more attempt, and fails again.
    let requeued = tasks.requeue(doomed, 1).await.unwrap().unwrap();
    assert_eq!(requeued.status, "pending");
    let mut seen = Vec::new();
    runs_until(&mut rx, &mut seen, 1, |r| r.id == doomed && r.attempt == 3).await;
    wait_status(&tasks, &[doomed], "failed").await;
    assert_eq!(tasks.get(doomed).await.unwrap().unwrap().attempts.len(), 3);
    assert!(
        tasks.requeue(flaky, 1).await.unwrap().is_none(),
        "a done task is not requeued"
    );
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_dedupe_and_bad_input_answer_clearly() {
    logs();
    let (etcd, pg) = (EtcdCluster::single().unwrap(), PgServer::start().unwrap());
    let tasks = connect(&[&pg]).await;
    let err = tasks.submit("nope", soon(0)).await.unwrap_err();
    assert_eq!(err, TasksError::UnknownQueue("nope".into()));
    tasks.ensure_queue("c", 2).await.unwrap();
    let e = tasks.ensure_queue("c", 3).await.unwrap_err();
    assert!(e.to_string().contains("segments"), "{e}");
    let e = tasks
        .submit("c", soon(0).payload(json!("x".repeat(70_000))))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            TasksError::BadTask {
                field: "payload",
                ..
            }
        ),
        "{e}"
    );
    let e = tasks
        .submit("c", NewTask::after(Duration::from_secs(400 * 86400)))
        .await
        .unwrap_err();
    assert!(matches!(e, TasksError::BadTask { field: "due", .. }), "{e}");

    let first = tasks
        .submit("c", soon(60_000).dedupe_key("coupon-1"))
        .await
        .unwrap();
    let again = tasks
        .submit("c", soon(1_000).dedupe_key("coupon-1"))
        .await
        .unwrap();
    assert_eq!(
        (again.id, again.duplicate, first.duplicate),
        (first.id, true, false)
    );
    assert_eq!(
        tasks.cancel(first.id).await.unwrap(),
        CancelOutcome::Cancelled
    );
    assert_eq!(
        tasks.cancel(first.id).await.unwrap(),
        CancelOutcome::AlreadyFinished
    );
    assert_eq!(
        tasks.cancel(shardjob_tasks::Uuid::now_v7()).await.unwrap(),
        CancelOutcome::Unknown
    );

    // One cancelled before its time never runs; one cancelled mid-run goes on to its end.
    let rec = Recorder::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = recording_queue(&tasks, "c", &rec, tx)
        .segments(2)
        .window(Duration::from_secs(5));
    let agent = agent_with(&etcd.endpoints(), "tasks-cancel", "a", spec).await;
    let early = tasks.submit("c", soon(1_500)).await.unwrap().id;
    let long = tasks
        .submit("c", soon(200).payload(json!({"sleep_ms": 1500})))
        .await
        .unwrap()
        .id;
    assert_eq!(tasks.cancel(early).await.unwrap(), CancelOutcome::Cancelled);
    wait_status(&tasks, &[long], "running").await;
    assert_eq!(
        tasks.cancel(long).await.unwrap(),
        CancelOutcome::AlreadyRunning
    );
    let marker = tasks.submit("c", soon(1_600)).await.unwrap().id;
    let mut seen = Vec::new();
    runs_until(&mut rx, &mut seen, 1, |r| r.id == marker).await;
    wait_status(&tasks, &[long], "done").await;
    assert!(
        seen.iter().all(|r| r.id != early),
        "a cancelled task ran: {seen:?}"
    );
    let st = tasks.get(early).await.unwrap().unwrap();
    assert_eq!(
        (st.task.status.as_str(), st.attempts.len()),
        ("cancelled", 0)
    );
    agent.shutdown().await.unwrap();
}
