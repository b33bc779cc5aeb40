//! The leader's loop: list, watch, plan, write fenced. All decisions are in [`super::plan`]
//! (what to write) and [`super::Rebalancer`] (when).
//!
//! 1. Read `instances/`, `jobs/`, `disabled/`, `done/` and the `assigned/` and `unassigned/`
//!    pages at one revision R (the pages give the stored assignments, [`Stored::load`]).
//! 2. Watch them all from R + 1 (each in its own task, feeding one channel; a compaction makes
//!    a watcher re-list, and the world, or the stored pages, replace that prefix). A page
//!    deleted or changed by hand is rewritten, so damage by hand is repaired.
//! 3. Plan at once, then after every change, debounced; write the pass's pages in txns of at
//!    most 128 ops and [`MAX_TXN_BYTES`], each guarded by the leader fence. A fence that fails
//!    means another leader exists: return [`RebalanceExit::Deposed`]. Other write errors are
//!    retried.

use std::time::Duration;

use etcd_client::{Client, Txn, TxnOp};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::rebalancer::{Observed, Pass, Rebalancer};
use super::stored::Stored;
use super::world::World;
use crate::election::Leadership;
use crate::keys::Keys;
use crate::kv::list_prefix;
use crate::watch::{PrefixWatcher, WatchError, WatchEvent};

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

/// Value bytes per txn: under etcd's default `--max-request-bytes` (1.5 MiB) with room for the
/// keys. A page bigger than this goes alone in its txn.
pub const MAX_TXN_BYTES: usize = 1 << 20;

/// How many of a pass's txns are in flight at once.
const WRITES_IN_FLIGHT: usize = 4;

/// Tuning of the leader loop.
#[derive(Debug, Clone)]
pub struct RebalanceOptions {
    /// How long to gather changes before planning (a burst of joins becomes one pass).
    pub debounce: Duration,
    /// How long a departed owner's shards stay parked for it (0: move at once).
    pub rebalance_delay: Duration,
    /// How long to wait for more joins after an instance joins (and before the first plan of a
    /// cluster without assignments): instances starting together are planned in one pass
    /// instead of one pass, and one round of shard moves, per join. Departures and job changes
    /// never wait for it.
    pub join_settle: Duration,
    /// Retry delay after a failed write.
    pub retry: Duration,
    /// How long a finished one-shot job (every shard done) stays, with its done records, for
    /// people to look at (`shardjob job show`) before the leader deletes all its keys. Counted
    /// from when the current leader saw it finished (a new leader starts counting again).
    pub one_shot_retention: Duration,
}

impl Default for RebalanceOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(10),
            rebalance_delay: Duration::ZERO,
            join_settle: Duration::from_millis(500),
            retry: Duration::from_millis(500),
            one_shot_retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why the loop ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RebalanceExit {
    /// The stop token fired.
    Stopped,
    /// A fenced write failed: this instance no longer leads.
    Deposed,
}

/// What stopped the loop abnormally.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RebalanceError {
    #[error("listing the namespace: {0}")]
    List(crate::etcd_error::EtcdError),
    #[error("watching: {0}")]
    Watch(#[from] WatchError),
}

/// Counts of one loop's work, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RebalanceStats {
    pub passes: u64,
    pub txns: u64,
    pub writes: u64,
    pub moves: u64,
    /// Watches that had to re-list (after a compaction).
    pub relists: u64,
}

/// Runs the rebalancer while `leadership` holds, until `stop` fires or a fence fails.
pub async fn run_leader(
    client: &Client,
    keys: &Keys,
    leadership: &Leadership,
    options: &RebalanceOptions,
    stop: CancellationToken,
) -> Result<(RebalanceExit, RebalanceStats), RebalanceError> {
    let mut world = World::new(keys.clone());
    let now = Instant::now();
    let instances = list_prefix(client, &keys.instances_prefix(), None)
        .await
        .map_err(RebalanceError::List)?;
    let revision = instances.revision;
    world.reset_prefix(&keys.instances_prefix(), &entries(instances.kvs), now);
    for prefix in [keys.jobs_prefix(), keys.disabled_prefix(), keys.done_root()] {
        let listing = list_prefix(client, &prefix, Some(revision))
            .await
            .map_err(RebalanceError::List)?;
        world.reset_prefix(&prefix, &entries(listing.kvs), now);
    }
    let mut pages = Vec::new();
    for prefix in [keys.assigned_prefix(), keys.unassigned_prefix()] {
        let listing = list_prefix(client, &prefix, Some(revision))
            .await
            .map_err(RebalanceError::List)?;
        pages.extend(entries(listing.kvs));
    }
    let loaded = Stored::load(keys, &pages);
    drop(pages);
    world.load_assignments(loaded.records, loaded.problems);
    // Its own instant, after the listings: a cold start waits `join_settle` for joins from
    // here, and listing 10k jobs took ~0.5 s at bench-scale's start. Counted from before the
    // listings, the wait was over when it began: the first plan went to the 3 instances
    // listed while 13 had joined, and moving their shards to the rest doubled the cold start
    // in about half of the runs (8 s against 14-23 s).
    let started = Instant::now();
    let mut rebalancer = Rebalancer::start(world, loaded.stored, options.clone(), started);

    let (tx, mut rx) = mpsc::channel::<(String, Result<WatchEvent, WatchError>)>(1024);
    let mut watchers = JoinSet::new();
    // assigned/ too: a page deleted or changed by hand is rewritten (the leader's own writes
    // come back as puts of what it already holds: no pass).
    for prefix in [
        keys.instances_prefix(),
        keys.jobs_prefix(),
        keys.disabled_prefix(),
        keys.assigned_prefix(),
        keys.unassigned_prefix(),
        keys.done_root(),
    ] {
        let watcher = PrefixWatcher::from_revision(client, prefix.clone(), revision + 1);
        watchers.spawn(forward(watcher, tx.clone()));
    }
    drop(tx);

    let mut stats = RebalanceStats::default();
    let exit = loop {
        let deadline = rebalancer.deadline();
        tokio::select! {
            _ = stop.cancelled() => break RebalanceExit::Stopped,
            msg = rx.recv() => {
                let Some((prefix, event)) = msg else { break RebalanceExit::Stopped };
                let event = event?;
                if matches!(event, WatchEvent::Restarted { .. }) {
                    stats.relists += 1;
                }
                rebalancer.on_event(observed(prefix, event), Instant::now());
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                let Some(pass) = rebalancer.poll(Instant::now()) else { continue };
                let p = &pass.plan;
                let (jobs, deletes, pages) = (p.writes.len(), p.deletes.len(), pass.pages.len());
                let span = info_span!("rebalance", jobs, deletes, moves = p.moves, pages);
                match write(client, keys, leadership, &pass).instrument(span).await {
                    Ok(txns) => {
                        stats.passes += 1;
                        stats.txns += txns;
                        stats.writes += pass.pages.len() as u64;
                        stats.moves += p.moves as u64;
                        metrics::counter!("shardjob_rebalances_total").increment(1);
                        metrics::counter!("shardjob_shard_moves_total").increment(p.moves as u64);
                        rebalancer.written(pass, Instant::now());
                    }
                    Err(WriteFailure::Deposed) => break RebalanceExit::Deposed,
                    Err(WriteFailure::Etcd(e)) => {
                        warn!(error = %e, "writing assignments failed; retrying");
                        rebalancer.write_failed(pass, Instant::now());
                    }
                }
            }
        }
    };
    watchers.abort_all();
    info!(?exit, ?stats, "rebalancer stopped");
    Ok((exit, stats))
}

async fn forward(
    mut watcher: PrefixWatcher,
    tx: mpsc::Sender<(String, Result<WatchEvent, WatchError>)>,
) {
    loop {
        let event = watcher.next().await;
        let fatal = event.is_err();
        if tx.send((watcher.prefix().to_owned(), event)).await.is_err() || fatal {
            return;
        }
    }
}

/// A listing's keys and values, moved out of it (a copy held the listing of every job twice at
/// the leader's start).
fn entries(kvs: Vec<etcd_client::KeyValue>) -> Vec<(String, Vec<u8>)> {
    kvs.into_iter()
        .map(|kv| {
            let (key, value) = kv.into_key_value();
            let key = String::from_utf8(key)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            (key, value)
        })
        .collect()
}

/// A watch event of `prefix` as the rebalancer reads it.
fn observed(prefix: String, event: WatchEvent) -> Observed {
    match event {
        WatchEvent::Restarted { kvs, .. } => Observed::Reset {
            prefix,
            entries: entries(kvs),
        },
        WatchEvent::Put(kv) => Observed::Put {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
        },
        WatchEvent::Delete { kv, .. } => Observed::Delete {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
        },
    }
}

enum WriteFailure {
    Deposed,
    Etcd(String),
}

/// Writes `pass` (its pages, then the keys of its retired jobs) in fenced txns of at most
/// [`MAX_TXN_OPS`] ops and [`MAX_TXN_BYTES`]; returns the number of txns.
async fn write(
    client: &Client,
    keys: &Keys,
    leadership: &Leadership,
    pass: &Pass,
) -> Result<u64, WriteFailure> {
    let mut ops = Chunks::default();
    // A few txns in flight: etcd commits concurrent proposals together, and one at a time left
    // it waiting on each round trip (10k per-job records: 79 txns, 5 s at a cold start of 20
    // agents). Their order does not matter: each key is written once per pass.
    let mut txns = 0;
    let mut in_flight = JoinSet::new();
    loop {
        while in_flight.len() < WRITES_IN_FLIGHT {
            let Some(chunk) = ops.next(pass, keys) else {
                break;
            };
            let txn = Txn::new().when(vec![leadership.fence()]).and_then(chunk);
            let mut client = client.clone();
            in_flight.spawn(async move { timeout(Duration::from_secs(10), client.txn(txn)).await });
        }
        let Some(done) = in_flight.join_next().await else {
            break;
        };
        let resp = done
            .map_err(|e| WriteFailure::Etcd(format!("the write task failed: {e}")))?
            .map_err(|_| WriteFailure::Etcd("no answer within 10s".into()))?
            .map_err(|e| WriteFailure::Etcd(e.to_string()))?;
        if !resp.succeeded() {
            warn!("leader fence failed: another instance leads now");
            return Err(WriteFailure::Deposed);
        }
        txns += 1;
    }
    Ok(txns)
}

/// Where [`write`] is in a pass's ops: the page writes, then the ops of each retired job.
#[derive(Default)]
struct Chunks {
    pages: usize,
    retires: usize,
    /// Ops of a retired job that did not fit in the last chunk.
    spill: std::vec::IntoIter<TxnOp>,
}

impl Chunks {
    /// The next txn's ops (at most [`MAX_TXN_OPS`], and [`MAX_TXN_BYTES`] of values unless one
    /// page alone is bigger), `None` when the pass is written.
    fn next(&mut self, pass: &Pass, keys: &Keys) -> Option<Vec<TxnOp>> {
        let mut ops = Vec::new();
        let mut bytes = 0;
        while ops.len() < MAX_TXN_OPS {
            if let Some(w) = pass.pages.get(self.pages) {
                let size = w.value.as_ref().map_or(0, Vec::len);
                if !ops.is_empty() && size > 0 && bytes + size > MAX_TXN_BYTES {
                    break;
                }
                // A page and its stamp go in one txn: the same mod revision.
                let page_ops = 1 + usize::from(w.holder.is_some());
                if ops.len() + page_ops > MAX_TXN_OPS {
                    break;
                }
                self.pages += 1;
                bytes += size;
                ops.extend(w.ops(keys));
            } else if let Some(op) = self.spill.next() {
                ops.push(op);
            } else if let Some(job) = pass.plan.retire.get(self.retires) {
                self.retires += 1;
                self.spill = crate::ops::delete_job_ops(keys, job).into_iter();
            } else {
                break;
            }
        }
        (!ops.is_empty()).then_some(ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rebalance::{PageWrite, Plan};
    use shardjob_sharding::InstanceId;

    /// A pass of `puts` pages of `size` bytes each, `deletes` page deletes, `retire` jobs.
    fn pass(puts: usize, size: usize, deletes: usize, retire: usize) -> Pass {
        let page = |i: usize, value| PageWrite {
            holder: Some(InstanceId::new(format!("i{i}")).unwrap()),
            page: 0,
            value,
        };
        let plan = Plan {
            writes: vec![],
            deletes: vec![],
            moves: 0,
            wake_at: None,
            retire: (0..retire).map(|i| format!("r{i}")).collect(),
        };
        let pages = (0..puts)
            .map(|i| page(i, Some(vec![b'x'; size])))
            .chain((0..deletes).map(|i| page(puts + i, None)))
            .collect();
        Pass::for_test(plan, pages)
    }

    #[test]
    fn a_pass_is_cut_into_txns_within_the_op_and_byte_limits_each_op_once_in_order() {
        let keys = Keys::new("ns").unwrap();
        let per_retire = crate::ops::delete_job_ops(&keys, "r0").len();
        let big = MAX_TXN_BYTES / 3 + 1;
        for (puts, size, deletes, retire, txns) in [
            (0, 10, 0, 0, 0),
            (1, 10, 0, 0, 1),
            // Each page with its stamp: 64 pages fill a txn.
            (64, 10, 0, 0, 1),
            (65, 10, 0, 0, 2),
            (129, 10, 3, 0, 3),
            (
                300,
                10,
                2,
                40,
                (2 * 302 + 40 * per_retire).div_ceil(MAX_TXN_OPS),
            ),
            // Two of a third of the limit fit, three do not.
            (5, big, 0, 0, 3),
            // One page over the limit goes alone.
            (2, MAX_TXN_BYTES + 1, 1, 0, 2),
        ] {
            let p = pass(puts, size, deletes, retire);
            let mut chunks = Chunks::default();
            let mut seen = Vec::new();
            let mut count = 0;
            while let Some(ops) = chunks.next(&p, &keys) {
                count += 1;
                assert!(!ops.is_empty() && ops.len() <= MAX_TXN_OPS, "{}", ops.len());
                let ops: Vec<String> = ops.iter().map(|op| format!("{op:?}")).collect();
                let puts = ops
                    .iter()
                    .filter(|op| op.contains("Put") && op.contains("/assigned/"))
                    .count();
                let bytes = puts * size;
                assert!(
                    bytes <= MAX_TXN_BYTES || puts == 1,
                    "{bytes} in {puts} puts"
                );
                // Every page's stamp right after it, in the same txn.
                for (i, op) in ops.iter().enumerate() {
                    if op.contains("/assigned/") {
                        let stamp = ops.get(i + 1).expect("a stamp in the same txn");
                        assert!(stamp.contains("/stamps/"), "{stamp}");
                        assert_eq!(op.contains("Put"), stamp.contains("Put"), "{op} {stamp}");
                    }
                }
                seen.extend(ops.iter().map(|op| op.contains("Delete")));
            }
            assert_eq!(count, txns, "{puts} {size} {deletes} {retire}");
            assert_eq!(seen.len(), 2 * (puts + deletes) + retire * per_retire);
            // The puts first, then the deletes (of pages, then of retired jobs).
            assert_eq!(seen.iter().position(|&d| d).unwrap_or(2 * puts), 2 * puts);
        }
    }
}
