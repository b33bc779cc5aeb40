//! An agent's life against real etcd: starting while etcd is down, and a handle that reports
//! the agent's end instead of waiting for a signal that will not save it.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use shardjob_agent::{AgentError, JobSpec};
use shardjob_coordinator::connect::ConnectError;
use shardjob_integration::EtcdCluster;
use shardjob_integration::agents::{Slow, builder, recorder};
use shardjob_integration::fixtures::PATIENCE;
use tokio::sync::mpsc;
use tokio::time::timeout;

fn spec() -> JobSpec {
    JobSpec::new("j", "0 0 0 1 1 * 2099").unwrap().shards(2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_waits_for_an_etcd_that_comes_up_after_it() {
    let mut etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    etcd.kill(0).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let starting = tokio::spawn({
        let endpoints = endpoints.clone();
        async move {
            builder(&endpoints, "life", "a")
                .connect_timeout(Duration::from_secs(30))
                .job(spec(), recorder("a", tx, Slow::default()))
                .start()
                .await
        }
    });
    // etcd comes back on the same port (restart waits until it is healthy).
    let etcd = tokio::task::spawn_blocking(move || {
        etcd.restart(0).unwrap();
        etcd
    })
    .await
    .unwrap();
    let agent = timeout(PATIENCE, starting).await.unwrap().unwrap();
    let agent = agent.expect("start() gave up while etcd was still coming up");
    agent.shutdown().await.unwrap();
    drop(etcd);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_gives_up_on_an_unreachable_etcd_after_the_connect_timeout() {
    let mut etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    etcd.kill(0).unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let began = Instant::now();
    let err = builder(&endpoints, "life", "a")
        .connect_timeout(Duration::from_secs(1))
        .dial_timeout(Duration::from_millis(200))
        .job(spec(), recorder("a", tx, Slow::default()))
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, AgentError::Connect(ConnectError::Unreachable { .. })),
        "{err}"
    );
    // It kept trying (backoff 100, 200, 400 ms...) rather than failing at the first refusal.
    assert!(
        began.elapsed() >= Duration::from_millis(700),
        "{:?}",
        began.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_until_returns_an_error_when_the_agent_ends_before_the_signal() {
    let etcd = EtcdCluster::single().unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let agent = builder(&etcd.endpoints(), "life", "a")
        .job(spec(), recorder("a", tx, Slow::default()))
        .start()
        .await
        .unwrap();
    let crash = agent.crash_switch();
    let running = tokio::spawn(agent.run_until(std::future::pending::<()>()));
    crash.cancel();
    let result = timeout(PATIENCE, running).await.unwrap().unwrap();
    let err = result.unwrap_err();
    assert!(
        err.to_string().contains("stopped before it was asked to"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_hands_off_at_once_even_with_a_rebalance_delay() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let (tx, _rx) = mpsc::unbounded_channel();
    // Far longer than the test's patience: a parked shard would fail it.
    let delay = Duration::from_secs(120);
    let mut agents = Vec::new();
    for id in ["a", "b"] {
        let agent = builder(&endpoints, "leave", id)
            .rebalance_delay(delay)
            .job(
                JobSpec::every("j", Duration::from_secs(1))
                    .unwrap()
                    .shards(4),
                recorder(id, tx.clone(), Slow::default()),
            )
            .start()
            .await
            .unwrap();
        agents.push(agent);
    }
    let statuses: Vec<_> = agents.iter().map(|a| a.status()).collect();
    shardjob_integration::agents::wait_owned(&statuses, "j", 4, |o| {
        o.values().all(|s| s.len() == 2)
    })
    .await;
    let b = agents.pop().unwrap();
    b.shutdown().await.unwrap();
    shardjob_integration::agents::wait_owned(&statuses[..1], "j", 4, |o| o["a"].len() == 4).await;
    for a in agents {
        a.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_live_instance_id_fails_to_start() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let (tx, _rx) = mpsc::unbounded_channel();
    let first = builder(&endpoints, "dup", "a")
        .job(spec(), recorder("a", tx.clone(), Slow::default()))
        .start()
        .await
        .unwrap();
    let statuses = [first.status()];
    shardjob_integration::agents::wait_owned(&statuses, "j", 2, |_| true).await;
    let err = builder(&endpoints, "dup", "a")
        .job(spec(), recorder("a", tx, Slow::default()))
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, AgentError::InstanceLive { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by a live process"),
        "{err}"
    );
    // The first one was not disturbed: same lease, same shards.
    let status = first.status().borrow().clone();
    assert_eq!(status.owned["j"], [0, 1], "{status:?}");
    first.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_by_hand_is_repaired_an_instance_key_and_an_assignment() {
    let etcd = EtcdCluster::single().unwrap();
    let endpoints = etcd.endpoints();
    let mut client = etcd.client().await.unwrap();
    let keys = shardjob_coordinator::keys::Keys::new("repair").unwrap();
    let (tx, _rx) = mpsc::unbounded_channel();
    let agent = builder(&endpoints, "repair", "a")
        .job(spec(), recorder("a", tx, Slow::default()))
        .start()
        .await
        .unwrap();
    let statuses = [agent.status()];
    shardjob_integration::agents::wait_owned(&statuses, "j", 2, |_| true).await;
    let lease = agent.status().borrow().lease;

    // Its instance key deleted by hand: the agent puts it back, under the same lease.
    client.delete(keys.instance("a"), None).await.unwrap();
    let back = timeout(PATIENCE, put_of(&mut client, keys.instance("a")))
        .await
        .expect("the instance key was never put back");
    assert_eq!(back, lease);

    // The assignment deleted by hand: the leader writes it again, and the shards are owned.
    client.delete(keys.assignment("j"), None).await.unwrap();
    timeout(PATIENCE, put_of(&mut client, keys.assignment("j")))
        .await
        .expect("the assignment was never rewritten");
    shardjob_integration::agents::wait_owned(&statuses, "j", 2, |_| true).await;
    agent.shutdown().await.unwrap();
}

/// Waits until `key` exists (read, then watched from that read's revision: no put is missed)
/// and returns its lease.
async fn put_of(client: &mut etcd_client::Client, key: String) -> i64 {
    let resp = client.get(key.clone(), None).await.unwrap();
    if let Some(kv) = resp.kvs().first() {
        return kv.lease();
    }
    let from = resp.header().unwrap().revision() + 1;
    let opts = etcd_client::WatchOptions::new().with_start_revision(from);
    let mut stream = client.watch(key, Some(opts)).await.unwrap();
    while let Some(resp) = stream.message().await.unwrap() {
        for ev in resp.events() {
            if ev.event_type() == etcd_client::EventType::Put {
                return ev.kv().map_or(0, |kv| kv.lease());
            }
        }
    }
    panic!("the watch ended");
}
