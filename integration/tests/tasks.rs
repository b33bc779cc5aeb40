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
    let Bed {
        etcd,
        pg: _pg,
        tasks,
        rec,
        tx,
        mut rx,
    } = Bed::start().await;
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
    let Bed {
        etcd,
        pg: _pg,
        tasks,
        rec,
        tx,
        mut rx,
    } = Bed::start().await;
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
async fn instances_registering_one_queue_together_all_get_its_segments() {
    // Agents starting together register their queues at once: an insert that waited for
    // another's must still read the row that one committed.
    logs();
    let pg = PgServer::start().unwrap();
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(connect(&[&pg]).await);
    }
    for round in 0..20 {
        let queue = format!("together-{round}");
        let calls: Vec<_> = clients
            .iter()
            .map(|t| {
                let (t, queue) = (t.clone(), queue.clone());
                tokio::spawn(async move { t.ensure_queue(&queue, 3).await })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap(), Ok(3), "{queue}");
        }
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_fence_rejects_the_old_owners_writes_and_it_runs_nothing_more() {
    logs();
    let Bed {
        etcd,
        pg,
        tasks,
        rec,
        tx,
        mut rx,
    } = Bed::start().await;
    let spec = recording_queue(&tasks, "f", &rec, tx)
        .segments(2)
        .window(Duration::from_secs(5));
    let agent = agent_with(&etcd.endpoints(), "tasks-fence", "a", spec).await;
    tasks.ensure_queue("f", 2).await.unwrap();
    let running = tasks
        .submit(
            "f",
            soon(100)
                .dedupe_key(key_in(0, 2, "run"))
                .payload(json!({"sleep_ms": 1500})),
        )
        .await
        .unwrap()
        .id;
    wait_status(&tasks, &[running], "running").await;
    // Another owner takes segment 0 in the store (as after a partition): its fence rises.
    let db = raw(&pg).await;
    let raised = db
        .execute(
            "UPDATE segment_fences SET token = token + 1000 WHERE queue = 'f' AND segment = 0",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(raised, 1);
    // The handler runs to its end; writing that end is refused.
    let mut seen = Vec::new();
    runs_until(&mut rx, &mut seen, 1, |r| r.id == running).await;
    let fenced_next = tasks
        .submit("f", soon(300).dedupe_key(key_in(0, 2, "next")))
        .await
        .unwrap()
        .id;
    let other = tasks
        .submit("f", soon(1_000).dedupe_key(key_in(1, 2, "other")))
        .await
        .unwrap()
        .id;
    runs_until(&mut rx, &mut seen, 1, |r| r.id == other).await;
    wait_status(&tasks, &[other], "done").await;
    let st = tasks.get(running).await.unwrap().unwrap();
    assert_eq!(
        (st.task.status.as_str(), st.attempts.len()),
        ("running", 0),
        "{st:?}"
    );
    let st = tasks.get(fenced_next).await.unwrap().unwrap();
    assert_eq!(
        st.task.status, "pending",
        "claimed under a stale fence: {st:?}"
    );
    assert!(seen.iter().all(|r| r.id != fenced_next));
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_whose_notification_was_lost_is_found_by_the_refill() {
    logs();
    let Bed {
        etcd,
        pg,
        tasks,
        rec,
        tx,
        mut rx,
    } = Bed::start().await;
    let spec = recording_queue(&tasks, "n", &rec, tx)
        .segments(1)
        .window(Duration::from_secs(5))
        .refill_every(Duration::from_secs(1));
    let agent = agent_with(&etcd.endpoints(), "tasks-notify", "a", spec).await;
    tasks.ensure_queue("n", 1).await.unwrap();
    // A first task through the API proves the worker is up and has refilled once.
    let first = tasks.submit("n", soon(0)).await.unwrap().id;
    wait_status(&tasks, &[first], "done").await;
    // Inserted behind the API's back: no NOTIFY, due inside the loaded window.
    let id = shardjob_tasks::Uuid::now_v7();
    let due = chrono::Utc::now() + chrono::Duration::milliseconds(200);
    raw(&pg)
        .await
        .execute(
            "INSERT INTO tasks (id, queue, segment, due_at, payload, status, max_attempts)
             VALUES ($1, 'n', 0, $2, 'null', 'pending', 1)",
            &[&id, &due],
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    runs_until(&mut rx, &mut seen, 1, |r| r.id == id).await;
    wait_status(&tasks, &[id], "done").await;
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_spreads_over_two_servers_by_segment() {
    logs();
    let etcd = EtcdCluster::single().unwrap();
    let (pg0, pg1) = (PgServer::start().unwrap(), PgServer::start().unwrap());
    let tasks = connect(&[&pg0, &pg1]).await;
    let rec = Recorder::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = recording_queue(&tasks, "m", &rec, tx)
        .segments(4)
        .window(Duration::from_secs(5));
    let agent = agent_with(&etcd.endpoints(), "tasks-multi", "a", spec).await;
    tasks.ensure_queue("m", 4).await.unwrap();
    let ids: Vec<_> = tasks
        .submit_batch(
            "m",
            (0..40)
                .map(|i| soon(200).payload(json!({"n": i})))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let mut seen = Vec::new();
    runs_until(&mut rx, &mut seen, 40, |_| true).await;
    wait_status(&tasks, &ids, "done").await;
    for (server, pg, segs) in [(0, &pg0, [0, 1]), (1, &pg1, [2, 3])] {
        let rows = raw(pg)
            .await
            .query("SELECT DISTINCT segment FROM tasks", &[])
            .await
            .unwrap();
        let mut got: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
        got.sort();
        assert!(
            !got.is_empty() && got.iter().all(|s| segs.contains(s)),
            "server {server}: {got:?}"
        );
    }
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_agents_running_tasks_are_run_again_by_the_new_owner_never_at_once() {
    logs();
    let Bed {
        etcd,
        pg: _pg,
        tasks,
        rec,
        tx,
        mut rx,
    } = Bed::start().await;
    let q = |tx| {
        recording_queue(&tasks, "k", &rec, tx)
            .segments(4)
            .window(Duration::from_secs(5))
    };
    let a = agent_with(&etcd.endpoints(), "tasks-crash", "a", q(tx.clone())).await;
    tasks.ensure_queue("k", 4).await.unwrap();
    let ids: Vec<_> = tasks
        .submit_batch(
            "k",
            (0..8)
                .map(|_| soon(100).payload(json!({"sleep_ms": 4000})))
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    wait_status(&tasks, &ids, "running").await;
    let b = agent_with(&etcd.endpoints(), "tasks-crash", "b", q(tx.clone())).await;
    a.crash_switch().cancel(); // gone as with SIGKILL: its handlers die, its lease runs out
    let mut seen = Vec::new();
    runs_until(&mut rx, &mut seen, 8, |r| r.instance == "b").await;
    wait_status(&tasks, &ids, "done").await;
    for id in &ids {
        let st = tasks.get(*id).await.unwrap().unwrap();
        let outcomes: Vec<&str> = st.attempts.iter().map(|a| a.outcome.as_str()).collect();
        assert_eq!(outcomes, ["lost", "ok"], "{st:?}");
        assert!(st.attempts[0].token < st.attempts[1].token, "{st:?}");
        let rerun = seen
            .iter()
            .find(|r| r.id == *id && r.instance == "b")
            .unwrap();
        assert!((rerun.attempt, rerun.is_recovery) == (2, true), "{rerun:?}");
    }
    assert!(
        rec.overlaps.lock().unwrap().is_empty(),
        "{:?}",
        rec.overlaps
    );
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crash_and_restart_loses_no_task_and_runs_none_twice() {
    logs();
    let (etcd, mut pg) = (EtcdCluster::single().unwrap(), PgServer::start().unwrap());
    let tasks = connect(&[&pg]).await;
    let rec = Recorder::default();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = recording_queue(&tasks, "p", &rec, tx)
        .segments(4)
        .window(Duration::from_secs(5));
    let agent = agent_with(&etcd.endpoints(), "tasks-pg", "a", spec).await;
    tasks.ensure_queue("p", 4).await.unwrap();
    let ids: Vec<_> = tasks
        .submit_batch("p", (0..60).map(|i| soon(50 * i)).collect())
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    let mut seen = Vec::new();
    runs_until(&mut rx, &mut seen, 5, |_| true).await;
    pg.crash();
    // While it is down a submit fails clearly, naming the step and the server.
    let e = tasks.submit("p", soon(0)).await.unwrap_err();
    assert!(
        matches!(
            e,
            TasksError::Database {
                op: "submitting",
                server: 0,
                ..
            }
        ),
        "{e}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await; // the database stays down a while
    pg.resume().unwrap();
    runs_until(&mut rx, &mut seen, 60, |_| true).await;
    wait_status(&tasks, &ids, "done").await;
    let db = raw(&pg).await;
    let ok: i64 = db
        .query_one("SELECT count(*) FROM attempts WHERE outcome = 'ok'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(ok, 60, "one ok attempt per task");
    assert!(rec.overlaps.lock().unwrap().is_empty());
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_attempt_is_cancelled_and_counts_as_failed() {
    logs();
    let Bed {
        etcd,
        pg: _pg,
        tasks,
        rec,
        tx,
        mut rx,
    } = Bed::start().await;
    let spec = recording_queue(&tasks, "t", &rec, tx)
        .segments(1)
        .window(Duration::from_secs(5))
        .timeout(Duration::from_millis(200))
        .retry(quick_retries(2));
    let agent = agent_with(&etcd.endpoints(), "tasks-timeout", "a", spec).await;
    tasks.ensure_queue("t", 1).await.unwrap();
    let id = tasks
        .submit("t", soon(100).payload(json!({"sleep_ms": 5000})))
        .await
        .unwrap()
        .id;
    wait_status(&tasks, &[id], "failed").await;
    let st = tasks.get(id).await.unwrap().unwrap();
    let outcomes: Vec<&str> = st.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes, ["timeout", "timeout"], "{st:?}");
    let mut seen = Vec::new();
    runs_until(&mut rx, &mut seen, 2, |r| r.id == id).await;
    for r in &seen {
        let ran = (r.end - r.start).num_milliseconds();
        assert!(
            ran < 2_000,
            "the handler was cancelled at its timeout: {ran} ms"
        );
    }
    agent.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_interrupts_a_long_task_and_the_new_owner_runs_it_after_never_during() {
    logs();
    let Bed {
        etcd,
        pg: _pg,
        tasks,
        rec,
        tx,
        mut rx,
    } = Bed::start().await;
    let q = |tx| {
        recording_queue(&tasks, "h", &rec, tx)
            .segments(2)
            .window(Duration::from_secs(5))
            .stop_grace(Duration::from_secs(2))
    };
    let a = agent_with(&etcd.endpoints(), "tasks-handoff", "a", q(tx.clone())).await;
    tasks.ensure_queue("h", 2).await.unwrap();
    // One long task in each segment: whichever segment moves to b, its task is cut.
    let ids: Vec<_> = [key_in(0, 2, "long"), key_in(1, 2, "long")]
        .into_iter()
        .map(|k| soon(100).dedupe_key(k).payload(json!({"sleep_ms": 8000})))
        .collect();
    let ids: Vec<_> = tasks
        .submit_batch("h", ids)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.id)
        .collect();
    wait_status(&tasks, &ids, "running").await;
    let b = agent_with(&etcd.endpoints(), "tasks-handoff", "b", q(tx.clone())).await;
    let mut seen = Vec::new();
    runs_until(&mut rx, &mut seen, 1, |r| r.instance == "b").await;
    a.shutdown().await.unwrap();
    wait_status(&tasks, &ids, "done").await;
    let moved = seen.iter().find(|r| r.instance == "b").unwrap().id;
    let st = tasks.get(moved).await.unwrap().unwrap();
    let outcomes: Vec<&str> = st.attempts.iter().map(|a| a.outcome.as_str()).collect();
    assert_eq!(outcomes[0], "interrupted", "{st:?}");
    assert_eq!(*outcomes.last().unwrap(), "ok", "{st:?}");
    let first_end = st.attempts[0].ended_at;
    assert!(
        st.attempts[1].started_at >= first_end,
        "the new owner started before the old stopped: {st:?}"
    );
    assert!(rec.overlaps.lock().unwrap().is_empty());
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queues_dispatch_rate_and_the_agents_running_limit_hold() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    logs();
    let (etcd, pg) = (EtcdCluster::single().unwrap(), PgServer::start().unwrap());
    let urls = [pg.url()];
    let tasks =
        shardjob_tasks::Tasks::connect(shardjob_tasks::TasksConfig::new(urls).max_running(2))
            .await
            .unwrap();
    let (now, max) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let handler = {
        let (now, max) = (now.clone(), max.clone());
        shardjob_tasks::task_fn(move |t: shardjob_tasks::TaskContext| {
            let (now, max, tx) = (now.clone(), max.clone(), tx.clone());
            async move {
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(n, Ordering::SeqCst);
                let start = chrono::Utc::now();
                let ms = t.payload["sleep_ms"].as_u64().unwrap_or(0);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                let _ = tx.send((t.queue.clone(), start));
                Ok(())
            }
        })
    };
    let agent = shardjob_integration::agents::builder(&etcd.endpoints(), "tasks-limits", "a");
    use shardjob_tasks::AgentBuilderExt;
    let agent = agent
        .queue(
            tasks
                .queue("slow", handler.clone())
                .segments(2)
                .window(Duration::from_secs(5))
                .concurrency(10),
        )
        .unwrap()
        .queue(
            tasks
                .queue("rated", handler)
                .segments(2)
                .window(Duration::from_secs(5))
                .dispatch_rate(20.0),
        )
        .unwrap()
        .start()
        .await
        .unwrap();
    tasks.ensure_queue("slow", 2).await.unwrap();
    tasks.ensure_queue("rated", 2).await.unwrap();
    let slow: Vec<NewTask> = (0..8)
        .map(|_| soon(200).payload(json!({"sleep_ms": 300})))
        .collect();
    let rated: Vec<NewTask> = (0..60).map(|_| soon(200)).collect();
    tasks.submit_batch("slow", slow).await.unwrap();
    tasks.submit_batch("rated", rated).await.unwrap();
    let mut starts: Vec<(String, chrono::DateTime<chrono::Utc>)> = Vec::new();
    tokio::time::timeout(shardjob_integration::fixtures::PATIENCE, async {
        while starts.len() < 68 {
            starts.push(rx.recv().await.unwrap());
        }
    })
    .await
    .unwrap();
    assert!(
        max.load(Ordering::SeqCst) <= 2,
        "at most 2 at once over both queues: {}",
        max.load(Ordering::SeqCst)
    );
    // 60 tasks at 20/s with a burst of 20: the last can start no sooner than 2 s after the first.
    let rated: Vec<_> = starts
        .iter()
        .filter(|(q, _)| q == "rated")
        .map(|(_, t)| *t)
        .collect();
    let spread = *rated.iter().max().unwrap() - *rated.iter().min().unwrap();
    assert!(
        spread.num_milliseconds() >= 1_800,
        "60 tasks at 20/s started within {spread}"
    );
    agent.shutdown().await.unwrap();
}
