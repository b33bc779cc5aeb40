//! Regression tests for defects the fault campaign found.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use shardjob_agent::JobSpec;
use shardjob_integration::EtcdCluster;
use shardjob_integration::agents::{Slow, builder, recorder, wait_owned};
use shardjob_integration::fixtures::PATIENCE;
use shardjob_integration::proxy::Proxy;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// An agent that self-fenced while the server still held its lease (an etcd leader change
/// renews every lease; here someone else keeps it alive) must not be blocked by its own old
/// owner keys: with its new session it revokes the old lease and takes its shards back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_self_fence_the_agent_revokes_its_old_lease_and_owns_its_shards_again() {
    let etcd = EtcdCluster::single().unwrap();
    let proxy = Proxy::start(([127, 0, 0, 1], etcd.client_port(0)).into())
        .await
        .unwrap();
    let endpoints = vec![format!("http://127.0.0.1:{}", proxy.port())];
    let (tx, _rx) = mpsc::unbounded_channel();
    let spec = JobSpec::every("j", Duration::from_secs(1))
        .unwrap()
        .shards(2);
    let a = builder(&endpoints, "refence", "a")
        .job(spec, recorder("a", tx, Slow::default()))
        .start()
        .await
        .unwrap();
    wait_owned(&[a.status()], "j", 2, |_| true).await;
    let old = a.status().borrow().lease;

    // Keep a's lease alive on the server from outside, while a itself is cut off.
    let mut direct = etcd.client().await.unwrap();
    let (mut keeper, mut acks) = direct.lease_keep_alive(old).await.unwrap();
    let kept_until_revoked = tokio::spawn(async move {
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
    timeout(PATIENCE, status.wait_for(|s| s.session_losses == 1))
        .await
        .unwrap()
        .unwrap();
    proxy.heal();

    timeout(PATIENCE, kept_until_revoked)
        .await
        .expect("the old lease was never revoked: the agent's own stale keys block its shards")
        .unwrap();
    wait_owned(&[a.status()], "j", 2, |_| true).await;
    assert_ne!(a.status().borrow().lease, old);
    a.shutdown().await.unwrap();
}
