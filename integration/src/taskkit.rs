//! Helpers for delayed-task tests: a store on throwaway PostgreSQL servers, an agent running a
//! queue, a recording handler, and raw SQL for what the API does not show.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use shardjob_agent::AgentHandle;
use shardjob_tasks::{
    AgentBuilderExt, QueueSpec, RetryPolicy, TaskContext, Tasks, TasksConfig, Uuid, task_fn,
};
use tokio::sync::mpsc;

use crate::agents::builder;
use crate::fixtures::PATIENCE;
use crate::postgres::PgServer;

/// One run of a handler, as the handler saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRun {
    pub id: Uuid,
    pub instance: String,
    pub attempt: u32,
    pub token: i64,
    pub is_recovery: bool,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub due_at: DateTime<Utc>,
}

/// A store on `servers`, with quick maintenance off (hourly).
pub async fn connect(servers: &[&PgServer]) -> Tasks {
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    Tasks::connect(TasksConfig::new(urls).timeout(Duration::from_secs(3)))
        .await
        .expect("connecting the task store")
}

/// A quick retry policy for tests: 50 ms doubling to 200 ms.
pub fn quick_retries(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(200),
        max_attempts,
    }
}

/// Shared by every recording handler of a test: the runs, and the live runs per task (a second
/// live run of one task is an overlap).
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    pub runs: Arc<Mutex<Vec<TaskRun>>>,
    live: Arc<Mutex<BTreeMap<Uuid, u32>>>,
    pub overlaps: Arc<Mutex<Vec<Uuid>>>,
}

/// One live run of a task; leaves when dropped (also when its task is aborted with a crash).
struct Live {
    rec: Recorder,
    id: Uuid,
}

impl Live {
    fn enter(rec: &Recorder, id: Uuid) -> Self {
        let mut live = rec.live.lock().unwrap_or_else(|p| p.into_inner());
        let n = live.entry(id).or_default();
        if *n > 0 {
            rec.overlaps
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(id);
        }
        *n += 1;
        Self {
            rec: rec.clone(),
            id,
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let mut live = self.rec.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = live.get_mut(&self.id) {
            *n = n.saturating_sub(1);
        }
    }
}

/// A dedupe key whose task lands in `segment` of `segments`.
pub fn key_in(segment: u32, segments: u32, tag: &str) -> String {
    (0..)
        .map(|i| format!("{tag}-{i}"))
        .find(|k| shardjob_tasks::segment::segment_of(k, segments) == segment)
        .unwrap_or_default()
}

/// What a recording handler does, from the payload: `{"fail": n}` fails attempts up to n;
/// `{"sleep_ms": n}` takes n ms (stopping early when cancelled: interrupted).
pub fn recording_queue(
    tasks: &Tasks,
    queue: &str,
    rec: &Recorder,
    tx: mpsc::UnboundedSender<TaskRun>,
) -> QueueSpec {
    let rec = rec.clone();
    tasks.queue(
        queue,
        task_fn(move |t: TaskContext| {
            let (rec, tx) = (rec.clone(), tx.clone());
            async move {
                let start = Utc::now();
                let _live = Live::enter(&rec, t.id);
                let sleep = t
                    .payload
                    .get("sleep_ms")
                    .and_then(|v| v.as_u64())
                    .unwrap_or(0);
                let cut = if sleep > 0 {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(sleep)) => false,
                        _ = t.cancel.cancelled() => true,
                    }
                } else {
                    false
                };
                let run = TaskRun {
                    id: t.id,
                    instance: t.instance.clone(),
                    attempt: t.attempt,
                    token: t.token,
                    is_recovery: t.is_recovery,
                    start,
                    end: Utc::now(),
                    due_at: t.due_at,
                };
                rec.runs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(run.clone());
                let _ = tx.send(run);
                if cut {
                    return Err(shardjob_agent::JobError::Cancelled);
                }
                let fail = t.payload.get("fail").and_then(|v| v.as_u64()).unwrap_or(0);
                if u64::from(t.attempt) <= fail {
                    return Err(shardjob_agent::JobError::failed(format!(
                        "failing attempt {}",
                        t.attempt
                    )));
                }
                Ok(())
            }
        }),
    )
}

/// An agent `id` running `spec`.
pub async fn agent_with(endpoints: &[String], ns: &str, id: &str, spec: QueueSpec) -> AgentHandle {
    builder(endpoints, ns, id)
        .queue(spec)
        .expect("a valid queue")
        .start()
        .await
        .expect("the agent starts")
}

/// Waits until `n` runs arrived on `rx` matching `want`; returns every run seen.
pub async fn runs_until(
    rx: &mut mpsc::UnboundedReceiver<TaskRun>,
    seen: &mut Vec<TaskRun>,
    n: usize,
    want: impl Fn(&TaskRun) -> bool,
) {
    let wait = async {
        while seen.iter().filter(|r| want(r)).count() < n {
            match rx.recv().await {
                Some(r) => seen.push(r),
                None => return,
            }
        }
    };
    if tokio::time::timeout(PATIENCE, wait).await.is_err() {
        panic!(
            "{} of {n} runs after {PATIENCE:?}: {seen:?}",
            seen.iter().filter(|r| want(r)).count()
        );
    }
}

/// Waits until every task of `ids` has `status`.
pub async fn wait_status(tasks: &Tasks, ids: &[Uuid], status: &str) {
    let wait = async {
        loop {
            let mut all = true;
            for id in ids {
                let s = tasks.get(*id).await.ok().flatten().map(|t| t.task.status);
                if s.as_deref() != Some(status) {
                    all = false;
                    break;
                }
            }
            if all {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(PATIENCE, wait).await.is_err() {
        let mut states = Vec::new();
        for id in ids {
            states.push(tasks.get(*id).await.ok().flatten().map(|t| t.task.status));
        }
        panic!("not all {status} after {PATIENCE:?}: {states:?}");
    }
}

/// A raw connection to `pg`.
pub async fn raw(pg: &PgServer) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&pg.url(), tokio_postgres::NoTls)
        .await
        .expect("a raw connection");
    tokio::spawn(conn);
    client
}

/// One HTTP/1.1 request to `addr` (a fresh connection, `Connection: close`): the status and
/// the body as JSON (`Null` when it is not JSON).
pub async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connecting to the API");
    let body = body.unwrap_or("");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .await
        .expect("writing the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("reading the response");
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    // Bodies may come chunked: take the JSON between the first '{' and the last '}'.
    let json = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        match (rest.find('{'), rest.rfind('}')) {
            (Some(a), Some(b)) if b >= a => &rest[a..=b],
            _ => "",
        }
    } else {
        rest
    };
    (
        status,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

/// What most delayed-task tests start with: etcd, PostgreSQL, the store (migrated), a
/// recorder and the channel its handlers report runs on.
#[derive(Debug)]
pub struct Bed {
    pub etcd: crate::EtcdCluster,
    pub pg: PgServer,
    pub tasks: Tasks,
    pub rec: Recorder,
    pub tx: mpsc::UnboundedSender<TaskRun>,
    pub rx: mpsc::UnboundedReceiver<TaskRun>,
}

impl Bed {
    /// Starts etcd and PostgreSQL and connects the store.
    pub async fn start() -> Self {
        let etcd = crate::EtcdCluster::single().expect("etcd starts");
        let pg = PgServer::start().expect("PostgreSQL starts");
        let tasks = connect(&[&pg]).await;
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            etcd,
            pg,
            tasks,
            rec: Recorder::default(),
            tx,
            rx,
        }
    }
}
