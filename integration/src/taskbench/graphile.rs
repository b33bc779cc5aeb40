//! The graphile_worker 0.14.1 side of `bench-tasks` (feature `graphile`): the same workload on
//! the same server, its workers as subprocesses (`bench-tasks --graphile-worker URL LOG`) with
//! the local queue on and dead-worker recovery at a 2 s threshold (like shardjob's 2 s TTL).
//! Each run is one line `n start_us` in the log; the bench knows every n's due time.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use graphile_worker::{
    IntoTaskHandlerResult, JobSpec, JobSpecBuilder, LocalQueueConfig, TaskHandler, WorkerContext,
    WorkerOptions, WorkerUtils,
};
use serde::{Deserialize, Serialize};

use super::{Line, rss_mib};
use crate::benchkit::percentile;

/// The benchmark's job: its number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchJob {
    pub n: u64,
}

static LOG: OnceLock<Mutex<std::fs::File>> = OnceLock::new();

impl TaskHandler for BenchJob {
    const IDENTIFIER: &'static str = "bench_job";

    async fn run(self, _ctx: WorkerContext) -> impl IntoTaskHandlerResult {
        let us = Utc::now().timestamp_micros();
        if let Some(log) = LOG.get() {
            let line = format!("{} {us}\n", self.n);
            let _ = log
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_all(line.as_bytes());
        }
    }
}

fn options(url: &str, concurrency: usize) -> WorkerOptions {
    WorkerOptions::default()
        .database_url(url)
        .max_pg_conn(20)
        .schema("graphile_worker")
        .concurrency(concurrency)
        .poll_interval(Duration::from_millis(100))
        .local_queue(LocalQueueConfig::default().with_size(1000))
        .heartbeat_interval(Duration::from_secs(1))
        .sweep_interval(Duration::from_secs(1))
        .sweep_threshold(Duration::from_secs(2))
        .define_job::<BenchJob>()
}

/// The worker subprocess: runs until killed.
pub async fn worker_main(url: &str, log: &Path) -> Result<(), String> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| e.to_string())?;
    let _ = LOG.set(Mutex::new(file));
    let worker = options(url, 256).init().await.map_err(|e| e.to_string())?;
    worker.run().await.map_err(|e| e.to_string())
}

/// A worker subprocess (killed on drop).
#[derive(Debug)]
pub struct WorkerProc(Child);

impl Drop for WorkerProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The graphile side of a run.
pub struct Graphile {
    pub url: String,
    pub utils: WorkerUtils,
    pub log: PathBuf,
    pub workers: Vec<WorkerProc>,
    pub pending: u64,
    next_n: u64,
}

impl std::fmt::Debug for Graphile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Graphile")
            .field("workers", &self.workers.len())
            .finish()
    }
}

fn err(e: impl std::fmt::Debug) -> String {
    format!("{e:?}")
}

impl Graphile {
    /// Migrates the schema and makes the submitting utils.
    pub async fn new(url: &str, dir: &Path) -> Result<Self, String> {
        let worker = options(url, 1).init().await.map_err(err)?;
        Ok(Self {
            url: url.to_owned(),
            utils: worker.create_utils(),
            log: dir.join("graphile.log"),
            workers: Vec::new(),
            pending: 0,
            next_n: 0,
        })
    }

    /// Starts a worker subprocess.
    pub fn start_worker(&mut self) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(err)?;
        let child = Command::new(exe)
            .args(["--graphile-worker", &self.url])
            .arg(&self.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(err)?;
        self.workers.push(WorkerProc(child));
        Ok(())
    }

    /// Adds jobs due at `dues` in batches of `batch` (1: one `add_job` each) from `clients`
    /// concurrent submitters; returns (first n, jobs/s).
    pub async fn add(
        &mut self,
        dues: &[DateTime<Utc>],
        batch: usize,
        clients: usize,
    ) -> Result<(u64, f64), String> {
        let first = self.next_n;
        self.next_n += dues.len() as u64;
        let jobs: Vec<(u64, DateTime<Utc>)> = dues
            .iter()
            .enumerate()
            .map(|(i, d)| (first + i as u64, *d))
            .collect();
        let chunks: Vec<Vec<(u64, DateTime<Utc>)>> =
            jobs.chunks(batch.max(1)).map(<[_]>::to_vec).collect();
        let queue = std::sync::Arc::new(tokio::sync::Mutex::new(chunks));
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..clients.max(1) {
            let (utils, queue) = (self.utils.clone(), queue.clone());
            set.spawn(async move {
                loop {
                    let Some(chunk) = queue.lock().await.pop() else {
                        return Ok::<(), String>(());
                    };
                    let specs: Vec<JobSpec> = chunk
                        .iter()
                        .map(|(_, due)| JobSpecBuilder::new().run_at(*due).build())
                        .collect();
                    if chunk.len() == 1 {
                        utils
                            .add_job(BenchJob { n: chunk[0].0 }, specs[0].clone())
                            .await
                            .map_err(err)?;
                    } else {
                        let pairs: Vec<(BenchJob, &JobSpec)> = chunk
                            .iter()
                            .zip(&specs)
                            .map(|((n, _), s)| (BenchJob { n: *n }, s))
                            .collect();
                        utils.add_jobs(&pairs).await.map_err(err)?;
                    }
                }
            });
        }
        while let Some(r) = set.join_next().await {
            r.map_err(err)??;
        }
        Ok((first, dues.len() as f64 / start.elapsed().as_secs_f64()))
    }

    /// The runs logged so far: n → start times (µs).
    fn runs(&self) -> HashMap<u64, Vec<i64>> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut runs: HashMap<u64, Vec<i64>> = HashMap::new();
        for line in text.lines() {
            let mut it = line.split(' ');
            if let (Some(Ok(n)), Some(Ok(us))) = (
                it.next().map(str::parse::<u64>),
                it.next().map(str::parse::<i64>),
            ) {
                runs.entry(n).or_default().push(us);
            }
        }
        runs
    }

    /// Waits until every job `first..first + dues.len()` ran (or `patience` passed) and
    /// measures them.
    pub async fn measure(
        &self,
        case: &str,
        rate: f64,
        first: u64,
        dues: &[DateTime<Utc>],
        patience: Duration,
    ) -> Line {
        let start = Instant::now();
        let n = dues.len() as u64;
        let runs = loop {
            let runs = self.runs();
            let seen = (first..first + n).filter(|k| runs.contains_key(k)).count() as u64;
            if seen == n || start.elapsed() > patience {
                break runs;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let mut late = Vec::new();
        let (mut lost, mut duplicates) = (0u64, 0u64);
        let (mut lo, mut hi) = (i64::MAX, i64::MIN);
        for (i, due) in dues.iter().enumerate() {
            match runs.get(&(first + i as u64)) {
                None => lost += 1,
                Some(starts) => {
                    if starts.len() > 1 {
                        duplicates += 1;
                    }
                    let s = starts.iter().copied().min().unwrap_or_default();
                    lo = lo.min(s);
                    hi = hi.max(s);
                    late.push((s - due.timestamp_micros()) as f64 / 1000.0);
                }
            }
        }
        let span = (hi - lo) as f64 / 1e6;
        Line {
            implementation: "graphile_worker",
            case: case.to_owned(),
            pending: self.pending,
            rate,
            p50_ms: percentile(&late, 50.0),
            p99_ms: percentile(&late, 99.0),
            max_ms: late.iter().copied().fold(0.0, f64::max),
            completed_per_s: if span > 0.0 {
                late.len() as f64 / span
            } else {
                0.0
            },
            lost,
            duplicates,
            rss_mib: self
                .workers
                .iter()
                .map(|w| rss_mib(w.0.id()))
                .fold(0.0, f64::max),
        }
    }
}
