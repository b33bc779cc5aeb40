//! Delayed tasks on real agent processes (`tasks_agent`) against real etcd and PostgreSQL:
//! thousands of tasks due over a few seconds while one agent is SIGKILLed, one SIGSTOPped past
//! its TTL and resumed after its segments moved, and one restarted gracefully. Judged by the
//! independent checker (attempts table + the handlers' own log): none lost, none recorded
//! twice, no two accepted runs of a task at once; the paused owner wrote nothing under its old
//! tokens and started nothing with them after it resumed.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use shardjob_integration::EtcdCluster;
use shardjob_integration::campaign::AgentProc;
use shardjob_integration::postgres::PgServer;
use shardjob_integration::taskcheck::{check, read_log};
use shardjob_integration::taskkit::{connect, raw};
use shardjob_tasks::NewTask;

const QUEUE: &str = "demo";
const SEGMENTS: u32 = 16;

async fn fences_of(db: &tokio_postgres::Client, instance: &str) -> BTreeSet<(i32, i64)> {
    db.query(
        "SELECT segment, token FROM segment_fences WHERE queue = $1 AND instance = $2",
        &[&QUEUE, &instance],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Polls `probe` until it holds (the store has no push for these states).
async fn until<F, Fut>(what: &str, limit: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !probe().await {
        assert!(start.elapsed() < limit, "{what}: not after {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn agent(id: &str, etcd: &EtcdCluster, pg: &PgServer, dir: &Path) -> AgentProc {
    let envs = vec![
        ("SHARDJOB_ENDPOINTS".to_owned(), etcd.endpoints().join(",")),
        ("SHARDJOB_NAMESPACE".to_owned(), "tasks-faults".to_owned()),
        ("SHARDJOB_TTL".to_owned(), "2".to_owned()),
        ("SHARDJOB_PG_URL".to_owned(), pg.url()),
        ("SHARDJOB_SEGMENTS".to_owned(), SEGMENTS.to_string()),
        (
            "SHARDJOB_TASK_LOG".to_owned(),
            dir.join("runs.log").display().to_string(),
        ),
        ("SHARDJOB_LOG".to_owned(), "info".to_owned()),
    ];
    let mut a = AgentProc::new(id, Path::new(env!("CARGO_BIN_EXE_tasks_agent")), envs, dir);
    a.start().unwrap();
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_task_is_lost_or_run_twice_at_once_across_kill_pause_and_restart() {
    let etcd = EtcdCluster::single().unwrap();
    let pg = PgServer::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let tasks = connect(&[&pg]).await;
    tasks.ensure_queue(QUEUE, SEGMENTS).await.unwrap();
    let db = raw(&pg).await;
    let mut agents: Vec<AgentProc> = ["a", "b", "c", "d"]
        .iter()
        .map(|id| agent(id, &etcd, &pg, dir.path()))
        .collect();
    until(
        "every segment owned by someone",
        Duration::from_secs(30),
        || async {
            let n: i64 = db
                .query_one(
                    "SELECT count(*) FROM segment_fences WHERE queue = $1",
                    &[&QUEUE],
                )
                .await
                .unwrap()
                .get(0);
            n == i64::from(SEGMENTS)
        },
    )
    .await;
    // 3000 tasks due over the next 12 s, 100 ms of work each.
    let batch: Vec<NewTask> = (0..3000u64)
        .map(|i| {
            NewTask::after(Duration::from_millis(500 + i * 4)).payload(json!({"sleep_ms": 100}))
        })
        .collect();
    for chunk in batch.chunks(500) {
        tasks.submit_batch(QUEUE, chunk.to_vec()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // let tasks be running mid-flight
    agents[1].kill();

    // Pause c past its TTL; resume it once every segment it held has a newer owner.
    let held = fences_of(&db, "c").await;
    assert!(!held.is_empty(), "c held segments");
    agents[2].pause().unwrap();
    let paused_at = chrono::Utc::now();
    until(
        "c's segments taken over",
        Duration::from_secs(30),
        || async {
            let now: BTreeSet<(i32, i64)> = fences_of(&db, "c").await;
            held.iter().all(|h| !now.contains(h))
        },
    )
    .await;
    agents[2].resume().unwrap();
    let resumed_at = chrono::Utc::now();

    // A rolling restart of d.
    agents[3].stop(Duration::from_secs(30)).unwrap();
    agents[3].start().unwrap();

    until("every task done", Duration::from_secs(90), || async {
        let n: i64 = db
            .query_one(
                "SELECT count(*) FROM tasks WHERE queue = $1 AND status = 'done'",
                &[&QUEUE],
            )
            .await
            .unwrap()
            .get(0);
        n == 3000
    })
    .await;
    for a in agents.iter_mut() {
        let _ = a.stop(Duration::from_secs(30));
    }
    let runs = read_log(&dir.path().join("runs.log"));
    let report = check(&[&db], QUEUE, &runs).await.unwrap();
    eprintln!("tasks_processes: {}", report.line());
    assert_eq!((report.tasks, report.done), (3000, 3000), "{report:?}");
    assert!(report.clean(), "{report:?}");
    assert_eq!(report.ran_once, 3000, "{report:?}");

    // The paused owner: nothing started with an old token after it resumed, nothing written
    // with one after it was paused (the new owner's "lost" rows carry the old token: allowed).
    let old: BTreeSet<i64> = held.iter().map(|h| h.1).collect();
    let late_starts: Vec<_> = runs
        .iter()
        .filter(|r| r.instance == "c" && old.contains(&r.token) && r.start > resumed_at)
        .collect();
    assert!(
        late_starts.is_empty(),
        "the zombie started runs: {late_starts:?}"
    );
    let written: i64 = db
        .query_one(
            "SELECT count(*) FROM attempts WHERE instance = 'c' AND token = ANY($1)
               AND outcome <> 'lost' AND ended_at > $2",
            &[&old.iter().copied().collect::<Vec<i64>>(), &paused_at],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, 0, "the zombie wrote outcomes under its old tokens");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_server_serves_the_api_and_refuses_a_public_address_without_a_token() {
    let etcd = EtcdCluster::single().unwrap();
    let pg = PgServer::start().unwrap();
    let port = shardjob_integration::free_ports(1).unwrap()[0];
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_tasks_server"));
    let envs = |addr: String| {
        vec![
            ("SHARDJOB_ENDPOINTS".to_owned(), etcd.endpoints().join(",")),
            ("SHARDJOB_NAMESPACE".to_owned(), "tasks-server".to_owned()),
            ("SHARDJOB_TTL".to_owned(), "2".to_owned()),
            ("SHARDJOB_PG_URL".to_owned(), pg.url()),
            ("SHARDJOB_HTTP_ADDR".to_owned(), addr),
        ]
    };
    // A public address without a token: refused at once, with the reason.
    let out = std::process::Command::new(bin)
        .envs(envs(format!("0.0.0.0:{port}")))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("SHARDJOB_API_TOKEN"),
        "{out:?}"
    );

    let mut server = AgentProc::new("srv", bin, envs(format!("127.0.0.1:{port}")), dir.path());
    server.start().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    until("the API answers", Duration::from_secs(30), || async {
        tokio::net::TcpStream::connect(addr).await.is_ok()
    })
    .await;
    let (st, v) = shardjob_integration::taskkit::http(
        addr,
        "POST",
        "/v1/tasks",
        Some(r#"{"queue":"demo","delay_ms":100,"payload":{"hello":1}}"#),
        None,
    )
    .await;
    assert_eq!(st, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/tasks/{id}");
    until("the task is done", Duration::from_secs(30), || async {
        let (_, v) = shardjob_integration::taskkit::http(addr, "GET", &path, None, None).await;
        v["status"] == "done"
    })
    .await;
    let (st, page) = shardjob_integration::taskkit::http(addr, "GET", "/", None, None).await;
    assert_eq!(st, 200, "the dashboard is served: {page}");
    server.stop(Duration::from_secs(30)).unwrap();
}
