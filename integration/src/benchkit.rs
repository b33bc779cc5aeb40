//! Shared pieces of the process benchmarks: a namespace of `quickstart` agent processes, waiting
//! for convergence, watching owner keys, reading the execution log, and percentiles.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shardjob_agent::execlog::ExecRecord;
use shardjob_coordinator::connect::{ConnectConfig, connect};
use shardjob_coordinator::keys::{KeyKind, Keys};
use shardjob_coordinator::model::Owner;
use shardjob_coordinator::view::ClusterView;
use shardjob_coordinator::watch::{PrefixWatcher, WatchEvent};
use tokio::time::{Instant, sleep};

use crate::EtcdCluster;
use crate::campaign::AgentProc;

/// The job every benchmark agent runs.
pub const JOB: &str = "bench";
/// The log target and message of a liveness stream attaching (see `SHARDJOB_LOG`).
pub const ATTACH_TARGET: &str = "shardjob_coordinator::liveness::client";
/// What an agent logs when its liveness stream attaches.
pub const ATTACHED: &str = "liveness stream attached";

/// `quickstart` agents sharing one job in one namespace.
pub struct Fleet {
    pub agents: Vec<AgentProc>,
    pub keys: Keys,
    pub client: etcd_client::Client,
    pub exec_log: PathBuf,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("agents", &self.agents.len())
            .finish_non_exhaustive()
    }
}

/// The shape of a [`Fleet`].
#[derive(Debug, Clone, Copy)]
pub struct FleetSpec {
    /// Agents.
    pub n: usize,
    /// Shards of the one job (firing every second).
    pub shards: u32,
    pub ttl: Duration,
    /// The liveness stream on (`SHARDJOB_LIVENESS=127.0.0.1:0`).
    pub stream: bool,
}

impl Fleet {
    /// Starts the agents of `spec` in namespace `ns`.
    pub async fn start(
        etcd: &EtcdCluster,
        bin: &Path,
        dir: &Path,
        ns: &str,
        spec: FleetSpec,
    ) -> Result<Self, String> {
        let FleetSpec {
            n,
            shards,
            ttl,
            stream,
        } = spec;
        let exec_log = dir.join(format!("{ns}.log"));
        let mut envs = vec![
            ("SHARDJOB_ENDPOINTS".to_owned(), etcd.endpoints().join(",")),
            ("SHARDJOB_NAMESPACE".to_owned(), ns.to_owned()),
            ("SHARDJOB_TTL".to_owned(), ttl.as_secs().to_string()),
            (
                "SHARDJOB_EXEC_LOG".to_owned(),
                exec_log.display().to_string(),
            ),
            ("SHARDJOB_SHARDS".to_owned(), shards.to_string()),
            ("SHARDJOB_JOB".to_owned(), JOB.to_owned()),
        ];
        if stream {
            envs.push(("SHARDJOB_LIVENESS".to_owned(), "127.0.0.1:0".to_owned()));
            // Attachments are logged at info: the bench waits for them.
            envs.push((
                "SHARDJOB_LOG".to_owned(),
                format!("warn,{ATTACH_TARGET}=info"),
            ));
        }
        let mut agents = Vec::new();
        for i in 0..n {
            let mut a = AgentProc::new(&format!("{ns}-{i}"), bin, envs.clone(), dir);
            a.start()?;
            agents.push(a);
        }
        let client = connect(&ConnectConfig {
            endpoints: etcd.endpoints(),
            ..ConnectConfig::default()
        })
        .await
        .map_err(|e| e.to_string())?;
        let keys = Keys::new(ns).map_err(|e| e.to_string())?;
        Ok(Self {
            agents,
            keys,
            client,
            exec_log,
        })
    }

    /// Waits until `instances` agents are registered and the job is converged (polls: the
    /// benchmark driver has no better event for "everything settled").
    pub async fn converged(&self, instances: usize) -> Result<ClusterView, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(v) = ClusterView::load(&self.client, &self.keys).await {
                let ok = v
                    .jobs
                    .get(JOB)
                    .is_some_and(|j| j.converged() && j.assigned() > 0);
                if ok && v.instances.len() == instances {
                    return Ok(v);
                }
            }
            sleep(Duration::from_millis(100)).await;
        }
        Err("the fleet did not converge within 60 s".into())
    }

    /// A watcher of the job's owner keys from now on.
    pub fn owner_watch(&self) -> PrefixWatcher {
        PrefixWatcher::new(&self.client, self.keys.owners_prefix(JOB))
    }

    /// Shard → owning instance, from a view.
    pub fn owners(view: &ClusterView) -> BTreeMap<u32, String> {
        view.jobs
            .get(JOB)
            .map(|j| {
                j.owners
                    .iter()
                    .map(|(s, o)| (*s, o.owner.instance.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The next owner-key event: `(shard, Some(instance))` for a put, `(shard, None)` for a delete.
    pub async fn next_owner_event(
        &self,
        watcher: &mut PrefixWatcher,
    ) -> Result<Vec<(u32, Option<String>)>, String> {
        let ev = watcher.next().await.map_err(|e| e.to_string())?;
        let parse = |key: &[u8]| match self.keys.parse(&String::from_utf8_lossy(key)) {
            Some(KeyKind::Owner { shard, .. }) => Some(shard),
            _ => None,
        };
        Ok(match ev {
            WatchEvent::Restarted { kvs, .. } => kvs
                .iter()
                .filter_map(|kv| {
                    let o: Owner = serde_json::from_slice(kv.value()).ok()?;
                    Some((parse(kv.key())?, Some(o.instance.to_string())))
                })
                .collect(),
            WatchEvent::Put(kv) => {
                let o: Option<Owner> = serde_json::from_slice(kv.value()).ok();
                parse(kv.key())
                    .map(|s| (s, o.map(|o| o.instance.to_string())))
                    .into_iter()
                    .collect()
            }
            WatchEvent::Delete { kv, .. } => {
                parse(kv.key()).map(|s| (s, None)).into_iter().collect()
            }
        })
    }

    /// Every complete line of the execution log so far.
    pub fn records(&self) -> Vec<ExecRecord> {
        std::fs::read_to_string(&self.exec_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| ExecRecord::from_json(l).ok())
            .collect()
    }
}

/// A one-member etcd for a benchmark, a client of it and the keys of namespace `ns`.
pub async fn single_etcd(ns: &str) -> Result<(EtcdCluster, etcd_client::Client, Keys), String> {
    let etcd = tokio::task::block_in_place(EtcdCluster::single).map_err(|e| e.to_string())?;
    let client = connect(&ConnectConfig {
        endpoints: etcd.endpoints(),
        ..ConnectConfig::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    let keys = Keys::new(ns).map_err(|e| e.to_string())?;
    Ok((etcd, client, keys))
}

/// Writes job configs in transactions of 128 puts, 8 transactions in flight: the fast way to
/// create thousands of jobs (one put per job, no read-compare; the namespace must be fresh).
pub async fn put_jobs(
    client: &etcd_client::Client,
    keys: &Keys,
    jobs: impl IntoIterator<Item = (String, shardjob_coordinator::model::JobConfig)>,
) -> Result<(), String> {
    use etcd_client::{Txn, TxnOp};
    let ops: Vec<TxnOp> = jobs
        .into_iter()
        .map(|(name, cfg)| {
            serde_json::to_vec(&cfg)
                .map(|v| TxnOp::put(keys.job(&name), v, None))
                .map_err(|e| format!("encoding job {name}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let mut inflight = tokio::task::JoinSet::new();
    for batch in ops.chunks(128) {
        if inflight.len() >= 8 {
            join_one(&mut inflight).await?;
        }
        let (mut c, txn) = (client.clone(), Txn::new().and_then(batch.to_vec()));
        inflight.spawn(async move { c.txn(txn).await.map(|_| ()) });
    }
    while !inflight.is_empty() {
        join_one(&mut inflight).await?;
    }
    Ok(())
}

async fn join_one(
    set: &mut tokio::task::JoinSet<Result<(), etcd_client::Error>>,
) -> Result<(), String> {
    match set.join_next().await {
        Some(Ok(Ok(()))) | None => Ok(()),
        Some(Ok(Err(e))) => Err(format!("writing jobs: {e}")),
        Some(Err(e)) => Err(format!("writing jobs: {e}")),
    }
}

/// The `main` of a process benchmark: runs `fut` on a 2-thread runtime, prints its summary lines,
/// or its error (prefixed by `name`) with a failing exit code.
pub fn run_main(
    name: &str,
    fut: impl Future<Output = Result<Vec<String>, String>>,
) -> std::process::ExitCode {
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(fut));
    match result {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{name}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The `p`-th percentile (0..=100) of `values` in seconds (nearest rank), 0 when empty.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    v[rank.min(v.len()) - 1]
}

/// The `quickstart` binary next to the running benchmark (same profile), or an explicit path.
pub fn agent_bin(explicit: Option<PathBuf>) -> Result<PathBuf, String> {
    let bin = explicit.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("quickstart")))
            .unwrap_or_else(|| PathBuf::from("quickstart"))
    });
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: build it with `cargo build --release -p shardjob-examples --bin quickstart` or pass --agent-bin",
            bin.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[3.0, 1.0, 2.0], 50.0), 2.0);
        assert_eq!(percentile(&[], 99.0), 0.0);
    }
}
