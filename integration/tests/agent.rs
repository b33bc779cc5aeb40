//! In-process agents against real etcd.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use shardjob_agent::{Agent, AgentHandle, AgentStatus, JobSpec, ShardContext, job_fn};
use shardjob_integration::EtcdCluster;
use shardjob_integration::fixtures::PATIENCE;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

/// One execution as a handler saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ran {
    instance: String,
    shard: u32,
    fire: DateTime<Utc>,
    token: i64,
    misfire: bool,
}

/// Makes one (instance, fire) run slowly, to hold an execution across a later fire.
type Slow = std::sync::Arc<std::sync::Mutex<Option<(String, DateTime<Utc>)>>>;

async fn start(
    endpoints: &[String],
    ns: &str,
    id: &str,
    spec: JobSpec,
    ran: mpsc::UnboundedSender<Ran>,
) -> AgentHandle {
    start_with(endpoints, ns, id, spec, ran, Slow::default()).await
}

async fn start_with(
    endpoints: &[String],
    ns: &str,
    id: &str,
    spec: JobSpec,
    ran: mpsc::UnboundedSender<Ran>,
    slow: Slow,
) -> AgentHandle {
    let instance = id.to_owned();
    Agent::builder()
        .endpoints(endpoints.to_vec())
        .namespace(ns)
        .instance_id(id)
        .ttl(Duration::from_secs(2))
        .job(
            spec,
            job_fn(move |ctx: ShardContext| {
                let (ran, instance) = (ran.clone(), instance.clone());
                let is_slow =
                    slow.lock().unwrap().as_ref() == Some(&(instance.clone(), ctx.fire_time));
                async move {
                    let _ = ran.send(Ran {
                        instance,
                        shard: ctx.shard,
                        fire: ctx.fire_time,
                        token: ctx.token,
                        misfire: ctx.is_misfire,
                    });
                    if is_slow {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    Ok(())
                }
            }),
        )
        .start()
        .await
        .unwrap()
}

/// Waits until the agents' statuses together own exactly `shards` of `job`, each once, and
/// `pred` accepts the split.
async fn wait_owned(
    statuses: &[watch::Receiver<AgentStatus>],
    job: &str,
    shards: u32,
    pred: impl Fn(&BTreeMap<String, Vec<u32>>) -> bool,
) -> BTreeMap<String, Vec<u32>> {
    let mut statuses = statuses.to_vec();
    timeout(PATIENCE, async {
        loop {
            let by_instance: BTreeMap<String, Vec<u32>> = statuses
                .iter()
                .map(|s| {
                    let s = s.borrow();
                    (
                        s.instance.clone(),
                        s.owned.get(job).cloned().unwrap_or_default(),
                    )
                })
                .collect();
            let all: Vec<u32> = by_instance.values().flatten().copied().collect();
            let distinct: BTreeSet<u32> = all.iter().copied().collect();
            if all.len() == shards as usize
                && distinct.len() == shards as usize
                && pred(&by_instance)
            {
                return by_instance;
            }
            // Wake on any agent's next status change.
            let changes = statuses.iter_mut().map(|s| Box::pin(s.changed()));
            let _ = futures_select_any(changes).await;
        }
    })
    .await
    .expect("shards never converged")
}

/// Resolves when the first of `futs` does.
async fn futures_select_any<F: std::future::Future + Unpin>(futs: impl Iterator<Item = F>) {
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

/// Collects executions until every shard of `fires` consecutive fires after `after` ran.
async fn collect_fires(
    rx: &mut mpsc::UnboundedReceiver<Ran>,
    after: DateTime<Utc>,
    shards: u32,
    fires: usize,
) -> Vec<Ran> {
    let mut seen: Vec<Ran> = Vec::new();
    timeout(PATIENCE, async {
        loop {
            let r = rx.recv().await.unwrap();
            if r.fire <= after {
                continue;
            }
            seen.push(r);
            let mut per_fire: BTreeMap<DateTime<Utc>, BTreeSet<u32>> = BTreeMap::new();
            for r in &seen {
                per_fire.entry(r.fire).or_default().insert(r.shard);
            }
            let complete = per_fire
                .values()
                .take(fires)
                .filter(|s| s.len() == shards as usize)
                .count();
            if complete == fires {
                let cut: Vec<DateTime<Utc>> = per_fire.keys().take(fires).copied().collect();
                return seen.into_iter().filter(|r| cut.contains(&r.fire)).collect();
            }
        }
    })
    .await
    .expect("fires did not complete")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_share_eight_shards_and_each_fire_runs_every_shard_once() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = || {
        JobSpec::every("j", Duration::from_secs(1))
            .unwrap()
            .shards(8)
    };
    let mut agents = Vec::new();
    for id in ["a", "b", "c"] {
        agents.push(start(&endpoints, "share", id, spec(), tx.clone()).await);
    }
    let statuses: Vec<_> = agents.iter().map(AgentHandle::status).collect();
    let balanced = |o: &BTreeMap<String, Vec<u32>>| o.values().all(|s| (2..=3).contains(&s.len()));
    let owned = wait_owned(&statuses, "j", 8, balanced).await;

    let runs = collect_fires(&mut rx, Utc::now(), 8, 3).await;
    let mut per: BTreeMap<(DateTime<Utc>, u32), Vec<&Ran>> = BTreeMap::new();
    for r in &runs {
        per.entry((r.fire, r.shard)).or_default().push(r);
    }
    assert_eq!(per.len(), 3 * 8);
    for ((fire, shard), rs) in &per {
        assert_eq!(rs.len(), 1, "fire {fire} shard {shard} ran {rs:?}");
        assert!(
            owned[&rs[0].instance].contains(shard),
            "{shard} ran on a non-owner: {rs:?}"
        );
    }
    for a in agents {
        a.shutdown().await.unwrap();
    }
}

/// Every (fire, shard) ran at most once, and a shard's tokens never go down in fire order.
fn assert_no_double_runs_and_rising_tokens(runs: &[Ran]) {
    let mut per: BTreeMap<(DateTime<Utc>, u32), Vec<&Ran>> = BTreeMap::new();
    for r in runs {
        per.entry((r.fire, r.shard)).or_default().push(r);
    }
    for ((fire, shard), rs) in &per {
        assert_eq!(
            rs.len(),
            1,
            "fire {fire} of shard {shard} ran twice: {rs:?}"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_agents_shards_move_after_its_lease_and_never_run_twice() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = || {
        JobSpec::every("j", Duration::from_secs(1))
            .unwrap()
            .shards(6)
    };
    let mut agents = BTreeMap::new();
    for id in ["a", "b", "c"] {
        agents.insert(id, start(&endpoints, "crash", id, spec(), tx.clone()).await);
    }
    let statuses: Vec<_> = agents.values().map(AgentHandle::status).collect();
    let balanced = |o: &BTreeMap<String, Vec<u32>>| o.values().all(|s| s.len() == 2);
    let before = wait_owned(&statuses, "j", 6, balanced).await;

    let crashed_at = tokio::time::Instant::now();
    let crash_utc = Utc::now();
    agents.remove("a").unwrap().abort().await;
    let survivors: Vec<_> = agents.values().map(AgentHandle::status).collect();
    let after = wait_owned(&survivors, "j", 6, |o| o.values().all(|s| s.len() == 3)).await;
    let took = crashed_at.elapsed();
    eprintln!("ownership of the crashed agent's shards moved after {took:?} (TTL 2 s)");
    // Not before its lease could have expired: the old owner's keys had to vanish first.
    assert!(
        took >= Duration::from_millis(1500),
        "moved after only {took:?}"
    );
    let moved: Vec<u32> = before["a"].clone();
    assert!(
        moved
            .iter()
            .all(|s| !after.values().all(|v| !v.contains(s)))
    );

    // Every shard runs on the survivors for two full fires, and nothing ran twice overall.
    let mut runs = Vec::new();
    while let Ok(r) = rx.try_recv() {
        runs.push(r);
    }
    let later = collect_fires(&mut rx, Utc::now(), 6, 2).await;
    assert!(later.iter().all(|r| r.instance != "a"));
    assert!(
        runs.iter()
            .filter(|r| r.instance == "a")
            .all(|r| r.fire <= crash_utc + chrono::Duration::seconds(1))
    );
    runs.extend(later);
    assert_no_double_runs_and_rising_tokens(&runs);
    for a in agents.into_values() {
        a.shutdown().await.unwrap();
    }
}

/// Receives runs into `runs` until `done(runs)` holds.
async fn drain_until(
    rx: &mut mpsc::UnboundedReceiver<Ran>,
    runs: &mut Vec<Ran>,
    done: impl Fn(&[Ran]) -> bool,
) {
    timeout(PATIENCE, async {
        while !done(runs) {
            runs.push(rx.recv().await.unwrap());
        }
    })
    .await
    .expect("the expected runs did not arrive");
}

/// Shards that ran per fire.
fn shards_per_fire(runs: &[Ran]) -> BTreeMap<DateTime<Utc>, BTreeSet<u32>> {
    let mut per_fire: BTreeMap<DateTime<Utc>, BTreeSet<u32>> = BTreeMap::new();
    for r in runs {
        per_fire.entry(r.fire).or_default().insert(r.shard);
    }
    per_fire
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_hands_off_without_a_missed_fire() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let slow = Slow::default();
    let spec = || {
        JobSpec::every("j", Duration::from_secs(1))
            .unwrap()
            .shards(6)
    };
    let mut agents = BTreeMap::new();
    for id in ["a", "b", "c"] {
        agents.insert(
            id,
            start_with(&endpoints, "graceful", id, spec(), tx.clone(), slow.clone()).await,
        );
    }
    let statuses: Vec<_> = agents.values().map(AgentHandle::status).collect();
    wait_owned(&statuses, "j", 6, |o| o.values().all(|s| s.len() == 2)).await;

    // b's runs of fire T take 1.5 s. b is shut down while they run: it stops firing at once but
    // may release only when they end, after fire T+1. No one runs T+1 on time; the new owners
    // must catch it up from b's cursor, once.
    let now = Utc::now();
    let t = DateTime::<Utc>::from_timestamp(now.timestamp() + 2, 0).unwrap();
    *slow.lock().unwrap() = Some(("b".to_owned(), t));
    let mut runs = Vec::new();
    drain_until(&mut rx, &mut runs, |runs| {
        runs.iter().any(|r| r.instance == "b" && r.fire == t)
    })
    .await;

    agents.remove("b").unwrap().shutdown().await.unwrap();
    let survivors: Vec<_> = agents.values().map(AgentHandle::status).collect();
    wait_owned(&survivors, "j", 6, |o| o.values().all(|s| s.len() == 3)).await;

    let last = t + chrono::Duration::seconds(3);
    drain_until(&mut rx, &mut runs, |runs| {
        shards_per_fire(runs)
            .range(last..)
            .next()
            .is_some_and(|(_, s)| s.len() == 6)
    })
    .await;
    runs.retain(|r| r.fire >= t && r.fire <= last);
    assert_no_double_runs_and_rising_tokens(&runs);
    let per_fire = shards_per_fire(&runs);
    assert_eq!(per_fire.len(), 4, "{per_fire:?}");
    for (fire, shards) in &per_fire {
        assert_eq!(shards.len(), 6, "fire {fire} missed shards: {shards:?}");
    }
    let caught_up: Vec<&Ran> = runs.iter().filter(|r| r.misfire).collect();
    assert!(
        !caught_up.is_empty(),
        "fire T+1 of b's shards was not caught up: {runs:?}"
    );
    assert!(
        caught_up
            .iter()
            .all(|r| r.instance != "b" && r.fire == t + chrono::Duration::seconds(1)),
        "{caught_up:?}"
    );
    for a in agents.into_values() {
        a.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_revoked_from_outside_makes_the_agent_self_fence_and_come_back() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let mut client = etcd.client().await.unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let spec = || {
        JobSpec::every("j", Duration::from_secs(1))
            .unwrap()
            .shards(4)
    };
    let a = start(&endpoints, "fence", "a", spec(), tx.clone()).await;
    let b = start(&endpoints, "fence", "b", spec(), tx).await;
    let statuses = [a.status(), b.status()];
    wait_owned(&statuses, "j", 4, |o| o.values().all(|s| s.len() == 2)).await;

    let old_lease = a.status().borrow().lease;
    client.lease_revoke(old_lease).await.unwrap();
    let mut status = a.status();
    let back = timeout(
        PATIENCE,
        status.wait_for(|s| s.session_losses == 1 && s.lease != 0 && s.lease != old_lease),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert_ne!(back.lease, old_lease);
    // It owns shards again under its new lease.
    wait_owned(&statuses, "j", 4, |o| o.values().all(|s| s.len() == 2)).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
