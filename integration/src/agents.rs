//! Helpers for tests with in-process agents: a recording handler, waiting for ownership on the
//! agents' status watches, and collecting executions.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use shardjob_agent::{AgentBuilder, AgentHandle, AgentStatus, Job, JobError, ShardContext, job_fn};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

use crate::fixtures::PATIENCE;

/// One execution as the handler saw it (sent when the run starts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    pub job: String,
    pub instance: String,
    pub shard: u32,
    pub fire: DateTime<Utc>,
    pub token: i64,
    pub misfire: bool,
    pub failover: bool,
    pub job_param: String,
}

/// Makes the runs of one instance at one fire slow: `(instance, fire, how long)`.
pub type Slow = Arc<Mutex<Option<(String, DateTime<Utc>, Duration)>>>;

/// A handler that reports every run on `ran` (and sleeps when `slow` says so).
pub fn recorder(instance: &str, ran: mpsc::UnboundedSender<Ran>, slow: Slow) -> impl Job {
    let instance = instance.to_owned();
    job_fn(move |ctx: ShardContext| {
        let (ran, instance) = (ran.clone(), instance.clone());
        let pause = slow
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .filter(|(i, f, _)| *i == instance && *f == ctx.fire_time)
            .map(|(_, _, d)| *d);
        async move {
            let _ = ran.send(Ran {
                job: ctx.job.clone(),
                instance,
                shard: ctx.shard,
                fire: ctx.fire_time,
                token: ctx.token,
                misfire: ctx.is_misfire,
                failover: ctx.is_failover,
                job_param: ctx.job_param.clone(),
            });
            if let Some(d) = pause {
                tokio::select! {
                    _ = tokio::time::sleep(d) => {}
                    _ = ctx.cancel.cancelled() => return Err(JobError::Cancelled),
                }
            }
            Ok(())
        }
    })
}

/// A builder for `id` in namespace `ns` with a 2 s lease.
pub fn builder(endpoints: &[String], ns: &str, id: &str) -> AgentBuilder {
    shardjob_agent::Agent::builder()
        .endpoints(endpoints.to_vec())
        .namespace(ns)
        .instance_id(id)
        .ttl(Duration::from_secs(2))
}

/// Waits until the agents together own exactly `shards` of `job`, each once, and `pred`
/// accepts the split (instance → shards).
pub async fn wait_owned(
    statuses: &[watch::Receiver<AgentStatus>],
    job: &str,
    shards: u32,
    pred: impl Fn(&BTreeMap<String, Vec<u32>>) -> bool,
) -> BTreeMap<String, Vec<u32>> {
    let by_instance = |now: &[AgentStatus]| -> BTreeMap<String, Vec<u32>> {
        now.iter()
            .map(|s| {
                (
                    s.instance.clone(),
                    s.owned.get(job).cloned().unwrap_or_default(),
                )
            })
            .collect()
    };
    let found = wait_status(statuses, "shard ownership", |now| {
        let by_instance = by_instance(now);
        let all: Vec<u32> = by_instance.values().flatten().copied().collect();
        let distinct: BTreeSet<u32> = all.iter().copied().collect();
        all.len() == shards as usize && distinct.len() == shards as usize && pred(&by_instance)
    })
    .await;
    by_instance(&found)
}

/// Waits (up to [`PATIENCE`]) until `pred` holds for the agents' statuses together, and
/// returns them as they were then; panics naming `what` otherwise.
pub async fn wait_status(
    statuses: &[watch::Receiver<AgentStatus>],
    what: &str,
    pred: impl Fn(&[AgentStatus]) -> bool,
) -> Vec<AgentStatus> {
    let mut statuses = statuses.to_vec();
    timeout(PATIENCE, async {
        loop {
            let now: Vec<AgentStatus> = statuses
                .iter_mut()
                .map(|s| s.borrow_and_update().clone())
                .collect();
            if pred(&now) {
                return now;
            }
            let changes = statuses.iter_mut().map(|s| Box::pin(s.changed()));
            first_of(changes).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} never reached the expected state"))
}

/// Resolves when the first of `futs` does.
async fn first_of<F: Future + Unpin>(futs: impl Iterator<Item = F>) {
    let mut futs: Vec<F> = futs.collect();
    std::future::poll_fn(move |cx| {
        for f in futs.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Receives runs into `runs` until `done(runs)` holds.
pub async fn drain_until(
    rx: &mut mpsc::UnboundedReceiver<Ran>,
    runs: &mut Vec<Ran>,
    done: impl Fn(&[Ran]) -> bool,
) {
    timeout(PATIENCE, async {
        while !done(runs) {
            match rx.recv().await {
                Some(r) => runs.push(r),
                None => panic!("every agent's handler is gone"),
            }
        }
    })
    .await
    .expect("the expected runs did not arrive");
}

/// Shards that ran per fire.
pub fn shards_per_fire(runs: &[Ran]) -> BTreeMap<DateTime<Utc>, BTreeSet<u32>> {
    let mut per_fire: BTreeMap<DateTime<Utc>, BTreeSet<u32>> = BTreeMap::new();
    for r in runs {
        per_fire.entry(r.fire).or_default().insert(r.shard);
    }
    per_fire
}

/// Asserts every (fire, shard) ran at most once and tokens never go down in fire order.
pub fn assert_no_double_runs_and_rising_tokens(runs: &[Ran]) {
    let mut per: BTreeMap<(DateTime<Utc>, u32), Vec<&Ran>> = BTreeMap::new();
    for r in runs {
        per.entry((r.fire, r.shard)).or_default().push(r);
    }
    for ((fire, shard), rs) in &per {
        assert_eq!(
            rs.len(),
            1,
            "fire {fire} of shard {shard} ran more than once: {rs:?}"
        );
    }
    let mut last_token: BTreeMap<u32, i64> = BTreeMap::new();
    for ((_, shard), rs) in &per {
        let t = last_token.entry(*shard).or_insert(0);
        assert!(
            rs[0].token >= *t,
            "token of shard {shard} went down: {rs:?}"
        );
        *t = rs[0].token;
    }
}

/// Shuts every agent down gracefully.
pub async fn shutdown_all(agents: impl IntoIterator<Item = AgentHandle>) {
    for a in agents {
        a.shutdown().await.expect("graceful shutdown");
    }
}
