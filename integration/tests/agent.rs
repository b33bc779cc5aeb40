//! In-process agents against real etcd.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use etcd_client::GetOptions;
use shardjob_agent::{AgentHandle, JobSpec};
use shardjob_coordinator::keys::Keys;
use shardjob_integration::EtcdCluster;
use shardjob_integration::agents::{
    Ran, Slow, assert_no_double_runs_and_rising_tokens, builder, drain_until, recorder,
    shards_per_fire, wait_owned,
};
use shardjob_integration::fixtures::PATIENCE;
use tokio::sync::mpsc;
use tokio::time::timeout;

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
    builder(endpoints, ns, id)
        .job(spec, recorder(id, ran, slow))
        .start()
        .await
        .unwrap()
}

/// Collects executions until every shard of `fires` consecutive fires after `after` ran.
async fn collect_fires(
    rx: &mut mpsc::UnboundedReceiver<Ran>,
    after: DateTime<Utc>,
    shards: u32,
    fires: usize,
) -> Vec<Ran> {
    let mut runs = Vec::new();
    drain_until(rx, &mut runs, |runs| {
        let per_fire = shards_per_fire(runs);
        per_fire
            .range(after..)
            .filter(|(f, _)| **f > after)
            .take(fires)
            .filter(|(_, s)| s.len() == shards as usize)
            .count()
            == fires
    })
    .await;
    let keep: Vec<DateTime<Utc>> = shards_per_fire(&runs)
        .range(after..)
        .filter(|(f, _)| **f > after)
        .take(fires)
        .map(|(f, _)| *f)
        .collect();
    runs.into_iter()
        .filter(|r| keep.contains(&r.fire))
        .collect()
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
    let moved: Vec<u32> = before["a"].clone();
    // Not before its lease expired: in etcd's history, just before each new owner key was
    // created, the crashed agent's leased instance key and its owner key were already gone.
    // (Not a time bound: the lease can expire TTL - TTL/3 after the crash, or later under load.)
    let keys = Keys::new("crash").unwrap();
    let mut client = etcd.client().await.unwrap();
    for &s in &moved {
        let now = client.get(keys.owner("j", s), None).await.unwrap();
        let created = now.kvs()[0].create_revision();
        let just_before = Some(GetOptions::new().with_revision(created - 1));
        for key in [keys.instance("a"), keys.owner("j", s)] {
            let then = client.get(key.clone(), just_before.clone()).await.unwrap();
            assert!(then.kvs().is_empty(), "{key} still held at {}", created - 1);
        }
    }
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
    *slow.lock().unwrap() = Some(("b".to_owned(), t, Duration::from_millis(1500)));
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
