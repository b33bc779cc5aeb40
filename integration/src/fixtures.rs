//! Building blocks for tests against real etcd: instances, jobs, a leader, and waiting for an
//! assignment on a watch (never by sleeping).

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, PutOptions};
use shardjob_coordinator::election::{Election, Leadership};
use shardjob_coordinator::keys::Keys;
use shardjob_coordinator::model::{AssignmentRecord, InstanceInfo};
use shardjob_coordinator::rebalance::{
    RebalanceError, RebalanceExit, RebalanceOptions, RebalanceStats, run_leader,
};
use shardjob_coordinator::session::Session;
use shardjob_coordinator::watch::{PrefixWatcher, WatchEvent};
use shardjob_sharding::InstanceId;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest any fixture waits for etcd to reach a state before the test fails (a hang guard,
/// not a performance assertion).
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Registers instance `id` (with `handlers` and `labels`) under a new session of `ttl`.
pub async fn register(
    client: &Client,
    keys: &Keys,
    id: &str,
    handlers: &[&str],
    labels: &[(&str, &str)],
    ttl: Duration,
) -> Session {
    let session = Session::grant(client, ttl).await.expect("grant a lease");
    let info = InstanceInfo {
        id: InstanceId::new(id).expect("valid id"),
        host: "test".into(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        weight: 1,
        handlers: handlers.iter().map(|h| h.to_string()).collect(),
        started_at: chrono::Utc::now(),
        leaving: false,
        liveness: None,
    };
    let value = serde_json::to_vec(&info).expect("encode instance");
    client
        .clone()
        .put(
            keys.instance(id),
            value,
            Some(PutOptions::new().with_lease(session.lease())),
        )
        .await
        .expect("put instance key");
    session
}

/// Puts a job config given as JSON text.
pub async fn put_job(client: &Client, keys: &Keys, job: &str, json: &str) {
    client
        .clone()
        .put(keys.job(job), json, None)
        .await
        .expect("put job");
}

/// A leader running the rebalancer in a task.
pub struct LeaderTask {
    pub leadership: Leadership,
    pub stop: CancellationToken,
    pub task: JoinHandle<Result<(RebalanceExit, RebalanceStats), RebalanceError>>,
    pub session: Session,
}

impl std::fmt::Debug for LeaderTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderTask")
            .field("leadership", &self.leadership)
            .finish_non_exhaustive()
    }
}

impl LeaderTask {
    /// Stops the loop and returns how it ended.
    pub async fn stop(self) -> (RebalanceExit, RebalanceStats) {
        self.stop.cancel();
        self.task
            .await
            .expect("rebalancer task panicked")
            .expect("rebalancer failed")
    }
}

/// Campaigns as `id` with a session of `ttl` and runs the rebalancer once elected.
pub async fn start_leader(
    client: &Client,
    keys: &Keys,
    id: &str,
    ttl: Duration,
    options: RebalanceOptions,
) -> LeaderTask {
    let session = Session::grant(client, ttl).await.expect("grant a lease");
    let leadership = Election::new(client, keys)
        .campaign(&session.handle(), id)
        .await
        .expect("elected");
    let stop = CancellationToken::new();
    let task = {
        let (client, keys, leadership, stop) = (
            client.clone(),
            keys.clone(),
            leadership.clone(),
            stop.clone(),
        );
        tokio::spawn(async move { run_leader(&client, &keys, &leadership, &options, stop).await })
    };
    LeaderTask {
        leadership,
        stop,
        task,
        session,
    }
}

/// Waits, on a watch, until the assignment of `job` satisfies `pred`; returns it.
pub async fn wait_assignment(
    client: &Client,
    keys: &Keys,
    job: &str,
    mut pred: impl FnMut(&AssignmentRecord) -> bool,
) -> AssignmentRecord {
    let key = keys.assignment(job);
    let mut watcher = PrefixWatcher::new(client, key.clone());
    let found = tokio::time::timeout(PATIENCE, async {
        loop {
            let candidates: Vec<Vec<u8>> = match watcher.next().await.expect("watch assignments") {
                WatchEvent::Restarted { kvs, .. } => kvs
                    .iter()
                    .filter(|kv| kv.key() == key.as_bytes())
                    .map(|kv| kv.value().to_vec())
                    .collect(),
                WatchEvent::Put(kv) if kv.key() == key.as_bytes() => vec![kv.value().to_vec()],
                _ => vec![],
            };
            for value in candidates {
                let record: AssignmentRecord =
                    serde_json::from_slice(&value).expect("assignment JSON");
                if pred(&record) {
                    return record;
                }
            }
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("assignment of {job} did not reach the expected state"))
}

/// Owner ids per shard of a record (`"-"` for unassigned), for readable assertions.
pub fn owners(record: &AssignmentRecord) -> Vec<String> {
    (0..record.owners.len() as u32)
        .map(|s| {
            record
                .owner(s)
                .map_or_else(|| "-".to_owned(), |i| i.to_string())
        })
        .collect()
}
