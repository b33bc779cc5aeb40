//! The leader's loop: list, watch, plan, write fenced. All decisions are in [`super::plan`].
//!
//! 1. Read `instances/`, `jobs/`, `disabled/` and `assignments/` at one revision R.
//! 2. Watch the first three from R + 1 (each in its own task, feeding one channel; a compaction
//!    makes a watcher re-list, and the world replaces that prefix).
//! 3. Plan at once, then after every change, debounced; write the plan in txns of at most 128
//!    ops, each guarded by the leader fence. A fence that fails means another leader exists:
//!    return [`RebalanceExit::Deposed`]. Other write errors are retried.

use std::time::Duration;

use etcd_client::{Client, Txn, TxnOp};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::plan::{Plan, plan};
use super::world::World;
use crate::election::Leadership;
use crate::keys::Keys;
use crate::kv::list_prefix;
use crate::watch::{PrefixWatcher, WatchError, WatchEvent};

/// etcd's default `--max-txn-ops`.
pub const MAX_TXN_OPS: usize = 128;

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
}

impl Default for RebalanceOptions {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(10),
            rebalance_delay: Duration::ZERO,
            join_settle: Duration::from_millis(500),
            retry: Duration::from_millis(500),
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
    List(String),
    #[error("watching: {0}")]
    Watch(#[from] WatchError),
    #[error("encoding the assignment of {job}: {cause}")]
    Encode { job: String, cause: String },
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
    reset(&mut world, &keys.instances_prefix(), &instances.kvs, now);
    for prefix in [
        keys.jobs_prefix(),
        keys.disabled_prefix(),
        keys.assignments_prefix(),
    ] {
        let listing = list_prefix(client, &prefix, Some(revision))
            .await
            .map_err(RebalanceError::List)?;
        reset(&mut world, &prefix, &listing.kvs, now);
    }
    // Owners in the stored assignments that are not live now count as departing now.
    for record in world.assignments.values().cloned().collect::<Vec<_>>() {
        for id in record.instances {
            if !world.instances.contains_key(&id) && !world.departed.contains_key(&id) {
                let info = stub_info(&id);
                let departed = super::world::Departed {
                    info,
                    at: now,
                    assumed: true,
                };
                world.departed.insert(id, departed);
            }
        }
    }
    world.mark_all();

    let (tx, mut rx) = mpsc::channel::<(String, Result<WatchEvent, WatchError>)>(1024);
    let mut watchers = JoinSet::new();
    for prefix in [
        keys.instances_prefix(),
        keys.jobs_prefix(),
        keys.disabled_prefix(),
    ] {
        let watcher = PrefixWatcher::from_revision(client, prefix.clone(), revision + 1);
        watchers.spawn(forward(watcher, tx.clone()));
    }
    drop(tx);

    let mut stats = RebalanceStats::default();
    // A cold start (no assignment yet) waits for the instances starting with this one.
    let fresh = world.assignments.is_empty();
    let settle = if fresh {
        options.join_settle
    } else {
        Duration::ZERO
    };
    let mut due = Some(Instant::now() + settle);
    // True while every change since the last plan was a join (so the plan may wait for more).
    let mut joins_only = fresh;
    let mut wake: Option<Instant> = None;
    let exit = loop {
        let deadline = match (due, wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        tokio::select! {
            _ = stop.cancelled() => break RebalanceExit::Stopped,
            msg = rx.recv() => {
                let Some((prefix, event)) = msg else { break RebalanceExit::Stopped };
                let event = event?;
                if matches!(event, WatchEvent::Restarted { .. }) {
                    stats.relists += 1;
                }
                let joined = is_join(&world, keys, &event);
                let now = Instant::now();
                apply(&mut world, &prefix, event, now);
                if world.is_dirty() {
                    let (at, only) = next_plan(due, joins_only, joined, now, options);
                    (due, joins_only) = (Some(at), only);
                }
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                let now = Instant::now();
                if wake.is_some_and(|w| w <= now) {
                    world.mark_all();
                }
                due = None;
                joins_only = false;
                let dirty = world.take_dirty();
                let p = plan(&world, &dirty, now, options.rebalance_delay);
                wake = p.wake_at;
                match now.checked_sub(options.rebalance_delay) {
                    Some(horizon) if !options.rebalance_delay.is_zero() => world.forget_departed_before(horizon),
                    _ => world.departed.clear(),
                }
                if p.is_empty() {
                    continue;
                }
                let span = info_span!("rebalance", jobs = p.writes.len(), deletes = p.deletes.len(), moves = p.moves);
                match write(client, keys, leadership, &p).instrument(span).await {
                    Ok(txns) => {
                        stats.passes += 1;
                        stats.txns += txns;
                        stats.writes += (p.writes.len() + p.deletes.len()) as u64;
                        stats.moves += p.moves as u64;
                        metrics::counter!("shardjob_rebalances_total").increment(1);
                        metrics::counter!("shardjob_shard_moves_total").increment(p.moves as u64);
                        for (job, record) in p.writes {
                            world.assignments.insert(job, record);
                        }
                        for job in p.deletes {
                            world.assignments.remove(&job);
                        }
                    }
                    Err(WriteFailure::Deposed) => break RebalanceExit::Deposed,
                    Err(WriteFailure::Etcd(e)) => {
                        warn!(error = %e, "writing assignments failed; retrying");
                        world.restore_dirty(dirty);
                        due = Some(Instant::now() + options.retry);
                        continue;
                    }
                    Err(WriteFailure::Encode { job, cause }) => {
                        return Err(RebalanceError::Encode { job, cause });
                    }
                }
            }
        }
        if world.is_dirty() && due.is_none() {
            due = Some(Instant::now() + options.debounce);
        }
    };
    watchers.abort_all();
    info!(?exit, ?stats, "rebalancer stopped");
    Ok((exit, stats))
}

/// An instance known only from an assignment (its key was already gone when we started): its
/// handlers and labels are unknown, so it is parked only for the jobs it owned.
fn stub_info(id: &shardjob_sharding::InstanceId) -> crate::model::InstanceInfo {
    crate::model::InstanceInfo {
        id: id.clone(),
        host: String::new(),
        pid: 0,
        version: String::new(),
        labels: Default::default(),
        weight: 1,
        handlers: Default::default(),
        started_at: chrono::DateTime::<chrono::Utc>::UNIX_EPOCH,
    }
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

/// True when `event` registers an instance the world does not know yet.
fn is_join(world: &World, keys: &Keys, event: &WatchEvent) -> bool {
    let WatchEvent::Put(kv) = event else {
        return false;
    };
    match keys.parse(&String::from_utf8_lossy(kv.key())) {
        Some(crate::keys::KeyKind::Instance(id)) => shardjob_sharding::InstanceId::new(id)
            .is_ok_and(|id| !world.instances.contains_key(&id)),
        _ => false,
    }
}

/// When to plan after a change: a join waits up to `join_settle` for more joins (the window
/// starts at the first join and never slides); any other change plans after `debounce`, and
/// never later than a plan already due.
fn next_plan(
    due: Option<Instant>,
    joins_only: bool,
    joined: bool,
    now: Instant,
    options: &RebalanceOptions,
) -> (Instant, bool) {
    match due {
        Some(at) if joined && joins_only => (at, true),
        None if joined => (now + options.join_settle, true),
        _ => {
            let soon = now + options.debounce;
            (due.map_or(soon, |at| at.min(soon)), false)
        }
    }
}

fn reset(world: &mut World, prefix: &str, kvs: &[etcd_client::KeyValue], now: Instant) {
    let entries: Vec<(String, Vec<u8>)> = kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.value().to_vec(),
            )
        })
        .collect();
    world.reset_prefix(prefix, &entries, now);
}

fn apply(world: &mut World, prefix: &str, event: WatchEvent, now: Instant) {
    match event {
        WatchEvent::Restarted { kvs, .. } => reset(world, prefix, &kvs, now),
        WatchEvent::Put(kv) => world.put(&String::from_utf8_lossy(kv.key()), kv.value()),
        WatchEvent::Delete { kv, .. } => world.delete(&String::from_utf8_lossy(kv.key()), now),
    }
}

enum WriteFailure {
    Deposed,
    Etcd(String),
    Encode { job: String, cause: String },
}

/// Writes `plan` in fenced txns of at most [`MAX_TXN_OPS`] ops; returns the number of txns.
async fn write(
    client: &Client,
    keys: &Keys,
    leadership: &Leadership,
    plan: &Plan,
) -> Result<u64, WriteFailure> {
    let mut ops = Vec::with_capacity(plan.writes.len() + plan.deletes.len());
    for (job, record) in &plan.writes {
        let value = serde_json::to_vec(record).map_err(|e| WriteFailure::Encode {
            job: job.clone(),
            cause: e.to_string(),
        })?;
        ops.push(TxnOp::put(keys.assignment(job), value, None));
    }
    for job in &plan.deletes {
        ops.push(TxnOp::delete(keys.assignment(job), None));
    }
    let mut client = client.clone();
    let mut txns = 0;
    for chunk in ops.chunks(MAX_TXN_OPS) {
        let txn = Txn::new()
            .when(vec![leadership.fence()])
            .and_then(chunk.to_vec());
        let resp = timeout(Duration::from_secs(10), client.txn(txn))
            .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_wait_together_and_anything_else_plans_soon() {
        let o = RebalanceOptions::default();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // A first join opens the window; later joins keep it, never extend it.
        let (at, only) = next_plan(None, false, true, t0, &o);
        assert_eq!((at, only), (t0 + o.join_settle, true));
        let (at2, only) = next_plan(Some(at), true, true, t0 + ms(300), &o);
        assert_eq!((at2, only), (at, true));
        // A departure (or job change) during the window plans after the debounce.
        let (at3, only) = next_plan(Some(at), true, false, t0 + ms(100), &o);
        assert_eq!((at3, only), (t0 + ms(100) + o.debounce, false));
        // A join after such a change does not push the plan back.
        let (at4, only) = next_plan(Some(at3), false, true, t0 + ms(105), &o);
        assert_eq!((at4, only), (at3, false));
        // Without a join, the debounce as before.
        assert_eq!(
            next_plan(None, false, false, t0, &o),
            (t0 + o.debounce, false)
        );
    }
}
