//! Regression tests for defects the fault campaign found.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use shardjob_agent::JobSpec;
use shardjob_integration::EtcdCluster;
use shardjob_integration::agents::{Slow, builder, drain_until, recorder, wait_owned};
use shardjob_integration::fixtures::PATIENCE;
use shardjob_integration::proxy::Proxy;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// An agent cut off from etcd while the server keeps its lease (an etcd raft election renews
/// every lease when it ends; here another client keeps it alive) *lapses*: at the end of its
/// proof it stops executing but keeps its lease and shards, and once etcd answers again it
/// resumes with the same lease and tokens and replays, as a misfire, the fire the lapse dropped.
/// (Before, it self-fenced: a new lease, claims again, seconds without runs; and its own old
/// owner keys blocked it for another TTL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lapse_resumes_with_the_same_lease_and_shards_and_replays_the_dropped_fire() {
    let etcd = EtcdCluster::single().unwrap();
    let proxy = Proxy::start(([127, 0, 0, 1], etcd.client_port(0)).into())
        .await
        .unwrap();
    let endpoints = vec![format!("http://127.0.0.1:{}", proxy.port())];
    let (tx, mut rx) = mpsc::unbounded_channel();
    let spec = JobSpec::every("j", Duration::from_secs(1))
        .unwrap()
        .shards(2);
    let a = builder(&endpoints, "lapse", "a")
        .job(spec, recorder("a", tx, Slow::default()))
        .start()
        .await
        .unwrap();
    wait_owned(&[a.status()], "j", 2, |_| true).await;
    let mut runs = Vec::new();
    drain_until(&mut rx, &mut runs, |r| r.len() >= 2).await;
    let lease = a.status().borrow().lease;

    // Keep a's lease alive on the server from outside, while a itself is cut off.
    let mut direct = etcd.client().await.unwrap();
    let (mut keeper, mut acks) = direct.lease_keep_alive(lease).await.unwrap();
    let kept = tokio::spawn(async move {
        loop {
            if keeper.keep_alive().await.is_err() {
                return;
            }
            match acks.message().await {
                Ok(Some(r)) if r.ttl() > 0 => {}
                _ => return, // the lease is gone
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    proxy.cut();
    let mut status = a.status();
    timeout(PATIENCE, status.wait_for(|s| s.lapses == 1))
        .await
        .unwrap()
        .unwrap();
    // Everything that started before the lapse has reported (the handler reports at its start).
    while let Ok(r) = rx.try_recv() {
        runs.push(r);
    }
    let before = runs.len();
    // Hold the cut across at least one fire (the fault's length, not a synchronisation).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(rx.try_recv().is_err(), "a run started during the lapse");
    proxy.heal();

    // Back with the same lease: the dropped fire is replayed on both shards with the old tokens.
    drain_until(&mut rx, &mut runs, |r| {
        r[before..].iter().filter(|r| r.misfire).count() >= 2
    })
    .await;
    let tokens: std::collections::BTreeMap<u32, i64> =
        runs[..before].iter().map(|r| (r.shard, r.token)).collect();
    for r in &runs[before..] {
        assert_eq!(Some(&r.token), tokens.get(&r.shard), "a new token: {r:?}");
    }
    let s = a.status().borrow().clone();
    assert_eq!((s.lease, s.session_losses, s.lapses), (lease, 0, 1));
    a.shutdown().await.unwrap();
    timeout(PATIENCE, kept)
        .await
        .expect("the lease outlived the shutdown")
        .unwrap();
}
