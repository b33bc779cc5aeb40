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
use shardjob_coordinator::watch::PrefixWatcher;
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

/// Waits until the assignment of `job`, as the `assigned/` pages say it, satisfies `pred`;
/// returns it.
pub async fn wait_assignment(
    client: &Client,
    keys: &Keys,
    job: &str,
    mut pred: impl FnMut(&AssignmentRecord) -> bool,
) -> AssignmentRecord {
    let records = wait_records(client, keys, |records| {
        records.get(job).is_some_and(&mut pred)
    });
    match tokio::time::timeout(PATIENCE, records).await {
        Ok(mut records) => records.remove(job).expect("the record pred accepted"),
        Err(_) => panic!("assignment of {job} did not reach the expected state"),
    }
}

/// Waits until no `assigned/` page lists `job` any more (the leader's pass after its delete).
pub async fn wait_unassigned(client: &Client, keys: &Keys, job: &str) {
    let gone = wait_records(client, keys, |records| !records.contains_key(job));
    if tokio::time::timeout(PATIENCE, gone).await.is_err() {
        panic!("{job} is still on the assigned pages");
    }
}

/// Waits until the per-job records the `assigned/` pages describe
/// ([`shardjob_coordinator::model::records_of`]) satisfy `pred`; returns them. The pages are
/// read whole at one revision after every change a watch shows: a pass writes several pages
/// (in one txn or a few), and one page alone is half of a change.
async fn wait_records(
    client: &Client,
    keys: &Keys,
    mut pred: impl FnMut(&BTreeMap<String, AssignmentRecord>) -> bool,
) -> BTreeMap<String, AssignmentRecord> {
    use shardjob_coordinator::keys::KeyKind;
    use shardjob_coordinator::kv::list_prefix;
    use shardjob_coordinator::model::{decode_page, records_of};
    let mut assigned = PrefixWatcher::new(client, keys.assigned_prefix());
    let mut unassigned = PrefixWatcher::new(client, keys.unassigned_prefix());
    loop {
        let mut pages: Vec<(Option<InstanceId>, _)> = Vec::new();
        for prefix in [keys.assigned_prefix(), keys.unassigned_prefix()] {
            let listing = list_prefix(client, &prefix, None)
                .await
                .expect("list the assigned pages");
            pages.extend(listing.kvs.iter().filter_map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let holder = match keys.parse(&key)? {
                    KeyKind::Assigned { instance, .. } => Some(InstanceId::new(instance).ok()?),
                    KeyKind::Unassigned { .. } => None,
                    _ => return None,
                };
                // Garbage a test wrote is skipped, as the leader and agents skip it.
                Some((holder, decode_page(&key, kv.value()).ok()?))
            }));
        }
        let records = records_of(pages.iter().map(|(i, p)| (i.as_ref(), p)));
        if pred(&records) {
            return records;
        }
        tokio::select! {
            ev = assigned.next() => ev.expect("watch the assigned pages"),
            ev = unassigned.next() => ev.expect("watch the unassigned pages"),
        };
    }
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
